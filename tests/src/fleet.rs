//! A whole fleet in one process for tests and benchmarks: the HTTP dispatcher and tiny-model
//! workers against the real RabbitMQ, Redis and S3.

use std::time::{Duration, Instant};

use fleet_core::{FleetConfig, JobStatus};
use fleet_worker::noop::EngineMode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::E2E_KEY;

/// A dispatcher on a free port plus in-process workers, all on one configuration.
pub struct Fleet {
    /// Base URL of the dispatcher.
    pub base: String,
    pub http: reqwest::Client,
    stops: Vec<CancellationToken>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each worker's metrics address, in start order.
    metrics: Vec<std::net::SocketAddr>,
    pub config: FleetConfig,
}

impl Fleet {
    pub async fn start(config: FleetConfig, workers: usize) -> Fleet {
        let mut fleet = Fleet {
            base: String::new(),
            http: reqwest::Client::new(),
            stops: vec![],
            tasks: vec![],
            metrics: vec![],
            config,
        };
        let app = fleet_dispatcher::App::connect(fleet.config.clone()).await.expect("dispatcher connects");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fleet.base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        fleet.tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move { fleet_dispatcher::serve(app, listener, stop).await.unwrap() }
        }));
        fleet.stops.push(stop);
        for _ in 0..workers {
            fleet.add_worker().await;
        }
        fleet
    }

    pub async fn add_worker(&mut self) {
        self.add_worker_with(EngineMode::Models).await;
    }

    /// A worker running the tiny model, or (the overhead benchmark) the no-op engine.
    pub async fn add_worker_with(&mut self, engine: EngineMode) {
        let options = fleet_worker::WorkerOptions { models: vec!["tiny".into()], id: None };
        let worker = match engine {
            EngineMode::Models => fleet_worker::Worker::start(self.config.clone(), options).await,
            EngineMode::Noop => fleet_worker::Worker::start_noop_engine(self.config.clone(), options).await,
        };
        let worker = worker.expect("worker starts");
        self.metrics.push(worker.metrics_addr().expect("the test config serves worker metrics"));
        let stop = CancellationToken::new();
        // A task on this runtime, as `fleet worker` runs it.
        let run = worker.run(stop.clone());
        self.tasks.push(tokio::spawn(async move { run.await.unwrap() }));
        self.stops.push(stop);
    }

    /// A worker's Prometheus exposition.
    pub async fn worker_metrics(&self, worker: usize) -> String {
        let resp = self.http.get(format!("http://{}/metrics", self.metrics[worker])).send().await.unwrap();
        assert!(resp.status().is_success());
        resp.text().await.unwrap()
    }

    pub async fn stop(self) {
        for s in &self.stops {
            s.cancel();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub async fn submit(&self, job: Value) -> JobStatus {
        let resp =
            self.http.post(format!("{}/v1/jobs", self.base)).bearer_auth(E2E_KEY).json(&job).send().await.unwrap();
        assert!(resp.status().is_success(), "submit: {}", resp.text().await.unwrap_or_default());
        resp.json().await.unwrap()
    }

    /// The job's status; retries for a while when the API answers with an error (a test may have
    /// just brought Redis back, and the first call after that can still fail).
    pub async fn status(&self, id: uuid::Uuid) -> JobStatus {
        self.status_as(E2E_KEY, id).await
    }

    /// The job's status as the holder of API key `key` sees it (see [`Fleet::status`]).
    pub async fn status_as(&self, key: &str, id: uuid::Uuid) -> JobStatus {
        let started = Instant::now();
        loop {
            let resp = self.http.get(format!("{}/v1/jobs/{id}", self.base)).bearer_auth(key).send().await.unwrap();
            let code = resp.status();
            if code.is_success() {
                return resp.json().await.unwrap();
            }
            let body = resp.text().await.unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(30), "GET /v1/jobs/{id}: {code} {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn cancel(&self, id: uuid::Uuid) {
        self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)).bearer_auth(E2E_KEY).send().await.unwrap();
    }

    /// Polls until every job is final, or panics after `limit`.
    pub async fn wait_all(&self, ids: &[uuid::Uuid], limit: Duration) -> Vec<JobStatus> {
        self.wait_all_as(E2E_KEY, ids, limit).await
    }

    /// [`Fleet::wait_all`] as the holder of API key `key`. A job is read until it is final, then
    /// no more.
    pub async fn wait_all_as(&self, key: &str, ids: &[uuid::Uuid], limit: Duration) -> Vec<JobStatus> {
        let started = Instant::now();
        let mut finished: Vec<Option<JobStatus>> = vec![None; ids.len()];
        loop {
            let mut pending = Vec::new();
            for (slot, id) in finished.iter_mut().zip(ids).filter(|(slot, _)| slot.is_none()) {
                let status = self.status_as(key, *id).await;
                if status.state.is_terminal() {
                    *slot = Some(status);
                } else {
                    pending.push((status.id, status.state));
                }
            }
            if pending.is_empty() {
                return finished.into_iter().flatten().collect();
            }
            assert!(started.elapsed() < limit, "jobs not final after {limit:?}: {pending:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
