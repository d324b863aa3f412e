//! Hostile control images reach the worker's decoder too (inline ones are checked at submission,
//! those in a bucket are not): each is an `InvalidRequest`, never a huge allocation or a panic.
//! Inputs the `control_image` fuzz target found are kept here.

use fleet_engine::control_image::{MAX_CONTROL_IMAGE_SIDE, decode_control_image};
use fleet_engine::{ControlPreprocess, EngineError, control_image_tensor};

/// fleet-core's fixtures: a valid 16×16 PNG and an 18 KB PNG declaring 100,000 × 100,000 pixels.
const GOOD_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-16x16.png");
const BOMB_PNG: &[u8] = include_bytes!("../../../fleet-core/tests/fixtures/control-bomb-100000x100000.png");

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    let bomb = BOMB_PNG;
    let e = decode_control_image(bomb).unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("limit"), "{e}");
    assert!(control_image_tensor(bomb, 64, 64, ControlPreprocess::None).is_err());
}

#[test]
fn an_image_at_the_side_limit_decodes_and_one_pixel_more_does_not() {
    let png = |w: u32, h: u32| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    assert_eq!(
        decode_control_image(&png(MAX_CONTROL_IMAGE_SIDE, 2)).unwrap().dimensions(),
        (MAX_CONTROL_IMAGE_SIDE, 2)
    );
    assert!(decode_control_image(&png(MAX_CONTROL_IMAGE_SIDE + 1, 2)).is_err());
}

#[test]
fn truncated_corrupt_and_foreign_bytes_are_invalid_requests() {
    let good = GOOD_PNG;
    assert_eq!(decode_control_image(good).unwrap().dimensions(), (16, 16));
    let mut corrupt = good.to_vec();
    corrupt[60] ^= 0xff;
    for bytes in [&good[..good.len() / 2], &good[..30], &corrupt[..], b"", b"RIFF\0\0\0\0WEBPVP8 ", &[0xFF, 0xD8, 0xFF]]
    {
        let e = decode_control_image(bytes).unwrap_err();
        assert!(matches!(e, EngineError::InvalidRequest(_)), "{e}");
    }
}
