//! LoRAs from a URL through the fleet: jobs naming the same file by URL share one download and
//! draw the same pixels as the same LoRA from the library; a wrong digest fails the job naming
//! the URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::bulk::tiny_lora;

/// Serves `body` at every path on loopback; counts requests per path.
async fn serve(body: Vec<u8>) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, hits) = (body.clone(), counted.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let path = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_owned();
                *hits.lock().unwrap().entry(path).or_default() += 1;
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    (base, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn url_loras_download_once_and_match_the_library_lora() {
    let library = tempfile::tempdir().unwrap();
    let lora_path = library.path().join("ink.safetensors");
    tiny_lora::write_tiny_lora(&lora_path);
    let bytes = std::fs::read(&lora_path).unwrap();
    let digest = fleet_core::request_record::sha256_hex(&bytes);
    let (base, hits) = serve(bytes).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = isolated_config();
    config.library.lora_dir = library.path().to_owned();
    let fetch = &mut config.worker.lora_fetch;
    fetch.cache_dir = cache.path().to_owned();
    fetch.allowed_hosts = vec!["127.0.0.1".into()];
    fetch.allow_http = true;
    fetch.allowed_private = vec!["127.0.0.0/8".into()];
    let fleet = Fleet::start(config, 1).await;

    let job = |lora: serde_json::Value| {
        json!({"prompt": "a lighthouse in ink", "model": "tiny", "width": 64, "height": 64, "steps": 2, "seed": 3,
               "loras": [lora]})
    };
    let url = format!("{base}/ink.safetensors");
    let jobs = [
        job(json!({"name": "ink", "scale": 0.5})),
        job(json!({"url": url, "sha256": digest, "scale": 0.5})),
        job(json!({"url": url, "sha256": digest.to_uppercase(), "scale": 0.5})),
        job(json!({"url": format!("{base}/wrong.safetensors"), "sha256": "0".repeat(64), "scale": 0.5})),
        job(json!({"name": "ink", "scale": 0.0})),
    ];
    let mut ids = Vec::new();
    for job in &jobs {
        ids.push(fleet.submit(job.clone()).await.id);
    }
    let statuses = fleet.wait_all(&ids, Duration::from_secs(240)).await;
    for status in [&statuses[0], &statuses[1], &statuses[2], &statuses[4]] {
        assert_eq!(status.state, fleet_core::JobState::Succeeded, "{status:?}");
    }
    let error = statuses[3].error.as_ref().expect("the wrong digest fails the job");
    assert_eq!(error.code.name(), "lora_digest_mismatch", "{error:?}");
    assert!(error.message.contains("/wrong.safetensors"), "names the URL: {}", error.message);
    assert_eq!(hits.lock().unwrap().get("/ink.safetensors"), Some(&1), "one download for both jobs");

    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    let mut pixels = Vec::new();
    for status in [&statuses[0], &statuses[1], &statuses[2], &statuses[4]] {
        let object = store.get(&status.result[0].key).await.unwrap().expect("image stored");
        pixels.push(image::load_from_memory(&object.body).unwrap().to_rgb8());
    }
    assert!(pixels[1] == pixels[0] && pixels[2] == pixels[0], "the URL LoRA draws what the library LoRA draws");
    assert!(pixels[3] != pixels[0], "the LoRA changes the picture");
    fleet.stop().await;
}
