//! Batching policy, as a pure function over the jobs waiting in the worker.
//!
//! Jobs are compatible when everything that shapes the forward pass matches (model, size, steps,
//! guidance and — when guidance is on — the negative prompt, LoRA set with scales, ControlNet
//! model). A batch starts with the most urgent job (interactive before bulk, then oldest) and takes
//! compatible jobs in the same order while its budget (images and images × pixels × steps) allows.
//! A job that fits no batch now simply waits for the next one; it never blocks the others.

use std::time::{Duration, Instant};

use fleet_core::{JobSpec, Priority};

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most images in one forward pass.
    pub max_images: u32,
    /// Most images × pixels × steps in one batch (a proxy for device time and memory).
    pub max_pixel_steps: u64,
    /// How long the first job of a batch may wait for company.
    pub deadline: Duration,
}

/// What makes two jobs runnable in the same forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchKey {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    guidance_bits: u32,
    /// Only when classifier-free guidance runs does the negative prompt enter the pass.
    negative_prompt: Option<String>,
    /// Sorted by name, scales as bits: the fused weights must be identical.
    loras: Vec<(String, u32)>,
    controlnet: Option<String>,
}

impl BatchKey {
    pub fn of(spec: &JobSpec) -> BatchKey {
        let mut loras: Vec<(String, u32)> = spec.loras.iter().map(|l| (l.name.clone(), l.scale.to_bits())).collect();
        loras.sort();
        let cfg = spec.guidance > 1.0;
        BatchKey {
            model: spec.model.clone(),
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            guidance_bits: if cfg { spec.guidance.to_bits() } else { 0 },
            negative_prompt: if cfg { spec.negative_prompt.clone().filter(|s| !s.is_empty()) } else { None },
            loras,
            controlnet: spec.controlnet.as_ref().map(|c| c.model.clone()),
        }
    }
}

/// The cost of one job against the batch budget.
pub fn pixel_steps(spec: &JobSpec) -> u64 {
    u64::from(spec.num_images) * u64::from(spec.width) * u64::from(spec.height) * u64::from(spec.steps)
}

/// A job waiting in the worker, as the policy sees it.
pub trait Waiting {
    fn spec(&self) -> &JobSpec;
    fn arrived(&self) -> Instant;
}

/// Indices (into `waiting`) of the next batch, or `None` if nothing should run yet.
///
/// A batch runs when it is full (no further compatible job fits) or when its first job has waited
/// `deadline`; `force` runs whatever is there (used when draining). A single job larger than the
/// budget still runs alone — the budget shapes batches, it does not refuse jobs.
pub fn next_batch<W: Waiting>(waiting: &[W], policy: &BatchPolicy, now: Instant, force: bool) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&i| (rank(waiting[i].spec().priority), waiting[i].arrived()));
    let &first = order.first()?;
    let key = BatchKey::of(waiting[first].spec());
    let mut chosen = vec![first];
    let mut images = waiting[first].spec().num_images;
    let mut cost = pixel_steps(waiting[first].spec());
    let mut more_compatible_waiting = false;
    for &i in &order[1..] {
        let spec = waiting[i].spec();
        if BatchKey::of(spec) != key {
            continue;
        }
        if images + spec.num_images <= policy.max_images && cost + pixel_steps(spec) <= policy.max_pixel_steps {
            chosen.push(i);
            images += spec.num_images;
            cost += pixel_steps(spec);
        } else {
            more_compatible_waiting = true;
        }
    }
    let full = more_compatible_waiting || images >= policy.max_images;
    let expired = now.saturating_duration_since(waiting[first].arrived()) >= policy.deadline;
    (force || full || expired).then_some(chosen)
}

/// When the job that would lead the next batch reaches its deadline (`None`: nothing waits).
/// The consume loop sleeps until then rather than polling, so a lone job starts on time.
pub fn leader_deadline<W: Waiting>(waiting: &[W], policy: &BatchPolicy) -> Option<Instant> {
    let leader = waiting.iter().min_by_key(|w| (rank(w.spec().priority), w.arrived()))?;
    Some(leader.arrived() + policy.deadline)
}

fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Interactive => 0,
        Priority::Bulk => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::LoraRef;

    struct W(JobSpec, Instant);
    impl Waiting for W {
        fn spec(&self) -> &JobSpec {
            &self.0
        }
        fn arrived(&self) -> Instant {
            self.1
        }
    }

    fn job(width: u32, n: u32, priority: Priority) -> JobSpec {
        let mut s = JobSpec::new("x");
        s.model = "tiny".into();
        (s.width, s.height, s.num_images, s.priority) = (width, 64, n, priority);
        s
    }

    const POLICY: BatchPolicy =
        BatchPolicy { max_images: 4, max_pixel_steps: u64::MAX, deadline: Duration::from_millis(50) };

    #[test]
    fn waits_for_company_until_the_deadline() {
        let t0 = Instant::now();
        let w = [W(job(64, 1, Priority::Bulk), t0)];
        assert_eq!(next_batch(&w, &POLICY, t0, false), None);
        assert_eq!(next_batch(&w, &POLICY, t0 + Duration::from_millis(60), false), Some(vec![0]));
        assert_eq!(next_batch(&w, &POLICY, t0, true), Some(vec![0]));
    }

    #[test]
    fn interactive_first_and_only_compatible_jobs_join() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1);
        let w = [
            W(job(64, 1, Priority::Bulk), t0),
            W(job(128, 1, Priority::Interactive), later),
            W(job(64, 1, Priority::Interactive), later),
            W(job(128, 2, Priority::Bulk), later),
        ];
        let batch = next_batch(&w, &POLICY, t0 + Duration::from_secs(1), false).unwrap();
        assert_eq!(batch, vec![1, 3], "the 128-wide interactive job leads and takes the compatible bulk job");
    }

    #[test]
    fn the_leader_is_the_most_urgent_job_not_the_oldest() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let w = [W(job(64, 1, Priority::Bulk), t0), W(job(64, 1, Priority::Interactive), later)];
        assert_eq!(leader_deadline(&w, &POLICY), Some(later + POLICY.deadline));
        assert_eq!(leader_deadline::<W>(&[], &POLICY), None);
    }

    #[test]
    fn a_full_batch_runs_at_once_and_the_rest_waits() {
        let t0 = Instant::now();
        let w: Vec<W> = (0..3).map(|_| W(job(64, 2, Priority::Interactive), t0)).collect();
        assert_eq!(next_batch(&w, &POLICY, t0, false), Some(vec![0, 1]));
    }

    #[test]
    fn pixel_step_budget_bounds_a_batch_but_never_refuses_a_big_job() {
        let t0 = Instant::now();
        let policy = BatchPolicy { max_pixel_steps: pixel_steps(&job(64, 1, Priority::Bulk)) * 2, ..POLICY };
        let w = [W(job(64, 3, Priority::Bulk), t0), W(job(64, 1, Priority::Bulk), t0)];
        assert_eq!(next_batch(&w, &policy, t0, false), Some(vec![0]));
    }

    #[test]
    fn lora_sets_must_match_including_scales_but_not_order() {
        let mut a = job(64, 1, Priority::Bulk);
        a.loras = vec![LoraRef { name: "x".into(), scale: 0.5 }, LoraRef { name: "y".into(), scale: 1.0 }];
        let mut b = a.clone();
        b.loras.reverse();
        assert_eq!(BatchKey::of(&a), BatchKey::of(&b));
        b.loras[0].scale = 0.9;
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b));
    }

    #[test]
    fn negative_prompt_matters_only_with_guidance() {
        let mut a = job(64, 1, Priority::Bulk);
        let mut b = a.clone();
        a.negative_prompt = Some("blur".into());
        assert_eq!(BatchKey::of(&a), BatchKey::of(&b));
        (a.guidance, b.guidance) = (2.0, 2.0);
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b));
    }
}
