//! How a job's images are encoded: the job's format and quality, the process's PNG effort, and
//! the job's own parameters embedded in each file, LoRAs and ControlNet included.

use fleet_core::config::WorkerConfig;
use fleet_core::request_record::ImageRecord;
use fleet_core::{ControlNetRecord, JobSpec};
use fleet_engine::{
    ControlNetUsed, ControlPreprocess, EncodeOptions, EngineError, GenerationParams, InitImageUsed, LoraUsed,
    Provenance, encode_image,
};
use image::RgbImage;

use crate::request::job_request;

/// The job's quality and the configured PNG effort.
pub fn encode_options(spec: &JobSpec, worker: &WorkerConfig) -> EncodeOptions {
    EncodeOptions {
        quality: spec.output.quality.unwrap_or(EncodeOptions::default().quality),
        png: worker.png_compression,
    }
}

/// Image `index` of a job, encoded with the job's parameters embedded — the job's alone, never a
/// batch's (a batch mixes tenants). `prediction_type` is the pipeline scheduler's.
pub fn encode_job_image(
    spec: &JobSpec,
    worker: &WorkerConfig,
    index: usize,
    image: &RgbImage,
    prediction_type: &str,
) -> Result<Vec<u8>, EngineError> {
    let params =
        GenerationParams::for_image(&job_request(spec), index, &spec.model, prediction_type, &provenance(spec));
    encode_image(image, spec.output.format, &encode_options(spec, worker), Some(&params))
}

/// The job's LoRAs, ControlNet and init image as an image records them: library names (the URL
/// of a LoRA given by URL), the control, init and mask images' references and, for an inline
/// image, its SHA-256 (the status record's own description of it; hashing decodes the inline
/// image again for each image, a few milliseconds per megabyte), and the strength the job ran
/// with.
pub fn provenance(spec: &JobSpec) -> Provenance {
    Provenance {
        loras: spec.loras.iter().map(|l| LoraUsed { name: l.label().to_owned(), scale: f64::from(l.scale) }).collect(),
        controlnet: spec.controlnet.as_ref().map(ControlNetRecord::of).map(|cn| ControlNetUsed {
            model: cn.model,
            image: cn.image,
            image_sha256: cn.image_sha256,
            scale: f64::from(cn.scale),
            start: f64::from(cn.start),
            end: f64::from(cn.end),
            preprocess: ControlPreprocess::None,
        }),
        unet: None,
        latents: None,
        init: spec.init_image.as_deref().map(|init| {
            let image = ImageRecord::of(init);
            let mask = spec.mask_image.as_deref().map(ImageRecord::of);
            InitImageUsed {
                image: image.image,
                image_sha256: image.image_sha256,
                strength: f64::from(spec.effective_strength().unwrap_or(fleet_core::job::DEFAULT_STRENGTH)),
                mask_sha256: mask.as_ref().and_then(|m| m.image_sha256.clone()),
                mask: mask.map(|m| m.image),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::config::PngCompression;

    #[test]
    fn images_are_encoded_with_the_jobs_quality_and_the_workers_png_effort() {
        let mut spec: JobSpec = serde_json::from_value(
            serde_json::json!({"prompt": "p", "model": "tiny", "output": {"format": "jpeg", "quality": 70}}),
        )
        .unwrap();
        let mut worker = WorkerConfig::default();
        assert_eq!(encode_options(&spec, &worker), EncodeOptions { quality: 70, png: PngCompression::Fast });
        for effort in [PngCompression::Fast, PngCompression::Balanced, PngCompression::High] {
            worker.png_compression = effort;
            assert_eq!(encode_options(&spec, &worker).png, effort);
        }
        spec.output.quality = None;
        assert_eq!(encode_options(&spec, &worker).quality, 90);
    }

    #[test]
    fn an_encoded_image_carries_the_jobs_own_parameters() {
        let spec: JobSpec = serde_json::from_value(
            serde_json::json!({"prompt": "a lighthouse", "model": "tiny", "seed": 40, "num_images": 3}),
        )
        .unwrap();
        let png = encode_job_image(&spec, &WorkerConfig::default(), 2, &RgbImage::new(8, 8), "epsilon").unwrap();
        let chunks = fleet_engine::encode::png_text_chunks(&png).unwrap();
        let (_, parameters) = chunks.iter().find(|(k, _)| k == "parameters").expect("a parameters chunk");
        assert!(parameters.starts_with("a lighthouse"), "{parameters}");
        assert!(parameters.contains("Seed: 42"), "image 2 of seed 40 records seed 42: {parameters}");
    }

    #[test]
    fn an_encoded_image_records_the_jobs_loras_and_controlnet() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "prompt": "a lighthouse", "model": "tiny", "seed": 40,
            "loras": [{"name": "style", "scale": 0.75}],
            "controlnet": {"model": "canny", "image": "s3://controls/edges.png", "scale": 0.5, "start": 0.25, "end": 0.75},
            "output": {"format": "webp"}
        }))
        .unwrap();
        let webp = encode_job_image(&spec, &WorkerConfig::default(), 0, &RgbImage::new(8, 8), "epsilon").unwrap();
        let params = fleet_engine::read_generation_params(&webp).unwrap().expect("parameters in the WebP");
        assert_eq!(params.provenance.loras, vec![LoraUsed { name: "style".into(), scale: 0.75 }]);
        let cn = params.provenance.controlnet.expect("the ControlNet");
        assert_eq!((cn.model.as_str(), cn.image.as_str()), ("canny", "s3://controls/edges.png"));
        assert_eq!((cn.scale, cn.start, cn.end), (0.5, 0.25, 0.75));
        assert_eq!(params.provenance.init, None);
    }

    #[test]
    fn an_encoded_image_records_the_jobs_init_image_mask_and_strength() {
        // A 1×1 PNG, base64.
        let inline = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
        let png = fleet_core::validate::decode_inline_image(inline, usize::MAX).unwrap();
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "prompt": "a harbour", "model": "tiny", "seed": 1,
            "init_image": "s3://inputs/start.png", "mask_image": inline, "strength": 0.3
        }))
        .unwrap();
        let bytes = encode_job_image(&spec, &WorkerConfig::default(), 0, &RgbImage::new(8, 8), "epsilon").unwrap();
        let params = fleet_engine::read_generation_params(&bytes).unwrap().expect("parameters in the PNG");
        let sha = fleet_core::request_record::sha256_hex(&png);
        let expected = InitImageUsed {
            image: "s3://inputs/start.png".into(),
            image_sha256: None,
            // The strength the worker ran: the job's f32, widened.
            strength: f64::from(0.3f32),
            mask: Some("inline".into()),
            mask_sha256: Some(sha),
        };
        assert_eq!(params.provenance.init, Some(expected));
        assert!(params.a1111_text().contains("Denoising strength: 0.3, "), "{}", params.a1111_text());
        // Without a strength of its own the job runs (and records) the default.
        let spec = JobSpec { strength: None, mask_image: None, ..spec };
        let bytes = encode_job_image(&spec, &WorkerConfig::default(), 0, &RgbImage::new(8, 8), "epsilon").unwrap();
        let init = fleet_engine::read_generation_params(&bytes).unwrap().unwrap().provenance.init.unwrap();
        assert_eq!((init.strength, init.mask), (f64::from(fleet_core::job::DEFAULT_STRENGTH), None));
    }
}
