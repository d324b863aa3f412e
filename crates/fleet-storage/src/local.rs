//! The local store: images as files under one directory, metadata in `.json` sidecars.
//!
//! `<root>/<key>` holds the bytes and `<root>/<key>.json` the content type and metadata. Both are
//! written to a temporary file in the same directory, flushed and renamed into place, so a
//! reader sees the old file or the new one, never a partial one. Names starting with `.` are
//! temporary files and are never listed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ObjectMeta, StorageError, Stored, StoredObject, sha256_hex, validate_key};

/// Suffix of the metadata sidecar next to each object.
pub const SIDECAR_SUFFIX: &str = ".json";

/// What the sidecar holds.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    content_type: String,
    bytes: u64,
    metadata: BTreeMap<String, String>,
}

/// A directory that stores images like a bucket.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// The bucket name it stands in for (`s3.bucket`), the only one [`LocalStore::get_from`]
    /// reads; `None` when made without a configuration.
    bucket: Option<String>,
}

impl LocalStore {
    /// A store rooted at `root`, created if missing. The path is made absolute so `file://` URLs
    /// work from any working directory.
    pub async fn new(root: impl AsRef<Path>) -> Result<LocalStore, StorageError> {
        let root = root.as_ref().to_owned();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| StorageError::io("create directory", &root, e))?;
            let root = std::fs::canonicalize(&root).map_err(|e| StorageError::io("resolve directory", &root, e))?;
            Ok(LocalStore { root, bucket: None })
        })
        .await
    }

    /// The same store standing in for bucket `bucket` (`s3.bucket`): `s3://bucket/key` input
    /// images then read from it ([`LocalStore::get_from`]).
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> LocalStore {
        self.bucket = Some(bucket.into());
        self
    }

    /// The (absolute) directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file an object lives in. Keys that could leave the root, or that name the store's own
    /// files (hidden temporary files, `.json` sidecars), are refused.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        let bad = |reason| Err(StorageError::InvalidKey { key: key.to_owned(), reason });
        if key.split('/').any(|s| s.starts_with('.')) {
            return bad("segments starting with `.` are reserved for the local store's temporary files");
        }
        if key.ends_with(SIDECAR_SUFFIX) {
            return bad("keys ending in `.json` are reserved for the local store's metadata sidecars");
        }
        Ok(key.split('/').fold(self.root.clone(), |p, s| p.join(s)))
    }

    /// See [`crate::ImageStore::put`].
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        meta: &ObjectMeta,
    ) -> Result<Stored, StorageError> {
        let path = self.path_of(key)?;
        let sha256 = sha256_hex(&body);
        let bytes = body.len() as u64;
        let sidecar = Sidecar { content_type: content_type.to_owned(), bytes, metadata: meta.to_metadata(&sha256) };
        let sidecar = serde_json::to_vec_pretty(&sidecar).map_err(|e| {
            StorageError::io("encode metadata", &path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
            // Sidecar first: once the image is visible, its metadata is too.
            write_atomic(&dir, &sidecar_path(&path), &sidecar)?;
            write_atomic(&dir, &path, &body)?;
            sync_dir(&dir);
            Ok(())
        })
        .await?;
        tracing::debug!(root = %self.root.display(), key, bytes, "stored image");
        Ok(Stored { key: key.to_owned(), sha256, bytes })
    }

    /// See [`crate::ImageStore::get`]. An object without a sidecar (copied in by hand) reads as
    /// `application/octet-stream` with no metadata.
    pub async fn get(&self, key: &str) -> Result<Option<StoredObject>, StorageError> {
        let path = self.path_of(key)?;
        blocking(move || {
            let body = match std::fs::read(&path) {
                Ok(body) => body,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StorageError::io("read", &path, e)),
            };
            let sidecar_path = sidecar_path(&path);
            let (content_type, metadata) = match std::fs::read(&sidecar_path) {
                Ok(json) => {
                    let sidecar: Sidecar = serde_json::from_slice(&json).map_err(|e| {
                        StorageError::io(
                            "parse",
                            &sidecar_path,
                            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                        )
                    })?;
                    (sidecar.content_type, sidecar.metadata)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ("application/octet-stream".to_owned(), BTreeMap::new())
                }
                Err(e) => return Err(StorageError::io("read", &sidecar_path, e)),
            };
            Ok(Some(StoredObject { body, content_type, metadata }))
        })
        .await
    }

    /// See [`crate::ImageStore::get_from`]: only the bucket the store stands in for
    /// ([`LocalStore::with_bucket`]) is here; another is an error naming both.
    pub async fn get_from(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StorageError> {
        match &self.bucket {
            Some(own) if own == bucket => self.get(key).await,
            own => Err(StorageError::InvalidConfig(format!(
                "`{key}` in bucket `{bucket}`: the local store {} (s3.local_dir) holds only {}; \
                 other buckets need an S3 endpoint",
                self.root.display(),
                match own {
                    Some(own) => format!("bucket `{own}` (s3.bucket)"),
                    None => "its own objects".to_owned(),
                }
            ))),
        }
    }

    /// See [`crate::ImageStore::exists`].
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("stat", &path, e)),
        }
    }

    /// A `file://` URL of the object; `ttl` is ignored (files do not expire).
    pub async fn presign_get(&self, key: &str, _ttl: Duration) -> Result<Option<String>, StorageError> {
        let path = self.path_of(key)?;
        Ok(Some(file_url(&path)))
    }

    /// Readiness: the directory exists and a file can be created in it.
    pub async fn check(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        blocking(move || {
            // Created and dropped (deleted) at once; proves the directory is writable.
            tempfile::Builder::new()
                .prefix(".check")
                .tempfile_in(&root)
                .map(drop)
                .map_err(|e| StorageError::io("write a test file in", &root, e))
        })
        .await
    }

    /// See [`crate::ImageStore::list`]. Only the directories the prefix can match are walked.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // Everything before the prefix's last `/` is a directory path; walk from there.
            let (dir_part, start) = match prefix.rfind('/') {
                Some(i) => (&prefix[..i], root.join(&prefix[..i])),
                None => ("", root.clone()),
            };
            // No valid key lies under an absolute, empty, `.`/`..` or hidden segment; refusing
            // them here also keeps the walk inside the root (`root.join("/etc")` is `/etc`).
            if !dir_part.is_empty() && dir_part.split('/').any(|s| s.is_empty() || s.starts_with('.')) {
                return Ok(Vec::new());
            }
            let mut keys = Vec::new();
            walk(&start, dir_part, &mut keys)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
    }

    /// See [`crate::ImageStore::delete`].
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        blocking(move || {
            // Image first, so a half-done delete never leaves an image without its metadata.
            for p in [path.clone(), sidecar_path(&path)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("remove", &p, e)),
                }
            }
            Ok(())
        })
        .await
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::io("run file operation", PathBuf::new(), std::io::Error::other(e.to_string())))
    })
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(SIDECAR_SUFFIX);
    PathBuf::from(name)
}

/// Writes `data` to a hidden temporary file in `dir`, flushes it to disk and renames it to
/// `path`; the temporary file is removed if anything fails.
fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| StorageError::io("create temp file in", dir, e))?;
    tmp.write_all(data).map_err(|e| StorageError::io("write", tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| StorageError::io("flush", tmp.path(), e))?;
    tmp.persist(path).map_err(|e| StorageError::io("rename into", path, e.error))?;
    Ok(())
}

/// Makes the renames durable. Best effort: not every platform can open a directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Collects the object keys under `dir` (whose key prefix is `key_dir`), skipping hidden files
/// and sidecars. A missing directory holds no keys.
fn walk(dir: &Path, key_dir: &str, keys: &mut Vec<String>) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(());
        }
        Err(e) => return Err(StorageError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if name.starts_with('.') {
            continue;
        }
        let key = if key_dir.is_empty() { name.clone() } else { format!("{key_dir}/{name}") };
        let file_type = entry.file_type().map_err(|e| StorageError::io("list", entry.path(), e))?;
        if file_type.is_dir() {
            walk(&entry.path(), &key, keys)?;
        } else if file_type.is_file() && !name.ends_with(SIDECAR_SUFFIX) {
            keys.push(key);
        }
    }
    Ok(())
}

/// `file://` URL of an absolute path, percent-encoding bytes outside the URL-safe set.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_encoded() {
        assert_eq!(file_url(Path::new("/a b/c.png")), "file:///a%20b/c.png");
    }
}
