//! A fleet of separate processes for fault injection: one `fleet dispatcher` and several
//! `fleet worker`s on a private RabbitMQ node and a private Redis (both restartable), with S3
//! behind a cuttable [`Link`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_core::FleetConfig;
use fleet_status::StatusStore;

use crate::link::Link;
use crate::process::FleetProcess;
use crate::rabbit_server::PrivateRabbit;
use crate::redis_server::{PrivateRedis, SENTINEL_MASTER, SentinelRedis};

/// AMQP heartbeat of every fleet process in the suite, in seconds: short, so that a stalled worker
/// is noticed (and its messages redelivered) within seconds rather than the broker's default minute.
pub const AMQP_HEARTBEAT_SECS: u64 = 2;

/// The services the suite restarts; shared by its scenarios (each has its own queues and keys).
pub struct Services {
    pub rabbit: PrivateRabbit,
    pub redis: PrivateRedis,
    /// When set, the fleets use this Sentinel group instead of `redis` (the failover scenario).
    pub sentinel: Option<SentinelRedis>,
}

impl Services {
    pub fn start() -> Services {
        Services { rabbit: PrivateRabbit::start(), redis: PrivateRedis::start(), sentinel: None }
    }

    /// With a Sentinel group (primary, replica, three sentinels) that the fleets reach Redis through.
    pub fn with_sentinel() -> Services {
        Services { sentinel: Some(SentinelRedis::start()), ..Services::start() }
    }
}

/// The fleet of one scenario.
pub struct ChaosFleet {
    pub config: FleetConfig,
    /// The configuration the processes read.
    pub config_file: PathBuf,
    /// Logs and the configuration file.
    pub dir: PathBuf,
    /// Base URL of the dispatcher (the same across its restarts).
    pub base: String,
    pub dispatcher: Option<FleetProcess>,
    dispatcher_starts: usize,
    pub workers: Vec<FleetProcess>,
    worker_starts: usize,
    /// Between the fleet and the S3 server.
    pub s3_link: Link,
    /// The S3 configuration without the link, for the audit.
    pub s3_direct: fleet_core::config::S3Config,
    /// The suite's own view of Redis (not through the dispatcher, which may be down).
    pub status: StatusStore,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl ChaosFleet {
    /// Starts the dispatcher and `workers` workers on an isolated configuration.
    pub async fn start(services: &Services, workers: usize, name: &str) -> ChaosFleet {
        Self::start_with(services, workers, name, |_| {}).await
    }

    /// [`Self::start`], with `adjust` applied to the suite's configuration before the processes read it.
    pub async fn start_with(
        services: &Services,
        workers: usize,
        name: &str,
        adjust: impl FnOnce(&mut FleetConfig),
    ) -> ChaosFleet {
        // Through the Sentinel group when the services have one (the failover scenario).
        let sentinel = services.sentinel.as_ref().map(|group| (group.url(), group.sentinel_urls()));
        let through_sentinel = move |config: &mut FleetConfig| {
            if let Some((url, sentinels)) = sentinel {
                config.redis.url = url;
                config.redis.sentinels = sentinels;
                config.redis.sentinel_master = SENTINEL_MASTER.into();
            }
            adjust(config);
        };
        Self::start_on(&[services.rabbit.url()], &services.redis.url(), workers, name, through_sentinel).await
    }

    /// [`Self::start_with`] on these brokers (several: the nodes of one cluster, as
    /// `rabbitmq.urls`) and this Redis.
    pub async fn start_on(
        amqp_urls: &[String],
        redis_url: &str,
        workers: usize,
        name: &str,
        adjust: impl FnOnce(&mut FleetConfig),
    ) -> ChaosFleet {
        let mut config = crate::isolated_config();
        let urls: Vec<String> = amqp_urls.iter().map(|u| format!("{u}?heartbeat={AMQP_HEARTBEAT_SECS}")).collect();
        match urls.as_slice() {
            [one] => config.rabbitmq.url = one.clone(),
            _ => config.rabbitmq.urls = urls,
        }
        config.redis.url = redis_url.to_owned();
        // Kills and stalls give messages back; a job may be hit more than the default 3 times
        // in a long run without being a poison job.
        config.rabbitmq.delivery_limit = 20;
        config.worker.max_batch_images = 4;
        config.worker.drain_timeout_secs = 10;
        adjust(&mut config);
        let s3_direct = config.s3.clone();
        let s3_link = Link::start(s3_direct.endpoint.trim_start_matches("http://")).await.expect("S3 link");
        config.s3.endpoint = format!("http://{}", s3_link.addr());
        config.http.listen = format!("127.0.0.1:{}", free_port());
        let dir = std::env::temp_dir().join(format!("fleet-chaos-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("chaos directory");
        let config_file = dir.join("fleet.toml");
        std::fs::write(&config_file, toml::to_string(&config).expect("config as TOML")).expect("config file");
        let status = StatusStore::connect(&config.redis).await.expect("the suite reaches its Redis");
        let base = format!("http://{}", config.http.listen);
        let mut fleet = ChaosFleet {
            config,
            config_file,
            dir,
            base,
            dispatcher: None,
            dispatcher_starts: 0,
            workers: Vec::new(),
            worker_starts: 0,
            s3_link,
            s3_direct,
            status,
        };
        fleet.start_dispatcher().await;
        for _ in 0..workers {
            fleet.add_worker();
        }
        fleet
    }

    /// Starts (or restarts) the dispatcher and waits until it answers `/readyz`.
    pub async fn start_dispatcher(&mut self) {
        self.dispatcher_starts += 1;
        self.dispatcher = Some(FleetProcess::dispatcher(&self.config_file, &self.dir, self.dispatcher_starts));
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{}/readyz", self.base)).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            let alive = self.dispatcher.as_ref().is_some_and(FleetProcess::is_running);
            assert!(alive, "the dispatcher exited at start; see {}", self.dir.display());
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the dispatcher never got ready: {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the dispatcher.
    pub fn kill_dispatcher(&mut self) {
        if let Some(mut d) = self.dispatcher.take() {
            d.kill();
        }
    }

    /// Starts one more worker process; returns its id.
    pub fn add_worker(&mut self) -> String {
        self.worker_starts += 1;
        let id = format!("chaos-w{}", self.worker_starts);
        self.workers.push(FleetProcess::worker(&self.config_file, &id, &self.dir));
        id
    }

    /// The index of a worker whose heartbeat shows a batch in progress, if any.
    pub async fn busy_worker(&self) -> Option<usize> {
        let beats = self.status.workers().await.ok()?;
        let busy: Vec<&str> = beats.iter().filter(|b| b.current_batch.is_some()).map(|b| b.id.as_str()).collect();
        self.workers.iter().position(|w| busy.contains(&w.name.as_str()) && w.is_running())
    }

    /// Waits (up to `limit`) for a worker mid-batch, else takes the first one.
    pub async fn victim(&self, limit: Duration) -> usize {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(i) = self.busy_worker().await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        0
    }

    /// Waits until every job queue has one consumer per worker process, as it should once every
    /// worker has reconnected after the faults; says which queue falls short after `limit`.
    pub async fn until_every_worker_consumes(&self, limit: Duration) -> Result<(), String> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            let expected = self.workers.iter().filter(|w| w.is_running()).count() as u64;
            let reply = http.get(format!("{}/v1/queues", self.base)).bearer_auth(crate::E2E_KEY).send().await;
            if let Ok(body) = reply.and_then(reqwest::Response::error_for_status) {
                let body: serde_json::Value = body.json().await.unwrap_or_default();
                let short: Vec<String> = body["queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|q| !q["name"].as_str().unwrap_or_default().contains(".dead"))
                    .filter(|q| q["consumers"].as_u64() != Some(expected))
                    .map(|q| format!("{} has {} consumers, not {expected}", q["name"], q["consumers"]))
                    .collect();
                if short.is_empty() {
                    return Ok(());
                }
                last = short.join("; ");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("not every worker consumes again after {limit:?}: {last}"))
    }

    /// Workers that have exited on their own (they should not).
    pub fn exited_workers(&self) -> Vec<String> {
        self.workers.iter().filter(|w| !w.is_running()).map(|w| w.name.clone()).collect()
    }

    /// Stops every process; the logs stay in [`Self::dir`] until [`Self::clean_up`].
    pub fn stop(&mut self) {
        for w in &mut self.workers {
            w.terminate(Duration::from_secs(15));
        }
        if let Some(d) = self.dispatcher.as_mut() {
            d.terminate(Duration::from_secs(15));
        }
    }

    /// Removes the logs, the queues' messages stay in the private broker (which goes away with the suite).
    pub fn clean_up(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}
