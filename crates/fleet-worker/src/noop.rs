//! The engine a worker runs: the real pipelines, or — for the overhead benchmark only — a no-op
//! that returns a fixed image of the requested size without running any model, so that a run
//! measures orchestration alone (RabbitMQ, Redis, encoding, S3, the worker's own loop).
//!
//! Guard: the no-op cannot be switched on by configuration. There is no config key, environment
//! variable or command-line flag for it; only a program linking this crate and calling
//! [`crate::Worker::start_noop_engine`] gets one (the `overhead` benchmark does). Such a worker
//! says so where operators look: a warning at start, and `device` = `noop (benchmark only)` in its
//! heartbeat (`GET /v1/workers`) and `fleet_worker_info`.

use fleet_engine::GenerateRequest;
use image::{Rgb, RgbImage};

/// Which engine the worker's batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineMode {
    /// The loaded pipelines (what `fleet worker` always runs).
    #[default]
    Models,
    /// No model: [`fixed_images`] for every request. Benchmarks only (see the module docs).
    Noop,
}

/// The heartbeat's device string of a no-op worker.
pub const NOOP_DEVICE: &str = "noop (benchmark only)";

/// What the no-op engine returns: one mid-grey image of the request's size per image it asks for.
pub fn fixed_images(request: &GenerateRequest) -> Vec<RgbImage> {
    let (w, h) = (u32::try_from(request.width).unwrap_or(u32::MAX), u32::try_from(request.height).unwrap_or(u32::MAX));
    (0..request.batch_size()).map(|_| RgbImage::from_pixel(w, h, Rgb([128, 128, 128]))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_image_of_the_requested_size_per_image() {
        let req = GenerateRequest { width: 72, height: 48, num_images: 3, ..GenerateRequest::new("x") };
        let images = fixed_images(&req);
        assert_eq!(images.len(), 3);
        assert!(images.iter().all(|i| i.dimensions() == (72, 48)));
        assert_eq!(EngineMode::default(), EngineMode::Models);
    }
}
