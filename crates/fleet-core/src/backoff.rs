//! The fleet's one retry policy (through `backon`): every retry loop — broker reconnects, the
//! worker's consumer, storing a job's results, the bulk runner's API client — waits by it.

use std::time::Duration;

pub use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

/// Exponential waits from `min`, doubling up to `max`, each with random jitter of up to its own
/// length, so processes that lost the same service do not come back in lockstep; at most
/// `budget` of waiting in all (`None`: until the caller stops asking).
pub fn policy(min: Duration, max: Duration, budget: Option<Duration>) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .with_total_delay(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_from_min_to_max_with_jitter_and_stop_at_the_budget() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let waits: Vec<Duration> = policy(min, max, None).build().take(12).collect();
        assert_eq!(waits.len(), 12, "no cap on the number of tries");
        for (i, w) in waits.iter().enumerate() {
            let base = (min * 2u32.pow(i as u32)).min(max);
            assert!(*w >= base && *w <= base * 2, "wait {i}: {w:?} against base {base:?}");
        }
        let budget = Duration::from_secs(3);
        let total: Duration = policy(min, max, Some(budget)).build().sum();
        assert!(total <= budget, "{total:?} of waiting exceeds the budget");
        assert!(total >= Duration::from_millis(1500), "the budget is used, not cut short: {total:?}");
    }
}
