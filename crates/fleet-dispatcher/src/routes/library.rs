//! `GET /v1/library`: what a caller can ask for, so that clients (the web console) can offer choices
//! instead of free text: the caller's tenant, the models with their size limits, and the LoRA and
//! ControlNet names in the library directories the workers share with the dispatcher's configuration.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Serialize;

use crate::App;
use crate::auth::Caller;

/// What the caller can ask for.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Library {
    tenant: String,
    admin: bool,
    models: Vec<Model>,
    loras: Vec<String>,
    controlnets: Vec<String>,
}

/// A model this fleet serves, with its size limits.
#[derive(Debug, Serialize, JsonSchema)]
struct Model {
    name: String,
    max_side: u32,
    max_pixels: u64,
}

/// Names of the entries of `dir` that `keep` accepts, sorted; none when the directory is missing
/// or unreadable here (the dispatcher may run without the library mounted; jobs still validate).
async fn names(dir: &Path, keep: fn(&Path, bool) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return out };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        out.extend(keep(&entry.path(), is_dir));
    }
    out.sort();
    out
}

/// A LoRA is `<name>.safetensors`; its name is the file stem.
fn lora_name(path: &Path, is_dir: bool) -> Option<String> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    (!is_dir && is_safetensors).then(|| path.file_stem()?.to_str().map(str::to_owned)).flatten()
}

/// A ControlNet is a folder (diffusers layout) named after it.
fn controlnet_name(path: &Path, is_dir: bool) -> Option<String> {
    is_dir.then(|| path.file_name()?.to_str().map(str::to_owned)).flatten()
}

pub async fn library(State(app): State<App>, caller: Caller) -> Json<Library> {
    let models = app
        .config
        .models
        .iter()
        .map(|(name, m)| Model { name: name.clone(), max_side: m.max_side, max_pixels: m.max_pixels })
        .collect();
    Json(Library {
        tenant: caller.tenant,
        admin: caller.admin,
        models,
        loras: names(&app.config.library.lora_dir, lora_name).await,
        controlnets: names(&app.config.library.controlnet_dir, controlnet_name).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_loras_by_stem_and_controlnets_by_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b-style.safetensors"), b"").unwrap();
        std::fs::write(dir.path().join("a_ink.safetensors"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.path().join("canny")).unwrap();
        assert_eq!(names(dir.path(), lora_name).await, ["a_ink", "b-style"]);
        assert_eq!(names(dir.path(), controlnet_name).await, ["canny"]);
        assert!(names(&dir.path().join("missing"), lora_name).await.is_empty());
    }
}
