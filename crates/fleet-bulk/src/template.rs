//! Prompt programs: one template text expanded into many prompts.
//!
//! Syntax:
//! - `{a|b|c}`: one of the options; options may nest (`{a {red|blue}|b}`) and be empty only
//!   by mistake (an error);
//! - `{3::a|1::b}`: weights (positive numbers; 1 when absent), used when prompts are drawn;
//! - `{__styles__}`: the options listed in `styles.txt` (one per line, blank lines and lines
//!   starting with `#` skipped, each line itself a template with an optional `N::` weight);
//! - `\{`, `\}`, `\|`, `\\`: the characters themselves.
//!
//! A template has a fixed number of expansions, numbered in product order (the last wildcard
//! varies fastest). [`Program::expand`] gives expansion `k`; [`Program::draw`] draws one by
//! the weights and returns its number too, so a drawn prompt and the same prompt of the full
//! product are the same expansion. Parsing is pure; list files come through a loader closure.

use std::collections::HashMap;
use std::sync::Arc;

use rand_chacha::rand_core::RngCore;

/// Most expansions one template may have (a guard against a product nobody meant to make).
pub const MAX_EXPANSIONS: u64 = 1 << 40;

/// Deepest nesting of option lists referring to option lists.
const MAX_LIST_DEPTH: usize = 16;

/// What is wrong with a template, and where (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}:{column}: {message}")]
pub struct TemplateError {
    /// The file (or `template`, for a template that is a row's field) the problem is in.
    pub source_name: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A parsed, resolved template.
#[derive(Debug, Clone)]
pub struct Program {
    root: Seq,
}

#[derive(Debug, Clone)]
struct Seq {
    parts: Vec<Part>,
    count: u64,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Choice(Arc<Choice>),
}

#[derive(Debug)]
struct Choice {
    options: Vec<Seq>,
    /// Index of the first expansion of each option.
    starts: Vec<u64>,
    /// Running sum of the weights, for draws.
    weight_ends: Vec<f64>,
    count: u64,
}

/// A template before its option lists are read.
#[derive(Debug, Clone)]
enum RawPart {
    Text(String),
    Choice(Vec<(f64, Vec<RawPart>)>),
    List { name: String, column: usize },
}

/// Reads an option list by name: `Ok(None)` when it does not exist.
pub type ListLoader<'a> = dyn FnMut(&str) -> Result<Option<(String, String)>, String> + 'a;

/// Resolved option lists by name, shared by every template that uses them.
#[derive(Debug, Default)]
pub struct ListCache {
    lists: HashMap<String, Arc<Choice>>,
}

impl Program {
    /// Parses `text` (found in `source_name` at `line`), reading `{__name__}` lists through
    /// `load`, which gives the list file's display name and contents.
    pub fn parse(
        text: &str,
        source_name: &str,
        line: usize,
        cache: &mut ListCache,
        load: &mut ListLoader<'_>,
    ) -> Result<Program, TemplateError> {
        let raw = parse_raw(text, source_name, line)?;
        let root = resolve(raw, source_name, line, cache, load, &mut Vec::new())?;
        Ok(Program { root })
    }

    /// Number of distinct expansions (the size of the full product).
    pub fn count(&self) -> u64 {
        self.root.count
    }

    /// Expansion `k` (0-based, below [`Program::count`]) in product order.
    pub fn expand(&self, k: u64) -> String {
        let mut out = String::new();
        self.root.render(k % self.root.count.max(1), &mut out);
        out
    }

    /// One expansion drawn by the weights: its text and its number.
    pub fn draw(&self, rng: &mut impl RngCore) -> (String, u64) {
        let mut out = String::new();
        let k = self.root.draw(rng, &mut out);
        (out, k)
    }
}

impl Seq {
    fn render(&self, mut k: u64, out: &mut String) {
        let mut digits = Vec::with_capacity(self.parts.len());
        for part in self.parts.iter().rev() {
            let n = part.count();
            digits.push(k % n);
            k /= n;
        }
        for (part, k) in self.parts.iter().zip(digits.into_iter().rev()) {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Choice(choice) => {
                    let option = choice.starts.partition_point(|&start| start <= k) - 1;
                    choice.options[option].render(k - choice.starts[option], out);
                }
            }
        }
    }

    fn draw(&self, rng: &mut impl RngCore, out: &mut String) -> u64 {
        let mut k = 0u64;
        for part in &self.parts {
            let (n, digit) = match part {
                Part::Text(text) => {
                    out.push_str(text);
                    (1, 0)
                }
                Part::Choice(choice) => {
                    let total = choice.weight_ends.last().copied().unwrap_or(1.0);
                    let at = unit(rng) * total;
                    let option = choice.weight_ends.partition_point(|&end| end <= at).min(choice.options.len() - 1);
                    (choice.count, choice.starts[option] + choice.options[option].draw(rng, out))
                }
            };
            k = k * n + digit;
        }
        k
    }
}

impl Part {
    fn count(&self) -> u64 {
        match self {
            Part::Text(_) => 1,
            Part::Choice(choice) => choice.count,
        }
    }
}

/// A number in [0, 1) from the top 53 bits of the next word.
fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Parses the syntax; option lists stay names.
fn parse_raw(text: &str, source_name: &str, line: usize) -> Result<Vec<RawPart>, TemplateError> {
    let chars: Vec<char> = text.chars().collect();
    let error = |column: usize, message: String| TemplateError {
        source_name: source_name.to_owned(),
        line,
        column: column + 1,
        message,
    };
    let mut parser = Parser { chars: &chars, at: 0 };
    let parts = parser.seq(&error)?;
    match parser.peek() {
        None => Ok(parts),
        Some('}') => Err(error(parser.at, "`}` without an opening `{` (write `\\}` for the character)".into())),
        Some(_) => Err(error(parser.at, "`|` outside braces (write `\\|` for the character)".into())),
    }
}

struct Parser<'a> {
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    /// Text and braces up to an unescaped `|` or `}` (or the end).
    fn seq(&mut self, error: &dyn Fn(usize, String) -> TemplateError) -> Result<Vec<RawPart>, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    match self.chars.get(self.at + 1) {
                        Some(&next) => text.push(next),
                        None => text.push('\\'),
                    }
                    self.at += 2;
                }
                '{' => {
                    if !text.is_empty() {
                        parts.push(RawPart::Text(std::mem::take(&mut text)));
                    }
                    parts.push(self.braces(error)?);
                }
                // The caller decides: the end of an option, or a stray character at the top.
                '|' | '}' => break,
                _ => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
        if !text.is_empty() {
            parts.push(RawPart::Text(text));
        }
        Ok(parts)
    }

    /// `{…}` at the current position: a list reference or a choice.
    fn braces(&mut self, error: &dyn Fn(usize, String) -> TemplateError) -> Result<RawPart, TemplateError> {
        let open = self.at;
        self.at += 1;
        if let Some(part) = self.list_reference(open, error)? {
            return Ok(part);
        }
        let mut options = Vec::new();
        loop {
            let start = self.at;
            let weight = self.weight(error)?;
            let body = self.seq(error)?;
            if body.is_empty() {
                return Err(error(start, "empty option (every option between `{`, `|` and `}` needs text)".into()));
            }
            options.push((weight.unwrap_or(1.0), body));
            match self.peek() {
                Some('|') => self.at += 1,
                Some('}') => {
                    self.at += 1;
                    return Ok(RawPart::Choice(options));
                }
                _ => return Err(error(open, "unclosed `{` (write `\\{` for the character)".into())),
            }
        }
    }

    /// `{__name__}`: a list reference, or `None` (position unchanged) when the braces are not one.
    fn list_reference(
        &mut self,
        open: usize,
        error: &dyn Fn(usize, String) -> TemplateError,
    ) -> Result<Option<RawPart>, TemplateError> {
        let rest = &self.chars[self.at..];
        if !rest.starts_with(&['_', '_']) {
            return Ok(None);
        }
        let Some(close) = rest.iter().position(|&c| c == '}') else { return Ok(None) };
        let inner: String = rest[..close].iter().collect();
        if inner.contains(['{', '|']) || !inner.ends_with("__") || inner.len() < 5 {
            return Ok(None);
        }
        let name = &inner[2..inner.len() - 2];
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(error(open, format!("list name `{name}`: use letters, digits, `_` and `-`")));
        }
        self.at += close + 1;
        Ok(Some(RawPart::List { name: name.to_owned(), column: open }))
    }

    /// An option's `N::` weight prefix, if it has one: digits and dots, then `::`.
    fn weight(&mut self, error: &dyn Fn(usize, String) -> TemplateError) -> Result<Option<f64>, TemplateError> {
        let rest = &self.chars[self.at..];
        let digits = rest.iter().take_while(|c| c.is_ascii_digit() || **c == '.').count();
        if digits == 0 || rest.get(digits) != Some(&':') || rest.get(digits + 1) != Some(&':') {
            return Ok(None);
        }
        let text: String = rest[..digits].iter().collect();
        match text.parse::<f64>() {
            Ok(w) if w > 0.0 && w.is_finite() => {
                self.at += digits + 2;
                Ok(Some(w))
            }
            _ => Err(error(self.at, format!("bad weight `{text}`: a positive number such as `3` or `0.5`"))),
        }
    }
}

/// Replaces list references by their options and counts expansions.
fn resolve(
    raw: Vec<RawPart>,
    source_name: &str,
    line: usize,
    cache: &mut ListCache,
    load: &mut ListLoader<'_>,
    stack: &mut Vec<String>,
) -> Result<Seq, TemplateError> {
    let error = |column: usize, message: String| TemplateError {
        source_name: source_name.to_owned(),
        line,
        column: column + 1,
        message,
    };
    let too_many = || error(0, format!("more than {MAX_EXPANSIONS} expansions"));
    let mut parts = Vec::with_capacity(raw.len());
    let mut count = 1u64;
    for part in raw {
        let part = match part {
            RawPart::Text(text) => Part::Text(text),
            RawPart::Choice(options) => {
                let mut seqs = Vec::with_capacity(options.len());
                let mut weights = Vec::with_capacity(options.len());
                for (weight, body) in options {
                    seqs.push(resolve(body, source_name, line, cache, load, stack)?);
                    weights.push(weight);
                }
                Part::Choice(Arc::new(choice(seqs, weights).ok_or_else(too_many)?))
            }
            RawPart::List { name, column } => Part::Choice(list(&name, column, &error, cache, load, stack)?),
        };
        count = count.checked_mul(part.count()).filter(|&n| n <= MAX_EXPANSIONS).ok_or_else(too_many)?;
        parts.push(part);
    }
    Ok(Seq { parts, count })
}

fn choice(options: Vec<Seq>, weights: Vec<f64>) -> Option<Choice> {
    let mut starts = Vec::with_capacity(options.len());
    let mut weight_ends = Vec::with_capacity(options.len());
    let (mut count, mut weight) = (0u64, 0.0);
    for (option, w) in options.iter().zip(weights) {
        starts.push(count);
        count = count.checked_add(option.count).filter(|&n| n <= MAX_EXPANSIONS)?;
        weight += w;
        weight_ends.push(weight);
    }
    Some(Choice { options, starts, weight_ends, count })
}

/// The options of list `name`, read once per [`ListCache`].
fn list(
    name: &str,
    column: usize,
    error: &dyn Fn(usize, String) -> TemplateError,
    cache: &mut ListCache,
    load: &mut ListLoader<'_>,
    stack: &mut Vec<String>,
) -> Result<Arc<Choice>, TemplateError> {
    if let Some(found) = cache.lists.get(name) {
        return Ok(found.clone());
    }
    if stack.iter().any(|n| n == name) || stack.len() >= MAX_LIST_DEPTH {
        return Err(error(column, format!("list `{name}` refers to itself (through {})", stack.join(" → "))));
    }
    let (file, text) = match load(name) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(error(column, format!("no list file for `{{__{name}__}}` ({name}.txt)"))),
        Err(message) => return Err(error(column, format!("list `{name}`: {message}"))),
    };
    stack.push(name.to_owned());
    let mut options = Vec::new();
    let mut weights = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // A line is one option: `{` + line + `}` parsed gives its weight and any wildcards.
        let raw = parse_raw(&format!("{{{trimmed}}}"), &file, i + 1).map_err(|mut e| {
            e.column = e.column.saturating_sub(1).max(1);
            e
        })?;
        let mut parsed = match <[RawPart; 1]>::try_from(raw) {
            Ok([RawPart::Choice(parsed)]) => parsed,
            _ => Vec::new(),
        };
        if parsed.len() != 1 {
            return Err(TemplateError {
                source_name: file.clone(),
                line: i + 1,
                column: 1,
                message: "a list line is one option: `|`, `{` and `}` outside braces need a `\\`".into(),
            });
        }
        let (weight, body) = parsed.remove(0);
        options.push(resolve(body, &file, i + 1, cache, load, stack)?);
        weights.push(weight);
    }
    stack.pop();
    if options.is_empty() {
        return Err(error(column, format!("list `{name}` ({file}) has no options")));
    }
    let resolved = Arc::new(
        choice(options, weights).ok_or_else(|| error(column, format!("more than {MAX_EXPANSIONS} expansions")))?,
    );
    cache.lists.insert(name.to_owned(), resolved.clone());
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng as _;

    use super::*;

    fn parse_with(text: &str, lists: &[(&str, &str)]) -> Result<Program, TemplateError> {
        let lists: HashMap<String, String> = lists.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
        let mut load = |name: &str| Ok(lists.get(name).map(|t| (format!("{name}.txt"), t.clone())));
        Program::parse(text, "t.txt", 3, &mut ListCache::default(), &mut load)
    }

    fn all(program: &Program) -> Vec<String> {
        (0..program.count()).map(|k| program.expand(k)).collect()
    }

    #[test]
    fn the_full_product_is_in_order_with_the_last_wildcard_fastest() {
        let p = parse_with("a {red|blue} {cat|dog|fox}", &[]).unwrap();
        assert_eq!(p.count(), 6);
        assert_eq!(all(&p), ["a red cat", "a red dog", "a red fox", "a blue cat", "a blue dog", "a blue fox"]);
    }

    #[test]
    fn options_nest_and_lists_are_read_once_per_name() {
        let p = parse_with("{x|y {1|2}}, {__style__}", &[("style", "# styles\noil\n\n2::ink {thin|bold}\n")]).unwrap();
        assert_eq!(p.count(), 9);
        assert_eq!(all(&p)[..4], ["x, oil".to_owned(), "x, ink thin".into(), "x, ink bold".into(), "y 1, oil".into()]);
        assert_eq!(
            parse_with("plain \\{not\\|a\\} wildcard \\\\", &[]).unwrap().expand(0),
            "plain {not|a} wildcard \\"
        );
    }

    #[test]
    fn draws_follow_the_weights_and_repeat_with_the_seed() {
        let p = parse_with("{9::a|1::b}{c|d}", &[]).unwrap();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..1000).map(|_| p.draw(&mut rng)).collect::<Vec<_>>()
        };
        let first = draw(1);
        assert_eq!(first, draw(1));
        assert_ne!(first, draw(2));
        for (text, k) in &first {
            assert_eq!(&p.expand(*k), text, "a draw's number names its expansion");
        }
        let a = first.iter().filter(|(t, _)| t.starts_with('a')).count();
        assert!((850..950).contains(&a), "{a} of 1000 drew the weight-9 option");
    }

    #[test]
    fn errors_name_line_and_column() {
        let error = |text: &str| parse_with(text, &[]).unwrap_err();
        let e = error("a {b|c");
        assert_eq!((e.line, e.column, e.source_name.as_str()), (3, 3, "t.txt"));
        assert!(e.message.contains("unclosed"), "{e}");
        let e = error("{a||b}");
        assert_eq!(e.column, 4);
        assert!(e.message.contains("empty option"), "{e}");
        assert!(error("{}").message.contains("empty option"));
        let e = error("{x::a|0::b}");
        assert!(e.message.contains("bad weight `0`") && e.column == 7, "{e}");
        assert!(error("{1.2.3::a}").message.contains("bad weight"));
        let e = error("ok {__missing__}");
        assert!(e.message.contains("missing.txt") && e.column == 4, "{e}");
        assert!(error("a } b").message.contains("without an opening"));
        assert!(error("a | b").message.contains("outside braces"));
        let e = parse_with("{__a__}", &[("a", "fine\n{broken\n")]).unwrap_err();
        assert_eq!((e.source_name.as_str(), e.line, e.column), ("a.txt", 2, 1), "{e}");
        assert!(parse_with("{__a__}", &[("a", "{__a__}")]).unwrap_err().message.contains("itself"));
        assert!(parse_with("{__a__}", &[("a", "# only a comment\n")]).unwrap_err().message.contains("no options"));
    }

    #[test]
    fn a_product_past_the_limit_is_refused() {
        let wide = format!("{{{}}}", (0..1024).map(|i| i.to_string()).collect::<Vec<_>>().join("|"));
        let e = parse_with(&[wide.as_str(); 5].concat(), &[]).unwrap_err();
        assert!(e.message.contains("expansions"), "{e}");
    }
}
