//! The disk cache of LoRAs fetched by URL: content-addressed (`<dir>/<sha256>.safetensors`),
//! bounded in bytes, least recently used evicted first, files in use never evicted, one fetch
//! per digest at a time.
//!
//! A file enters the cache only whole and checked: the fetch writes a temporary file in the
//! cache's directory, and it is renamed to its digest's name only after its digest matched, so
//! no reader ever opens a partial download. Temporary files left by a crash are removed at start.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fleet_render::models::cached_lora_file;

/// Suffix of the temporary files downloads are written to.
const PARTIAL_SUFFIX: &str = ".part";

/// Why a file could not be put into (or kept in) the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("LoRA cache {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the file is {bytes} bytes, more than the LoRA cache holds ({max} bytes, worker.lora_fetch.cache_max_bytes)"
    )]
    TooLarge { bytes: u64, max: u64 },
    #[error(
        "the LoRA cache is full of files in use ({in_use} of {max} bytes); {bytes} more bytes do not fit (worker.lora_fetch.cache_max_bytes)"
    )]
    Full { bytes: u64, in_use: u64, max: u64 },
    #[error("the downloaded file has SHA-256 {actual}, not the job's {expected}")]
    DigestMismatch { expected: String, actual: String },
}

/// What a fetch wrote to the temporary file it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    /// SHA-256 of what was written, lowercase hex.
    pub sha256: String,
}

/// Whether a request was served from the cache or fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Fetched,
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    /// Order of last use: higher is more recent.
    last_used: u64,
    /// Holders of a [`Pinned`] for this file; a pinned file is never evicted.
    pins: usize,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// The cache; cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct LoraCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Arc<Mutex<Index>>,
    /// One lock per digest being fetched, so concurrent requests for one file fetch it once.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A cached file kept from eviction while this lives (fusing reads it).
#[derive(Debug)]
pub struct Pinned {
    path: PathBuf,
    sha256: String,
    index: Arc<Mutex<Index>>,
}

impl Pinned {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Ok(mut index) = self.index.lock()
            && let Some(entry) = index.entries.get_mut(&self.sha256)
        {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }
}

impl LoraCache {
    /// Opens (creating) the cache directory: files named by a digest join the index, most
    /// recently modified as most recently used; leftover temporary files are removed. Files over
    /// the limit (after a smaller `max_bytes`) are evicted now.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<LoraCache, CacheError> {
        let io = |source| CacheError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io)? {
            let item = item.map_err(io)?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(PARTIAL_SUFFIX) {
                let _ = std::fs::remove_file(item.path());
                continue;
            }
            let Some(sha256) = name.strip_suffix(".safetensors").filter(|s| is_digest(s)) else { continue };
            let Ok(meta) = item.metadata() else { continue };
            if meta.is_file() {
                found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), sha256.to_owned(), meta.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, sha256, bytes) in found {
            let last_used = index.tick();
            index.total += bytes;
            index.entries.insert(sha256, Entry { bytes, last_used, pins: 0 });
        }
        let cache = LoraCache {
            dir: dir.to_owned(),
            max_bytes,
            index: Arc::new(Mutex::new(index)),
            in_flight: Mutex::new(HashMap::new()),
        };
        {
            let mut index = cache.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.make_room(&mut index, 0)?;
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the cached files take.
    pub fn total_bytes(&self) -> u64 {
        self.index.lock().map(|i| i.total).unwrap_or(0)
    }

    /// Whether the file of `sha256` is cached.
    pub fn contains(&self, sha256: &str) -> bool {
        self.index.lock().is_ok_and(|i| i.entries.contains_key(sha256))
    }

    /// The file of `sha256`, pinned: from the cache, or fetched by `fetch` into the temporary
    /// file it is given, checked against `sha256`, then entered (evicting the least recently
    /// used unpinned files to make room). Concurrent calls for one digest wait for the first.
    pub async fn get_or_fetch<E, F, Fut>(&self, sha256: &str, fetch: F) -> Result<(Pinned, CacheOutcome), E>
    where
        E: From<CacheError>,
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<Fetched, E>>,
    {
        if let Some(pinned) = self.pin(sha256) {
            return Ok((pinned, CacheOutcome::Hit));
        }
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            in_flight.entry(sha256.to_owned()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            match self.pin(sha256) {
                // Fetched by the call this one waited for.
                Some(pinned) => Ok((pinned, CacheOutcome::Hit)),
                None => self.fetch_into(sha256, fetch).await.map(|pinned| (pinned, CacheOutcome::Fetched)),
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The last waiter removes the lock (the map holds one reference, `lock` another).
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(sha256);
        }
        result
    }

    async fn fetch_into<E, F, Fut>(&self, sha256: &str, fetch: F) -> Result<Pinned, E>
    where
        E: From<CacheError>,
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<Fetched, E>>,
    {
        let partial = self.dir.join(format!(".{sha256}.{}{PARTIAL_SUFFIX}", uuid::Uuid::new_v4().simple()));
        let fetched = fetch(partial.clone()).await;
        let result = self.enter(sha256, &partial, fetched);
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Checks the fetched file and renames it into place.
    fn enter<E: From<CacheError>>(
        &self,
        sha256: &str,
        partial: &Path,
        fetched: Result<Fetched, E>,
    ) -> Result<Pinned, E> {
        let fetched = fetched?;
        if fetched.sha256 != sha256 {
            return Err(CacheError::DigestMismatch { expected: sha256.to_owned(), actual: fetched.sha256 }.into());
        }
        let path = cached_lora_file(&self.dir, sha256);
        // Room and entry under one lock, so two files entering at once cannot overfill the cache.
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.make_room(&mut index, fetched.bytes)?;
        std::fs::rename(partial, &path).map_err(|source| CacheError::Io { path: path.clone(), source })?;
        let last_used = index.tick();
        index.total += fetched.bytes;
        index.entries.insert(sha256.to_owned(), Entry { bytes: fetched.bytes, last_used, pins: 1 });
        Ok(Pinned { path, sha256: sha256.to_owned(), index: self.index.clone() })
    }

    /// The cached file of `sha256`, pinned and marked as just used, if it is there.
    fn pin(&self, sha256: &str) -> Option<Pinned> {
        let path = cached_lora_file(&self.dir, sha256);
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tick = index.tick();
        let entry = index.entries.get_mut(sha256)?;
        entry.last_used = tick;
        entry.pins += 1;
        drop(index);
        // The file's time carries the order of use across restarts; failing to set it costs
        // only that order.
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(Pinned { path, sha256: sha256.to_owned(), index: self.index.clone() })
    }

    /// Evicts the least recently used unpinned files until `bytes` more fit.
    fn make_room(&self, index: &mut Index, bytes: u64) -> Result<(), CacheError> {
        if bytes > self.max_bytes {
            return Err(CacheError::TooLarge { bytes, max: self.max_bytes });
        }
        while index.total + bytes > self.max_bytes {
            let victim = index
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(sha256, _)| sha256.clone());
            let Some(victim) = victim else {
                return Err(CacheError::Full { bytes, in_use: index.total, max: self.max_bytes });
            };
            let path = cached_lora_file(&self.dir, &victim);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            }
            if let Some(entry) = index.entries.remove(&victim) {
                index.total -= entry.bytes;
            }
            tracing::info!(sha256 = %victim, "LoRA evicted from the cache");
        }
        Ok(())
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
