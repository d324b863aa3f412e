//! Result image storage for lightning-fleet.
//!
//! Workers upload each generated image once, under a key of the job, the execution that made it
//! and the image's index ([`object_key`]): two executions of one job never share a key, and the
//! job's status record names the set that counts. The
//! dispatcher hands clients presigned GET URLs ([`ImageStore::presign_get`]).
//!
//! [`ImageStore`] is either an S3-compatible bucket ([`S3Store`]: AWS, MinIO, SeaweedFS) or a
//! plain directory ([`LocalStore`], for single-machine use) behind the same methods. Every call
//! is bounded in time and fails with a typed [`StorageError`]; [`StorageError::is_transient`]
//! tells the caller whether a retry with backoff can help.
//!
//! Key layout, metadata names, multipart and credentials are described in the crate's `README.md`.

#![warn(missing_docs)]
// Errors carry endpoint, bucket, operation and key so messages stand on their own; they are made
// once per failed network or file call, where a few more bytes moved cost nothing.
#![allow(clippy::result_large_err)]

mod endpoint_memo;
mod error;
mod key;
pub mod local;
pub mod result_sets;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use fleet_core::config::S3Config;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use error::{BoxError, StartupCheckError, StorageError};
pub use key::{job_prefix, new_execution_id, object_key, validate_key};
pub use local::LocalStore;
pub use result_sets::{ListedImage, ListedSet};
pub use s3::{S3Options, S3Store};

/// Names of the object metadata the stores write (S3 sends them as `x-amz-meta-<name>`; the local
/// store keeps them in the sidecar's `metadata`).
pub mod meta_names {
    /// Seed the image was generated with (decimal).
    pub const SEED: &str = "seed";
    /// Model name the job used.
    pub const MODEL: &str = "model";
    /// Job id (hyphenated UUID).
    pub const JOB_ID: &str = "job-id";
    /// Index of the image within its job (decimal).
    pub const INDEX: &str = "index";
    /// Lower-case hex SHA-256 of the stored bytes, computed by `put`.
    pub const SHA256: &str = "sha256";
    /// The execution of the job that made the image (the key's execution segment).
    pub const EXECUTION: &str = "execution";
    /// Tenant that owns the job.
    pub const TENANT: &str = "tenant";
    /// The job's priority (`interactive` or `bulk`).
    pub const PRIORITY: &str = "priority";
    /// How many images the execution's result set holds (the job's `num_images`), decimal.
    pub const IMAGES: &str = "images";
    /// Width of the image in pixels, decimal.
    pub const WIDTH: &str = "width";
    /// Height of the image in pixels, decimal.
    pub const HEIGHT: &str = "height";
    /// The job's idempotency key, when it has one (percent-encoded like every value), so a
    /// record rebuilt from the images gets its key back.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Hex SHA-256 of the request the job was submitted with (the dispatcher's digest), when its
    /// message carried one, so a rebuilt idempotency key still refuses a different request.
    pub const REQUEST_DIGEST: &str = "request-digest";
}

/// What the worker knows about an image when it stores it; written as object metadata. It holds
/// what a job's record needs to be rebuilt from its objects alone (with the key, the object's
/// size and its stored SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Seed the image was made with.
    pub seed: u64,
    /// Model name from the job.
    pub model: String,
    /// The job the image belongs to.
    pub job_id: Uuid,
    /// Index of the image within the job.
    pub index: u32,
    /// The execution that made it (see [`object_key`]).
    pub execution: String,
    /// Tenant that owns the job.
    pub tenant: String,
    /// The job's priority (`interactive` or `bulk`).
    pub priority: String,
    /// Images in the execution's result set (the job's `num_images`): a set with fewer objects
    /// is incomplete.
    pub images: u32,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The job's idempotency key.
    pub idempotency_key: Option<String>,
    /// The digest of the request the job was submitted with ([`meta_names::REQUEST_DIGEST`]).
    pub request_digest: Option<String>,
}

impl ObjectMeta {
    /// The metadata map stored with an object, including the body's `sha256`.
    ///
    /// Values are percent-encoded outside printable ASCII (and `%` itself) because S3 carries
    /// metadata in HTTP headers; [`decode_meta_value`] undoes it.
    pub fn to_metadata(&self, sha256: &str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            (meta_names::SEED.to_owned(), self.seed.to_string()),
            (meta_names::MODEL.to_owned(), encode_meta_value(&self.model)),
            (meta_names::JOB_ID.to_owned(), self.job_id.hyphenated().to_string()),
            (meta_names::INDEX.to_owned(), self.index.to_string()),
            (meta_names::SHA256.to_owned(), sha256.to_owned()),
            (meta_names::EXECUTION.to_owned(), encode_meta_value(&self.execution)),
            (meta_names::TENANT.to_owned(), encode_meta_value(&self.tenant)),
            (meta_names::PRIORITY.to_owned(), encode_meta_value(&self.priority)),
            (meta_names::IMAGES.to_owned(), self.images.to_string()),
            (meta_names::WIDTH.to_owned(), self.width.to_string()),
            (meta_names::HEIGHT.to_owned(), self.height.to_string()),
        ]);
        if let Some(key) = &self.idempotency_key {
            map.insert(meta_names::IDEMPOTENCY_KEY.to_owned(), encode_meta_value(key));
        }
        if let Some(digest) = &self.request_digest {
            map.insert(meta_names::REQUEST_DIGEST.to_owned(), encode_meta_value(digest));
        }
        map
    }

    /// Reads the fields back from a stored object's (decoded) metadata; `None` if any is missing
    /// or malformed (e.g. an object some other tool wrote).
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<ObjectMeta> {
        let number = |name: &str| metadata.get(name)?.parse::<u32>().ok();
        Some(ObjectMeta {
            seed: metadata.get(meta_names::SEED)?.parse().ok()?,
            model: metadata.get(meta_names::MODEL)?.clone(),
            job_id: metadata.get(meta_names::JOB_ID)?.parse().ok()?,
            index: number(meta_names::INDEX)?,
            execution: metadata.get(meta_names::EXECUTION)?.clone(),
            tenant: metadata.get(meta_names::TENANT)?.clone(),
            priority: metadata.get(meta_names::PRIORITY)?.clone(),
            images: number(meta_names::IMAGES)?,
            width: number(meta_names::WIDTH)?,
            height: number(meta_names::HEIGHT)?,
            idempotency_key: metadata.get(meta_names::IDEMPOTENCY_KEY).cloned(),
            request_digest: metadata.get(meta_names::REQUEST_DIGEST).cloned(),
        })
    }

    /// Metadata for tests and tools: image 0 of a one-image 64×64 set of execution `execution`,
    /// tenant `acme`, interactive.
    pub fn example(job_id: Uuid, execution: &str, seed: u64) -> ObjectMeta {
        ObjectMeta {
            seed,
            model: "tiny".into(),
            job_id,
            index: 0,
            execution: execution.to_owned(),
            tenant: "acme".into(),
            priority: "interactive".into(),
            images: 1,
            width: 64,
            height: 64,
            idempotency_key: None,
            request_digest: None,
        }
    }
}

/// What `put` stored: the key, and the values a job result records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object key.
    pub key: String,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// An object read back by `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's bytes.
    pub body: Vec<u8>,
    /// Its content type (`application/octet-stream` if the store has none).
    pub content_type: String,
    /// Its metadata, names lower-case, values decoded (see [`meta_names`]).
    pub metadata: BTreeMap<String, String>,
}

impl StoredObject {
    /// The SHA-256 recorded at upload, if any.
    pub fn sha256(&self) -> Option<&str> {
        self.metadata.get(meta_names::SHA256).map(String::as_str)
    }

    /// The typed metadata, if the object was written by this crate.
    pub fn meta(&self) -> Option<ObjectMeta> {
        ObjectMeta::from_metadata(&self.metadata)
    }
}

/// Where result images go: an S3-compatible bucket or a local directory, same methods.
///
/// An enum rather than a trait object so calls stay plain `async fn`s without boxing.
#[derive(Debug)]
pub enum ImageStore {
    /// An S3-compatible bucket.
    S3(S3Store),
    /// A directory on this machine.
    Local(LocalStore),
}

impl ImageStore {
    /// The store `cfg` describes: a [`LocalStore`] when `local_dir` is set, otherwise an
    /// [`S3Store`] with the default timeouts and multipart settings ([`S3Options::default`]).
    ///
    /// Nothing is contacted here; call [`ImageStore::check`] for readiness.
    pub async fn from_config(cfg: &S3Config) -> Result<ImageStore, StorageError> {
        match &cfg.local_dir {
            Some(dir) => Ok(ImageStore::Local(LocalStore::new(dir).await?.with_bucket(&cfg.bucket))),
            None => Ok(ImageStore::S3(S3Store::new(cfg, S3Options::default()).await?)),
        }
    }

    /// The store `cfg` describes, checked the way a dispatcher and a worker check it before they
    /// serve: the bucket exists and takes our credentials (HeadBucket), or the directory is
    /// writable. A store that fails the check is a misconfiguration or a missing server, named in
    /// the error with the configuration keys to look at, so a process fails at start rather than
    /// at its first job.
    pub async fn connect(cfg: &S3Config) -> Result<ImageStore, StartupCheckError> {
        let store = ImageStore::from_config(cfg).await.map_err(StartupCheckError::from)?;
        store.check().await.map_err(StartupCheckError::from)?;
        Ok(store)
    }

    /// Stores `body` under `key`, replacing any object there (a retried upload of the same
    /// execution), with `content_type` and `meta` plus the body's SHA-256 as
    /// metadata. Readers never see a partly written object.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        meta: &ObjectMeta,
    ) -> Result<Stored, StorageError> {
        match self {
            ImageStore::S3(s) => s.put(key, body, content_type, meta).await,
            ImageStore::Local(l) => l.put(key, body, content_type, meta).await,
        }
    }

    /// The object at `key`, or `None` if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<StoredObject>, StorageError> {
        match self {
            ImageStore::S3(s) => s.get(key).await,
            ImageStore::Local(l) => l.get(key).await,
        }
    }

    /// The object at `key` in `bucket`, or `None` if there is none: for input images that name
    /// another bucket of the same S3 endpoint, read with this store's credentials (errors name
    /// `bucket`). A local store holds only the bucket it stands in for (`s3.bucket`); any other
    /// name is an error.
    pub async fn get_from(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StorageError> {
        match self {
            ImageStore::S3(s) => s.get_from(bucket, key).await,
            ImageStore::Local(l) => l.get_from(bucket, key).await,
        }
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            ImageStore::S3(s) => s.exists(key).await,
            ImageStore::Local(l) => l.exists(key).await,
        }
    }

    /// A URL that fetches `key` without credentials for `ttl`: a presigned S3 GET URL, or a
    /// `file://` URL for the local store (which has no expiry). Does not check that the object
    /// exists. `ttl` above 7 days is an error (S3's limit for SigV4 presigning).
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, StorageError> {
        match self {
            ImageStore::S3(s) => s.presign_get(key, ttl).await.map(Some),
            ImageStore::Local(l) => l.presign_get(key, ttl).await,
        }
    }

    /// Readiness: the bucket answers (HeadBucket), or the directory is writable.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self {
            ImageStore::S3(s) => s.check().await,
            ImageStore::Local(l) => l.check().await,
        }
    }

    /// Every key starting with `prefix` (a plain string prefix, as in S3), sorted. For tests and
    /// operations; it reads the whole listing into memory.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            ImageStore::S3(s) => s.list(prefix).await,
            ImageStore::Local(l) => l.list(prefix).await,
        }
    }

    /// Removes the object at `key`; removing a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            ImageStore::S3(s) => s.delete(key).await,
            ImageStore::Local(l) => l.delete(key).await,
        }
    }
}

impl fmt::Display for ImageStore {
    /// A one-line description for logs (no credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageStore::S3(s) => write!(f, "S3 bucket `{}` at {}", s.bucket(), s.endpoint()),
            ImageStore::Local(l) => write!(f, "directory {}", l.root().display()),
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Percent-encodes `%` and everything outside printable ASCII, so the value survives as an HTTP
/// header.
pub fn encode_meta_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`encode_meta_value`]; a value that is not valid encoding is returned unchanged.
pub fn decode_meta_value(value: &str) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return value.to_owned(),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn meta_values_round_trip() {
        for v in ["sdxl-lightning", "50% off", "modèle ü", "", "%zz"] {
            let enc = encode_meta_value(v);
            assert!(enc.bytes().all(|b| (0x20..0x7f).contains(&b)), "{enc}");
            assert_eq!(decode_meta_value(&enc), v);
        }
        assert_eq!(decode_meta_value("bad %z"), "bad %z");
    }

    #[test]
    fn object_meta_round_trips_through_metadata() {
        let mut meta = ObjectMeta::example(Uuid::now_v7(), "0a1b2c3d4e5f", u64::MAX);
        (meta.index, meta.tenant, meta.model) = (3, "ténant".into(), "modèle".into());
        let map = meta.to_metadata("ab");
        assert_eq!(map[meta_names::SHA256], "ab");
        assert_eq!(map[meta_names::TENANT], "t%C3%A9nant", "encoded for an HTTP header");
        // As `get` hands it back: decoded.
        let read: BTreeMap<String, String> = map.iter().map(|(k, v)| (k.clone(), decode_meta_value(v))).collect();
        assert_eq!(ObjectMeta::from_metadata(&read), Some(meta.clone()));
        meta.idempotency_key = Some("order 7: ü".into());
        meta.request_digest = Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into());
        let read: BTreeMap<String, String> =
            meta.to_metadata("ab").iter().map(|(k, v)| (k.clone(), decode_meta_value(v))).collect();
        assert_eq!(ObjectMeta::from_metadata(&read), Some(meta));
    }
}
