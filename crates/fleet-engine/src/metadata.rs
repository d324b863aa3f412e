//! The generation parameters embedded in every image this engine writes, and reading them back.
//!
//! Each file carries two texts: `parameters`, the AUTOMATIC1111-style text that A1111, ComfyUI
//! and civitai read, and the JSON of [`GenerationParams`] (`fleet_request`), which holds what it
//! takes to make the image again: the request, this image's prompt and seed, the LoRAs (library
//! names or files as given, with their scales), the ControlNet (model, scale, start and end,
//! the control image's reference and SHA-256) and the init image and mask of image-to-image and
//! inpainting (references, SHA-256s and strength). Where each format keeps them is in
//! [`crate::encode`]; [`read_generation_params`] finds the JSON in any of the three.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::control_image::ControlPreprocess;
use crate::error::{EngineError, Result};
use crate::pipeline::GenerateRequest;

/// The keyword of the PNG text chunk (and the name of the XMP element) holding the JSON.
pub const FLEET_KEY: &str = "fleet_request";

/// A LoRA fused into the model that made an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraUsed {
    /// A library name, or a `.safetensors` file as it was given.
    pub name: String,
    pub scale: f64,
}

/// The ControlNet that conditioned an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetUsed {
    /// A library name, or a ControlNet folder as it was given.
    pub model: String,
    /// Where the control image came from: a file as given, an `s3://` URI, or `inline`.
    pub image: String,
    /// Hex SHA-256 of the control image's bytes, when they were at hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
    /// What was done to the control image before use.
    #[serde(default)]
    pub preprocess: ControlPreprocess,
}

/// The picture an image-to-image or inpainting image started from, and its mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImageUsed {
    /// Where the init image came from: a file as given, an `s3://` URI, or `inline`.
    pub image: String,
    /// Hex SHA-256 of the init image's bytes, when they were at hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Fraction of the schedule that ran (diffusers' `strength`).
    pub strength: f64,
    /// Inpainting: where the mask came from, as for `image`; `None` for image-to-image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Hex SHA-256 of the mask's bytes, when they were at hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_sha256: Option<String>,
}

/// What made an image besides its request: the weights fused in or swapped, the ControlNet and
/// the init image (the request's tensors are not part of its JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// LoRAs, in fusing order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraUsed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<ControlNetUsed>,
    /// UNet weights that replaced the model's, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet: Option<String>,
    /// The latents file the initial noise came from, as given (the seed then decided nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    /// Image-to-image / inpainting: the init image, strength and mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitImageUsed>,
}

/// Everything about how one image was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(flatten)]
    pub provenance: Provenance,
}

impl GenerationParams {
    /// Parameters of image `index` of `req` (prompt-major order).
    pub fn for_image(
        req: &GenerateRequest,
        index: usize,
        model: &str,
        prediction_type: &str,
        provenance: &Provenance,
    ) -> Self {
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
            provenance: provenance.clone(),
        }
    }

    /// The A1111-style `parameters` text.
    pub fn a1111_text(&self) -> String {
        let mut s = self.prompt.clone();
        if let Some(n) = &self.negative_prompt {
            s.push_str(&format!("\nNegative prompt: {n}"));
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Prediction type: {}",
            self.steps, self.guidance, self.seed, self.width, self.height, self.model, self.prediction_type,
        ));
        let p = &self.provenance;
        if !p.loras.is_empty() {
            let loras: Vec<String> = p.loras.iter().map(|l| format!("{}:{}", l.name, l.scale)).collect();
            s.push_str(&format!(", LoRAs: \"{}\"", loras.join(", ")));
        }
        if let Some(cn) = &p.controlnet {
            s.push_str(&format!(
                ", ControlNet 0: \"Model: {}, Weight: {}, Guidance Start: {}, Guidance End: {}, Image: {}{}\"",
                cn.model,
                cn.scale,
                cn.start,
                cn.end,
                cn.image,
                cn.image_sha256.as_deref().map(|h| format!(" (sha256 {h})")).unwrap_or_default()
            ));
        }
        if let Some(init) = &p.init {
            // A1111's img2img key, then where the pictures came from.
            let sha = |h: &Option<String>| h.as_deref().map(|h| format!(" (sha256 {h})")).unwrap_or_default();
            s.push_str(&format!(
                ", Denoising strength: {}, Init image: \"{}{}\"",
                shortest(init.strength),
                init.image,
                sha(&init.image_sha256)
            ));
            if let Some(mask) = &init.mask {
                s.push_str(&format!(", Mask image: \"{mask}{}\"", sha(&init.mask_sha256)));
            }
        }
        s.push_str(&format!(", Version: fleet-engine {}", env!("CARGO_PKG_VERSION")));
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// `x` as text, in f32's shortest form when `x` is an f32 widened (a job's `0.3` shows as `0.3`,
/// not `0.30000001192092896`); the JSON keeps the exact value.
fn shortest(x: f64) -> String {
    let narrow = x as f32;
    if f64::from(narrow) == x { narrow.to_string() } else { x.to_string() }
}

/// The parameters embedded in an image file (PNG, JPEG or WebP, told apart by their content);
/// `Ok(None)` when the file holds none (not written by this engine).
pub fn read_generation_params(bytes: &[u8]) -> Result<Option<GenerationParams>> {
    let json = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_text_chunks(bytes)?.into_iter().find(|(k, _)| k == FLEET_KEY).map(|(_, v)| v)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        // The JSON is the comment that parses as parameters (the other is the A1111 text).
        let params = jpeg_comments(bytes).into_iter().find_map(|c| serde_json::from_str(&c).ok());
        return Ok(params);
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        webp_fleet_json(bytes)?
    } else {
        return Err(EngineError::Image("not a PNG, JPEG or WebP file".into()));
    };
    json.map(|j| {
        serde_json::from_str(&j)
            .map_err(|e| EngineError::Image(format!("its `{FLEET_KEY}` metadata is not readable: {e}")))
    })
    .transpose()
}

/// The text chunks of a PNG (keyword → text), `tEXt`, `zTXt` and `iTXt` alike, through the `png`
/// decoder (chunks before the image data, where encoders put them).
pub fn png_text_chunks(png: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = |e: png::DecodingError| EngineError::Image(format!("not a readable PNG: {e}"));
    let reader = png::Decoder::new(Cursor::new(png)).read_info().map_err(bad)?;
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for chunk in &info.compressed_latin1_text {
        out.push((chunk.keyword.clone(), chunk.get_text().map_err(bad)?));
    }
    for chunk in &info.utf8_text {
        out.push((chunk.keyword.clone(), chunk.get_text().map_err(bad)?));
    }
    Ok(out)
}

/// The `COM` segments of a JPEG, in order. The markers are walked up to the start of the scan,
/// where comments stand (no crate in the tree reads JPEG comments: `image`'s decoder drops them).
pub fn jpeg_comments(jpg: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 2;
    while pos + 4 <= jpg.len() && jpg[pos] == 0xFF {
        let marker = jpg[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image
        }
        let len = usize::from(u16::from_be_bytes([jpg[pos + 2], jpg[pos + 3]]));
        let Some(data) = jpg.get(pos + 4..pos + 2 + len) else { break };
        if marker == 0xFE {
            out.push(String::from_utf8_lossy(data).into_owned());
        }
        pos += 2 + len;
    }
    out
}

/// The `fleet:request` element of a WebP's XMP, unescaped.
fn webp_fleet_json(webp: &[u8]) -> Result<Option<String>> {
    let bad = |e: image_webp::DecodingError| EngineError::Image(format!("not a readable WebP: {e}"));
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(webp)).map_err(bad)?;
    let Some(xmp) = decoder.xmp_metadata().map_err(bad)? else { return Ok(None) };
    let xmp = String::from_utf8_lossy(&xmp);
    let (open, close) = ("<fleet:request>", "</fleet:request>");
    let Some(start) = xmp.find(open).map(|i| i + open.len()) else { return Ok(None) };
    let Some(len) = xmp[start..].find(close) else { return Ok(None) };
    Ok(Some(xml_unescape(&xmp[start..start + len])))
}

/// Text for an XML element's content or attribute.
pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}
