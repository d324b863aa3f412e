//! Control-image bytes through both decoders: the API's check (`fleet_core::control_image`, as
//! PNG and as JPEG) and the worker's path (`fleet_engine::control_image_tensor`: decode any
//! PNG/JPEG/WebP within the size limits, resize to the output size, optional Canny, tensor).

#![no_main]

use fleet_core::validate::InlineImageKind;
use fleet_engine::ControlPreprocess;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [InlineImageKind::Png, InlineImageKind::Jpeg] {
        if let Ok((w, h)) = fleet_core::control_image::check_inline_image(data, kind) {
            assert!(w >= 1 && h >= 1 && w <= fleet_core::control_image::MAX_CONTROL_IMAGE_SIDE);
        }
    }
    let pre = if data.len() % 2 == 0 {
        ControlPreprocess::None
    } else {
        ControlPreprocess::Canny { low: 100.0, high: 200.0 }
    };
    if let Ok(t) = fleet_engine::control_image_tensor(data, 16, 8, pre) {
        assert_eq!(t.dims(), [1, 3, 8, 16]);
    }
});
