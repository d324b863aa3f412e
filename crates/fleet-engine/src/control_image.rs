//! ControlNet conditioning images: bytes → RGB → resized to the output size → optional
//! preprocessing → [1, 3, H, W] f32 in [0, 1] (diffusers' control `VaeImageProcessor`:
//! resize to (width, height), `/255`, no normalisation).
//!
//! Resampling is Lanczos3 (diffusers' image processor default `resample="lanczos"`); an image
//! already at the output size is used as it is (as PIL's `resize` does), so exact-size control
//! maps give exactly diffusers' input.

use candle_core::{Device, Tensor};
use image::RgbImage;
use image::imageops::FilterType;

use crate::canny::{CANNY_HIGH, CANNY_LOW, canny_rgb};
use crate::error::{CandleContext, EngineError, Result};

/// Built-in preprocessing of a control image.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPreprocess {
    /// The image is already a control map (edges, depth, ...).
    #[default]
    None,
    /// Canny edges (after resizing) with these thresholds (OpenCV semantics).
    Canny { low: f32, high: f32 },
}

impl std::str::FromStr for ControlPreprocess {
    type Err = EngineError;
    /// `none`, `canny` (thresholds 100/200) or `canny:LOW:HIGH`.
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || EngineError::InvalidRequest(format!("control preprocess {s:?}: expected none, canny or canny:LOW:HIGH"));
        match s {
            "none" => Ok(Self::None),
            "canny" => Ok(Self::Canny { low: CANNY_LOW, high: CANNY_HIGH }),
            _ => {
                let rest = s.strip_prefix("canny:").ok_or_else(bad)?;
                let (l, h) = rest.split_once(':').ok_or_else(bad)?;
                let (low, high) = (l.parse::<f32>().map_err(|_| bad())?, h.parse::<f32>().map_err(|_| bad())?);
                if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
                    return Err(bad());
                }
                Ok(Self::Canny { low, high })
            }
        }
    }
}

/// Largest width or height of a control image this decodes: the API's own limit (it refuses
/// larger ones at submission), so an image the API accepts always decodes here.
pub use fleet_core::control_image::MAX_CONTROL_IMAGE_SIDE;

/// Most memory the decoder may allocate: RGBA at the API's pixel limit.
const MAX_DECODE_ALLOC: u64 = fleet_core::control_image::MAX_CONTROL_IMAGE_PIXELS * 4;

/// Decode a PNG/JPEG/WebP control image. The size in its header is checked before anything of
/// that size is allocated, so a small file declaring a huge image (a decompression bomb) is an
/// error, not an out-of-memory kill of the worker.
pub fn decode_control_image(bytes: &[u8]) -> Result<RgbImage> {
    decode_image(bytes, "control image")
}

/// [`decode_control_image`] for any input image (`what` names it in errors): the same formats
/// and limits.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let unreadable = |e: &dyn std::fmt::Display| {
        EngineError::InvalidRequest(format!("{what} is not a readable PNG/JPEG/WebP image: {e}"))
    };
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(&e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_CONTROL_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_CONTROL_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader.decode().map(|i| i.to_rgb8()).map_err(|e| unreadable(&e))
}

/// Resize (when needed) and preprocess an RGB control image.
pub fn prepare_control_image(img: &RgbImage, width: usize, height: usize, pre: ControlPreprocess) -> RgbImage {
    let (w, h) = (width as u32, height as u32);
    let resized = if img.width() == w && img.height() == h {
        img.clone()
    } else {
        image::imageops::resize(img, w, h, FilterType::Lanczos3)
    };
    match pre {
        ControlPreprocess::None => resized,
        ControlPreprocess::Canny { low, high } => canny_rgb(&resized, low, high),
    }
}

/// An RGB image as [1, 3, H, W] f32 in [0, 1].
pub fn image_to_tensor(img: &RgbImage) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, h, w, 3), &Device::Cpu)
        .and_then(|t| t.permute((0, 3, 1, 2))?.contiguous())
        .ctx("control image")
}

/// Bytes of an image file → the conditioning tensor for a `width`×`height` generation.
pub fn control_image_tensor(bytes: &[u8], width: usize, height: usize, pre: ControlPreprocess) -> Result<Tensor> {
    if width == 0 || height == 0 {
        return Err(EngineError::InvalidRequest(format!("control image size {width}x{height}")));
    }
    image_to_tensor(&prepare_control_image(&decode_control_image(bytes)?, width, height, pre))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn exact_size_images_are_divided_by_255_in_chw_order() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 100, y as u8 * 255, 7]));
        let t = control_image_tensor(&png(&img), 3, 2, ControlPreprocess::None).unwrap();
        assert_eq!(t.dims(), [1, 3, 2, 3]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&v[0..3], &[0.0, 100.0 / 255.0, 200.0 / 255.0]); // R, row 0
        assert_eq!(&v[6..12], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]); // G rows 0 and 1
        assert!((v[12] - 7.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn other_sizes_are_resized_and_canny_gives_a_binary_map() {
        let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb(if x < 20 { [0, 0, 0] } else { [255, 255, 255] }));
        let t = control_image_tensor(&png(&img), 16, 8, ControlPreprocess::None).unwrap();
        assert_eq!(t.dims(), [1, 3, 8, 16]);
        let c = control_image_tensor(&png(&img), 16, 8, "canny".parse().unwrap()).unwrap();
        let v = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
        assert!(v.contains(&1.0));
    }

    #[test]
    fn bad_bytes_and_bad_preprocess_names_are_errors() {
        let e = control_image_tensor(b"not an image", 8, 8, ControlPreprocess::None).unwrap_err();
        assert!(e.to_string().contains("control image is not a readable"), "{e}");
        assert!("sobel".parse::<ControlPreprocess>().is_err());
        assert!("canny:200:100".parse::<ControlPreprocess>().is_err());
        assert_eq!(
            "canny:50:150".parse::<ControlPreprocess>().unwrap(),
            ControlPreprocess::Canny { low: 50.0, high: 150.0 }
        );
    }
}
