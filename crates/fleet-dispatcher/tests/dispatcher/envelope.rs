//! Every 4xx the API answers is the JSON error envelope, whoever refuses the request: the router
//! (unknown route, wrong method), an extractor (path, query, body), or the header limit.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{ALICE, Server, isolated_config};

/// Sends `request` and checks the answer is `status` with the envelope and `code`; returns the
/// response's headers and the error's message.
async fn refused(
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
) -> (reqwest::header::HeaderMap, String) {
    let resp = request.send().await.expect("request");
    let headers = resp.headers().clone();
    let got = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/json"), "{headers:?}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["retryable"], false, "{body}");
    (headers, body["error"]["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn bad_paths_queries_methods_routes_and_bodies_get_the_envelope() {
    let server = Server::start(isolated_config()).await;
    let url = |path: &str| format!("{}{path}", server.base);
    let get = |path: &str| server.http.get(url(path)).bearer_auth(ALICE);
    let id = uuid::Uuid::now_v7();

    let (_, message) = refused(get("/v1/jobs/not-a-uuid"), StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(message.contains("not-a-uuid"), "{message}");
    let (_, message) =
        refused(get(&format!("/v1/jobs/{id}/images/first")), StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(message.contains("first"), "{message}");
    let (_, message) = refused(get("/v1/jobs?limit=many"), StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(message.contains("limit"), "{message}");
    let (_, message) = refused(get("/v1/jobs?state=sleeping"), StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(message.contains("sleeping"), "{message}");
    refused(get("/v1/dead-letters?limit=-1"), StatusCode::BAD_REQUEST, "invalid_request").await;

    let (_, message) = refused(get("/v2/jobs"), StatusCode::NOT_FOUND, "not_found").await;
    assert!(message.contains("no such endpoint"), "{message}");

    for (method, path, allowed) in [
        (Method::PUT, "/v1/jobs", "GET,HEAD,POST"),
        (Method::PATCH, &*format!("/v1/jobs/{id}"), "GET,HEAD,DELETE"),
        (Method::POST, "/healthz", "GET,HEAD"),
    ] {
        let request = server.http.request(method.clone(), url(path)).bearer_auth(ALICE);
        let (headers, message) = refused(request, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
        assert_eq!(headers["allow"], allowed, "{method} {path}");
        assert!(message.contains(method.as_str()) && message.contains(path), "{message}");
    }

    let post = |content_type: &str, body: &'static str| {
        server.http.post(url("/v1/jobs")).bearer_auth(ALICE).header("content-type", content_type).body(body)
    };
    let (_, message) = refused(
        post("text/plain", r#"{"prompt": "x", "model": "tiny"}"#),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(message.contains("application/json"), "{message}");
    let form = server.http.post(url("/v1/jobs")).bearer_auth(ALICE).form(&[("prompt", "x")]);
    refused(form, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;

    // Invalid JSON says where: line and column.
    let (_, message) = refused(
        post("application/json", "{\"prompt\": \"x\",\n \"model\": }"),
        StatusCode::BAD_REQUEST,
        "invalid_spec",
    )
    .await;
    assert!(message.contains("line 2 column 11"), "{message}");
    // A value of the wrong type too, with its field.
    let (_, message) = refused(
        post("application/json", "{\"prompt\": \"x\",\n \"steps\": \"4\"}"),
        StatusCode::BAD_REQUEST,
        "invalid_spec",
    )
    .await;
    assert!(message.contains("steps") && message.contains("line 2, column"), "{message}");
    server.stop().await;
}

/// Headers beyond the dispatcher's limit get 431 in the envelope.
#[tokio::test]
async fn oversized_headers_get_431_in_the_envelope() {
    let server = Server::start(isolated_config()).await;
    let big = "x".repeat(fleet_dispatcher::routes::MAX_HEADER_BYTES);
    for path in ["/v1/jobs", "/healthz", "/nowhere"] {
        let request = server.http.get(format!("{}{path}", server.base)).bearer_auth(ALICE).header("x-padding", &big);
        let (_, message) = refused(request, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large").await;
        assert!(message.contains(&fleet_dispatcher::routes::MAX_HEADER_BYTES.to_string()), "{message}");
    }
    let fits = "x".repeat(fleet_dispatcher::routes::MAX_HEADER_BYTES / 2);
    let resp = server.http.get(format!("{}/v1/jobs", server.base)).bearer_auth(ALICE).header("x-padding", fits).send();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    server.stop().await;
}

/// Sends raw bytes on a fresh connection and returns the whole answer.
async fn raw_exchange(base: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.expect("the dispatcher answers and closes within 10 s").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Request heads HTTP cannot frame, which hyper would answer with an empty body, get the envelope
/// from the dispatcher's own check of a connection's first head; good requests still pass it.
#[tokio::test]
async fn malformed_request_heads_get_the_envelope() {
    let server = Server::start(isolated_config()).await;
    let too_many: String = (0..=100).map(|i| format!("x-{i}: v\r\n")).collect();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "400 Bad Request", "invalid_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), "400 Bad Request", "invalid_request"),
        (b"GET /healthz HTTP/1.1\r\nBad Header: y\r\n\r\n".to_vec(), "400 Bad Request", "invalid_request"),
        (b"POST /v1/jobs HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}".to_vec(), "400 Bad Request", "invalid_request"),
        (
            b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            "400 Bad Request",
            "invalid_request",
        ),
        (format!("GET /healthz HTTP/1.1\r\n{too_many}\r\n").into_bytes(), "431", "headers_too_large"),
        (long_target.into_bytes(), "414 URI Too Long", "uri_too_long"),
    ];
    for (request, status, code) in cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        let answer = raw_exchange(&server.base, &request).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{shown:?}: {answer}");
        assert!(answer.contains("content-type: application/json"), "{shown:?}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{shown:?}: not JSON ({e}): {answer}"));
        assert_eq!(body["error"]["code"], code, "{shown:?}: {body}");
    }
    // A usable head passes the check and is served as before.
    let answer = raw_exchange(&server.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}
