//! Where a sample goes: its shard, its index in the shard, its key and its seed.
//!
//! Everything here is a pure function of the run's settings and the sample's position, so a
//! rerun (or a resume on another machine) puts every sample in the same place with the same seed.

use sha2::{Digest, Sha256};

/// Longest key a row may bring.
pub const MAX_KEY_CHARS: usize = 128;

/// How samples are cut into shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// Samples per shard (the last shard may hold fewer).
    pub shard_size: u32,
}

impl ShardPlan {
    /// Shard and index within the shard of the sample at `ordinal` (0-based, in input order).
    pub fn locate(&self, ordinal: u64) -> (u64, u32) {
        let size = u64::from(self.shard_size.max(1));
        (ordinal / size, (ordinal % size) as u32)
    }

    /// The img2dataset-style key: shard number (5 digits) then the index, zero-padded to the
    /// width of the largest index (`000120007` is sample 7 of shard 12 with 10,000 per shard).
    pub fn key(&self, shard: u64, index: u32) -> String {
        let width = digits(self.shard_size.max(2) - 1);
        format!("{shard:05}{index:0width$}")
    }

    /// Number of shards `samples` samples fill.
    pub fn shards(&self, samples: u64) -> u64 {
        samples.div_ceil(u64::from(self.shard_size.max(1)))
    }
}

fn digits(n: u32) -> usize {
    n.to_string().len()
}

/// A shard's file names: `00012.tar`, `00012_stats.json`, `00012_manifest.jsonl`, `00012/`.
pub fn shard_name(shard: u64) -> String {
    format!("{shard:05}")
}

/// The seed of a sample: the first 8 bytes of SHA-256(`run seed/key`), kept below 2^53 (as the
/// seeds the fleet derives from job ids are) so JSON readers in any language read it exactly.
pub fn derive_seed(run_seed: u64, key: &str) -> u64 {
    fleet_core::identity::seed_from_digest(&Sha256::digest(format!("{run_seed}/{key}").as_bytes()))
}

/// Checks a key a row brings: 1–128 of `A-Z a-z 0-9 _ -`. No dots, since WebDataset splits a
/// file name at its first dot into key and extension; no slashes, since keys are file names.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(format!("must be 1 to {MAX_KEY_CHARS} characters"));
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err("may hold only letters, digits, `_` and `-` (WebDataset splits names at the first dot)".into());
    }
    Ok(())
}

/// Checks a run name against [`fleet_core::names::is_run_name`] (it is part of Redis keys and
/// idempotency keys).
pub fn check_run_name(name: &str) -> Result<(), String> {
    if fleet_core::names::is_run_name(name) {
        Ok(())
    } else {
        Err(format!("run name `{name}`: use 1 to 64 of letters, digits, `.`, `_`, `-`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shard_then_padded_index() {
        let plan = ShardPlan { shard_size: 10_000 };
        assert_eq!(plan.locate(120_007), (12, 7));
        assert_eq!(plan.key(12, 7), "000120007");
        assert_eq!(ShardPlan { shard_size: 100 }.key(3, 5), "0000305");
        assert_eq!(ShardPlan { shard_size: 1 }.key(3, 0), "000030");
        assert_eq!(plan.shards(20_001), 3);
    }

    #[test]
    fn seeds_depend_on_run_seed_and_key_only() {
        assert_eq!(derive_seed(1, "a"), derive_seed(1, "a"));
        assert_ne!(derive_seed(1, "a"), derive_seed(2, "a"));
        assert_ne!(derive_seed(1, "a"), derive_seed(1, "b"));
        assert!(derive_seed(7, "x") < 1 << 53);
    }
}
