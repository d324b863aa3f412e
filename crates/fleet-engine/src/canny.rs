//! Canny edge detection for ControlNet conditioning images, following OpenCV's `cv2.Canny`
//! (what the SDXL canny ControlNets were trained on: `cv2.Canny(image, 100, 200)`): 3×3 Sobel
//! gradients with replicated borders, L1 magnitude `|gx| + |gy|`, non-maximum suppression in 4
//! directions, then hysteresis with 8-connectivity (weak pixels ≥ `low` are kept when connected
//! to a strong pixel > `high`). No pre-blur, as in OpenCV.
//!
//! Hand-written (80 lines) rather than taken from `imageproc`: that crate pulls nalgebra, rand
//! and itertools into the build of every worker for this one function, and its `canny` blurs
//! first and uses an L2 magnitude, so it would not match OpenCV's thresholds anyway.

use image::{GrayImage, RgbImage};

/// Default thresholds (the diffusers/ControlNet examples).
pub const CANNY_LOW: f32 = 100.0;
pub const CANNY_HIGH: f32 = 200.0;

/// Edge map of `img` (255 on edges, 0 elsewhere).
pub fn canny(img: &GrayImage, low: f32, high: f32) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return GrayImage::new(img.width(), img.height());
    }
    let px = |x: isize, y: isize| -> f32 {
        let x = x.clamp(0, w as isize - 1) as u32;
        let y = y.clamp(0, h as isize - 1) as u32;
        f32::from(img.get_pixel(x, y)[0])
    };
    let mut gx = vec![0f32; w * h];
    let mut gy = vec![0f32; w * h];
    let mut mag = vec![0f32; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let dx = (px(x + 1, y - 1) + 2.0 * px(x + 1, y) + px(x + 1, y + 1))
                - (px(x - 1, y - 1) + 2.0 * px(x - 1, y) + px(x - 1, y + 1));
            let dy = (px(x - 1, y + 1) + 2.0 * px(x, y + 1) + px(x + 1, y + 1))
                - (px(x - 1, y - 1) + 2.0 * px(x, y - 1) + px(x + 1, y - 1));
            let i = y as usize * w + x as usize;
            (gx[i], gy[i], mag[i]) = (dx, dy, dx.abs() + dy.abs());
        }
    }
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize { 0.0 } else { mag[y as usize * w + x as usize] }
    };
    // 0: not an edge, 1: weak candidate, 2: strong edge.
    let mut class = vec![0u8; w * h];
    let mut stack = Vec::new();
    let tan22 = 0.414_213_56f32; // tan(22.5°)
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (ax, ay) = (gx[i].abs(), gy[i].abs());
            // Neighbours along the gradient direction (OpenCV's sector test).
            let (n1, n2) = if ay <= ax * tan22 {
                (at(x - 1, y), at(x + 1, y))
            } else if ay >= ax / tan22 {
                (at(x, y - 1), at(x, y + 1))
            } else if (gx[i] > 0.0) == (gy[i] > 0.0) {
                (at(x - 1, y - 1), at(x + 1, y + 1))
            } else {
                (at(x + 1, y - 1), at(x - 1, y + 1))
            };
            // OpenCV keeps a pixel that is > one neighbour and >= the other.
            if m > n1 && m >= n2 {
                if m > high {
                    class[i] = 2;
                    stack.push((x, y));
                } else {
                    class[i] = 1;
                }
            }
        }
    }
    while let Some((x, y)) = stack.pop() {
        for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
            let (nx, ny) = (x + dx, y + dy);
            if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if class[j] == 1 {
                class[j] = 2;
                stack.push((nx, ny));
            }
        }
    }
    let data = class.into_iter().map(|c| if c == 2 { 255 } else { 0 }).collect();
    GrayImage::from_raw(img.width(), img.height(), data).unwrap_or_else(|| GrayImage::new(img.width(), img.height()))
}

/// Canny edges of an RGB image as a 3-channel map (what the ControlNet pipelines feed).
pub fn canny_rgb(img: &RgbImage, low: f32, high: f32) -> RgbImage {
    let gray = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
    image::DynamicImage::ImageLuma8(canny(&gray, low, high)).to_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(size: u32, lo: u32, hi: u32) -> GrayImage {
        GrayImage::from_fn(size, size, |x, y| {
            image::Luma([if (lo..hi).contains(&x) && (lo..hi).contains(&y) { 255 } else { 0 }])
        })
    }

    #[test]
    fn a_square_gives_a_thin_closed_outline() {
        let e = canny(&square(32, 8, 24), CANNY_LOW, CANNY_HIGH);
        let on = |x, y| e.get_pixel(x, y)[0] == 255;
        // Edges on the boundary rows/columns, nothing deep inside or far outside.
        assert!((8..24).all(|y| on(7, y) || on(8, y)), "left side");
        assert!((8..24).all(|x| on(x, 7) || on(x, 8)), "top side");
        assert!(!on(16, 16) && !on(2, 2) && !on(29, 29));
        // Thin: no column of the left side is three pixels thick.
        assert!(!(on(6, 16) && on(7, 16) && on(8, 16) && on(9, 16)));
    }

    #[test]
    fn flat_images_and_weak_gradients_have_no_edges() {
        let flat = GrayImage::from_pixel(16, 16, image::Luma([128]));
        assert!(canny(&flat, CANNY_LOW, CANNY_HIGH).pixels().all(|p| p[0] == 0));
        // A step of 10 grey levels: |gx| = 40 < low.
        let weak = GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 100 } else { 110 }]));
        assert!(canny(&weak, CANNY_LOW, CANNY_HIGH).pixels().all(|p| p[0] == 0));
        // The same step passes with low thresholds.
        assert!(canny(&weak, 10.0, 20.0).pixels().any(|p| p[0] == 255));
    }

    #[test]
    fn hysteresis_keeps_weak_edges_only_when_connected() {
        // A strong step (0→255) next to a weak one (0→40) in separate halves of the image.
        let img = GrayImage::from_fn(32, 16, |x, y| {
            image::Luma([match (x, y) {
                (x, _) if x < 8 => 0,
                (x, _) if x < 16 => 255,
                (x, _) if x < 24 => 0,
                _ => 40,
            }])
        });
        // |gx| at the weak step = 160: between low 100 and high 200, not connected to a strong pixel.
        let e = canny(&img, 100.0, 200.0);
        assert!((0..16).any(|y| e.get_pixel(7, y)[0] == 255 || e.get_pixel(8, y)[0] == 255));
        assert!((0..16).all(|y| e.get_pixel(23, y)[0] == 0 && e.get_pixel(24, y)[0] == 0));
        // Empty image does not panic.
        assert_eq!(canny(&GrayImage::new(0, 0), 1.0, 2.0).width(), 0);
    }
}
