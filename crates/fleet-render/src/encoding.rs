//! How a job's images are encoded: the job's format and quality, the process's PNG effort, and
//! the job's own parameters embedded in each file.

use fleet_core::JobSpec;
use fleet_core::config::WorkerConfig;
use fleet_engine::{EncodeOptions, EngineError, GenerationParams, encode_image};
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
    let params = GenerationParams::for_image(&job_request(spec), index, &spec.model, prediction_type);
    encode_image(image, spec.output.format, &encode_options(spec, worker), Some(&params))
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
        let chunks = fleet_engine::encode::png_text_chunks(&png);
        let (_, parameters) = chunks.iter().find(|(k, _)| k == "parameters").expect("a parameters chunk");
        assert!(parameters.starts_with("a lighthouse"), "{parameters}");
        assert!(parameters.contains("Seed: 42"), "image 2 of seed 40 records seed 42: {parameters}");
    }
}
