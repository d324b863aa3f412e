//! Control-image bytes through the decoders with the fleet's limits: the API's check
//! (`fleet_core::control_image::check_inline_image`, as PNG and as JPEG), and a decode of any
//! PNG/JPEG/WebP by its guessed format with `decode_limits()` followed by the RGB conversion, which
//! is what the worker's `fleet_engine::control_image::decode_control_image` does (fleet-engine
//! itself is not linked here: building candle with coverage instrumentation does not fit the
//! machine; its resize and Canny steps are covered by its unit and `hostile` tests).

#![no_main]

use fleet_core::control_image::{MAX_CONTROL_IMAGE_SIDE, check_inline_image, decode_limits};
use fleet_core::validate::InlineImageKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [InlineImageKind::Png, InlineImageKind::Jpeg] {
        if let Ok((w, h)) = check_inline_image(data, kind) {
            assert!((1..=MAX_CONTROL_IMAGE_SIDE).contains(&w) && (1..=MAX_CONTROL_IMAGE_SIDE).contains(&h));
        }
    }
    let Ok(mut reader) = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format() else { return };
    reader.limits(decode_limits());
    if let Ok(decoded) = reader.decode() {
        let rgb = decoded.to_rgb8();
        assert!(rgb.width() <= MAX_CONTROL_IMAGE_SIDE && rgb.height() <= MAX_CONTROL_IMAGE_SIDE);
    }
});
