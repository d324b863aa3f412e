//! Standard output for a pipe: when the reader goes away (`fleet jobs | head`), the command ends
//! quietly (exit 0) instead of panicking as `println!` does.

use std::io::Write as _;

/// Writes `text` to stdout; a closed pipe ends the process, another write error is reported once.
pub fn write(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}

/// `println!` through [`write`].
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

/// An error and its causes on one line, `outer: cause: …`, leaving out a cause whose text the
/// line already holds (a wrapper that repeats its source would otherwise print "X: X").
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_the_message_already_holds_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(io).context("configuration: no such file").context("loading fleet.toml");
        assert_eq!(super::error_text(&err), "loading fleet.toml: configuration: no such file");
        let plain = anyhow::anyhow!("refused").context("submit");
        assert_eq!(super::error_text(&plain), "submit: refused");
    }
}
