//! Checking an inline control image before a job is accepted: its header must declare a sane
//! size and the whole image must decode within a memory bound.
//!
//! A few kilobytes of PNG can declare 100,000 × 100,000 pixels (a decompression bomb); the size
//! is read from the header and refused before anything of that size is allocated. A truncated or
//! corrupt file is refused here too, so it gets a 400 at submission rather than a failed job later.

use std::io::Cursor;

use crate::validate::InlineImageKind;

/// Largest width or height of a control image (it is resized to the output size, ≤ 2048).
pub const MAX_CONTROL_IMAGE_SIDE: u32 = 8192;

/// Largest width × height of a control image (32 MP, e.g. 8192 × 4096).
pub const MAX_CONTROL_IMAGE_PIXELS: u64 = 32 * 1024 * 1024;

/// Most memory a decoder may allocate for one control image (RGBA at the pixel limit).
const MAX_DECODE_ALLOC: u64 = MAX_CONTROL_IMAGE_PIXELS * 4;

fn format_of(kind: InlineImageKind) -> image::ImageFormat {
    match kind {
        InlineImageKind::Png => image::ImageFormat::Png,
        InlineImageKind::Jpeg => image::ImageFormat::Jpeg,
        InlineImageKind::Webp => image::ImageFormat::WebP,
    }
}

/// Checks that `bytes` are a whole, decodable image of `kind` within the size limits; returns
/// its width and height.
pub fn check_inline_image(bytes: &[u8], kind: InlineImageKind) -> Result<(u32, u32), String> {
    let format = format_of(kind);
    let name = format!("{format:?}").to_uppercase();
    let unreadable = |e: image::ImageError| format!("inline image is not a readable {name}: {e}");
    let (width, height) =
        image::ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(unreadable)?;
    let pixels = u64::from(width) * u64::from(height);
    if width > MAX_CONTROL_IMAGE_SIDE || height > MAX_CONTROL_IMAGE_SIDE || pixels > MAX_CONTROL_IMAGE_PIXELS {
        return Err(format!(
            "inline image is {width}×{height} pixels; at most {MAX_CONTROL_IMAGE_SIDE} per side and \
             {MAX_CONTROL_IMAGE_PIXELS} pixels in all"
        ));
    }
    if width == 0 || height == 0 {
        return Err(format!("inline image is {width}×{height} pixels"));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits());
    reader.decode().map_err(unreadable)?;
    Ok((width, height))
}

/// Limits for decoding a control image (`fleet-engine` applies the same numbers when it decodes one).
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_CONTROL_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_CONTROL_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}
