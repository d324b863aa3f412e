//! A webhook receiver on loopback that records what it gets and answers with the statuses it is
//! told to (200 once they run out), or leaves the first request of each `webhook-id` unanswered.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    answers: Mutex<VecDeque<u16>>,
    /// Whether the first request of each `webhook-id` is held unanswered.
    hang_first: bool,
    /// The ids seen so far (with `hang_first`).
    seen: Mutex<HashSet<String>>,
    /// Ends the held requests (when the receiver stops).
    released: CancellationToken,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free loopback port, answering `answers` in turn, then 200.
    pub async fn start(answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(listener, Shared { answers: Mutex::new(answers.iter().copied().collect()), ..Shared::default() })
    }

    /// A receiver that accepts the first request of each `webhook-id` and never answers it (a
    /// sender waiting on it is stuck until it gives up or dies); later ones get 200.
    pub async fn hanging_first() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(listener, Shared { hang_first: true, ..Shared::default() })
    }

    /// A receiver on `addr` (a port chosen earlier).
    pub async fn start_at(addr: SocketAddr, answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Receiver::on(listener, Shared { answers: Mutex::new(answers.iter().copied().collect()), ..Shared::default() })
    }

    fn on(listener: tokio::net::TcpListener, shared: Shared) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(shared);
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, shared, task }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The hits once there are `n` (or what came within `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        while self.hits().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.hits()
    }

    pub fn stop(self) {
        self.shared.released.cancel();
        self.task.abort();
    }
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let id = header("webhook-id");
    let hold = shared.hang_first && shared.seen.lock().unwrap().insert(id.clone());
    shared.hits.lock().unwrap().push(Hit {
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
    });
    if hold {
        shared.released.cancelled().await;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let answer = shared.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
}
