//! PNG / JPEG / WebP encoding with the generation parameters ([`crate::metadata`]) embedded.
//!
//! * PNG: a `tEXt` chunk `parameters` in the AUTOMATIC1111 / ComfyUI-readable style
//!   (`iTXt` when the text is not Latin-1), plus a chunk `fleet_request` holding the JSON of
//!   [`GenerationParams`].
//! * JPEG: two `COM` segments (the `parameters` text, then the JSON).
//! * WebP (lossless; `quality` is ignored): extended format, written by `image-webp` with its
//!   metadata setters: an `EXIF` chunk whose `UserComment` is the `parameters` text (as A1111
//!   writes it) and an `XMP ` chunk with the text and the JSON.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{EngineError, Result};
pub use crate::metadata::{
    ControlNetUsed, GenerationParams, InitImageUsed, LoraUsed, Provenance, jpeg_comments, png_text_chunks,
    read_generation_params,
};
use crate::metadata::{FLEET_KEY, xml_escape};
use crate::pipeline::GenerateRequest;

/// The output formats: the job contract's (fleet-core), one list for jobs and files.
pub use fleet_core::ImageFormat;

/// The output format of a file name, by its extension.
pub fn format_of_path(path: &Path) -> Result<ImageFormat> {
    ImageFormat::from_path(path).map_err(EngineError::InvalidRequest)
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
            let mut encoder = image_webp::WebPEncoder::new(&mut buf);
            if let Some(p) = params {
                let text = p.a1111_text();
                encoder.set_exif_metadata(exif_user_comment(&text));
                encoder.set_xmp_metadata(xmp_packet(&text, &p.json()).into_bytes());
            }
            encoder.encode(img.as_raw(), w, h, image_webp::ColorType::Rgb8).map_err(enc_err)?;
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
    provenance: &Provenance,
    options: &EncodeOptions,
) -> Result<Vec<PathBuf>> {
    let format = format_of_path(out)?;
    let paths = output_paths(out, images.len());
    for (i, (img, path)) in images.iter().zip(&paths).enumerate() {
        let params = GenerationParams::for_image(req, i, model, prediction_type, provenance);
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
        for (key, text) in [("parameters", p.a1111_text()), (FLEET_KEY, p.json())] {
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

/// Big-endian TIFF with IFD0 → Exif IFD → UserComment ("UNICODE\0" + UTF-16BE), as piexif writes it.
/// Written by hand: no crate in the dependency tree writes EXIF (`image-webp` stores the bytes
/// it is given), and one tag is 30 lines.
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

/// The XMP packet: the A1111 text as `dc:description`, the JSON as `fleet:request`.
fn xmp_packet(text: &str, json: &str) -> String {
    format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description xmlns:dc=\"http://purl.org/dc/elements/1.1/\" xmlns:fleet=\"https://github.com/lightning-fleet/lightning-fleet/ns/1.0/\"><dc:description>{}</dc:description><fleet:request>{}</fleet:request></rdf:Description></rdf:RDF></x:xmpmeta>",
        xml_escape(text),
        xml_escape(json)
    )
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
        GenerationParams::for_image(&req, 3, "tiny", "epsilon", &provenance())
    }

    fn provenance() -> Provenance {
        Provenance {
            loras: vec![
                LoraUsed { name: "pixel-art".into(), scale: 0.8 },
                LoraUsed { name: "/x/ink.safetensors".into(), scale: -0.25 },
            ],
            controlnet: Some(ControlNetUsed {
                model: "canny".into(),
                image: "edges <&> \"map\".png".into(),
                image_sha256: Some("ab".repeat(32)),
                scale: 0.8,
                start: 0.1,
                end: 0.9,
                preprocess: crate::ControlPreprocess::Canny { low: 50.0, high: 150.0 },
            }),
            unet: Some("unet.safetensors".into()),
            latents: None,
            init: Some(InitImageUsed {
                image: "start.webp".into(),
                image_sha256: Some("cd".repeat(32)),
                strength: 0.75,
                mask: Some("inline".into()),
                mask_sha256: Some("ef".repeat(32)),
            }),
        }
    }

    fn img() -> RgbImage {
        RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 7]))
    }

    #[test]
    fn latin1_text_goes_in_text_chunks_and_the_rest_in_itxt() {
        let req = GenerateRequest { prompts: vec!["a plain cat".into()], ..GenerateRequest::default() };
        let plain = GenerationParams::for_image(&req, 0, "tiny", "epsilon", &Provenance::default());
        let bytes = encode_image(&img(), ImageFormat::Png, &EncodeOptions::default(), Some(&plain)).unwrap();
        assert!(bytes.windows(14).any(|w| w == b"tEXtparameters"));
        assert!(!bytes.windows(4).any(|w| w == b"iTXt"));
        let bytes = encode_image(&img(), ImageFormat::Png, &EncodeOptions::default(), Some(&params())).unwrap();
        assert!(bytes.windows(14).any(|w| w == b"iTXtparameters"));
        assert_eq!(
            png_text_chunks(&bytes).unwrap().iter().find(|(k, _)| k == "parameters").unwrap().1.lines().next(),
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
        let chunks = png_text_chunks(&bytes).unwrap();
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
                assert!(
                    png_text_chunks(&bytes)
                        .unwrap()
                        .iter()
                        .any(|(k, v)| k == "fleet_request" && v.contains("\"seed\":10"))
                );
                bytes.len()
            })
            .collect();
        assert!(sizes[1] < sizes[0] && sizes[2] <= sizes[1], "sizes fast/balanced/high: {sizes:?}");
        assert_eq!(EncodeOptions::default().png, PngCompression::Fast);
        assert_eq!("Balanced".parse::<PngCompression>(), Ok(PngCompression::Balanced));
        assert!("turbo".parse::<PngCompression>().unwrap_err().contains("fast, balanced or high"));
    }

    #[test]
    fn every_format_decodes_and_gives_its_parameters_back() {
        let p = params();
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp] {
            let bytes = encode_image(&img(), format, &EncodeOptions::default(), Some(&p)).unwrap();
            let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(decoded.dimensions(), (16, 8), "{format:?}");
            if format != ImageFormat::Jpeg {
                assert_eq!(decoded, img(), "{format:?} is lossless");
            }
            let back = read_generation_params(&bytes).unwrap().unwrap_or_else(|| panic!("{format:?}: no parameters"));
            assert_eq!((back.prompt.as_str(), back.seed, back.index), ("ünïcode dog ✓", 10, 3), "{format:?}");
            assert_eq!(back.provenance, provenance(), "{format:?}: LoRAs, ControlNet, UNet and init image come back");
            assert_eq!(back.request.prompts, p.request.prompts, "{format:?}");
            assert_eq!(back.json(), p.json(), "{format:?}");
            let none = encode_image(&img(), format, &EncodeOptions::default(), None).unwrap();
            assert!(read_generation_params(&none).unwrap().is_none(), "{format:?} without parameters");
        }
        assert!(read_generation_params(b"GIF89a....").unwrap_err().to_string().contains("not a PNG, JPEG or WebP"));
    }

    #[test]
    fn the_a1111_text_names_the_loras_the_controlnet_and_the_init_image() {
        let text = params().a1111_text();
        assert!(text.contains(", LoRAs: \"pixel-art:0.8, /x/ink.safetensors:-0.25\""), "{text}");
        assert!(
            text.contains("ControlNet 0: \"Model: canny, Weight: 0.8, Guidance Start: 0.1, Guidance End: 0.9"),
            "{text}"
        );
        let sha = |c: &str| c.repeat(32);
        assert!(
            text.contains(&format!(
                ", Denoising strength: 0.75, Init image: \"start.webp (sha256 {})\", Mask image: \"inline (sha256 {})\"",
                sha("cd"),
                sha("ef")
            )),
            "{text}"
        );
        let jpg = encode_image(&img(), ImageFormat::Jpeg, &EncodeOptions::default(), Some(&params())).unwrap();
        assert_eq!(jpeg_comments(&jpg)[0], text);
        let webp = encode_image(&img(), ImageFormat::Webp, &EncodeOptions::default(), Some(&params())).unwrap();
        let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp)).unwrap();
        let exif = decoder.exif_metadata().unwrap().expect("an EXIF chunk");
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert!(exif.ends_with(&utf16), "the EXIF UserComment is the A1111 text");
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
