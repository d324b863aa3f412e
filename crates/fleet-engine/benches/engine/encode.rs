//! `-- --encode [--size N] [--save-raw DIR] [--image FILE …]`: what encoding one result image
//! costs the worker, per format and PNG compression level, on photo-like test images (printed
//! numbers, not timed tests).
//!
//! The images are 1/f noise — the power spectrum of natural photographs — built from bilinearly
//! upsampled random grids at every octave, the colour channels correlated; "photo" adds ±3 of
//! per-pixel grain (sensor-like detail), "smooth" none (clean renders, illustrations). Their
//! PNGs come out at 0.47 and 0.27–0.32 of the raw size; real photographs measured 0.39–0.68
//! (docs/PERFORMANCE.md). `--save-raw DIR` writes the pixels (`<name>-<w>x<h>.rgb`,
//! 8-bit RGB) for `bench/png_encode_pillow.py`, which times Pillow's PNG writer on the same
//! images. `--image FILE` (repeatable) times these files' pixels instead, e.g. real photographs
//! or the engine's own output.

use std::time::Instant;

use fleet_engine::{EncodeOptions, ImageFormat, PngCompression, encode_image};
use image::RgbImage;

/// splitmix64: uniform numbers in [-1, 1) without a random-number crate.
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A `size`² photo-like image (see the module docs); `grain` is the per-pixel noise amplitude.
fn photo_like(size: usize, grain: f32, seed: u64) -> RgbImage {
    let mut rng = Uniform(seed);
    let mut acc = vec![0f32; size * size * 3];
    let (mut cell, mut amp) = (size / 4, 60f32);
    while cell >= 2 {
        let g = size / cell + 2;
        let grid: Vec<[f32; 3]> = (0..g * g)
            .map(|_| {
                let base = rng.next();
                std::array::from_fn(|_| base + 0.3 * rng.next())
            })
            .collect();
        for y in 0..size {
            let (fy, ty) = (y / cell, (y % cell) as f32 / cell as f32);
            for x in 0..size {
                let (fx, tx) = (x / cell, (x % cell) as f32 / cell as f32);
                for c in 0..3 {
                    let at = |i: usize, j: usize| grid[j * g + i][c];
                    let v = at(fx, fy) * (1. - tx) * (1. - ty)
                        + at(fx + 1, fy) * tx * (1. - ty)
                        + at(fx, fy + 1) * (1. - tx) * ty
                        + at(fx + 1, fy + 1) * tx * ty;
                    acc[(y * size + x) * 3 + c] += v * amp;
                }
            }
        }
        (cell, amp) = (cell / 2, amp * 0.6);
    }
    let pixels = acc
        .iter()
        .map(|v| {
            let noise = grain * rng.next();
            (128.0 + v + noise).clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage::from_raw(size as u32, size as u32, pixels).expect("size² RGB pixels")
}

/// Fastest of three encodes, in seconds, and the encoded size.
fn time_encode(img: &RgbImage, format: ImageFormat, options: &EncodeOptions) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        bytes = encode_image(img, format, options, None).expect("encode").len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, bytes)
}

/// `images`: files to time instead of the generated test images (any format `image` reads).
pub fn encode_bench(size: usize, save_raw: Option<&str>, images: &[String]) {
    let inputs: Vec<(String, RgbImage)> = if images.is_empty() {
        vec![("photo".into(), photo_like(size, 3.0, 7)), ("smooth".into(), photo_like(size, 0.0, 7))]
    } else {
        images
            .iter()
            .map(|p| {
                let name = std::path::Path::new(p).file_stem().map_or(p.clone(), |s| s.to_string_lossy().into_owned());
                (name, image::open(p).expect("read the --image file").to_rgb8())
            })
            .collect()
    };
    println!("encoding one image, one thread, fastest of 3; size as a fraction of the raw RGB");
    println!("{:<16} {:<24} {:>10} {:>10} {:>7} {:>8}", "image", "format", "ms", "KiB", "of raw", "ms/MP");
    for (name, img) in inputs {
        let (w, h) = img.dimensions();
        let size = format!("{w}x{h}");
        if let Some(dir) = save_raw {
            let path = std::path::Path::new(dir).join(format!("{name}-{size}.rgb"));
            std::fs::write(&path, img.as_raw()).expect("write the raw pixels");
        }
        let png = |png| EncodeOptions { png, ..EncodeOptions::default() };
        let cases = [
            ("PNG fast (default)", ImageFormat::Png, png(PngCompression::Fast)),
            ("PNG balanced (zlib 6)", ImageFormat::Png, png(PngCompression::Balanced)),
            ("PNG high (zlib 9)", ImageFormat::Png, png(PngCompression::High)),
            ("JPEG quality 90", ImageFormat::Jpeg, EncodeOptions::default()),
            ("WebP lossless", ImageFormat::Webp, EncodeOptions::default()),
        ];
        let raw = f64::from(w * h * 3);
        for (label, format, options) in cases {
            let (secs, bytes) = time_encode(&img, format, &options);
            println!(
                "{name:<16} {label:<24} {:>10.1} {:>10.0} {:>7.3} {:>8.1}",
                secs * 1e3,
                bytes as f64 / 1024.0,
                bytes as f64 / raw,
                secs * 1e3 * 3e6 / raw
            );
        }
    }
}
