//! glibc's malloc thresholds, set so that freed activations are reused instead of returned.
//!
//! Every candle op returns a fresh tensor: at 256² the VAE's activations are 2–8 MiB each. glibc
//! serves blocks above its mmap threshold (128 KiB at start, raised only as mmapped blocks are
//! freed) with fresh mappings, and gives a freed heap top back to the OS once it exceeds the trim
//! threshold (128 KiB, moving with the mmap one), so most new activations are new pages: a page
//! fault and a kernel zeroing per 4 KiB (217 k faults over a medium-model benchmark). With the
//! mmap threshold at glibc's maximum for 64-bit (32 MiB) and freed memory kept up to 256 MiB, the
//! same run takes 126 k faults, about what the first touch of the model costs (84 M f32
//! parameters are 82 k pages) (docs/PERFORMANCE.md).
//!
//! Process-wide, set once when the first CPU pipeline loads; skipped with
//! `FLEET_ENGINE_KERNELS=candle` (so the A/B covers it) and on other C libraries.

/// Blocks up to this size come from the heap (glibc refuses more than 32 MiB on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory at the heap's top kept for reuse, up to this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Sets the thresholds once per process (later calls do nothing).
pub(crate) fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if crate::util::own_kernels() {
            set_thresholds();
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() {
    // SAFETY: mallopt only changes two tuning parameters under malloc's own lock; it has no
    // memory-safety preconditions. It refuses only out-of-range values, and these are constants
    // within glibc's limits; were one refused, the engine would work the same, with more faults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() {}
