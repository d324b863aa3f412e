//! The naming rules every crate shares: library names (models, LoRAs, ControlNets), tenant names,
//! `NAME[:SCALE]` references, and bulk-run names.
//!
//! A library name is one file or folder of a worker's library, never a path or URL: 1 to
//! [`MAX_LIBRARY_NAME_LEN`] of `A-Z a-z 0-9 . _ -`, not starting with `.`.
//!
//! A bulk run's name is written by `fleet bulk` and looked up by the dispatcher, so both check
//! it with the one rule here: 1 to [`MAX_RUN_NAME_LEN`] of `A-Z a-z 0-9 . _ -`. No `:`, since
//! `<p>:bulk:<run>:jobs` must not be nameable as another run's key; no `/` or spaces, since the
//! name is also a default output directory.

/// Longest library name, in bytes.
pub const MAX_LIBRARY_NAME_LEN: usize = 128;

/// Why `name` is not a library name, or `Ok`.
pub fn check_library_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_LIBRARY_NAME_LEN {
        return Err(format!("must be at most {MAX_LIBRARY_NAME_LEN} characters"));
    }
    if name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err("must be a library name (letters, digits, '.', '_', '-'), not a path or URL".to_owned());
    }
    Ok(())
}

/// Whether `name` is a library name (see [`check_library_name`]).
pub fn is_library_name(name: &str) -> bool {
    check_library_name(name).is_ok()
}

/// `NAME[:SCALE]`, the LoRA reference of flags and CSV cells: the name (a library name, or for
/// `fleet generate` a file) and the scale if one is given. A trailing `:x` is a scale only when
/// `x` is a number, so a path like `C:\style.safetensors` stays whole (a job's library-name check
/// refuses it later, naming the field).
pub fn parse_name_scale(s: &str) -> Result<(&str, Option<f64>), String> {
    if let Some((head, tail)) = s.rsplit_once(':')
        && !head.is_empty()
        && let Ok(scale) = tail.parse::<f64>()
    {
        if !scale.is_finite() {
            return Err(format!("`{s}`: the scale must be a finite number"));
        }
        return Ok((head, Some(scale)));
    }
    if s.is_empty() {
        return Err("needs a name (or, for fleet generate, a file)".to_owned());
    }
    Ok((s, None))
}

/// Whether `name` is a tenant name (of `http.api_keys` and `[tenants.<name>]`): one or more of
/// `A-Z a-z 0-9 . _ -`, so a tenant is one safe segment of Redis and S3 keys.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

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
    fn name_scale_references_split_at_a_numeric_tail_only() {
        assert_eq!(parse_name_scale("style"), Ok(("style", None)));
        assert_eq!(parse_name_scale("style:0.5"), Ok(("style", Some(0.5))));
        assert_eq!(parse_name_scale("dir/a.safetensors:-1"), Ok(("dir/a.safetensors", Some(-1.0))));
        assert_eq!(parse_name_scale("C:\\x.safetensors"), Ok(("C:\\x.safetensors", None)));
        assert_eq!(parse_name_scale("style:abc"), Ok(("style:abc", None)), "not a scale: part of the name");
        assert!(parse_name_scale("").is_err());
        assert!(parse_name_scale("a:inf").unwrap_err().contains("finite"));
        assert!(parse_name_scale("a:NaN").is_err());
    }

    #[test]
    fn library_names_exclude_paths_and_urls() {
        assert!(is_library_name("my-style_v1.2"));
        for bad in ["", ".hidden", "a/b", "../x", "C:\\x", "http://x", "a:b", &"x".repeat(129)] {
            assert!(!is_library_name(bad), "{bad:?}");
        }
        assert!(check_library_name(&"x".repeat(129)).unwrap_err().contains("128"));
    }

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
