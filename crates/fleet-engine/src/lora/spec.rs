//! The user-facing LoRA pieces: a LoRA to fuse ([`LoraSpec`], `NAME[:SCALE]`), library names,
//! and finding a LoRA by path, library name or Lightning Hub name.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// A LoRA to fuse at load time: a file and its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl LoraSpec {
    /// Parse `FILE_OR_NAME[:SCALE]` (scale default 1.0). A trailing `:x` is a scale only when
    /// `x` parses as a number, so Windows-style `C:\…` paths stay paths.
    /// The rule is fleet-core's ([`fleet_core::names::parse_name_scale`]), shared by every client.
    pub fn parse(s: &str) -> Result<(String, f64)> {
        fleet_core::names::parse_name_scale(s)
            .map(|(name, scale)| (name.to_owned(), scale.unwrap_or(1.0)))
            .map_err(|e| EngineError::InvalidRequest(format!("LoRA {e}")))
    }
}

/// The SDXL-Lightning LoRAs that [`resolve_lora`] fetches from the Hub when the library does
/// not have them.
pub const LIGHTNING_LORAS: [&str; 3] =
    ["sdxl_lightning_2step_lora", "sdxl_lightning_4step_lora", "sdxl_lightning_8step_lora"];

/// Library names: fleet-core's rule (letters, digits, `-`, `_`, `.` not leading, at most 128
/// characters — no paths).
pub use fleet_core::names::is_library_name;

/// Find a LoRA: an existing file path, else `NAME` → `<library>/NAME.safetensors`, else one of
/// the [`LIGHTNING_LORAS`] from the `ByteDance/SDXL-Lightning` Hub repository (cache first).
/// For names from a job (someone else's input) use [`resolve_library_lora`], which never takes a path.
pub fn resolve_lora(name_or_path: &str, library: Option<&Path>) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    resolve_library_lora(name_or_path, library)
}

/// Find a LoRA by library name only: `<library>/NAME.safetensors`, else one of the
/// [`LIGHTNING_LORAS`]. A name that is a path (or a file in the working directory) is not looked at.
pub fn resolve_library_lora(name: &str, library: Option<&Path>) -> Result<PathBuf> {
    let (name_or_path, p) = (name, Path::new(name));
    if !is_library_name(name_or_path) || name_or_path.ends_with(".safetensors") {
        return Err(EngineError::MissingFile {
            component: "lora".into(),
            path: p.to_path_buf(),
            hint: " (not a file; a library name has only letters, digits, '-', '_' and '.')".into(),
        });
    }
    let mut looked = Vec::new();
    if let Some(dir) = library {
        let f = dir.join(format!("{name_or_path}.safetensors"));
        if f.is_file() {
            return Ok(f);
        }
        looked.push(f.display().to_string());
    }
    if LIGHTNING_LORAS.contains(&name_or_path) {
        return crate::files::hub_file(crate::files::LIGHTNING_REPO, &format!("{name_or_path}.safetensors"));
    }
    Err(EngineError::MissingFile {
        component: "lora".into(),
        path: p.to_path_buf(),
        hint: if looked.is_empty() {
            " (no such file and no LoRA library configured)".into()
        } else {
            format!(" (no such file; looked in the library: {})", looked.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_spec_parses_name_and_scale() {
        assert_eq!(LoraSpec::parse("style").unwrap(), ("style".into(), 1.0));
        assert_eq!(LoraSpec::parse("style:0.5").unwrap(), ("style".into(), 0.5));
        assert_eq!(LoraSpec::parse("dir/a.safetensors:-1").unwrap(), ("dir/a.safetensors".into(), -1.0));
        assert_eq!(LoraSpec::parse("C:\\x.safetensors").unwrap(), ("C:\\x.safetensors".into(), 1.0));
        assert!(LoraSpec::parse("").is_err());
        assert!(LoraSpec::parse("a:inf").is_err());
    }

    #[test]
    fn library_names_exclude_paths() {
        assert!(is_library_name("my-style_v1.2"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\\b"] {
            assert!(!is_library_name(bad), "{bad}");
        }
    }
}
