//! LoRAs that jobs give by URL: fetched through the guarded HTTP client (`https://`) or the
//! worker's S3 client (`s3://` in an allowed bucket) into the disk cache of [`cache`], checked
//! against the job's SHA-256, and pinned while the worker fuses them.
//!
//! - [`cache`]: the content-addressed disk cache (size limit, LRU eviction, one fetch per digest).

pub mod cache;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_core::config::{LoraFetchConfig, S3Config};
use fleet_core::validate::{LoraUrl, parse_lora_url};
use fleet_core::{ErrorCode, JobError};
use fleet_egress::{EgressClient, EgressError, EgressPolicy};
use fleet_storage::s3::{S3Options, S3Store};
use tokio::io::AsyncWriteExt;

pub use cache::{CacheError, CacheOutcome, Fetched, LoraCache, Pinned};

/// Why a LoRA could not be fetched; each maps to the job's error ([`FetchError::job_error`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("bucket `{0}` is not in worker.lora_fetch.allowed_buckets")]
    BucketNotAllowed(String),
    #[error("this worker stores images in a local directory and has no S3 client for s3:// LoRAs")]
    NoS3,
    #[error("no such object")]
    NotFound,
    #[error("larger than the limit of {0} bytes (worker.lora_fetch.max_file_bytes)")]
    TooLarge(u64),
    #[error("S3: {0}")]
    Storage(Box<fleet_storage::StorageError>),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    InvalidUrl(String),
}

impl From<fleet_storage::StorageError> for FetchError {
    fn from(e: fleet_storage::StorageError) -> Self {
        FetchError::Storage(Box::new(e))
    }
}

impl FetchError {
    /// The job's error, naming the URL (credentials and query masked): `lora_digest_mismatch`
    /// for a file that is not the job's, else `lora_fetch_failed`, retryable when the host or
    /// store may answer later (5xx, timeouts, failed connections).
    pub fn job_error(&self, url: &str) -> JobError {
        let shown = masked_url(url);
        let (code, retryable) = match self {
            FetchError::Cache(CacheError::DigestMismatch { .. }) => (ErrorCode::LoraDigestMismatch, false),
            FetchError::Egress(e) => (ErrorCode::LoraFetchFailed, e.is_retryable()),
            FetchError::Storage(e) => (ErrorCode::LoraFetchFailed, e.is_transient()),
            // A full cache (every file in use) or a local disk problem may clear up.
            FetchError::Cache(CacheError::Full { .. } | CacheError::Io { .. }) | FetchError::Io { .. } => {
                (ErrorCode::LoraFetchFailed, true)
            }
            _ => (ErrorCode::LoraFetchFailed, false),
        };
        let reason = match self {
            // Its own text names the URL unmasked (query included).
            FetchError::Egress(e) => egress_reason(e),
            other => other.to_string(),
        };
        // Underlying errors (reqwest's) may quote the URL as given.
        let reason = if shown == url { reason } else { reason.replace(url, &shown) };
        JobError { code, message: format!("LoRA `{shown}`: {reason}"), retryable }
    }
}

/// Fetches LoRAs by URL into the worker's cache.
#[derive(Debug)]
pub struct LoraFetcher {
    cache: LoraCache,
    http: EgressClient,
    /// A client per allowed bucket (none when the worker stores images in a local directory).
    buckets: BTreeMap<String, S3Store>,
    allowed_buckets: Vec<String>,
    max_file_bytes: u64,
}

impl LoraFetcher {
    /// The fetcher `config` describes, its cache opened; nothing is contacted.
    pub async fn new(config: &LoraFetchConfig, s3: &S3Config) -> Result<LoraFetcher, FetchError> {
        let policy = EgressPolicy {
            allow_http: config.allow_http,
            allowed_hosts: config.allowed_hosts.clone(),
            allowed_private: config.allowed_private.clone(),
            max_redirects: config.max_redirects,
            connect_timeout: Duration::from_secs(config.timeout_secs.min(10)),
            timeout: Duration::from_secs(config.timeout_secs),
        };
        let http = EgressClient::new(policy)?;
        let mut buckets = BTreeMap::new();
        if s3.local_dir.is_none() {
            for bucket in &config.allowed_buckets {
                let options = S3Options {
                    attempt_timeout: Duration::from_secs(config.timeout_secs),
                    operation_timeout: Duration::from_secs(config.timeout_secs),
                    ..S3Options::default()
                };
                let cfg = S3Config { bucket: bucket.clone(), local_dir: None, ..s3.clone() };
                buckets.insert(bucket.clone(), S3Store::new(&cfg, options).await?);
            }
        }
        let cache_dir = config.cache_dir.clone();
        let max_bytes = config.cache_max_bytes;
        let cache = tokio::task::spawn_blocking(move || LoraCache::open(&cache_dir, max_bytes))
            .await
            .map_err(|e| FetchError::Io { path: config.cache_dir.clone(), source: std::io::Error::other(e) })??;
        Ok(LoraFetcher {
            cache,
            http,
            buckets,
            allowed_buckets: config.allowed_buckets.clone(),
            max_file_bytes: config.max_file_bytes,
        })
    }

    pub fn cache(&self) -> &LoraCache {
        &self.cache
    }

    /// The file of the LoRA at `url` whose SHA-256 is `sha256` (lowercase hex), pinned in the
    /// cache until the [`Pinned`] drops.
    pub async fn fetch(&self, url: &str, sha256: &str) -> Result<(Pinned, CacheOutcome), FetchError> {
        let source = parse_lora_url(url).map_err(FetchError::InvalidUrl)?;
        // Refusals by configuration come before the cache: a URL this worker may not fetch does
        // not become usable because another one brought the same file.
        match &source {
            LoraUrl::Http(url) => {
                self.http.check_url(url)?;
            }
            LoraUrl::S3 { bucket, .. } => self.check_bucket(bucket)?,
        }
        self.cache
            .get_or_fetch(sha256, |partial| async move {
                match &source {
                    LoraUrl::Http(url) => {
                        let download = self.http.download(url, &partial, self.max_file_bytes).await?;
                        Ok::<_, FetchError>(Fetched { bytes: download.bytes, sha256: download.sha256 })
                    }
                    LoraUrl::S3 { bucket, key } => self.fetch_s3(bucket, key, &partial).await,
                }
            })
            .await
    }

    fn check_bucket(&self, bucket: &str) -> Result<(), FetchError> {
        if !self.allowed_buckets.iter().any(|b| b == bucket) {
            return Err(FetchError::BucketNotAllowed(bucket.to_owned()));
        }
        if self.buckets.is_empty() {
            return Err(FetchError::NoS3);
        }
        Ok(())
    }

    async fn fetch_s3(&self, bucket: &str, key: &str, partial: &Path) -> Result<Fetched, FetchError> {
        let store = self.buckets.get(bucket).ok_or_else(|| FetchError::BucketNotAllowed(bucket.to_owned()))?;
        let object = store.get(key).await?.ok_or(FetchError::NotFound)?;
        let bytes = object.body.len() as u64;
        if bytes > self.max_file_bytes {
            return Err(FetchError::TooLarge(self.max_file_bytes));
        }
        let sha256 = fleet_storage::sha256_hex(&object.body);
        let io = |source| FetchError::Io { path: partial.to_owned(), source };
        let mut file = tokio::fs::File::create(partial).await.map_err(io)?;
        file.write_all(&object.body).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(Fetched { bytes, sha256 })
    }
}

/// The URL as a job's error shows it: user name and password replaced by `***`, the query by `?…`
/// (signed URLs carry their signature there).
pub fn masked_url(url: &str) -> String {
    let (url, had_query) = match url.split_once(['?', '#']) {
        Some((head, _)) => (head, true),
        None => (url, false),
    };
    let masked = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    if had_query { format!("{masked}?…") } else { masked }
}

/// What went wrong, without the URL (the job's error names it, masked).
fn egress_reason(e: &EgressError) -> String {
    match e {
        EgressError::InvalidUrl { reason, .. } => format!("not a valid URL: {reason}"),
        EgressError::SchemeNotAllowed { scheme, .. } => {
            format!("scheme `{scheme}` is not allowed (https only unless worker.lora_fetch.allow_http)")
        }
        EgressError::HostNotAllowed { host, .. } => {
            format!("host `{host}` is not in worker.lora_fetch.allowed_hosts")
        }
        EgressError::AddressNotAllowed { host, addr } => {
            format!("`{host}` is at {addr}, which is not a public address (worker.lora_fetch.allowed_private)")
        }
        EgressError::Resolve { host, reason } => format!("`{host}`: name not resolved: {reason}"),
        EgressError::Connect { reason, .. } => format!("connection failed: {reason}"),
        EgressError::Timeout { .. } => "timed out (worker.lora_fetch.timeout_secs)".to_owned(),
        EgressError::Redirect { location, .. } => format!("redirect to `{}` not followed", masked_url(location)),
        EgressError::Status { status, .. } => format!("answered HTTP {status}"),
        EgressError::TooLarge { limit, .. } => {
            format!("larger than the limit of {limit} bytes (worker.lora_fetch.max_file_bytes)")
        }
        EgressError::Io { path, source } => format!("{}: {source}", path.display()),
        EgressError::Policy(reason) => format!("egress policy: {reason}"),
    }
}

#[cfg(test)]
mod tests;
