//! Batching policy, as a pure function over the jobs waiting in the worker.
//!
//! Jobs are compatible when they run on the same weights and the same schedule: model, LoRA set
//! (names, scales and fusing order), ControlNet model, size, steps, mode (text-to-image,
//! image-to-image or inpainting) and the steps the strength keeps. Prompts, negative prompts,
//! seeds, image counts, guidance, strengths and control, init and mask images may differ: the engine gives every job of a
//! shared forward pass the pixels it gets alone. A batch starts with the job that should run
//! next (interactive before bulk, then the tenant furthest behind its share, then oldest: see
//! [`crate::fair_share`]) and takes compatible jobs in the same order while its budget (images
//! and images × pixels × steps) allows. A job that fits no batch now simply waits
//! for the next one; it never blocks the others.
//!
//! Waiting for company is adaptive: a batch that is not full waits only while more deliveries are
//! arriving (each within a few milliseconds of the last: a prefetched burst), and never past
//! `deadline`; a lone job on an idle worker starts as soon as no other delivery follows it.

use std::time::{Duration, Instant};

use fleet_core::JobSpec;

use crate::fair_share::FairShare;

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most images in one forward pass.
    pub max_images: u32,
    /// Most images × pixels × steps in one batch (a proxy for device time and memory).
    pub max_pixel_steps: u64,
    /// The longest the first job of a batch waits for company while deliveries keep arriving.
    pub deadline: Duration,
}

/// What makes two jobs runnable in the same forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchKey {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Identities (library names, digests of LoRAs given by URL) in job order, scales as bits:
    /// the fused weights must be identical (fusing order changes their rounding, so `[a, b]` and
    /// `[b, a]` are different pipelines).
    loras: Vec<(String, u32)>,
    controlnet: Option<String>,
    /// With an init image: whether it inpaints (has a mask), and the steps its strength keeps.
    init: Option<(bool, u32)>,
}

impl BatchKey {
    pub fn of(spec: &JobSpec) -> BatchKey {
        BatchKey {
            model: spec.model.clone(),
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            loras: spec.loras.iter().map(|l| (l.identity(), l.scale.to_bits())).collect(),
            controlnet: spec.controlnet.as_ref().map(|c| c.model.clone()),
            init: spec
                .effective_strength()
                .map(|s| (spec.mask_image.is_some(), fleet_core::job::kept_steps(spec.steps, s))),
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
/// A batch runs when it is full (no further compatible job fits), when no more deliveries are
/// `arriving` (so waiting would buy it no company), or when its first job has waited `deadline`.
/// A single job larger than the budget still runs alone — the budget shapes batches, it does not
/// refuse jobs. The caller charges the batch it runs to `share` ([`FairShare::charge`]).
pub fn next_batch<W: Waiting>(
    waiting: &[W],
    policy: &BatchPolicy,
    share: &FairShare,
    now: Instant,
    arriving: bool,
) -> Option<Vec<usize>> {
    let order = share.order(waiting);
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
    (!arriving || full || expired).then_some(chosen)
}

/// When the job that would lead the next batch reaches its deadline (`None`: nothing waits).
/// The consume loop sleeps until then rather than polling, so a lone job starts on time.
pub fn leader_deadline<W: Waiting>(waiting: &[W], policy: &BatchPolicy, share: &FairShare) -> Option<Instant> {
    let &leader = share.order(waiting).first()?;
    Some(waiting[leader].arrived() + policy.deadline)
}

/// A waiting job for the policy's tests (batching and fair share).
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Instant;

    use fleet_core::JobSpec;

    pub(crate) struct W(pub JobSpec, pub Instant);

    impl super::Waiting for W {
        fn spec(&self) -> &JobSpec {
            &self.0
        }
        fn arrived(&self) -> Instant {
            self.1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::{LoraRef, Priority};

    fn next_batch<W: Waiting>(w: &[W], policy: &BatchPolicy, now: Instant, arriving: bool) -> Option<Vec<usize>> {
        super::next_batch(w, policy, &FairShare::default(), now, arriving)
    }

    fn leader_deadline<W: Waiting>(w: &[W], policy: &BatchPolicy) -> Option<Instant> {
        super::leader_deadline(w, policy, &FairShare::default())
    }

    use crate::batching::test_support::W;

    fn job(width: u32, n: u32, priority: Priority) -> JobSpec {
        let mut s = JobSpec::new("x");
        s.model = "tiny".into();
        (s.width, s.height, s.num_images, s.priority) = (width, 64, n, priority);
        s
    }

    const POLICY: BatchPolicy =
        BatchPolicy { max_images: 4, max_pixel_steps: u64::MAX, deadline: Duration::from_millis(50) };

    #[test]
    fn waits_for_company_only_while_deliveries_arrive_and_never_past_the_deadline() {
        let t0 = Instant::now();
        let w = [W(job(64, 1, Priority::Bulk), t0)];
        assert_eq!(next_batch(&w, &POLICY, t0, false), Some(vec![0]), "a lone job on an idle worker starts at once");
        assert_eq!(next_batch(&w, &POLICY, t0, true), None, "more deliveries are arriving: wait for them");
        assert_eq!(next_batch(&w, &POLICY, t0 + Duration::from_millis(60), true), Some(vec![0]));
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
        let batch = next_batch(&w, &POLICY, t0 + Duration::from_secs(1), true).unwrap();
        assert_eq!(batch, vec![1, 3], "the 128-wide interactive job leads and takes the compatible bulk job");
    }

    #[test]
    fn init_images_batch_only_with_the_same_mode_and_kept_steps() {
        let plain = job(64, 1, Priority::Interactive);
        let img2img = |strength: Option<f32>, mask: bool| {
            let mut s = plain.clone();
            s.init_image = Some("s3://inputs/a.png".into());
            s.strength = strength;
            s.mask_image = mask.then(|| "s3://inputs/m.png".into());
            s
        };
        let key = |s: &JobSpec| BatchKey::of(s);
        // 4 steps: the default 0.6 and 0.7 both keep 2 steps; 0.75 keeps 3.
        assert_eq!(key(&img2img(None, false)), key(&img2img(Some(0.7), false)));
        assert_ne!(key(&img2img(None, false)), key(&img2img(Some(0.75), false)));
        assert_ne!(key(&img2img(None, false)), key(&img2img(None, true)), "inpainting is another mode");
        assert_ne!(key(&img2img(None, false)), key(&plain), "text-to-image is another mode");
        // Different images with the same settings share a pass.
        let mut other = img2img(None, false);
        other.init_image = Some("s3://inputs/b.png".into());
        assert_eq!(key(&other), key(&img2img(None, false)));
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
        assert_eq!(next_batch(&w, &POLICY, t0, true), Some(vec![0, 1]), "full: runs even while more arrive");
    }

    #[test]
    fn pixel_step_budget_bounds_a_batch_but_never_refuses_a_big_job() {
        let t0 = Instant::now();
        let policy = BatchPolicy { max_pixel_steps: pixel_steps(&job(64, 1, Priority::Bulk)) * 2, ..POLICY };
        let w = [W(job(64, 3, Priority::Bulk), t0), W(job(64, 1, Priority::Bulk), t0)];
        assert_eq!(next_batch(&w, &policy, t0, true), Some(vec![0]));
    }

    #[test]
    fn lora_sets_must_match_in_scale_and_fusing_order() {
        let mut a = job(64, 1, Priority::Bulk);
        a.loras = vec![LoraRef::library("x", 0.5), LoraRef::library("y", 1.0)];
        let mut b = a.clone();
        assert_eq!(BatchKey::of(&a), BatchKey::of(&b));
        b.loras.reverse();
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b), "fused in another order: other weights");
        b.loras.reverse();
        b.loras[0].scale = 0.9;
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b));
    }

    #[test]
    fn url_loras_batch_by_digest() {
        let (d1, d2) = ("1".repeat(64), "2".repeat(64));
        let mut a = job(64, 1, Priority::Bulk);
        a.loras = vec![LoraRef::from_url("https://a.example.com/style.safetensors", &d1, 1.0)];
        let mut b = a.clone();
        b.loras[0].url = Some("s3://mirror/style.safetensors".into());
        assert_eq!(BatchKey::of(&a), BatchKey::of(&b), "the same file from another place: the same weights");
        b.loras[0].sha256 = Some(d2);
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b), "another digest: other weights");
        let mut c = a.clone();
        c.loras = vec![LoraRef::library("style", 1.0)];
        assert_ne!(BatchKey::of(&a), BatchKey::of(&c), "a library LoRA is not a fetched one");
    }

    #[test]
    fn prompts_seeds_guidance_and_negative_prompts_share_a_pass() {
        let a = job(64, 1, Priority::Bulk);
        let mut b = a.clone();
        (b.prompt, b.seed, b.guidance, b.negative_prompt) = ("other".into(), Some(9), 5.0, Some("blur".into()));
        b.num_images = 3;
        assert_eq!(BatchKey::of(&a), BatchKey::of(&b));
        b.steps = 8;
        assert_ne!(BatchKey::of(&a), BatchKey::of(&b));
    }
}
