//! PNG / JPEG / WebP encoding with the generation parameters embedded.
//!
//! * PNG: a `tEXt` chunk `parameters` in the AUTOMATIC1111 / ComfyUI-readable style
//!   (`iTXt` when the text is not Latin-1), plus an `iTXt` chunk `fleet_request` holding the
//!   JSON of the full request and this image's seed.
//! * JPEG: two `COM` segments (the `parameters` text, then the JSON).
//! * WebP (lossless; `quality` is ignored): extended format with an `EXIF` chunk whose
//!   `UserComment` is the `parameters` text (as A1111 writes it) and an `XMP ` chunk with the JSON.
//!
//! One file for one thing, writing a result image with its parameters: the three formats share
//! [`GenerationParams`] and the tests that read each back; the code is under 400 lines, the rest tests.

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder, RgbImage};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::pipeline::GenerateRequest;

/// The output formats: the job contract's (fleet-core), one list for jobs and files.
pub use fleet_core::ImageFormat;

/// The output format of a file name, by its extension.
pub fn format_of_path(path: &Path) -> Result<ImageFormat> {
    ImageFormat::from_path(path).map_err(EngineError::InvalidRequest)
}

/// Everything about how one image was made.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    /// This image's seed.
    pub seed: u64,
    pub model: String,
    pub prediction_type: String,
    pub sampler: String,
    /// Index of the image in its request.
    pub index: usize,
    /// The whole request as given.
    pub request: GenerateRequest,
}

impl GenerationParams {
    /// Parameters of image `index` of `req` (prompt-major order).
    pub fn for_image(req: &GenerateRequest, index: usize, model: &str, prediction_type: &str) -> Self {
        let n = req.num_images.max(1);
        Self {
            prompt: req.prompts.get(index / n).cloned().unwrap_or_default(),
            negative_prompt: req.negative_prompt.clone().filter(|s| !s.is_empty()),
            steps: req.steps,
            guidance: req.guidance,
            width: req.width,
            height: req.height,
            seed: req.seed.wrapping_add(index as u64),
            model: model.to_string(),
            prediction_type: prediction_type.to_string(),
            sampler: "Euler (trailing)".into(),
            index,
            request: req.clone(),
        }
    }

    /// The A1111-style `parameters` text.
    pub fn a1111_text(&self) -> String {
        let mut s = self.prompt.clone();
        if let Some(n) = &self.negative_prompt {
            s.push_str(&format!("\nNegative prompt: {n}"));
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Prediction type: {}, Version: fleet-engine {}",
            self.steps,
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.model,
            self.prediction_type,
            env!("CARGO_PKG_VERSION")
        ));
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

fn enc_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Image(e.to_string())
}

/// PNG's deflate effort: fleet-core's (the worker's configuration and the CLI read the same).
pub use fleet_core::config::PngCompression;

/// How images are encoded, beyond their format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// JPEG quality 1–100 (PNG and lossless WebP ignore it).
    pub quality: u8,
    /// PNG's deflate effort (JPEG and WebP ignore it).
    pub png: PngCompression,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { quality: 90, png: PngCompression::default() }
    }
}

/// Encode `img` in `format` with `params` embedded.
pub fn encode_image(
    img: &RgbImage,
    format: ImageFormat,
    options: &EncodeOptions,
    params: Option<&GenerationParams>,
) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let _span = tracing::info_span!("encode_image", format = ?format, width = w, height = h).entered();
    let mut buf = Vec::new();
    match format {
        ImageFormat::Png => encode_png(&mut buf, img, options.png, params)?,
        ImageFormat::Jpeg => {
            encode_jpeg(&mut buf, img, options.quality)?;
            if let Some(p) = params {
                buf = jpeg_insert_comments(&buf, &[&p.a1111_text(), &p.json()])?;
            }
        }
        ImageFormat::Webp => {
            image::codecs::webp::WebPEncoder::new_lossless(&mut buf)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
                .map_err(enc_err)?;
            if let Some(p) = params {
                buf = webp_add_metadata(&buf, w, h, &p.a1111_text(), &p.json())?;
            }
        }
    }
    Ok(buf)
}

/// Output file names: one image → `out` itself; several → `<stem>_<i>.<ext>` beside it.
pub fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..n).map(|i| out.with_file_name(format!("{stem}_{i}.{ext}"))).collect()
}

/// Write the images of one call next to `out` (see [`output_paths`]), in `out`'s format,
/// each with its own parameters embedded. Returns the paths written.
pub fn save_images(
    out: &Path,
    images: &[RgbImage],
    req: &GenerateRequest,
    model: &str,
    prediction_type: &str,
    options: &EncodeOptions,
) -> Result<Vec<PathBuf>> {
    let format = format_of_path(out)?;
    let paths = output_paths(out, images.len());
    for (i, (img, path)) in images.iter().zip(&paths).enumerate() {
        let params = GenerationParams::for_image(req, i, model, prediction_type);
        let bytes = encode_image(img, format, options, Some(&params))?;
        std::fs::write(path, bytes).map_err(|e| EngineError::Io { path: path.clone(), source: e })?;
    }
    Ok(paths)
}

// ---------- PNG ----------

/// PNG with the parameters in text chunks (`parameters` is what A1111, ComfyUI and civitai read),
/// written by the `png` crate while it encodes: Latin-1 text as `tEXt`, anything else as `iTXt`.
/// Adaptive row filters at every level (what the `png` crate pairs with each of them).
fn encode_png(
    buf: &mut Vec<u8>,
    img: &RgbImage,
    compression: PngCompression,
    params: Option<&GenerationParams>,
) -> Result<()> {
    let (w, h) = img.dimensions();
    let mut encoder = png::Encoder::new(buf, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(match compression {
        PngCompression::Fast => png::Compression::Fast,
        PngCompression::Balanced => png::Compression::Balanced,
        PngCompression::High => png::Compression::High,
    });
    encoder.set_filter(png::Filter::Adaptive);
    if let Some(p) = params {
        for (key, text) in [("parameters", p.a1111_text()), ("fleet_request", p.json())] {
            let latin1 = text.chars().all(|c| (c as u32) < 256 && c != '\0');
            let added = if latin1 {
                encoder.add_text_chunk(key.to_owned(), text)
            } else {
                encoder.add_itxt_chunk(key.to_owned(), text)
            };
            added.map_err(enc_err)?;
        }
    }
    let mut writer = encoder.write_header().map_err(enc_err)?;
    writer.write_image_data(img.as_raw()).map_err(enc_err)?;
    writer.finish().map_err(enc_err)
}

/// Read back `tEXt` / `iTXt` chunks of a PNG (keyword → text).
pub fn png_text_chunks(png: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 12 <= png.len() {
        let len = u32::from_be_bytes([png[pos], png[pos + 1], png[pos + 2], png[pos + 3]]) as usize;
        let kind = &png[pos + 4..pos + 8];
        let Some(data) = png.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if (kind == b"tEXt" || kind == b"iTXt")
            && let Some(z) = data.iter().position(|&b| b == 0)
        {
            let key = String::from_utf8_lossy(&data[..z]).to_string();
            let text = if kind == b"tEXt" {
                data[z + 1..].iter().map(|&b| b as char).collect()
            } else {
                // skip compression flag, method, then language and translated keyword
                let rest = &data[(z + 3).min(data.len())..];
                let mut parts = rest.splitn(3, |&b| b == 0);
                let _lang = parts.next();
                let _tk = parts.next();
                String::from_utf8_lossy(parts.next().unwrap_or(&[])).to_string()
            };
            out.push((key, text));
        }
        pos += 12 + len;
    }
    out
}

// ---------- JPEG ----------

/// Baseline JPEG at `quality` (1–100) with full-resolution chroma (4:4:4, as `image`'s encoder
/// writes it) and Huffman tables fitted to the image, through `jpeg-encoder`: 11–12 ms per
/// megapixel against 16–17 for `image`'s encoder, files within ±2 % (docs/PERFORMANCE.md).
fn encode_jpeg(buf: &mut Vec<u8>, img: &RgbImage, quality: u8) -> Result<()> {
    let (w, h) = img.dimensions();
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(EngineError::Image(format!("a {w}×{h} image is beyond JPEG's 65,535 pixels a side")));
    };
    let mut encoder = jpeg_encoder::Encoder::new(buf, quality.clamp(1, 100));
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    encoder.set_optimized_huffman_tables(true);
    encoder.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb).map_err(enc_err)
}

fn jpeg_insert_comments(jpg: &[u8], comments: &[&str]) -> Result<Vec<u8>> {
    if jpg.len() < 4 || jpg[0] != 0xFF || jpg[1] != 0xD8 {
        return Err(EngineError::Image("not a JPEG stream".into()));
    }
    let mut out = jpg[..2].to_vec();
    for c in comments {
        let bytes = c.as_bytes();
        let bytes = &bytes[..bytes.len().min(65533)];
        out.extend_from_slice(&[0xFF, 0xFE]);
        out.extend_from_slice(&((bytes.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&jpg[2..]);
    Ok(out)
}

// ---------- WebP ----------

fn riff_chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = fourcc.to_vec();
    c.extend_from_slice(&(data.len() as u32).to_le_bytes());
    c.extend_from_slice(data);
    if data.len() % 2 == 1 {
        c.push(0);
    }
    c
}

/// Big-endian TIFF with IFD0 → Exif IFD → UserComment ("UNICODE\0" + UTF-16BE), as piexif writes it.
fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for u in text.encode_utf16() {
        comment.extend_from_slice(&u.to_be_bytes());
    }
    let mut t = b"MM\0\x2A".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes());
    // IFD0 at 8: 1 entry (ExifIFD pointer), next IFD 0.
    let exif_ifd = 8 + 2 + 12 + 4;
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x8769u16.to_be_bytes());
    t.extend_from_slice(&4u16.to_be_bytes()); // LONG
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&(exif_ifd as u32).to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    // Exif IFD: 1 entry UserComment (UNDEFINED), data after it.
    let data_off = exif_ifd + 2 + 12 + 4;
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x9286u16.to_be_bytes());
    t.extend_from_slice(&7u16.to_be_bytes());
    t.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    t.extend_from_slice(&(data_off as u32).to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&comment);
    t
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn webp_add_metadata(webp: &[u8], w: u32, h: u32, params: &str, json: &str) -> Result<Vec<u8>> {
    if webp.len() < 20 || &webp[..4] != b"RIFF" || &webp[8..12] != b"WEBP" {
        return Err(EngineError::Image("not a WebP stream".into()));
    }
    let first = &webp[12..16];
    if first == b"VP8X" {
        return Err(EngineError::Image("WebP already in extended format".into()));
    }
    let image_chunks = &webp[12..];
    let mut vp8x = vec![0u8; 10];
    vp8x[0] = 0x08 | 0x04; // EXIF + XMP
    let (cw, ch) = (w - 1, h - 1);
    vp8x[4..7].copy_from_slice(&cw.to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&ch.to_le_bytes()[..3]);
    let xmp = format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description xmlns:dc=\"http://purl.org/dc/elements/1.1/\" xmlns:fleet=\"https://github.com/lightning-fleet/lightning-fleet/ns/1.0/\"><dc:description>{}</dc:description><fleet:request>{}</fleet:request></rdf:Description></rdf:RDF></x:xmpmeta>",
        xml_escape(params),
        xml_escape(json)
    );
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend_from_slice(image_chunks);
    body.extend(riff_chunk(b"EXIF", &exif_user_comment(params)));
    body.extend(riff_chunk(b"XMP ", xmp.as_bytes()));
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> GenerationParams {
        let req = GenerateRequest {
            prompts: vec!["a cat".into(), "ünïcode dog ✓".into()],
            negative_prompt: Some("blurry".into()),
            num_images: 2,
            seed: 7,
            ..GenerateRequest::default()
        };
        GenerationParams::for_image(&req, 3, "tiny", "epsilon")
    }

    fn img() -> RgbImage {
        RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 7]))
    }

    #[test]
    fn latin1_text_goes_in_text_chunks_and_the_rest_in_itxt() {
        let req = GenerateRequest { prompts: vec!["a plain cat".into()], ..GenerateRequest::default() };
        let plain = GenerationParams::for_image(&req, 0, "tiny", "epsilon");
        let bytes = encode_image(&img(), ImageFormat::Png, &EncodeOptions::default(), Some(&plain)).unwrap();
        assert!(bytes.windows(14).any(|w| w == b"tEXtparameters"));
        assert!(!bytes.windows(4).any(|w| w == b"iTXt"));
        let bytes = encode_image(&img(), ImageFormat::Png, &EncodeOptions::default(), Some(&params())).unwrap();
        assert!(bytes.windows(14).any(|w| w == b"iTXtparameters"));
        assert_eq!(
            png_text_chunks(&bytes).iter().find(|(k, _)| k == "parameters").unwrap().1.lines().next(),
            Some("ünïcode dog ✓")
        );
    }

    #[test]
    fn png_roundtrip_with_text() {
        let p = params();
        assert_eq!(p.seed, 10);
        assert_eq!(p.prompt, "ünïcode dog ✓");
        let bytes = encode_image(&img(), ImageFormat::Png, &EncodeOptions::default(), Some(&p)).unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, img());
        let chunks = png_text_chunks(&bytes);
        let params_text = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
        assert!(params_text.starts_with("ünïcode dog ✓\nNegative prompt: blurry\nSteps: 4, Sampler: Euler"));
        assert!(params_text.contains("Seed: 10, Size: 1024x1024"));
        let json = &chunks.iter().find(|(k, _)| k == "fleet_request").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["seed"], 10);
        assert_eq!(v["request"]["prompts"][0], "a cat");
    }

    #[test]
    fn every_png_compression_keeps_pixels_and_text_and_takes_effect() {
        // Smooth gradients plus fine detail, where zlib's effort pays. (On some photographs
        // fdeflate's one pass comes out smaller than level 6: docs/PERFORMANCE.md.)
        let photo = RgbImage::from_fn(192, 128, |x, y| {
            let v = ((x as f32 / 9.0).sin() * 60.0 + (y as f32 / 13.0).cos() * 50.0 + ((x * y) % 7) as f32) as i32;
            image::Rgb([(128 + v).clamp(0, 255) as u8, (100 + v / 2).clamp(0, 255) as u8, (x % 256) as u8])
        });
        let p = params();
        let sizes: Vec<usize> = [PngCompression::Fast, PngCompression::Balanced, PngCompression::High]
            .into_iter()
            .map(|png| {
                let bytes = encode_image(
                    &photo,
                    ImageFormat::Png,
                    &EncodeOptions { png, ..EncodeOptions::default() },
                    Some(&p),
                )
                .unwrap();
                assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), photo, "{png:?}");
                assert!(png_text_chunks(&bytes).iter().any(|(k, v)| k == "fleet_request" && v.contains("\"seed\":10")));
                bytes.len()
            })
            .collect();
        assert!(sizes[1] < sizes[0] && sizes[2] <= sizes[1], "sizes fast/balanced/high: {sizes:?}");
        assert_eq!(EncodeOptions::default().png, PngCompression::Fast);
        assert_eq!("Balanced".parse::<PngCompression>(), Ok(PngCompression::Balanced));
        assert!("turbo".parse::<PngCompression>().unwrap_err().contains("fast, balanced or high"));
    }

    #[test]
    fn jpeg_and_webp_decode_with_metadata() {
        let p = params();
        let j = encode_image(&img(), ImageFormat::Jpeg, &EncodeOptions::default(), Some(&p)).unwrap();
        assert_eq!(image::load_from_memory(&j).unwrap().to_rgb8().dimensions(), (16, 8));
        assert!(j.windows(11).any(|w| w == b"Seed: 10, S"));
        let w = encode_image(&img(), ImageFormat::Webp, &EncodeOptions::default(), Some(&p)).unwrap();
        let d = image::load_from_memory(&w).unwrap().to_rgb8();
        assert_eq!(d, img());
        assert!(w.windows(4).any(|x| x == b"EXIF"));
        assert!(w.windows(10).any(|x| x == b"fleet:requ"));
    }

    #[test]
    fn jpeg_keeps_full_resolution_chroma_and_the_quality_setting() {
        // Colour that changes every pixel: 4:2:0 would smear it, 4:4:4 keeps it.
        let img = RgbImage::from_fn(64, 48, |x, y| {
            let v = if (x + y) % 2 == 0 { 230 } else { 20 };
            image::Rgb([v, 255 - v, (x * 4) as u8])
        });
        let encode = |quality| {
            let options = EncodeOptions { quality, ..EncodeOptions::default() };
            encode_image(&img, ImageFormat::Jpeg, &options, None).unwrap()
        };
        let jpg = encode(90);
        // Baseline frame header: length, precision, height, width, 3 components of (id, h<<4|v, table).
        let sof = jpg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline SOF0 segment");
        let frame = &jpg[sof + 2..];
        assert_eq!((u16::from_be_bytes([frame[3], frame[4]]), u16::from_be_bytes([frame[5], frame[6]])), (48, 64));
        assert_eq!(frame[7], 3);
        assert!((0..3).all(|c| frame[9 + 3 * c] == 0x11), "every component at full resolution (4:4:4)");
        let decoded = image::load_from_memory(&jpg).unwrap().to_rgb8();
        let mean_error =
            decoded.as_raw().iter().zip(img.as_raw()).map(|(&a, &b)| f64::from(a.abs_diff(b))).sum::<f64>()
                / img.as_raw().len() as f64;
        assert!(mean_error < 6.0, "quality 90 decodes within {mean_error:.2} levels on average");
        assert!(encode(30).len() < jpg.len(), "a lower quality writes a smaller file");
    }

    #[test]
    fn output_names() {
        assert_eq!(output_paths(Path::new("/x/out.png"), 1), vec![PathBuf::from("/x/out.png")]);
        assert_eq!(
            output_paths(Path::new("/x/out.png"), 2),
            vec![PathBuf::from("/x/out_0.png"), PathBuf::from("/x/out_1.png")]
        );
        assert!(format_of_path(Path::new("a.gif")).is_err());
        assert_eq!(format_of_path(Path::new("a.JPG")).unwrap(), ImageFormat::Jpeg);
    }
}
