//! Text embeddings of recent prompts, so a prompt repeated across seeds or jobs (bulk runs make
//! K images per prompt as K jobs) is tokenised and encoded once.
//!
//! Each prompt is encoded on its own (batch 1), cached or not, so its embedding is the same bits
//! whatever it was batched with and whether or not it came from the cache: a job's pixels never
//! depend on what ran before it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;

/// Entries kept per pipeline: 64 × (77 × 2048 + 1280) values for SDXL, 20 MB in f16, 40 MB in f32.
pub const PROMPT_CACHE_ENTRIES: usize = 64;

/// One prompt's embeddings: `[1, 77, ctx]` and `[1, projection_dim]`.
#[derive(Debug, Clone)]
pub struct CachedPrompt {
    pub embeds: Tensor,
    pub pooled: Tensor,
}

/// A small least-recently-used map from prompt text to its embeddings.
#[derive(Debug)]
pub struct PromptCache {
    capacity: usize,
    entries: Mutex<VecDeque<(String, CachedPrompt)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for PromptCache {
    fn default() -> Self {
        Self::new(PROMPT_CACHE_ENTRIES)
    }
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(VecDeque::new()), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// The cached embeddings of `prompt`, or `encode(prompt)` stored for next time.
    pub fn get_or_encode<E>(
        &self,
        prompt: &str,
        encode: impl FnOnce(&str) -> Result<CachedPrompt, E>,
    ) -> Result<CachedPrompt, E> {
        if let Some(hit) = self.lookup(prompt) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Encoded outside the lock: another thread may encode the same prompt meanwhile, and
        // both get the same bits, so that race costs time, never correctness.
        let value = encode(prompt)?;
        self.insert(prompt, value.clone());
        Ok(value)
    }

    fn lookup(&self, prompt: &str) -> Option<CachedPrompt> {
        let mut entries = self.entries.lock().ok()?;
        let i = entries.iter().position(|(k, _)| k == prompt)?;
        let entry = entries.remove(i)?;
        let value = entry.1.clone();
        entries.push_back(entry);
        Some(value)
    }

    fn insert(&self, prompt: &str, value: CachedPrompt) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        entries.retain(|(k, _)| k != prompt);
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back((prompt.to_owned(), value));
    }

    /// (hits, misses) since the pipeline was built.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn value(v: f32) -> CachedPrompt {
        let t = Tensor::full(v, (1, 2), &Device::Cpu).unwrap();
        CachedPrompt { embeds: t.clone(), pooled: t }
    }

    fn first(c: &CachedPrompt) -> f32 {
        c.embeds.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn encodes_once_and_evicts_the_least_recently_used() {
        let cache = PromptCache::new(2);
        let enc = |v: f32| move |_: &str| Ok::<_, ()>(value(v));
        assert_eq!(first(&cache.get_or_encode("a", enc(1.0)).unwrap()), 1.0);
        assert_eq!(first(&cache.get_or_encode("a", enc(9.0)).unwrap()), 1.0, "a hit does not encode");
        cache.get_or_encode("b", enc(2.0)).unwrap();
        cache.get_or_encode("a", enc(9.0)).unwrap(); // a is now the most recent
        cache.get_or_encode("c", enc(3.0)).unwrap(); // evicts b
        assert_eq!(first(&cache.get_or_encode("b", enc(4.0)).unwrap()), 4.0, "b was evicted");
        assert_eq!(cache.counts(), (2, 4));
        assert_eq!(cache.len(), 2);
        assert!(cache.get_or_encode("d", |_| Err::<CachedPrompt, _>("bad")).is_err());
        assert_eq!(cache.len(), 2, "a failed encode stores nothing");
        let off = PromptCache::new(0);
        off.get_or_encode("a", enc(1.0)).unwrap();
        assert!(off.is_empty());
    }
}
