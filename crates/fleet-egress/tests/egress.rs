//! The client against a real HTTP server on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_egress::{EgressClient, EgressError, EgressPolicy};
use reqwest::header::HeaderMap;

const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

async fn serve() -> SocketAddr {
    let app = Router::new()
        .route(
            "/hook",
            post(|body: axum::body::Bytes| async move { format!("got {} bytes; {}", body.len(), "x".repeat(1000)) }),
        )
        .route("/file", get(|| async { BODY }))
        .route("/streamed", get(|| async { Response::new(chunked_body()) }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/to-file", get(|| async { redirect("/file") }))
        .route("/to-other-loopback", get(|| async { redirect("http://127.0.0.2:9/file") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A body sent in chunks without Content-Length, so only counting while streaming can refuse it.
fn chunked_body() -> Body {
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![7u8; 1024])));
    Body::from_stream(futures::stream::iter(chunks))
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response()
}

fn loopback_policy() -> EgressPolicy {
    EgressPolicy {
        allow_http: true,
        allowed_private: vec!["127.0.0.1/32".into()],
        timeout: Duration::from_secs(2),
        ..EgressPolicy::default()
    }
}

fn client(policy: EgressPolicy) -> EgressClient {
    EgressClient::new(policy).unwrap()
}

#[tokio::test]
async fn loopback_refused_unless_allowed() {
    let addr = serve().await;
    let open = client(EgressPolicy { allow_http: true, ..EgressPolicy::default() });
    let err = open.post(&format!("http://{addr}/hook"), HeaderMap::new(), b"{}".to_vec(), 64).await.unwrap_err();
    assert!(matches!(err, EgressError::AddressNotAllowed { .. }), "{err}");
    // a name that resolves to loopback is refused after DNS, before connecting
    let err = open
        .post(&format!("http://localhost:{}/hook", addr.port()), HeaderMap::new(), b"{}".to_vec(), 64)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::AddressNotAllowed { ref host, .. } if host == "localhost"), "{err}");
    assert!(!err.is_retryable());
    let err = client(EgressPolicy::default())
        .post(&format!("http://{addr}/hook"), HeaderMap::new(), vec![], 64)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::SchemeNotAllowed { .. }), "{err}");
}

#[tokio::test]
async fn post_answer_cut_at_the_limit() {
    let addr = serve().await;
    let answer = client(loopback_policy())
        .post(&format!("http://{addr}/hook"), HeaderMap::new(), b"hello".to_vec(), 16)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"got 5 bytes; xxx");
}

#[tokio::test]
async fn downloads_hash_and_limits() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    let c = client(loopback_policy());
    let got = c.download(&format!("http://{addr}/file"), &dest, 1024).await.unwrap();
    assert_eq!(got.bytes, BODY.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), BODY);
    // `printf %s 0123…xyz | sha256sum`
    assert_eq!(got.sha256, "74e7e5bb9d22d6db26bf76946d40fff3ea9f0346b884fd0694920fccfad15e33");
    let err = c.download(&format!("http://{addr}/file"), &dest, 10).await.unwrap_err();
    assert!(matches!(err, EgressError::TooLarge { limit: 10, .. }), "{err}");
    let err = c.download(&format!("http://{addr}/streamed"), &dest, 4000).await.unwrap_err();
    assert!(matches!(err, EgressError::TooLarge { limit: 4000, .. }), "{err}");
    let streamed = c.download(&format!("http://{addr}/streamed"), &dest, 8192).await.unwrap();
    assert_eq!(streamed.bytes, 8192);
    let err = c.download(&format!("http://{addr}/missing"), &dest, 10).await.unwrap_err();
    assert!(matches!(err, EgressError::Status { status: 404, .. }) && !err.is_retryable(), "{err}");
    let err = c.download(&format!("http://{addr}/busy"), &dest, 10).await.unwrap_err();
    assert!(matches!(err, EgressError::Status { status: 503, .. }) && err.is_retryable(), "{err}");
    let err = c.download(&format!("http://{addr}/slow"), &dest, 10).await.unwrap_err();
    assert!(matches!(err, EgressError::Timeout { .. }) && err.is_retryable(), "{err}");
}

#[tokio::test]
async fn redirects_checked_hop_by_hop() {
    let addr = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    let err = client(loopback_policy()).download(&format!("http://{addr}/to-file"), &dest, 1024).await.unwrap_err();
    assert!(matches!(err, EgressError::Redirect { ref location, .. } if location == "/file"), "{err}");
    let following = client(EgressPolicy { max_redirects: 2, ..loopback_policy() });
    assert_eq!(
        following.download(&format!("http://{addr}/to-file"), &dest, 1024).await.unwrap().bytes,
        BODY.len() as u64
    );
    let err = following.download(&format!("http://{addr}/to-other-loopback"), &dest, 1024).await.unwrap_err();
    assert!(matches!(err, EgressError::AddressNotAllowed { .. }), "{err}");
}
