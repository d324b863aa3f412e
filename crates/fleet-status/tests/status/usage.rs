//! Usage counted when jobs finish, and admission within tenant quotas.

use chrono::{Duration as TimeDelta, Utc};
use fleet_core::usage::pixel_steps;
use fleet_core::{ErrorCode, ImageFormat, ImageResult, JobError, JobStatus, OutputSpec, RequestRecord};
use fleet_status::{Admission, CreateOutcome, Quota, StatusError};

use super::{Fixture, queued};

/// A queued job of `tenant` asking for `num_images` 64×64 images in 4 steps.
fn asking(tenant: &str, num_images: u32) -> JobStatus {
    let mut status = queued(tenant);
    status.request = Some(RequestRecord {
        prompt: "a lighthouse".into(),
        negative_prompt: None,
        width: 64,
        height: 64,
        steps: 4,
        guidance: 0.0,
        seed: 7,
        num_images,
        loras: Vec::new(),
        controlnet: None,
        init_image: None,
        strength: None,
        mask_image: None,
        output: OutputSpec::default(),
        webhook: None,
    });
    status
}

fn image(index: u32) -> ImageResult {
    ImageResult {
        index,
        key: format!("images/t/j/{index}.png"),
        seed: 7 + u64::from(index),
        width: 64,
        height: 64,
        format: ImageFormat::Png,
        sha256: "0".repeat(64),
        bytes: 100,
        url: None,
        url_expires_at: None,
    }
}

#[tokio::test]
async fn a_finished_job_counts_once_in_its_hour_by_tenant_and_model() {
    let mut fx = Fixture::new().await;
    let (alice, bob) = (asking("alice", 2), asking("bob", 1));
    for job in [&alice, &bob] {
        assert_eq!(fx.store.create(job, None).await.unwrap(), CreateOutcome::Created);
    }
    let started = Utc::now() - TimeDelta::milliseconds(1500);
    fx.store.update(alice.id, |s| s.start("w1", started)).await.unwrap();
    // Unfinished jobs count nothing yet.
    let now = Utc::now();
    assert!(fx.store.usage(now - TimeDelta::hours(1), now + TimeDelta::hours(1), None).await.unwrap().is_empty());
    let finished = Utc::now();
    fx.store.update(alice.id, |s| s.succeed(vec![image(0), image(1)], finished)).await.unwrap();
    fx.store.update(bob.id, |s| s.fail(JobError::new(ErrorCode::InvalidSpec, "refused"), finished)).await.unwrap();
    // A second finish is refused by the state machine and counts nothing.
    assert!(fx.store.update(alice.id, |s| s.succeed(vec![image(0)], Utc::now())).await.is_err());

    let entries = fx.store.usage(finished - TimeDelta::hours(1), finished + TimeDelta::hours(1), None).await.unwrap();
    let by_tenant: Vec<(&str, &str, u64, u64, u64)> = entries
        .iter()
        .map(|e| (e.tenant.as_str(), e.model.as_str(), e.counts.jobs, e.counts.images, e.counts.pixel_steps))
        .collect();
    assert_eq!(by_tenant, [("alice", "tiny", 1, 2, pixel_steps(64, 64, 4, 2)), ("bob", "tiny", 1, 0, 0)]);
    let alice_entry = &entries[0];
    assert_eq!(alice_entry.hour, fleet_core::usage::hour_start(finished));
    assert!((1500..1600).contains(&alice_entry.counts.worker_ms), "{:?}", alice_entry.counts);
    assert_eq!(entries[1].counts.worker_ms, 0, "a job that never started has no worker time");

    let only_bob = fx.store.usage(finished - TimeDelta::hours(1), finished, Some("bob")).await.unwrap();
    assert_eq!(only_bob.iter().map(|e| e.tenant.as_str()).collect::<Vec<_>>(), ["bob"]);
    let totals = fx.store.usage_totals().await.unwrap();
    assert_eq!(totals[&("alice".to_owned(), "tiny".to_owned())], alice_entry.counts);
    assert_eq!(totals.len(), 2);

    let ttl = fx.ttl(&format!("usage:{}", fleet_core::usage::hour_name(finished))).await;
    assert!((90 * 24 * 3600 - 5..=90 * 24 * 3600).contains(&ttl), "usage ttl {ttl}");
    let too_long = fx.store.usage(finished - TimeDelta::days(500), finished, None).await.unwrap_err();
    assert!(matches!(too_long, StatusError::InvalidRange(_)), "{too_long}");
    fx.cleanup().await;
}

#[tokio::test]
async fn queued_jobs_quota_refuses_new_jobs_but_not_retries() {
    let fx = Fixture::new().await;
    let admission = Admission { max_in_flight: 100, max_queued: Some(2), daily_pixel_steps: None };
    let first = asking("alice", 1);
    assert_eq!(fx.store.create_within(&first, Some("k1"), None, &admission).await.unwrap(), CreateOutcome::Created);
    let second = asking("alice", 1);
    assert_eq!(fx.store.create_within(&second, None, None, &admission).await.unwrap(), CreateOutcome::Created);
    let third = asking("alice", 1);
    assert_eq!(
        fx.store.create_within(&third, None, None, &admission).await.unwrap(),
        CreateOutcome::QuotaExceeded { quota: Quota::MaxQueuedJobs, used: 2 }
    );
    assert_eq!(fx.store.get(third.id).await.unwrap(), None, "nothing written");
    let retry = fx.store.create_within(&asking("alice", 1), Some("k1"), None, &admission).await.unwrap();
    assert_eq!(retry, CreateOutcome::Existing(first.clone()));
    assert_eq!(
        fx.store.create_within(&asking("bob", 1), None, None, &admission).await.unwrap(),
        CreateOutcome::Created
    );
    // A started job is no longer queued: room for one more.
    fx.store.update(first.id, |s| s.start("w1", Utc::now())).await.unwrap();
    assert_eq!(fx.store.create_within(&third, None, None, &admission).await.unwrap(), CreateOutcome::Created);
    fx.cleanup().await;
}

#[tokio::test]
async fn the_daily_budget_admits_exactly_what_fits_even_under_concurrency() {
    let mut fx = Fixture::new().await;
    let cost = pixel_steps(64, 64, 4, 2);
    // Room for exactly five jobs of two images.
    let admission = Admission { max_in_flight: 1000, max_queued: None, daily_pixel_steps: Some(5 * cost + cost / 2) };
    let jobs: Vec<JobStatus> = (0..20).map(|_| asking("alice", 2)).collect();
    let outcomes =
        futures::future::join_all(jobs.iter().map(|job| fx.store.create_within(job, None, None, &admission))).await;
    let created = outcomes.iter().filter(|o| matches!(o, Ok(CreateOutcome::Created))).count();
    assert_eq!(created, 5, "{outcomes:?}");
    for outcome in &outcomes {
        match outcome {
            Ok(CreateOutcome::Created) => {}
            Ok(CreateOutcome::QuotaExceeded { quota: Quota::DailyMegapixelSteps, used }) => assert_eq!(*used, 5 * cost),
            other => panic!("unexpected {other:?}"),
        }
    }
    let day = fleet_core::usage::day_name(jobs[0].created_at);
    let charged: u64 =
        redis::cmd("GET").arg(fx.key(&format!("tenant:alice:charged:{day}"))).query_async(&mut fx.raw).await.unwrap();
    assert_eq!(charged, 5 * cost);

    // A discarded job (its publish failed) gives its charge back, so another fits.
    let admitted: Vec<&JobStatus> =
        jobs.iter().zip(&outcomes).filter(|(_, o)| matches!(o, Ok(CreateOutcome::Created))).map(|(j, _)| j).collect();
    assert!(fx.store.discard(admitted[0], None).await.unwrap());
    let late = asking("alice", 2);
    assert_eq!(fx.store.create_within(&late, None, None, &admission).await.unwrap(), CreateOutcome::Created);
    // Another tenant has its own budget.
    assert_eq!(
        fx.store.create_within(&asking("bob", 2), None, None, &admission).await.unwrap(),
        CreateOutcome::Created
    );
    fx.cleanup().await;
}
