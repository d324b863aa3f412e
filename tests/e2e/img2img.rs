//! Image-to-image and inpainting through the fleet: the worker decodes the job's inline start
//! image and mask, and the stored images equal a direct engine run of the same job.

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

fn inline(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_to_image_and_inpainting_jobs_match_a_direct_engine_run() {
    let fleet = Fleet::start(isolated_config(), 1).await;
    let start = png(|x, y| [(x * 4) as u8, (y * 4) as u8, 128]);
    let mask = png(|x, _| if x < 32 { [255; 3] } else { [0; 3] });
    let base = json!({"prompt": "a painted harbour", "model": "tiny", "width": 64, "height": 64, "steps": 4,
                      "seed": 11, "init_image": inline(&start)});
    let mut img2img = base.clone();
    img2img["strength"] = json!(0.5);
    let mut inpaint = base;
    inpaint["strength"] = json!(1.0);
    inpaint["mask_image"] = json!(inline(&mask));
    let jobs = [(img2img, None), (inpaint, Some(mask.as_slice()))];
    let mut ids = Vec::new();
    for (job, _) in &jobs {
        ids.push(fleet.submit(job.clone()).await.id);
    }
    let statuses = fleet.wait_all(&ids, Duration::from_secs(240)).await;

    let store = fleet_storage::ImageStore::from_config(&fleet.config.s3).await.unwrap();
    let cpu = fleet_engine::candle_core::Device::Cpu;
    let engine =
        fleet_engine::Pipeline::load(&fleet_engine::ModelSource::Tiny, &cpu, fleet_engine::candle_core::DType::F32)
            .unwrap();
    let mut pictures = Vec::new();
    for (status, (job, mask)) in statuses.iter().zip(&jobs) {
        assert_eq!(status.state, fleet_core::JobState::Succeeded, "{status:?}");
        let request = status.request.as_ref().expect("the record keeps the request");
        assert_eq!(request.init_image.as_ref().map(|r| r.image.as_str()), Some("inline"));
        assert_eq!(request.mask_image.is_some(), mask.is_some());
        let spec = fleet_core::parse_job(&job.to_string()).unwrap();
        let mut direct = fleet_render::job_request(&spec);
        fleet_render::attach_init(&spec, &start, *mask, &mut direct).unwrap();
        let expected = engine.generate(&direct, &mut |_| {}).unwrap().images;
        let object = store.get(&status.result[0].key).await.unwrap().expect("image stored");
        let stored = image::load_from_memory(&object.body).unwrap().to_rgb8();
        assert!(stored == expected[0], "job {}: pixels differ from a direct engine run", status.id);
        pictures.push(stored);
    }
    assert!(pictures[0] != pictures[1], "the mask and strength change the picture");
    fleet.stop().await;
}
