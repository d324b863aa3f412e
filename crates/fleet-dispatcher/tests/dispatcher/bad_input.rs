//! Bad input over HTTP: each request gets a clear 4xx naming what is wrong, and changes nothing —
//! no status record, no idempotency key, no message on any queue.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ALICE, Server, isolated_config};

/// fleet-core's fixtures: a valid 16×16 PNG, and a PNG bomb declaring 100,000 × 100,000 pixels.
const GOOD_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-16x16.png");
const BOMB_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-bomb-100000x100000.png");

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Posts raw bytes as a job body.
async fn post_raw(server: &Server, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(format!("{}/v1/jobs", server.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Nothing of the tenant's exists: no record, nothing in flight, nothing on either queue.
async fn assert_nothing_changed(server: &Server, what: &str) {
    let page = server.app.status.list("alice", None, None, 100).await.unwrap();
    assert!(page.jobs.is_empty(), "{what}: left records {:?}", page.jobs);
    assert_eq!(server.app.status.in_flight("alice").await.unwrap(), 0, "{what}");
    for queue in [".tiny.interactive", ".tiny.bulk"] {
        assert!(server.take(queue).await.is_none(), "{what}: a message reached {queue}");
    }
}

/// `{"prompt": "x", "model": "tiny"}` with `fields` set on top.
fn job(fields: Value) -> Value {
    let mut job = json!({"prompt": "x", "model": "tiny", "width": 64, "height": 64});
    job.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    job
}

fn control(image: String) -> Value {
    job(json!({"controlnet": {"model": "canny", "image": image}}))
}

/// (what, job, a field or message fragment the 400 `invalid_spec` must name).
fn bad_jobs() -> Vec<(&'static str, Value, &'static str)> {
    let (bomb, good) = (BOMB_PNG, GOOD_PNG);
    let lora = |name: &str| job(json!({"loras": [{"name": name}]}));
    vec![
        ("NUL in the prompt", job(json!({"prompt": "a\u{0}b"})), "prompt"),
        ("escape in the negative prompt", job(json!({"negative_prompt": "\u{1b}[2J"})), "negative_prompt"),
        ("width too large", job(json!({"width": 4096})), "width"),
        ("height too small", job(json!({"height": 32})), "height"),
        ("width negative", job(json!({"width": -64})), "width"),
        ("width beyond u32", job(json!({"width": 1u64 << 40})), "width"),
        ("num_images 0", job(json!({"num_images": 0})), "num_images"),
        ("num_images 17", job(json!({"num_images": 17})), "num_images"),
        ("unknown model", job(json!({"model": "no-such-model"})), "model"),
        ("model that is a path", job(json!({"model": "../tiny"})), "model"),
        ("LoRA with a slash", lora("styles/ink"), "loras[0].name"),
        ("LoRA with ..", lora(".."), "loras[0].name"),
        ("LoRA going up", lora("../../etc/passwd"), "loras[0].name"),
        ("LoRA absolute", lora("/etc/passwd"), "loras[0].name"),
        ("LoRA URL", lora("https://example.com/x.safetensors"), "loras[0].name"),
        ("control image bomb", control(b64(bomb)), "100000×100000"),
        ("control image truncated", control(b64(&good[..good.len() / 2])), "not a readable PNG"),
        ("control image not an image", control(b64(b"%PDF-1.7 hello")), "neither PNG, JPEG nor WebP"),
        ("control image URL", control("http://169.254.169.254/latest/meta-data/".into()), "controlnet.image"),
        ("control image file", control("file:///etc/passwd".into()), "controlnet.image"),
        ("control image other bucket", control("s3://someone-else/x.png".into()), "not an allowed"),
        ("ControlNet path", job(json!({"controlnet": {"model": "../cn", "image": b64(good)}})), "controlnet.model"),
    ]
}

#[tokio::test]
async fn every_bad_job_gets_a_4xx_naming_its_field_and_changes_nothing() {
    let server = Server::start(isolated_config()).await;
    for (what, body, names) in bad_jobs() {
        let mut body = body;
        body["idempotency_key"] = json!(format!("bad-{what}"));
        let (status, answer) = server.submit(ALICE, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_spec", "{what}: {answer}");
        assert!(answer.to_string().contains(names), "{what}: the error does not name `{names}`: {answer}");
        // The same job inside an array is refused as a whole, its path prefixed.
        let (status, answer) = server.submit(ALICE, json!([{"prompt": "fine", "model": "tiny"}, body])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what} in an array: {answer}");
        assert!(answer.to_string().contains("[1]."), "{what} in an array: {answer}");
    }
    assert_nothing_changed(&server, "bad jobs").await;
    // No idempotency key was taken: a valid job with one of them is created afresh.
    let (got, answer) =
        server.submit(ALICE, json!({"prompt": "x", "model": "tiny", "idempotency_key": "bad-unknown model"})).await;
    assert_eq!(got, StatusCode::ACCEPTED, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_a_400_and_change_nothing() {
    let server = Server::start(isolated_config()).await;
    let cases: [(&str, &[u8], &str); 7] = [
        ("cut-off JSON", br#"{"prompt": "x", "model": "#, "EOF"),
        ("not JSON", b"prompt=x&model=tiny", "expected value"),
        ("empty body", b"", "EOF"),
        ("trailing garbage", br#"{"prompt": "x", "model": "tiny"} {"#, "trailing"),
        (
            "invalid UTF-8 in a string",
            b"{\"prompt\": \"caf\xc3\x28\", \"model\": \"tiny\"}",
            "invalid unicode code point at line 1 column 16",
        ),
        (
            "a lone surrogate escape",
            br#"{"prompt": "\ud800", "model": "tiny"}"#,
            "prompt: unexpected end of hex escape",
        ),
        ("a string where a number goes", br#"{"prompt": "x", "model": "tiny", "steps": "4"}"#, "steps"),
    ];
    for (what, body, names) in cases {
        let (status, answer) = post_raw(&server, body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_spec", "{what}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(names), "{what}: {answer}");
    }
    assert_nothing_changed(&server, "malformed bodies").await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversize_body_gets_413_in_the_api_error_format() {
    let mut cfg = isolated_config();
    cfg.http.max_body_bytes = 64 * 1024;
    let server = Server::start(cfg).await;
    let prompt = "x".repeat(100 * 1024);
    let (status, answer) = post_raw(&server, json!({"prompt": prompt, "model": "tiny"}).to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("65536 bytes"), "{answer}");

    // The same without a Content-Length (chunked): the limit holds while reading.
    let chunks = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096])));
    let resp = server
        .http
        .post(format!("{}/v1/jobs", server.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_changed(&server, "oversize bodies").await;
    server.stop().await;
}

#[tokio::test]
async fn an_array_of_ten_thousand_jobs_is_refused_whole() {
    let server = Server::start(isolated_config()).await;
    let jobs: Vec<Value> = (0..10_000).map(|i| json!({"prompt": format!("cat {i}"), "model": "tiny"})).collect();
    let (status, answer) = server.submit(ALICE, Value::Array(jobs)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_spec");
    assert!(answer["error"]["message"].as_str().unwrap().contains("1 to 1000 jobs, not 10000"), "{answer}");
    let (status, answer) = server.submit(ALICE, json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an empty array: {answer}");
    assert_nothing_changed(&server, "oversize arrays").await;
    server.stop().await;
}
