//! Image-to-image and inpainting inputs: bytes → RGB → resized to the output size → tensors, as
//! diffusers' `VaeImageProcessor`s prepare them.
//!
//! - Init image: [1, 3, H, W] f32 in [0, 1] (the VAE maps it to [-1, 1]).
//! - Mask: the mask processor (`do_convert_grayscale`, `do_binarize`, no normalisation): resized,
//!   to 8-bit grey with PIL's `convert("L")` weights, `/255`, then 1 where ≥ 0.5 (repaint) and 0
//!   elsewhere (keep): [1, 1, H, W] f32.
//!
//! Resampling is Lanczos3 as for control images ([`crate::control_image`]); an image already at
//! the output size is used as it is, so exact-size inputs give exactly diffusers' tensors.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::control_image::{ControlPreprocess, decode_image, image_to_tensor, prepare_control_image};
use crate::error::{CandleContext, EngineError, Result};

fn check_size(what: &str, width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(EngineError::InvalidRequest(format!("{what} size {width}x{height}")));
    }
    Ok(())
}

/// Bytes of a PNG/JPEG/WebP init image → [1, 3, H, W] f32 in [0, 1] for a `width`×`height`
/// generation.
pub fn init_image_tensor(bytes: &[u8], width: usize, height: usize) -> Result<Tensor> {
    check_size("init image", width, height)?;
    let img = decode_image(bytes, "init image")?;
    image_to_tensor(&prepare_control_image(&img, width, height, ControlPreprocess::None))
}

/// PIL's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn luma(p: &image::Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// An RGB mask at the output size → [1, 1, H, W] f32 of 0 (keep) and 1 (repaint).
pub fn mask_from_rgb(img: &RgbImage) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img.pixels().map(|p| if f32::from(luma(p)) / 255.0 >= 0.5 { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(data, (1, 1, h, w), &Device::Cpu).ctx("mask image")
}

/// Bytes of a PNG/JPEG/WebP mask (white = repaint, black = keep) → [1, 1, H, W] f32 of 0 and 1
/// for a `width`×`height` generation.
pub fn mask_tensor(bytes: &[u8], width: usize, height: usize) -> Result<Tensor> {
    check_size("mask image", width, height)?;
    let img = decode_image(bytes, "mask image")?;
    mask_from_rgb(&prepare_control_image(&img, width, height, ControlPreprocess::None))
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
    fn masks_are_binarised_at_half_grey() {
        // Grey 127 → 0, 128 → 1; pure red's luma (76) → 0, pure green's (150) → 1.
        let colours = [[127, 127, 127], [128, 128, 128], [255, 0, 0], [0, 255, 0]];
        let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb(colours[x as usize]));
        let m = mask_tensor(&png(&img), 4, 1).unwrap();
        assert_eq!(m.dims(), [1, 1, 1, 4]);
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn init_images_are_resized_to_the_output_size() {
        let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb([x as u8, 0, 255]));
        let t = init_image_tensor(&png(&img), 16, 8).unwrap();
        assert_eq!(t.dims(), [1, 3, 8, 16]);
    }

    #[test]
    fn webp_and_jpeg_inputs_decode_like_png() {
        let img = RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 200]));
        let encoded = |format| {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, format).unwrap();
            out.into_inner()
        };
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let from_png = flat(init_image_tensor(&png(&img), 16, 8).unwrap());
        // Lossless WebP: the same pixels, so the same tensor; the mask too.
        let webp = encoded(image::ImageFormat::WebP);
        assert_eq!(flat(init_image_tensor(&webp, 16, 8).unwrap()), from_png);
        assert_eq!(flat(mask_tensor(&webp, 16, 8).unwrap()), flat(mask_tensor(&png(&img), 16, 8).unwrap()));
        let jpeg = flat(init_image_tensor(&encoded(image::ImageFormat::Jpeg), 16, 8).unwrap());
        assert_eq!(jpeg.len(), from_png.len());
    }

    #[test]
    fn unreadable_inputs_name_themselves() {
        let e = init_image_tensor(b"nope", 8, 8).unwrap_err();
        assert!(e.to_string().contains("init image is not a readable"), "{e}");
        let e = mask_tensor(b"nope", 8, 8).unwrap_err();
        assert!(e.to_string().contains("mask image is not a readable"), "{e}");
        assert!(mask_tensor(b"nope", 0, 8).is_err());
    }
}
