//! CLIP byte-level BPE tokenizer built from `vocab.json` + `merges.txt`.
//!
//! Matches transformers' `CLIPTokenizer` for SDXL: text is whitespace-cleaned and
//! lower-cased, split with CLIP's regex, each piece is byte-encoded (GPT-2 byte→unicode map)
//! and merged with BPE where the last symbol carries the `</w>` suffix. Ids are
//! `[BOS] + tokens[..max_len-2] + [EOS]`, padded with the pad token to `max_len` (77):
//! longer prompts are truncated, as diffusers does. The pad token comes from
//! `tokenizer_config.json` / `special_tokens_map.json` (SDXL: `<|endoftext|>` for
//! tokenizer 1, `!` for tokenizer 2). ftfy's mojibake repair and NFC normalisation are not
//! applied (they do not change ASCII or already-normalised text).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{EngineError, Result};

pub const BOS_TOKEN: &str = "<|startoftext|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";

#[derive(Debug)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: Vec<char>,
    pat: regex::Regex,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub max_len: usize,
    pad_token: String,
    cache: Mutex<HashMap<String, Vec<String>>>,
}

/// GPT-2 / CLIP reversible byte → unicode mapping, in CLIP's vocabulary order.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('?')))
        .collect()
}

fn tok_err(component: &str, message: impl Into<String>) -> EngineError {
    EngineError::Tokenizer {
        component: component.to_string(),
        message: message.into(),
    }
}

impl ClipTokenizer {
    /// Build from in-memory `vocab.json` and `merges.txt` contents.
    pub fn from_strings(
        vocab_json: &str,
        merges: &str,
        pad_token: &str,
        max_len: usize,
        component: &str,
    ) -> Result<Self> {
        let encoder: HashMap<String, u32> = serde_json::from_str(vocab_json)
            .map_err(|e| tok_err(component, format!("vocab.json: {e}")))?;
        let mut ranks = HashMap::new();
        // transformers reads at most 49152 - 256 - 2 merges after the "#version" header.
        for line in merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .take(49152 - 256 - 2)
        {
            let mut it = line.split(' ');
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => {
                    let r = ranks.len();
                    ranks.entry((a.to_string(), b.to_string())).or_insert(r);
                }
                _ => return Err(tok_err(component, format!("bad merges.txt line {line:?}"))),
            }
        }
        let get = |t: &str| {
            encoder
                .get(t)
                .copied()
                .ok_or_else(|| tok_err(component, format!("token {t:?} not in vocab.json")))
        };
        let bos_id = get(BOS_TOKEN)?;
        let eos_id = get(EOS_TOKEN)?;
        let pad_id = get(pad_token)?;
        if max_len < 2 {
            return Err(tok_err(component, "model_max_length must be at least 2"));
        }
        let mut byte_encoder = vec!['?'; 256];
        for (b, c) in bytes_to_unicode() {
            byte_encoder[b as usize] = c;
        }
        let pat = regex::Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| tok_err(component, e.to_string()))?;
        Ok(Self {
            encoder,
            ranks,
            byte_encoder,
            pat,
            bos_id,
            eos_id,
            pad_id,
            max_len,
            pad_token: pad_token.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Load from a diffusers `tokenizer/` folder.
    pub fn from_dir(dir: &Path, component: &str) -> Result<Self> {
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|_| EngineError::MissingFile {
                component: component.to_string(),
                path: p,
                hint: String::new(),
            })
        };
        let vocab = read("vocab.json")?;
        let merges = read("merges.txt")?;
        let mut pad = EOS_TOKEN.to_string();
        let mut max_len = 77;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| EngineError::Config {
                        component: component.to_string(),
                        path: p.clone(),
                        message: e.to_string(),
                    })?;
                match v.get("pad_token") {
                    Some(serde_json::Value::String(s)) => pad = s.clone(),
                    Some(serde_json::Value::Object(o)) => {
                        if let Some(serde_json::Value::String(s)) = o.get("content") {
                            pad = s.clone();
                        }
                    }
                    _ => {}
                }
                if let Some(m) = v.get("model_max_length").and_then(|m| m.as_u64())
                    && m <= 4096
                {
                    max_len = m as usize;
                }
            }
        }
        Self::from_strings(&vocab, &merges, &pad, max_len, component)
    }

    fn bpe(&self, token: &str) -> Vec<String> {
        if let Ok(c) = self.cache.lock()
            && let Some(v) = c.get(token)
        {
            return v.clone();
        }
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let mut best: Option<(usize, usize)> = None; // (rank, index)
            for i in 0..word.len() - 1 {
                if let Some(&r) = self.ranks.get(&(word[i].clone(), word[i + 1].clone()))
                    && best.is_none_or(|(br, _)| r < br)
                {
                    best = Some((r, i));
                }
            }
            let Some((_, bi)) = best else { break };
            let (first, second) = (word[bi].clone(), word[bi + 1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        if let Ok(mut c) = self.cache.lock()
            && c.len() < 100_000
        {
            c.insert(token.to_string(), word.clone());
        }
        word
    }

    /// Token ids of `text` without BOS/EOS and without truncation.
    ///
    /// Like transformers, the special tokens (`<|startoftext|>`, `<|endoftext|>` and the pad
    /// token, e.g. tokenizer 2's `!`) are split out of the raw text first and map to their own
    /// ids, so `"!!"` is two pad ids for tokenizer 2 but one merged token for tokenizer 1.
    pub fn encode_raw(&self, text: &str) -> Vec<u32> {
        let mut specials: Vec<(&str, u32)> =
            vec![(BOS_TOKEN, self.bos_id), (EOS_TOKEN, self.eos_id)];
        if self.pad_token != BOS_TOKEN && self.pad_token != EOS_TOKEN && !self.pad_token.is_empty()
        {
            specials.push((self.pad_token.as_str(), self.pad_id));
        }
        let mut ids = Vec::new();
        let mut rest = text;
        loop {
            // earliest (then longest) special token occurrence
            let hit = specials
                .iter()
                .filter_map(|(tok, id)| rest.find(tok).map(|pos| (pos, tok.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match hit {
                Some((pos, len, id)) => {
                    self.encode_plain(&rest[..pos], &mut ids);
                    ids.push(id);
                    rest = &rest[pos + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        let cleaned: String = text
            .chars()
            .filter(|c| (c.is_whitespace() || !c.is_control()) && *c != '\u{FFFD}')
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        for m in self.pat.find_iter(&cleaned) {
            let piece: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            for t in self.bpe(&piece) {
                // Unknown symbols map to <|endoftext|> (CLIP's unk token).
                ids.push(self.encoder.get(&t).copied().unwrap_or(self.eos_id));
            }
        }
    }

    /// `max_len` ids: BOS, the (truncated) tokens, EOS, then padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos_id);
        ids.extend(self.encode_raw(text).into_iter().take(self.max_len - 2));
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }
}

/// Generate a tiny CLIP-style vocabulary (`vocab.json`, `merges.txt`): the 512 byte symbols
/// (with and without `</w>`), `n_merges` merges of frequent English letter pairs, and the
/// two special tokens (highest ids, EOS last, as in CLIP).
pub fn tiny_vocab() -> (String, String) {
    let base: Vec<char> = bytes_to_unicode().into_iter().map(|(_, c)| c).collect();
    let mut vocab: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    vocab.extend(base.iter().map(|c| format!("{c}</w>")));
    let pairs = [
        ("t", "h"),
        ("i", "n"),
        ("e", "r"),
        ("a", "n"),
        ("o", "n"),
        ("th", "e</w>"),
        ("a", "t</w>"),
        ("i", "s</w>"),
        ("a", "r"),
        ("l", "e"),
        ("o", "u"),
        ("s", "t"),
        ("an", "d</w>"),
        ("o", "f</w>"),
        ("in", "g</w>"),
        ("e", "d</w>"),
        ("c", "a"),
        ("o", "r</w>"),
        ("e", "n"),
        ("ca", "t</w>"),
    ];
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in pairs {
        merges.push_str(&format!("{a} {b}\n"));
        vocab.push(format!("{a}{b}"));
    }
    vocab.push(BOS_TOKEN.into());
    vocab.push(EOS_TOKEN.into());
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i as u64)))
        .collect();
    (serde_json::Value::Object(map).to_string(), merges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(pad: &str) -> ClipTokenizer {
        let (v, m) = tiny_vocab();
        ClipTokenizer::from_strings(&v, &m, pad, 77, "test").unwrap()
    }

    #[test]
    fn byte_map_is_clip_order() {
        let m = bytes_to_unicode();
        assert_eq!(m.len(), 256);
        assert_eq!(m[0], (b'!', '!'));
        assert_eq!(m.iter().find(|(b, _)| *b == b' ').unwrap().1, 'Ġ');
    }

    #[test]
    fn bpe_merges_and_padding() {
        let t = tiny("!");
        assert_eq!(t.vocab_size(), 512 + 20 + 2);
        assert_eq!(t.eos_id, 533);
        assert_eq!(t.bos_id, 532);
        assert_eq!(t.pad_id, 0);
        let ids = t.encode("The  CAT.");
        // "the": (t,h) then (th,e</w>) → "the</w>"; "cat": (a,t</w>) ranks before (c,a) → c, at</w>.
        assert_eq!(&ids[..6], &[532, 512 + 5, 66, 512 + 6, 256 + 13, 533]);
        assert_eq!(ids.len(), 77);
        assert!(ids[6..].iter().all(|&i| i == 0));
        let t1 = tiny(EOS_TOKEN);
        assert!(t1.encode("the")[3..].iter().all(|&i| i == 533));
    }

    #[test]
    fn special_tokens_are_split_out() {
        let t2 = tiny("!");
        let t1 = tiny(EOS_TOKEN);
        assert_eq!(t2.encode_raw("a!!"), vec![t2.encode_raw("a")[0], 0, 0]);
        // tokenizer 1 has no special "!": "!!" is one BPE word of two symbols (no merge here)
        assert_eq!(t1.encode_raw("a!!").len(), 3);
        assert_eq!(t1.encode_raw("x<|endoftext|>y")[1], t1.eos_id);
    }

    #[test]
    fn long_prompts_are_truncated() {
        let t = tiny(EOS_TOKEN);
        let text = "a ".repeat(200);
        let ids = t.encode(&text);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], t.bos_id);
        assert_eq!(ids[76], t.eos_id);
        assert!(ids[1..76].iter().all(|&i| i != t.eos_id));
    }

    #[test]
    fn bad_pad_token_is_an_error() {
        let (v, m) = tiny_vocab();
        assert!(ClipTokenizer::from_strings(&v, &m, "<pad-missing>", 77, "t").is_err());
        assert!(ClipTokenizer::from_strings("{", &m, "!", 77, "t").is_err());
    }
}
