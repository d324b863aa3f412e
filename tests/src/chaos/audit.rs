//! After a scenario: what the clients were told, what Redis records and what S3 holds, compared
//! job by job, into one row of the table
//! `scenario | accepted | succeeded | failed (with codes) | lost | duplicated | time to drain`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use fleet_core::{JobState, JobStatus};
use fleet_status::StatusStore;
use fleet_storage::ImageStore;
use uuid::Uuid;

use super::submit::Submissions;

/// One scenario's result.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    pub accepted: usize,
    pub succeeded: usize,
    /// Failed jobs by error code.
    pub failed: BTreeMap<String, usize>,
    /// Refused at submission (4xx) by code; these were never accepted.
    pub refused: BTreeMap<String, usize>,
    pub lost: usize,
    pub duplicated: usize,
    /// From the end of the last fault until every accepted job was final.
    pub drain: Duration,
    /// Why each lost or duplicated job counts as such, and failures without a reason.
    pub problems: Vec<String>,
    /// Deliveries beyond the first, summed over jobs (work the faults caused to be redone).
    pub extra_attempts: u64,
}

impl Row {
    pub fn header() -> String {
        "| scenario | accepted | succeeded | failed (with codes) | lost | duplicated | time to drain |\n\
         |---|---:|---:|---|---:|---:|---:|"
            .to_owned()
    }

    fn failed_text(&self) -> String {
        let total: usize = self.failed.values().sum();
        if total == 0 {
            return "0".to_owned();
        }
        let codes: Vec<String> = self.failed.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        format!("{total} ({})", codes.join(", "))
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {} | {} | {:.1} s |",
            self.scenario,
            self.accepted,
            self.succeeded,
            self.failed_text(),
            self.lost,
            self.duplicated,
            self.drain.as_secs_f64()
        )
    }
}

/// Waits until every accepted job's record is final (read from Redis directly), or `limit`
/// passes. Returns when that happened; records that cannot be read yet count as not final.
pub async fn wait_final(status: &StatusStore, ids: &[Uuid], limit: Duration) -> Instant {
    let started = Instant::now();
    let mut open: Vec<Uuid> = ids.to_vec();
    while !open.is_empty() && started.elapsed() < limit {
        let reads = futures::future::join_all(open.iter().map(|id| status.get(*id))).await;
        open = open
            .into_iter()
            .zip(reads)
            .filter(|(_, r)| !matches!(r, Ok(Some(s)) if s.state.is_terminal()))
            .map(|(id, _)| id)
            .collect();
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Instant::now()
}

/// Every job record of the run's tenant, read page by page.
async fn all_records(status: &StatusStore) -> Vec<JobStatus> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = status.list("e2e", None, cursor.as_deref(), 500).await.expect("list job records");
        out.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// S3 objects under `prefix`, by the job id in their key
/// (`<prefix>/<tenant>/<id>/<execution>/<n>.<ext>`: the one segment that is a UUID).
async fn objects_by_job(store: &ImageStore, prefix: &str) -> BTreeMap<Uuid, BTreeSet<String>> {
    let keys = store.list(&format!("{prefix}/")).await.expect("list S3 objects");
    let mut by_job: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
    for key in keys {
        let id = key.split('/').find_map(|s| Uuid::try_parse(s).ok()).unwrap_or_default();
        by_job.entry(id).or_default().insert(key);
    }
    by_job
}

/// Compares the clients' view, Redis and S3. Objects are deleted afterwards when `clean` is set.
pub async fn audit(
    scenario: &str,
    submissions: &Submissions,
    status: &StatusStore,
    s3: &fleet_core::config::S3Config,
    drain: Duration,
    clean: bool,
) -> Row {
    let mut row = Row { scenario: scenario.to_owned(), drain, ..Row::default() };
    for code in submissions.refused.values() {
        *row.refused.entry(code.clone()).or_default() += 1;
    }
    let records = all_records(status).await;
    let store = ImageStore::from_config(s3).await.expect("S3 store");
    let objects = objects_by_job(&store, &s3.prefix).await;
    let by_id: BTreeMap<Uuid, &JobStatus> = records.iter().map(|r| (r.id, r)).collect();
    // Job number → every record that carries it (one, unless a job was created twice).
    let mut by_number: BTreeMap<u64, Vec<&JobStatus>> = BTreeMap::new();
    for r in &records {
        if let Some(n) = r.metadata.get("chaos").and_then(serde_json::Value::as_u64) {
            by_number.entry(n).or_default().push(r);
        }
    }
    let mut explained: BTreeSet<Uuid> = BTreeSet::new();
    row.accepted = submissions.accepted.len();
    for (&n, ids) in &submissions.accepted {
        let distinct: BTreeSet<Uuid> = ids.iter().copied().collect();
        let ran: BTreeSet<Uuid> = by_number
            .get(&(n as u64))
            .into_iter()
            .flatten()
            .filter(|r| r.state == JobState::Succeeded || objects.contains_key(&r.id))
            .map(|r| r.id)
            .chain(distinct.iter().copied().filter(|id| objects.contains_key(id)))
            .collect();
        explained.extend(by_number.get(&(n as u64)).into_iter().flatten().map(|r| r.id));
        explained.extend(distinct.iter().copied());
        if distinct.len() > 1 || ran.len() > 1 {
            row.duplicated += 1;
            row.problems.push(format!("job {n}: accepted as {distinct:?}, ran as {ran:?}"));
        }
        let Some(id) = ids.first() else { continue };
        let Some(record) = by_id.get(id) else {
            row.lost += 1;
            row.problems.push(format!("job {n} ({id}): accepted but no record in Redis"));
            continue;
        };
        row.extra_attempts += u64::from(record.attempts.saturating_sub(1));
        if let Some(problem) = wrong_bytes(&store, record).await {
            row.lost += 1;
            row.problems.push(format!("job {n} ({id}): {problem}"));
            continue;
        }
        check_record(&mut row, n, record, objects.get(id));
    }
    // Objects of jobs nobody accepted: work done for a job the client never heard of.
    for id in objects.keys().filter(|id| !explained.contains(id)) {
        row.duplicated += 1;
        row.problems.push(format!("objects of unknown job {id}: {:?}", objects[id]));
    }
    if clean {
        for key in objects.values().flatten() {
            let _ = store.delete(key).await;
        }
    }
    row
}

/// For a succeeded job: whether some stored object differs from what its record says (size or
/// SHA-256), as it would if a late writer had overwritten it with other pixels.
async fn wrong_bytes(store: &ImageStore, record: &JobStatus) -> Option<String> {
    if record.state != JobState::Succeeded {
        return None;
    }
    for r in &record.result {
        match store.get(&r.key).await {
            Ok(Some(object)) => {
                let sha = fleet_storage::sha256_hex(&object.body);
                if sha != r.sha256 || object.body.len() as u64 != r.bytes {
                    return Some(format!(
                        "{} holds {} bytes with SHA-256 {sha}, the record says {r:?}",
                        r.key,
                        object.body.len()
                    ));
                }
            }
            Ok(None) => return None, // reported as a missing object by check_record
            Err(e) => return Some(format!("{} unreadable: {e}", r.key)),
        }
    }
    None
}

/// One accepted job: final, with exactly its result objects in S3, or failed with a reason.
fn check_record(row: &mut Row, n: usize, record: &JobStatus, objects: Option<&BTreeSet<String>>) {
    let id = record.id;
    let stored = objects.cloned().unwrap_or_default();
    match record.state {
        JobState::Succeeded => {
            let expected: BTreeSet<String> = record.result.iter().map(|r| r.key.clone()).collect();
            if expected.len() as u32 != record.progress.images_total || stored != expected {
                row.lost += 1;
                row.problems.push(format!("job {n} ({id}): succeeded with {expected:?} but S3 holds {stored:?}"));
            } else {
                row.succeeded += 1;
            }
        }
        JobState::Failed => {
            let (code, message) = record
                .error
                .as_ref()
                .map(|e| (e.code.name().to_owned(), e.message.clone()))
                .unwrap_or_else(|| ("none".to_owned(), String::new()));
            if message.trim().is_empty() {
                row.problems.push(format!("job {n} ({id}): failed without a reason ({code})"));
            }
            *row.failed.entry(code).or_default() += 1;
        }
        state => {
            row.lost += 1;
            row.problems.push(format!("job {n} ({id}): {state} after the drain limit, attempts {}", record.attempts));
        }
    }
}

/// Messages in the fleet's dead-letter queue: a job's record may say `succeeded` while a second
/// copy of its message was dead-lettered, which the records alone would not show.
pub async fn dead_letter_depth(config: &fleet_core::FleetConfig) -> u32 {
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    let queue = topology.dead_letter_queue.clone();
    let broker = fleet_queue::Broker::connect(&config.rabbitmq.url, topology).await.expect("the broker");
    let depth = broker.depth(&queue).await.expect("the dead-letter queue's depth").messages;
    broker.close().await;
    depth
}
