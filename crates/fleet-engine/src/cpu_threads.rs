//! The CPU thread count, settled once per process.

use std::num::NonZero;

/// Environment variable that both rayon and candle read for their thread counts.
const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";

/// Asks candle once how many threads its CPU matrix products should use, so it stops asking on
/// every product.
///
/// candle reads its count on every CPU matmul; unless `RAYON_NUM_THREADS` is set, that means
/// opening and parsing `/proc/cpuinfo` (≈ 35 µs on Linux, ≈ 180 times for a 64² tiny-model
/// image; 6–16 % of a tiny or medium image's time: docs/PERFORMANCE.md). This stores
/// candle's own answer (the physical cores, or the CPUs the process may use) in
/// `RAYON_NUM_THREADS` and builds rayon's global pool with the size rayon would have picked
/// without the variable (every logical CPU), so only the repeated reads go away. Does nothing
/// when `RAYON_NUM_THREADS` is already set.
///
/// # Safety
///
/// It changes the process environment, which is sound only while no other thread can read it:
/// call it first thing in `main`, before a runtime, a logger or anything else starts a thread.
#[allow(unsafe_code)]
pub unsafe fn settle_cpu_threads() {
    if std::env::var_os(RAYON_NUM_THREADS).is_some() {
        return;
    }
    let candle = candle_core::utils::get_num_threads();
    let rayon = std::thread::available_parallelism().map_or(1, NonZero::get);
    // SAFETY: the caller guarantees that no other thread exists yet.
    unsafe { std::env::set_var(RAYON_NUM_THREADS, candle.to_string()) };
    // Fails only if the global pool exists already, which then keeps its size.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(rayon).build_global();
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "FLEET_ENGINE_SETTLE_CHILD";
    const NAME: &str = "cpu_threads::tests::sets_candles_count_and_keeps_rayons_pool_size";

    /// Runs itself again in a process of its own (a fresh environment, one test thread), where
    /// it settles the counts and checks both.
    #[test]
    #[allow(unsafe_code)]
    fn sets_candles_count_and_keeps_rayons_pool_size() {
        if std::env::var_os(CHILD).is_some() {
            let candle = candle_core::utils::get_num_threads();
            // SAFETY: this child runs one test on its main thread; nothing else has started.
            unsafe { settle_cpu_threads() };
            assert_eq!(std::env::var(RAYON_NUM_THREADS).ok(), Some(candle.to_string()));
            assert_eq!(candle_core::utils::get_num_threads(), candle);
            let logical = std::thread::available_parallelism().map_or(1, NonZero::get);
            assert_eq!(rayon::current_num_threads(), logical, "rayon's pool keeps its default size");
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .env_remove(RAYON_NUM_THREADS)
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("1 passed"), "the child ran no test: {stdout}");
    }
}
