//! Names that become parts of Redis keys, object keys and idempotency keys.
//!
//! A bulk run's name is written by `fleet bulk` and looked up by the dispatcher, so both check
//! it with the one rule here: 1 to [`MAX_RUN_NAME_LEN`] of `A-Z a-z 0-9 . _ -`. No `:`, since
//! `<p>:bulk:<run>:jobs` must not be nameable as another run's key; no `/` or spaces, since the
//! name is also a default output directory.

/// Longest run name, in bytes (every allowed character is one byte).
pub const MAX_RUN_NAME_LEN: usize = 64;

/// Whether `name` is a valid bulk-run name.
pub fn is_run_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RUN_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_1_to_64_letters_digits_dots_underscores_dashes() {
        for good in ["cats-v1", "a.b_c", "X", "0", &"x".repeat(MAX_RUN_NAME_LEN)] {
            assert!(is_run_name(good), "{good}");
        }
        for bad in ["", "a:jobs", "a b", "a/b", "é", "a\n", &"x".repeat(MAX_RUN_NAME_LEN + 1)] {
            assert!(!is_run_name(bad), "{bad:?}");
        }
    }
}
