//! Near-duplicate search over 64-bit perceptual hashes by multi-index hashing.
//!
//! With threshold `r` the 64 bits are cut into `m = min(r + 1, 4)` blocks. Two hashes within
//! `r` bits differ in some block by at most `r / m` bits (pigeonhole), so a query looks up, in
//! each block's table, every block value within `r / m` bits of its own, and checks those
//! candidates in full. Up to `r = 3` that is `m` exact lookups; at `r = 8`, 4 × 137 lookups in
//! 16-bit tables, whose buckets hold about n / 65,536 hashes each: fast at millions of hashes.

use std::collections::HashMap;

/// Largest threshold accepted: at half the bits, any two unrelated images would match.
pub const MAX_HAMMING: u32 = 24;

/// End of a bucket's chain.
const NONE: u32 = u32::MAX;

/// Hashes indexed for "is any within `threshold` bits, and which first?".
#[derive(Debug)]
pub struct HammingIndex {
    threshold: u32,
    /// (shift, width) of each block.
    blocks: Vec<(u32, u32)>,
    /// Bits a block value may differ by in a lookup.
    radius: u32,
    /// Per block: block value → the newest id with it.
    heads: Vec<HashMap<u64, u32>>,
    /// Per block: id → the next older id with the same block value.
    next: Vec<Vec<u32>>,
    hashes: Vec<u64>,
}

impl HammingIndex {
    /// An empty index for `threshold` (at most [`MAX_HAMMING`]).
    pub fn new(threshold: u32) -> HammingIndex {
        let threshold = threshold.min(MAX_HAMMING);
        let m = (threshold + 1).min(4);
        let mut blocks = Vec::with_capacity(m as usize);
        let mut shift = 0;
        for i in 0..m {
            // 64 bits as evenly as they go: the first blocks take the remainder.
            let width = 64 / m + u32::from(i < 64 % m);
            blocks.push((shift, width));
            shift += width;
        }
        HammingIndex {
            threshold,
            radius: threshold / m,
            heads: vec![HashMap::new(); m as usize],
            next: vec![Vec::new(); m as usize],
            blocks,
            hashes: Vec::new(),
        }
    }

    /// Hashes indexed.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The earliest indexed hash (smallest id) within the threshold of `hash`, with its distance.
    pub fn nearest_earliest(&self, hash: u64) -> Option<(usize, u32)> {
        let mut best: Option<(usize, u32)> = None;
        let mut probes = Vec::new();
        for (b, &(shift, width)) in self.blocks.iter().enumerate() {
            let value = block(hash, shift, width);
            probes.clear();
            neighbours(value, width, self.radius, 0, &mut probes);
            for probe in &probes {
                let mut id = self.heads[b].get(probe).copied().unwrap_or(NONE);
                while id != NONE {
                    let distance = (self.hashes[id as usize] ^ hash).count_ones();
                    if distance <= self.threshold && best.is_none_or(|(found, _)| (id as usize) < found) {
                        best = Some((id as usize, distance));
                    }
                    id = self.next[b][id as usize];
                }
            }
        }
        best
    }

    /// Adds `hash`; returns its id (ids count up from 0 in insertion order).
    pub fn insert(&mut self, hash: u64) -> usize {
        let id = self.hashes.len() as u32;
        for (b, &(shift, width)) in self.blocks.iter().enumerate() {
            let head = self.heads[b].entry(block(hash, shift, width)).or_insert(NONE);
            self.next[b].push(*head);
            *head = id;
        }
        self.hashes.push(hash);
        id as usize
    }
}

fn block(hash: u64, shift: u32, width: u32) -> u64 {
    let mask = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
    (hash >> shift) & mask
}

/// Every `width`-bit value within `radius` bits of `value`, flipping bits from `from` up.
fn neighbours(value: u64, width: u32, radius: u32, from: u32, out: &mut Vec<u64>) {
    out.push(value);
    if radius == 0 {
        return;
    }
    for bit in from..width {
        neighbours(value ^ (1 << bit), width, radius - 1, bit + 1, out);
    }
}

/// The kept samples of a run: their hashes, indexed, and their keys.
#[derive(Debug)]
pub struct NearDuplicates {
    index: HammingIndex,
    keys: Vec<String>,
}

impl NearDuplicates {
    /// Nothing kept yet; samples within `threshold` bits of a kept one are duplicates.
    pub fn new(threshold: u32) -> NearDuplicates {
        NearDuplicates { index: HammingIndex::new(threshold), keys: Vec::new() }
    }

    /// The key of the earliest kept sample within the threshold of `hash`, and its distance.
    pub fn duplicate_of(&self, hash: u64) -> Option<(&str, u32)> {
        self.index.nearest_earliest(hash).map(|(id, distance)| (self.keys[id].as_str(), distance))
    }

    /// Records a kept sample.
    pub fn keep(&mut self, hash: u64, key: &str) {
        self.index.insert(hash);
        self.keys.push(key.to_owned());
    }

    /// Samples kept.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no sample is kept yet.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A hash as the records write it: 16 lower-case hex digits.
pub fn hash_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// A hash from its 16 hex digits.
pub fn parse_hash(text: &str) -> Option<u64> {
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: plenty for test data, and the same on every run.
    fn random(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Hashes in clusters: a few centres, each with copies a few bits away, in shuffled order.
    fn clustered(n: usize, seed: u64) -> Vec<u64> {
        let mut state = seed;
        let centres: Vec<u64> = (0..n / 20 + 1).map(|_| random(&mut state)).collect();
        (0..n)
            .map(|_| {
                let mut h = centres[(random(&mut state) % centres.len() as u64) as usize];
                for _ in 0..random(&mut state) % 12 {
                    h ^= 1 << (random(&mut state) % 64);
                }
                h
            })
            .collect()
    }

    #[test]
    fn lookups_agree_with_a_brute_force_scan_at_every_threshold() {
        for threshold in 0..=MAX_HAMMING {
            // Wide thresholds probe many block values per lookup: fewer hashes keep the test quick.
            let hashes = clustered(if threshold > 12 { 400 } else { 1500 }, u64::from(threshold) + 1);
            let mut index = HammingIndex::new(threshold);
            let mut kept: Vec<u64> = Vec::new();
            let mut duplicates = 0;
            for &h in &hashes {
                let expected = kept
                    .iter()
                    .enumerate()
                    .map(|(id, k)| (id, (k ^ h).count_ones()))
                    .find(|&(_, distance)| distance <= threshold);
                assert_eq!(index.nearest_earliest(h), expected, "threshold {threshold}, hash {h:016x}");
                if expected.is_some() {
                    duplicates += 1;
                } else {
                    assert_eq!(index.insert(h), kept.len());
                    kept.push(h);
                }
            }
            assert!(duplicates > 0 && !kept.is_empty(), "threshold {threshold}: the data exercises both outcomes");
        }
    }

    #[test]
    fn the_earliest_match_wins_and_keys_come_back() {
        let mut seen = NearDuplicates::new(2);
        seen.keep(0b1111, "a");
        seen.keep(0b0111, "b");
        assert_eq!(seen.duplicate_of(0b0011), Some(("a", 2)));
        assert_eq!(seen.duplicate_of(0b0001), Some(("b", 2)), "3 bits from `a`, 2 from `b`");
        assert_eq!(seen.duplicate_of(u64::MAX), None);
        assert_eq!(parse_hash(&hash_hex(0xdead_beef)), Some(0xdead_beef));
        assert_eq!((parse_hash("xyz"), seen.len()), (None, 2));
    }

    #[test]
    #[ignore = "timing: run with --ignored --nocapture to see lookups at a million hashes"]
    fn a_million_hashes_stay_fast() {
        let mut state = 9;
        let mut index = HammingIndex::new(8);
        let started = std::time::Instant::now();
        for _ in 0..1_000_000 {
            let h = random(&mut state);
            if index.nearest_earliest(h).is_none() {
                index.insert(h);
            }
        }
        eprintln!("1,000,000 lookups and inserts at threshold 8: {:?}", started.elapsed());
    }
}
