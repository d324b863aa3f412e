//! Where the dataset goes: a local directory or an S3 prefix, with the few operations a run needs.
//!
//! Every file is published whole (a rename in a directory, one PUT in S3), so a reader, or a
//! resume after a crash, never sees half a shard.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use fleet_core::config::S3Config;
use fleet_storage::{S3Options, S3Store};

use crate::error::BulkError;

/// A dataset location.
#[derive(Debug)]
pub enum Output {
    /// A directory on this machine.
    Dir(PathBuf),
    /// A bucket and key prefix.
    S3 {
        /// The bucket's store.
        store: S3Store,
        /// Key prefix without slashes at either end (may be empty).
        prefix: String,
    },
}

impl Output {
    /// `s3://bucket/prefix` (credentials and endpoint from the `s3` configuration) or a directory
    /// (created if missing).
    pub async fn open(location: &str, s3: &S3Config) -> Result<Output, BulkError> {
        match location.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(BulkError::Config(format!("output `{location}`: no bucket (s3://bucket/prefix)")));
                }
                let mut cfg = s3.clone();
                cfg.bucket = bucket.to_owned();
                cfg.local_dir = None;
                let store = S3Store::new(&cfg, S3Options::default()).await?;
                Ok(Output::S3 { store, prefix: prefix.trim_matches('/').to_owned() })
            }
            None => {
                let dir = PathBuf::from(location);
                std::fs::create_dir_all(&dir).map_err(|e| BulkError::io(&dir, e))?;
                Ok(Output::Dir(dir))
            }
        }
    }

    /// Whether the location is a directory (the in-process mode needs one for its staging area).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Output::Dir(dir) => Some(dir),
            Output::S3 { .. } => None,
        }
    }

    fn key(prefix: &str, name: &str) -> String {
        if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") }
    }

    /// Writes `name` (a path relative to the location) whole.
    pub async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), BulkError> {
        match self {
            Output::Dir(dir) => {
                let path = dir.join(name);
                tokio::task::spawn_blocking(move || write_renamed(&path, &body, true))
                    .await
                    .map_err(|e| BulkError::Config(format!("writer thread: {e}")))?
            }
            Output::S3 { store, prefix } => {
                store.put_object(&Self::key(prefix, name), body, content_type, BTreeMap::new()).await?;
                Ok(())
            }
        }
    }

    /// Writes `name` whole without waiting for the disk (a directory's file is renamed into
    /// place unsynced): for files a crash may lose, such as staged samples.
    pub async fn put_unsynced(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), BulkError> {
        match self {
            Output::Dir(dir) => {
                let path = dir.join(name);
                tokio::task::spawn_blocking(move || write_renamed(&path, &body, false))
                    .await
                    .map_err(|e| BulkError::Config(format!("writer thread: {e}")))?
            }
            Output::S3 { .. } => self.put(name, body, content_type).await,
        }
    }

    /// The names (relative to the location) of the files directly in folder `dir`; none if it
    /// does not exist.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, BulkError> {
        match self {
            Output::Dir(root) => {
                let path = root.join(dir);
                let entries = match std::fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(BulkError::io(&path, e)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| BulkError::io(&path, e))?;
                    if entry.file_type().map_err(|e| BulkError::io(&path, e))?.is_file()
                        && let Some(name) = entry.file_name().to_str()
                    {
                        names.push(format!("{dir}/{name}"));
                    }
                }
                names.sort();
                Ok(names)
            }
            Output::S3 { store, prefix } => {
                let folder = format!("{}/", Self::key(prefix, dir));
                let keys = store.list(&folder).await?;
                let strip = if prefix.is_empty() { 0 } else { prefix.len() + 1 };
                Ok(keys
                    .into_iter()
                    .filter(|k| !k[folder.len()..].contains('/'))
                    .map(|k| k[strip..].to_owned())
                    .collect())
            }
        }
    }

    /// Removes folder `dir` and everything in it; a missing folder is not an error.
    pub async fn delete_dir(&self, dir: &str) -> Result<(), BulkError> {
        match self {
            Output::Dir(root) => {
                let path = root.join(dir);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(BulkError::io(&path, e)),
                }
            }
            Output::S3 { store, prefix } => {
                for key in store.list(&format!("{}/", Self::key(prefix, dir))).await? {
                    store.delete(&key).await?;
                }
                Ok(())
            }
        }
    }

    /// Publishes a finished local file as `name` (moved into a directory, uploaded to S3).
    pub async fn put_file(
        &self,
        name: &str,
        file: tempfile::NamedTempFile,
        content_type: &str,
    ) -> Result<(), BulkError> {
        match self {
            Output::Dir(dir) => {
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| BulkError::io(parent, e))?;
                }
                file.as_file().sync_all().map_err(|e| BulkError::io(&path, e))?;
                file.persist(&path).map_err(|e| BulkError::io(&path, e.error))?;
                Ok(())
            }
            Output::S3 { .. } => {
                let body = std::fs::read(file.path()).map_err(|e| BulkError::io(file.path(), e))?;
                self.put(name, body, content_type).await
            }
        }
    }

    /// The bytes of `name`, or `None` if there is no such file.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BulkError> {
        match self {
            Output::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(BulkError::io(&path, e)),
                }
            }
            Output::S3 { store, prefix } => Ok(store.get(&Self::key(prefix, name)).await?.map(|o| o.body)),
        }
    }

    /// Whether `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, BulkError> {
        match self {
            Output::Dir(dir) => Ok(dir.join(name).exists()),
            Output::S3 { store, prefix } => Ok(store.exists(&Self::key(prefix, name)).await?),
        }
    }

    /// Removes `name`; a missing file is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), BulkError> {
        match self {
            Output::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(BulkError::io(&path, e)),
                }
            }
            Output::S3 { store, prefix } => Ok(store.delete(&Self::key(prefix, name)).await?),
        }
    }

    /// A scratch file for building a shard: in the directory itself (so publishing is a rename),
    /// or in the system's temporary directory for S3.
    pub fn scratch(&self) -> Result<tempfile::NamedTempFile, BulkError> {
        let dir = self.dir().map_or_else(std::env::temp_dir, Path::to_path_buf);
        tempfile::Builder::new().prefix(".fleet-bulk-").tempfile_in(&dir).map_err(|e| BulkError::io(&dir, e))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Dir(dir) => write!(f, "{}", dir.display()),
            Output::S3 { store, prefix } => write!(f, "s3://{}/{prefix}", store.bucket()),
        }
    }
}

/// Writes through a temporary file in the same directory and renames it into place, after
/// waiting for the disk if `sync`.
fn write_renamed(path: &Path, body: &[u8], sync: bool) -> Result<(), BulkError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| BulkError::io(dir, e))?;
    let mut tmp =
        tempfile::Builder::new().prefix(".fleet-bulk-").tempfile_in(dir).map_err(|e| BulkError::io(dir, e))?;
    tmp.write_all(body).map_err(|e| BulkError::io(path, e))?;
    if sync {
        tmp.as_file().sync_all().map_err(|e| BulkError::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| BulkError::io(path, e.error))?;
    Ok(())
}
