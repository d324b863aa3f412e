//! The consume loop: deliveries in, batches out, graceful drain on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::backoff::{self, BackoffBuilder as _};
use fleet_core::{ErrorCode, FleetConfig, JobError, JobStatus, Priority};
use fleet_queue::{Broker, QueueError, Topology};
use fleet_status::{BatchInfo, CreateOutcome, StatusError, StatusStore};
use fleet_storage::ImageStore;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::consumers::{Consumers, ConsumingWorker, LANE_POLL};
use crate::engine_thread::EngineThread;
use crate::finishing::Finishing;
use crate::heartbeat::Liveness;
use crate::intake::{Pending, Refused, receive};
use crate::lora_fetch::LoraFetcher;
use crate::noop::{EngineMode, NOOP_DEVICE};
use crate::republish::Original;
use crate::runner::{RunContext, Stats, run_batch};
use fleet_render::batching::{BatchPolicy, leader_deadline, next_batch};
use fleet_render::fair_share::FairShare;
use fleet_render::{ModelError, Models};

/// How often the loop looks for a batch to run while deliveries are quiet.
const TICK: Duration = Duration::from_millis(10);
/// First and longest wait before consuming again after the broker connection was lost.
/// Deliveries closer together than this are one arrival (a prefetched burst): a batch that is not
/// full waits for the next one. A lone job waits no longer than this for company.
const ARRIVAL_GAP: Duration = Duration::from_millis(3);
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// A consumer that lasted this long was healthy: the next loss starts the backoff afresh.
const RECONNECT_RESET: Duration = Duration::from_secs(30);
/// Longest a stopping worker waits for the broker to confirm its consumers' cancels.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Storage(#[from] fleet_storage::StartupCheckError),
    #[error("RabbitMQ consumer failed: {0}")]
    Consume(lapin::Error),
    #[error("model loading thread failed: {0}")]
    Join(String),
    #[error("cannot start the engine thread: {0}")]
    EngineThread(std::io::Error),
    #[error("LoRA fetching (worker.lora_fetch): {0}")]
    LoraFetch(#[from] crate::lora_fetch::FetchError),
    #[error("cannot serve worker metrics on {addr} (worker.metrics_listen; empty turns it off): {source}")]
    MetricsBind { addr: String, source: std::io::Error },
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Models to serve (names from `[models]`).
    pub models: Vec<String>,
    /// Worker id in heartbeats and status records (default: host name + random suffix).
    pub id: Option<String>,
}

/// A running worker's parts.
pub struct Worker {
    ctx: Arc<RunContext>,
    broker: Arc<Broker>,
    liveness: Arc<Liveness>,
    policy: BatchPolicy,
    metrics: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.ctx.worker_id).finish_non_exhaustive()
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Worker {
    /// Connects to Redis, S3 (checking the bucket and credentials: [`ImageStore::connect`]) and
    /// RabbitMQ, declares the topology, then loads the models (once).
    pub async fn start(config: FleetConfig, options: WorkerOptions) -> Result<Worker, WorkerError> {
        Self::start_with(config, options, EngineMode::Models).await
    }

    /// A worker whose engine is the no-op of [`crate::noop`]: every job gets fixed grey images
    /// without any model running. For the overhead benchmark only; nothing in the configuration
    /// or the `fleet` command can reach this.
    pub async fn start_noop_engine(config: FleetConfig, options: WorkerOptions) -> Result<Worker, WorkerError> {
        tracing::warn!("worker engine is the no-op: jobs get fixed grey images (benchmark only)");
        Self::start_with(config, options, EngineMode::Noop).await
    }

    async fn start_with(
        config: FleetConfig,
        options: WorkerOptions,
        engine: EngineMode,
    ) -> Result<Worker, WorkerError> {
        let config = Arc::new(config);
        // The services first: a missing or misconfigured one fails the start in seconds, not
        // after the models have loaded.
        let status = Arc::new(StatusStore::connect(&config.redis).await?);
        status.check_durability(config.redis.allow_volatile).await?;
        let store = Arc::new(ImageStore::connect(&config.s3).await?);
        let topology = Topology::new(&config.rabbitmq, config.models.keys().map(String::as_str));
        let broker = Arc::new(Broker::connect_any(config.rabbitmq.broker_urls(), topology).await?);
        let metrics = crate::metrics::bind(&config.worker.metrics_listen).await?;
        let lora_fetcher = Arc::new(LoraFetcher::new(&config.worker.lora_fetch, &config.s3).await?);
        let names = options.models.clone();
        let load_cfg = config.clone();
        let load_started = Instant::now();
        let models = tokio::task::spawn_blocking(move || Models::load(&load_cfg, &names))
            .await
            .map_err(|e| WorkerError::Join(e.to_string()))??;
        let load_micros = u64::try_from(load_started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let host = host_name();
        let id = options.id.unwrap_or_else(|| format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let stats = Arc::new(Stats::default());
        stats.model_load_micros.store(load_micros, std::sync::atomic::Ordering::Relaxed);
        let liveness = Arc::new(Liveness {
            id: id.clone(),
            host,
            models: models.names(),
            device: if engine == EngineMode::Noop { NOOP_DEVICE.to_owned() } else { models.device_name.clone() },
            started_at: Utc::now(),
            stats: stats.clone(),
            current_batch: std::sync::Mutex::new(None),
        });
        let policy = BatchPolicy {
            max_images: config.worker.max_batch_images,
            max_pixel_steps: config.worker.max_batch_pixel_steps,
            deadline: Duration::from_millis(config.worker.batch_deadline_ms),
        };
        let ctx = Arc::new(RunContext {
            worker_id: id,
            config,
            status,
            store,
            models: Arc::new(models),
            stats,
            engine,
            finishing: Finishing::default(),
            engine_thread: Arc::new(EngineThread::spawn().map_err(WorkerError::EngineThread)?),
            lora_fetcher,
        });
        Ok(Worker { ctx, broker, liveness, policy, metrics })
    }

    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Consumes until `shutdown` is cancelled, then finishes the running batch, hands every
    /// waiting job back to the queue and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let beat_stop = CancellationToken::new();
        let metrics = self
            .metrics
            .take()
            .map(|listener| tokio::spawn(crate::metrics::serve(listener, self.liveness.clone(), beat_stop.clone())));
        let beat = tokio::spawn(crate::heartbeat::run(
            self.ctx.status.clone(),
            self.liveness.clone(),
            Duration::from_secs(self.ctx.config.worker.heartbeat_interval_secs),
            beat_stop.clone(),
        ));
        let result = self.consume_until_shutdown(&shutdown).await;
        beat_stop.cancel();
        let _ = beat.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        // Closed here, while the runtime still runs: a connection left to the runtime's shutdown
        // makes lapin's I/O loop log an error on the way out.
        self.broker.close().await;
        result
    }

    /// Consumes until `shutdown`, consuming afresh whenever the broker connection is lost (a broker
    /// restart, a network cut, this process stalled past the AMQP heartbeat). The broker redelivers
    /// whatever the lost connection held, so nothing is lost; a worker that exited instead would
    /// leave its models unserved until someone restarted it.
    async fn consume_until_shutdown(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let policy = backoff::policy(RECONNECT_MIN, RECONNECT_MAX, None);
        let mut delays = policy.build();
        loop {
            let started = Instant::now();
            let error = match self.consume(shutdown.clone()).await {
                Ok(()) => return Ok(()),
                Err(e @ (WorkerError::Consume(_) | WorkerError::Queue(_))) => e,
                Err(e) => return Err(e),
            };
            if started.elapsed() > RECONNECT_RESET {
                delays = policy.build();
            }
            let delay = delays.next().unwrap_or(RECONNECT_MAX);
            tracing::warn!(error = %error, retry_in = ?delay, "lost the RabbitMQ consumer; consuming again");
            self.broker.reset().await;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn consume(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let channel = self.broker.channel().await?;
        let topology = self.broker.topology();
        let me = ConsumingWorker { id: &self.ctx.worker_id, models: self.ctx.models.names(), config: &self.ctx.config };
        let mut consumers = Consumers::start(channel.clone(), &me, topology, &self.ctx.status).await?;
        let mut lane_poll = tokio::time::interval(LANE_POLL);
        lane_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut share = FairShare::new(self.ctx.config.tenants.clone());
        let mut waiting: Vec<Pending> = Vec::new();
        // When the last delivery came: while deliveries keep coming (each within ARRIVAL_GAP of
        // the one before), a batch that is not full waits for them, up to the deadline; once the
        // gap passes with none, it runs.
        let mut last_delivery: Option<Instant> = None;
        // A deadline shorter than the gap (0: never wait) bounds it too.
        let gap = ARRIVAL_GAP.min(self.policy.deadline);
        tracing::info!(worker = %self.ctx.worker_id, models = ?self.ctx.models.names(), "worker consuming");
        loop {
            let wake = match last_delivery {
                Some(at) if at.elapsed() < gap => {
                    tokio::time::Instant::from_std(at + gap).min(self.next_wake(&waiting, &share))
                }
                _ => self.next_wake(&waiting, &share),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                delivery = consumers.deliveries.next() => match delivery {
                    Some(Ok(delivery)) => {
                        last_delivery = Some(Instant::now());
                        self.accept(delivery, &channel, &mut waiting).await;
                    }
                    Some(Err(e)) => {
                        warn_if_ack_timeout(&e);
                        // The channel is gone: what it held goes back by the broker's count.
                        hand_back(&mut waiting, None).await;
                        self.wait_for_finishing().await;
                        return Err(WorkerError::Consume(e));
                    }
                    None => {
                        hand_back(&mut waiting, None).await;
                        self.wait_for_finishing().await;
                        return Err(WorkerError::Consume(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed)));
                    }
                },
                _ = lane_poll.tick() => {
                    if let Err(e) = consumers.follow_new_lanes(topology, &self.ctx.status).await {
                        hand_back(&mut waiting, None).await;
                        self.wait_for_finishing().await;
                        return Err(e);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let arriving = last_delivery.is_some_and(|at| at.elapsed() < gap);
            if let Some(indices) = next_batch(&waiting, &self.policy, &share, Instant::now(), arriving) {
                share.charge(&waiting, &indices);
                let batch = take(&mut waiting, indices);
                self.ctx.stats.waiting.store(waiting.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.run_one(batch, &shutdown).await;
            }
            self.ctx.stats.waiting.store(waiting.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // Nothing more may arrive; what the broker already sent (prefetched, not yet read) is
        // handed back with the rest instead of going back by the broker's count when the channel closes.
        let prefetched = self.stop_consuming(&channel, &consumers.tags, &mut consumers.deliveries).await;
        for delivery in prefetched {
            self.accept(delivery, &channel, &mut waiting).await;
        }
        tracing::info!(worker = %self.ctx.worker_id, waiting = waiting.len(), "shutting down: handing waiting jobs back");
        note_second_copies(&self.ctx.status, &waiting).await;
        hand_back(&mut waiting, Some(&channel)).await;
        self.wait_for_finishing().await;
        let _ = channel.close(200, "worker shutting down").await;
        Ok(())
    }

    /// Lets the jobs still storing their images settle on this channel (within the drain time);
    /// what does not is redelivered when the channel closes, and stored again idempotently.
    async fn wait_for_finishing(&self) {
        let drain = Duration::from_secs(self.ctx.config.worker.drain_timeout_secs);
        if !self.ctx.finishing.wait(drain).await {
            tracing::warn!("drain deadline passed while jobs were storing their images; they are redelivered");
        }
    }

    /// When the loop must look again without a delivery: when the next batch's leader reaches
    /// its deadline (not up to a tick later), at most one tick from now.
    fn next_wake(&self, waiting: &[Pending], share: &FairShare) -> tokio::time::Instant {
        let tick = Instant::now() + TICK;
        let deadline = leader_deadline(waiting, &self.policy, share).unwrap_or(tick);
        tokio::time::Instant::from_std(deadline.min(tick))
    }

    /// Runs a batch; on shutdown it gets `worker.drain_timeout_secs` to finish, then its unsettled
    /// messages go back to the queue when the channel closes.
    async fn run_one(&self, batch: Vec<Pending>, shutdown: &CancellationToken) {
        let info = BatchInfo {
            job_ids: batch.iter().map(Pending::id).collect(),
            images: batch.iter().map(|p| p.job.spec().num_images).sum(),
            started_at: Utc::now(),
        };
        let started = Instant::now();
        self.liveness.set_batch(Some(info.clone()));
        let _micros = BatchTimer { stats: &self.ctx.stats, started };
        let ctx = self.ctx.clone();
        let drain = Duration::from_secs(self.ctx.config.worker.drain_timeout_secs);
        let work = run_batch(&ctx, batch);
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => {}
            _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(jobs = ?info.job_ids, "drain deadline passed; abandoning the batch (its messages are redelivered)");
            }
        }
        self.liveness.set_batch(None);
        tracing::debug!(
            jobs = info.job_ids.len(),
            images = info.images,
            seconds = started.elapsed().as_secs_f64(),
            "batch done"
        );
    }

    /// A delivery in: a job waiting for a batch, or a refused message dead-lettered.
    async fn accept(&self, delivery: lapin::message::Delivery, channel: &lapin::Channel, waiting: &mut Vec<Pending>) {
        let original = Original::of(&delivery);
        match receive(delivery, &self.ctx.config) {
            Ok(mut pending) => {
                pending.original = Some(original);
                if self.returned_unstarted(&pending).await {
                    tracing::info!(
                        job = %pending.id(),
                        deliveries = pending.delivery_count,
                        "returned by the broker without a start to explain it (a lost connection, a crash while it waited): handed back afresh"
                    );
                    note_second_copies(&self.ctx.status, std::slice::from_ref(&pending)).await;
                    match pending.try_hand_back(channel).await {
                        Ok(()) => return,
                        // Returned now it would come straight back (or count): it runs from this copy.
                        Err(e) => {
                            tracing::warn!(job = %pending.id(), error = %e, "cannot hand the copy back afresh; running it as delivered")
                        }
                    }
                }
                keep_once(waiting, pending).await;
            }
            Err(refused) => self.refuse(*refused, channel, &original).await,
        }
    }

    /// Whether the broker's last return of this message was not the job's doing: no start from
    /// this copy preceded it.
    ///
    /// The broker counts every return: a crash mid-job, but also a lost connection (or a crash)
    /// while the job only waited in a worker's prefetch, and a connection lost while the job ran
    /// on a worker that then finished it. Only a return that follows a start from this very copy
    /// (the record's last start noted this copy's hand-backs and a delivery count one lower) is
    /// the job's doing; any other return is not, so the copy is handed back afresh — its count
    /// back to 0, its `handbacks` one up, bounded by [`crate::republish::MAX_HANDBACKS`] — before
    /// returns that were not the job's doing add up to the delivery limit. A job that keeps
    /// crashing its workers is started from every delivery, so it never qualifies; a finished
    /// job's copy is acked unrun by the start instead.
    async fn returned_unstarted(&self, pending: &Pending) -> bool {
        // Past the hand-back bound a copy runs as delivered (a republish would be refused).
        if pending.delivery_count == 0 || pending.handbacks() >= crate::republish::MAX_HANDBACKS {
            return false;
        }
        match self.ctx.status.get(pending.id()).await {
            Ok(record) => record.is_none_or(|r| !r.state.is_terminal() && !started_from(&r, pending)),
            Err(e) => {
                tracing::debug!(job = %pending.id(), error = %e, "cannot read the record to judge the delivery count");
                false
            }
        }
    }

    /// Cancels the consumers and collects what the broker had already sent them (for at most
    /// [`STOP_WAIT`]; anything later goes back when the channel closes).
    async fn stop_consuming(
        &self,
        channel: &lapin::Channel,
        tags: &[String],
        deliveries: &mut (impl futures::Stream<Item = Result<lapin::message::Delivery, lapin::Error>> + Unpin),
    ) -> Vec<lapin::message::Delivery> {
        for tag in tags {
            if let Err(e) = channel.basic_cancel(tag, lapin::options::BasicCancelOptions::default()).await {
                tracing::warn!(%tag, error = %e, "cannot cancel the consumer");
                return Vec::new();
            }
        }
        let mut prefetched = Vec::new();
        // Each consumer's stream ends once the broker confirmed its cancel, after what it held.
        let collect = async {
            while let Some(Ok(delivery)) = deliveries.next().await {
                prefetched.push(delivery);
            }
        };
        let _ = tokio::time::timeout(STOP_WAIT, collect).await;
        prefetched
    }

    /// A message that is not a valid job: record why (when it names a job), then dead-letter it
    /// with the reason in its headers (confirmed, then acked); if that publish fails, it is
    /// rejected to the dead-letter queue by the broker, without the reason.
    async fn refuse(&self, refused: Refused, channel: &lapin::Channel, original: &Original) {
        tracing::warn!(reason = %refused.reason, "refusing message");
        let error = JobError::new(ErrorCode::InvalidSpec, refused.reason.clone());
        if let Some(id) = refused.id {
            self.record_refusal(id, &refused, original, &error).await;
        }
        let topology = self.broker.topology();
        let queue = (original.exchange == topology.exchange)
            .then(|| topology.queue_of_routing_key(&original.routing_key))
            .flatten()
            .map_or_else(|| original.routing_key.clone(), |q| q.name);
        let dlx = &topology.dead_letter_exchange;
        match crate::republish::dead_letter(
            channel,
            dlx,
            original,
            ErrorCode::InvalidSpec.name(),
            &refused.reason,
            &queue,
        )
        .await
        {
            Ok(()) => {
                let _ = refused.acker.ack(lapin::options::BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot dead-letter the message with its reason; rejecting it");
                refused.dead_letter().await;
            }
        }
    }

    /// The record of a refused message that names a job: `failed` / `invalid_spec` with every
    /// validation error, created when the job has none (a message published straight onto the queue).
    async fn record_refusal(&self, id: uuid::Uuid, refused: &Refused, original: &Original, error: &JobError) {
        let tenant = refused.tenant.as_deref().unwrap_or(crate::intake::ANONYMOUS_TENANT);
        let priority = fleet_queue::message::header_str(&original.properties, fleet_queue::message::HEADER_PRIORITY)
            .map_or(Priority::default(), |p| {
                if p == Priority::Bulk.as_str() { Priority::Bulk } else { Priority::Interactive }
            });
        let record =
            JobStatus::refused(id, tenant, refused.model.as_deref().unwrap_or(""), priority, error.clone(), Utc::now());
        let fail = |s: &mut JobStatus| if s.state.is_terminal() { Ok(()) } else { s.fail(error.clone(), Utc::now()) };
        let written = match self.ctx.status.create(&record, None).await {
            Ok(CreateOutcome::Existing(_)) => self.ctx.status.update(id, fail).await.map(drop),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(job = %id, error = %e, "cannot record why the message was refused");
        }
    }
}

/// RabbitMQ closes the channel of a consumer that held a message longer than its
/// `consumer_timeout`; the jobs are then redelivered and the batch's work is lost. Say so plainly.
fn warn_if_ack_timeout(error: &lapin::Error) {
    let text = error.to_string();
    if text.contains("acknowledgement timed out") || text.contains("consumer_timeout") {
        tracing::error!(
            error = %text,
            "RabbitMQ's consumer_timeout expired before a batch finished; raise consumer_timeout on the broker \
             above the longest batch, or lower worker.max_batch_images"
        );
    }
}

fn take(waiting: &mut Vec<Pending>, mut indices: Vec<usize>) -> Vec<Pending> {
    indices.sort_unstable_by(|a, b| b.cmp(a));
    let mut batch: Vec<Pending> = indices.into_iter().map(|i| waiting.swap_remove(i)).collect();
    batch.sort_by_key(|p| p.arrived);
    batch
}

/// Adds a delivery to the waiting jobs, unless a message of the same job already waits here (a
/// producer published one message twice, or two messages name one job): that one runs the job,
/// and this copy is acked, so the job is not run twice side by side. The waiting copy still holds
/// its message, so a crash or a hand-back before it runs loses nothing.
async fn keep_once(waiting: &mut Vec<Pending>, mut pending: Pending) {
    if waiting.iter().any(|w| w.id() == pending.id()) {
        tracing::info!(job = %pending.id(), "a second message of a job already waiting here; acked");
        pending.ack().await;
    } else {
        waiting.push(pending);
    }
}

/// Gives waiting jobs back: cleanly on `channel` when there is one (a stop), else by the broker's count.
async fn hand_back(waiting: &mut Vec<Pending>, channel: Option<&lapin::Channel>) {
    for mut job in waiting.drain(..) {
        job.hand_back(channel).await;
    }
}

/// Whether the record's last start was from `pending`'s copy at the delivery before this one:
/// then the broker's last return followed a start (a crash, an outage, a lost connection mid-run).
fn started_from(record: &JobStatus, pending: &Pending) -> bool {
    record.attempts > 0
        && record.handbacks == pending.handbacks()
        && record.deliveries.checked_add(1) == Some(pending.delivery_count)
}

/// Notes on each job's record that a second message of it is about to exist: from a clean
/// hand-back's republish until the original's ack there are two, and both stay if this worker
/// dies in between or the ack is lost. Removing such a job later keeps its cancel flag for as long
/// as a copy may wait ([`StatusStore::mark_published_again`]). All at once, so a stop with Redis
/// down waits one call timeout, not one per job; the hand-backs go ahead either way.
async fn note_second_copies(status: &StatusStore, jobs: &[Pending]) {
    let marks = jobs.iter().filter(|job| job.is_open()).map(|job| async move {
        match status.mark_published_again(job.id()).await {
            // A job no dispatcher recorded and no worker started has no record to mark.
            Ok(()) | Err(StatusError::NotFound(_)) => {}
            Err(err) => tracing::warn!(job = %job.id(), error = %err, "cannot note the hand-back on the record"),
        }
    });
    futures::future::join_all(marks).await;
}

/// Adds a batch's duration to the stats when the batch ends, however it ends.
struct BatchTimer<'a> {
    stats: &'a Stats,
    started: Instant,
}

impl Drop for BatchTimer<'_> {
    fn drop(&mut self) {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.batch_micros.fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }
}
