//! Image-to-image and inpainting through the fleet: the worker reads the job's start image
//! (inline WebP, an object in its bucket, or one in another allowed bucket of the same S3 server)
//! and inline mask, the stored images equal a direct engine run of the same job, and each records
//! its init image, strength and mask.

use std::time::Duration;

use base64::Engine as _;
use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use serde_json::json;

/// A 64×64 PNG whose pixels `colour` gives.
fn png(colour: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb(colour(x, y)));
    let mut bytes = Vec::new();
    picture.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn inline(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `png` re-encoded as a lossless WebP (the same pixels).
fn webp(png: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let picture = image::load_from_memory(png).unwrap();
    picture.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::WebP).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_to_image_and_inpainting_jobs_match_a_direct_engine_run() {
    let mut config = isolated_config();
    config.limits.allowed_image_buckets = vec![config.s3.bucket.clone()];
    let fleet = Fleet::start(config, 1).await;
    let start = png(|x, y| [(x * 4) as u8, (y * 4) as u8, 128]);
    let mask = png(|x, _| if x < 32 { [255; 3] } else { [0; 3] });
    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    let key = format!("img2img-inputs/{}.png", uuid::Uuid::new_v4());
    let meta = fleet_storage::ObjectMeta::example(uuid::Uuid::new_v4(), "inputs", 0);
    store.put(&key, start.clone(), "image/png", &meta).await.unwrap();
    let in_bucket = format!("s3://{}/{key}", fleet.config.s3.bucket);
    let base = json!({"prompt": "a painted harbour", "model": "tiny", "width": 64, "height": 64, "steps": 4,
                      "seed": 11});
    let mut img2img = base.clone();
    img2img["init_image"] = json!(inline("image/webp", &webp(&start)));
    img2img["strength"] = json!(0.5);
    let mut inpaint = base;
    inpaint["init_image"] = json!(in_bucket);
    inpaint["strength"] = json!(1.0);
    inpaint["mask_image"] = json!(inline("image/png", &mask));
    let jobs = [(img2img, None), (inpaint, Some(mask.as_slice()))];
    let mut ids = Vec::new();
    for (job, _) in &jobs {
        ids.push(fleet.submit(job.clone()).await.id);
    }
    let statuses = fleet.wait_all(&ids, Duration::from_secs(240)).await;

    store.delete(&key).await.unwrap();
    let cpu = fleet_engine::candle_core::Device::Cpu;
    let engine =
        fleet_engine::Pipeline::load(&fleet_engine::ModelSource::Tiny, &cpu, fleet_engine::candle_core::DType::F32)
            .unwrap();
    let mut pictures = Vec::new();
    for (status, (job, mask)) in statuses.iter().zip(&jobs) {
        assert_eq!(status.state, fleet_core::JobState::Succeeded, "{status:?}");
        let request = status.request.as_ref().expect("the record keeps the request");
        let source = if mask.is_some() { in_bucket.as_str() } else { "inline" };
        assert_eq!(request.init_image.as_ref().map(|r| r.image.as_str()), Some(source));
        assert_eq!(request.mask_image.is_some(), mask.is_some());
        let spec = fleet_core::parse_job(&job.to_string()).unwrap();
        let mut direct = fleet_render::job_request(&spec);
        fleet_render::attach_init(&spec, &start, *mask, &mut direct).unwrap();
        let expected = engine.generate(&direct, &mut |_| {}).unwrap().images;
        let object = store.get(&status.result[0].key).await.unwrap().expect("image stored");
        let stored = image::load_from_memory(&object.body).unwrap().to_rgb8();
        assert!(stored == expected[0], "job {}: pixels differ from a direct engine run", status.id);
        // The image records what it started from, so `fleet generate --from-image` can ask for it.
        let params = fleet_engine::read_generation_params(&object.body).unwrap().expect("the job's parameters");
        let init = params.provenance.init.expect("the init image in the metadata");
        assert_eq!((init.image.as_str(), init.strength), (source, f64::from(spec.effective_strength().unwrap())));
        assert_eq!(init.mask.is_some(), mask.is_some());
        pictures.push(stored);
    }
    assert!(pictures[0] != pictures[1], "the mask and strength change the picture");
    fleet.stop().await;
}

/// An init image in a second bucket of the S3 server (in `limits.allowed_image_buckets`, not the
/// workers' `s3.bucket`) is read with the workers' endpoint and credentials: the job succeeds with
/// the pixels of the same job given the image inline, which are a direct engine run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_init_image_in_another_allowed_bucket_gives_the_inline_jobs_pixels() {
    let s3 = fleet_e2e::s3_client();
    let other = fleet_e2e::unique("e2e-inputs");
    s3.create_bucket().bucket(&other).send().await.unwrap();
    let start = png(|x, y| [(y * 4) as u8, 64, (x * 4) as u8]);
    s3.put_object().bucket(&other).key("in/start.png").body(start.clone().into()).send().await.unwrap();
    let mut config = isolated_config();
    config.limits.allowed_image_buckets = vec![config.s3.bucket.clone(), other.clone()];
    let fleet = Fleet::start(config, 1).await;
    let mut inline_job = json!({"prompt": "a painted harbour", "model": "tiny", "width": 64, "height": 64,
                                "steps": 4, "seed": 23, "strength": 0.6});
    inline_job["init_image"] = json!(inline("image/png", &start));
    let mut bucket_job = inline_job.clone();
    let in_other = format!("s3://{other}/in/start.png");
    bucket_job["init_image"] = json!(in_other);
    let ids = vec![fleet.submit(inline_job.clone()).await.id, fleet.submit(bucket_job).await.id];
    let statuses = fleet.wait_all(&ids, Duration::from_secs(240)).await;

    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    let mut pictures = Vec::new();
    for status in &statuses {
        assert_eq!(status.state, fleet_core::JobState::Succeeded, "{status:?}");
        let object = store.get(&status.result[0].key).await.unwrap().expect("image stored");
        pictures.push(image::load_from_memory(&object.body).unwrap().to_rgb8());
    }
    let request = statuses[1].request.as_ref().expect("the record keeps the request");
    assert_eq!(request.init_image.as_ref().map(|r| r.image.as_str()), Some(in_other.as_str()));
    assert!(pictures[0] == pictures[1], "the init image from bucket `{other}` gives the inline job's pixels");

    let spec = fleet_core::parse_job(&inline_job.to_string()).unwrap();
    let cpu = fleet_engine::candle_core::Device::Cpu;
    let engine =
        fleet_engine::Pipeline::load(&fleet_engine::ModelSource::Tiny, &cpu, fleet_engine::candle_core::DType::F32)
            .unwrap();
    let mut direct = fleet_render::job_request(&spec);
    fleet_render::attach_init(&spec, &start, None, &mut direct).unwrap();
    let expected = engine.generate(&direct, &mut |_| {}).unwrap().images;
    assert!(pictures[0] == expected[0], "pixels differ from a direct engine run");

    s3.delete_object().bucket(&other).key("in/start.png").send().await.unwrap();
    s3.delete_bucket().bucket(&other).send().await.unwrap();
    fleet.stop().await;
}
