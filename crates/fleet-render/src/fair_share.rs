//! Turns between tenants: the order in which a worker takes the jobs waiting in it.
//!
//! Start-time fair queueing over device time. Each tenant has a count of the service it has had
//! (pixel-steps divided by its weight, per priority); a waiting job's tag is that count plus the
//! cost of the tenant's jobs ahead of it and its own, so the job with the lowest tag is the one
//! whose tenant is furthest behind its share. A tenant with nothing waiting falls behind the
//! others without earning credit: the next time it has work it starts from the worker's clock
//! (the start of the last batch's leader), not from where it stopped, so it gets its turns from
//! then on but not a burst for the time it was idle.
//!
//! Interactive jobs still go before bulk ones; within a priority, jobs of one tenant keep their
//! arrival order, so with one tenant the order is exactly first come, first served.

use std::collections::{HashMap, HashSet};

use fleet_core::config::TenantsConfig;
use fleet_core::{JobSpec, Priority};

use crate::batching::{Waiting, pixel_steps};

/// Per-worker state of the tenants' turns; weights from `[tenants.<name>.share]`.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    tenants: TenantsConfig,
    /// Where each (priority, tenant)'s next job starts: its service so far in megapixel-steps /
    /// weight, counted from the clock when its jobs were first seen. Kept for tenants with jobs
    /// waiting and for those ahead of the clock.
    served: HashMap<(usize, String), f64>,
    /// Per priority rank: the start tag of the last batch's leader.
    clock: [f64; 2],
}

/// Tenant of a job that has none (never the case for a job a worker received, which gets one).
const NO_TENANT: &str = "";

impl FairShare {
    pub fn new(tenants: TenantsConfig) -> FairShare {
        FairShare { tenants, served: HashMap::new(), clock: [0.0; 2] }
    }

    /// Indices of `waiting` in the order they should run: priority, then fair tag, then arrival.
    pub fn order<W: Waiting>(&self, waiting: &[W]) -> Vec<usize> {
        let tags = self.tags(waiting);
        let mut order: Vec<usize> = (0..waiting.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| (rank(waiting[i].spec().priority), waiting[i].arrived());
            let (ra, ta) = key(a);
            let (rb, tb) = key(b);
            ra.cmp(&rb).then(tags[a].total_cmp(&tags[b])).then(ta.cmp(&tb))
        });
        order
    }

    /// Counts a batch that is about to run (indices into `waiting`, its leader first) against
    /// its tenants' shares.
    pub fn charge<W: Waiting>(&mut self, waiting: &[W], batch: &[usize]) {
        let Some(&leader) = batch.first() else { return };
        // A tenant's turns count from when its jobs are first seen waiting: at the clock then.
        for w in waiting {
            let r = rank(w.spec().priority);
            let clock = self.clock[r];
            self.served.entry((r, tenant(w.spec()).to_owned())).or_insert(clock);
        }
        let spec = waiting[leader].spec();
        let r = rank(spec.priority);
        self.clock[r] = self.clock[r].max(self.start(r, tenant(spec)));
        for &i in batch {
            let spec = waiting[i].spec();
            let cost = self.cost(spec);
            *self.served.entry((rank(spec.priority), tenant(spec).to_owned())).or_default() += cost;
        }
        // Kept: tenants with jobs still waiting, and those ahead of the clock (forgetting them
        // would hand them turns back). The others start at the clock when they return.
        let still_waiting: HashSet<(usize, &str)> = (0..waiting.len())
            .filter(|i| !batch.contains(i))
            .map(|i| (rank(waiting[i].spec().priority), tenant(waiting[i].spec())))
            .collect();
        let clock = self.clock;
        self.served.retain(|(r, t), served| *served > clock[*r] || still_waiting.contains(&(*r, t.as_str())));
    }

    /// Each waiting job's finish tag: where its tenant starts, plus the cost of the tenant's
    /// earlier waiting jobs of the same priority and its own.
    fn tags<W: Waiting>(&self, waiting: &[W]) -> Vec<f64> {
        let mut by_arrival: Vec<usize> = (0..waiting.len()).collect();
        by_arrival.sort_by_key(|&i| waiting[i].arrived());
        let mut next: HashMap<(usize, &str), f64> = HashMap::new();
        let mut tags = vec![0.0; waiting.len()];
        for i in by_arrival {
            let spec = waiting[i].spec();
            let r = rank(spec.priority);
            let at = next.entry((r, tenant(spec))).or_insert_with(|| self.start(r, tenant(spec)));
            *at += self.cost(spec);
            tags[i] = *at;
        }
        tags
    }

    /// Where a tenant's next job starts: after its service so far; a tenant not yet seen (or
    /// forgotten while it had nothing waiting) starts at the clock.
    fn start(&self, rank: usize, tenant: &str) -> f64 {
        self.served.get(&(rank, tenant.to_owned())).copied().unwrap_or(self.clock[rank])
    }

    fn cost(&self, spec: &JobSpec) -> f64 {
        let weight = self.tenants.settings(tenant(spec)).share.weight;
        pixel_steps(spec) as f64 / 1e6 / weight
    }
}

fn tenant(spec: &JobSpec) -> &str {
    spec.tenant.as_deref().unwrap_or(NO_TENANT)
}

/// Interactive before bulk.
pub(crate) fn rank(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Bulk => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use fleet_core::config::{TenantSettings, TenantShare};

    use super::*;

    use crate::batching::test_support::W;

    fn job(tenant: &str, side: u32, priority: Priority) -> JobSpec {
        let mut s = JobSpec::new("x");
        s.model = "tiny".into();
        (s.width, s.height, s.priority, s.tenant) = (side, side, priority, Some(tenant.into()));
        s
    }

    /// `n` bulk jobs of `tenant`, arriving 1 µs apart from `from`.
    fn jobs(tenant: &str, n: usize, from: Instant) -> Vec<W> {
        (0..n).map(|k| W(job(tenant, 64, Priority::Bulk), from + Duration::from_micros(k as u64))).collect()
    }

    fn weights(pairs: &[(&str, f64)]) -> TenantsConfig {
        let map: BTreeMap<String, TenantSettings> = pairs
            .iter()
            .map(|&(name, weight)| {
                (name.to_owned(), TenantSettings { share: TenantShare { weight }, ..TenantSettings::default() })
            })
            .collect();
        TenantsConfig(map)
    }

    /// Runs `picks` one-job batches and returns the tenants in the order they ran.
    fn run(share: &mut FairShare, waiting: &mut Vec<W>, picks: usize) -> Vec<String> {
        let mut served = Vec::new();
        for _ in 0..picks {
            let Some(&first) = share.order(waiting).first() else { break };
            share.charge(waiting, &[first]);
            served.push(waiting.remove(first).0.tenant.unwrap());
        }
        served
    }

    #[test]
    fn one_tenant_runs_first_come_first_served() {
        let t0 = Instant::now();
        let waiting = jobs("a", 5, t0);
        assert_eq!(FairShare::default().order(&waiting), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_small_tenant_behind_a_deep_backlog_gets_every_other_turn() {
        let t0 = Instant::now();
        let mut waiting = jobs("big", 100, t0);
        waiting.extend(jobs("small", 3, t0 + Duration::from_secs(1)));
        let order = run(&mut FairShare::default(), &mut waiting, 6);
        assert_eq!(order, ["big", "small", "big", "small", "big", "small"]);
    }

    #[test]
    fn turns_follow_the_weights_while_both_have_work() {
        let t0 = Instant::now();
        let mut waiting = jobs("a", 400, t0);
        waiting.extend(jobs("b", 400, t0));
        let mut share = FairShare::new(weights(&[("a", 3.0)]));
        let order = run(&mut share, &mut waiting, 400);
        let a = order.iter().filter(|t| *t == "a").count();
        assert!((299..=301).contains(&a), "a (weight 3) ran {a} of 400 against b (weight 1)");
    }

    #[test]
    fn whole_batches_follow_the_weights_as_a_worker_refills_its_prefetch() {
        let policy =
            crate::batching::BatchPolicy { max_images: 8, max_pixel_steps: u64::MAX, deadline: Duration::ZERO };
        let t0 = Instant::now();
        let mut share = FairShare::new(weights(&[("a", 3.0)]));
        let mut waiting = jobs("a", 16, t0);
        waiting.extend(jobs("b", 16, t0));
        let (mut ran_a, mut ran_b) = (0, 0);
        for round in 1..=50u64 {
            let batch = crate::batching::next_batch(&waiting, &policy, &share, t0, false).unwrap();
            share.charge(&waiting, &batch);
            let mut batch = batch;
            batch.sort_unstable_by(|x, y| y.cmp(x));
            for i in batch {
                let done = waiting.remove(i);
                // The broker refills the lane the job came from.
                let refill = t0 + Duration::from_millis(round);
                if done.0.tenant.as_deref() == Some("a") {
                    ran_a += 1;
                    waiting.push(W(job("a", 64, Priority::Bulk), refill));
                } else {
                    ran_b += 1;
                    waiting.push(W(job("b", 64, Priority::Bulk), refill));
                }
            }
        }
        assert!((295..=305).contains(&ran_a), "a (weight 3) ran {ran_a}, b {ran_b}");
    }

    #[test]
    fn turns_are_counted_in_device_time_not_jobs() {
        let t0 = Instant::now();
        // b's jobs cost four times a's (twice the side): a gets four jobs for each of b's.
        let mut waiting = jobs("a", 200, t0);
        waiting.extend((0..200).map(|k| W(job("b", 128, Priority::Bulk), t0 + Duration::from_micros(k))));
        let order = run(&mut FairShare::default(), &mut waiting, 100);
        let b = order.iter().filter(|t| *t == "b").count();
        assert!((19..=21).contains(&b), "b ran {b} of 100");
    }

    #[test]
    fn an_idle_tenant_earns_no_burst() {
        let t0 = Instant::now();
        let mut share = FairShare::default();
        let mut waiting = jobs("a", 100, t0);
        assert!(run(&mut share, &mut waiting, 50).iter().all(|t| t == "a"));
        // b had nothing waiting while a ran 50 jobs; now it alternates with a rather than taking 50 turns.
        waiting.extend(jobs("b", 50, t0 + Duration::from_secs(1)));
        let order = run(&mut share, &mut waiting, 6);
        assert_eq!(order.iter().filter(|t| *t == "b").count(), 3, "{order:?}");
    }

    #[test]
    fn interactive_jobs_go_first_whoever_has_had_more() {
        let t0 = Instant::now();
        let mut share = FairShare::default();
        let mut waiting = jobs("a", 10, t0);
        run(&mut share, &mut waiting, 5);
        waiting.push(W(job("a", 64, Priority::Interactive), t0 + Duration::from_secs(1)));
        waiting.push(W(job("b", 64, Priority::Bulk), t0 + Duration::from_secs(1)));
        let first = share.order(&waiting)[0];
        assert_eq!(waiting[first].0.priority, Priority::Interactive);
    }

    #[test]
    fn tenants_the_clock_has_passed_are_forgotten() {
        let t0 = Instant::now();
        let mut share = FairShare::default();
        let mut waiting: Vec<W> = (0..20).flat_map(|k| jobs(&format!("t{k}"), 1, t0)).collect();
        run(&mut share, &mut waiting, 20);
        assert_eq!(share.served.len(), 20, "each ran once and is one job ahead of the clock");
        let mut alone = jobs("c", 3, t0 + Duration::from_secs(1));
        run(&mut share, &mut alone, 3);
        assert_eq!(share.served.len(), 1, "c's own turns moved the clock past the others");
    }
}
