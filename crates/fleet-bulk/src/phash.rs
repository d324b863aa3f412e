//! The 64-bit perceptual hash every sample gets: image_hasher's `Gradient` (dHash) at 8 × 8
//! bits. The image is made grayscale and scaled to 9 × 8 pixels (Lanczos3); each bit says
//! whether a pixel is brighter than its right neighbour (bits least significant first); the 8
//! bytes read big-endian give the number. Re-encoding, small crops and colour shifts move it
//! a few bits; different images differ in about half of them.

use image_hasher::{BitOrder, FilterType, HashAlg, Hasher, HasherConfig};

/// A reusable hasher with the settings above.
pub struct PerceptualHasher {
    hasher: Hasher<[u8; 8]>,
}

impl std::fmt::Debug for PerceptualHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerceptualHasher(dHash 8x8)")
    }
}

impl Default for PerceptualHasher {
    fn default() -> PerceptualHasher {
        PerceptualHasher {
            hasher: HasherConfig::with_bytes_type::<[u8; 8]>()
                .hash_size(8, 8)
                .hash_alg(HashAlg::Gradient)
                .resize_filter(FilterType::Lanczos3)
                .bit_order(BitOrder::LsbFirst)
                .to_hasher(),
        }
    }
}

impl PerceptualHasher {
    /// The hash of an encoded image (PNG, JPEG or WebP), or why it does not decode.
    pub fn hash(&self, encoded: &[u8]) -> Result<u64, String> {
        let image = image::load_from_memory(encoded).map_err(|e| format!("image does not decode: {e}"))?;
        let hash = self.hasher.hash_image(&image);
        let bytes: [u8; 8] = hash.as_bytes().try_into().map_err(|_| "hash is not 8 bytes".to_owned())?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use image::{ImageFormat, RgbImage};

    use super::*;

    fn png(image: &RgbImage) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn similar_images_hash_close_and_different_ones_far() {
        let gradient = RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 90]));
        let brighter = RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4 + 3) as u8, (y * 4 + 3) as u8, 95]));
        let checker = RgbImage::from_fn(64, 64, |x, y| {
            let v = if (x / 8 + y / 8) % 2 == 0 { 230 } else { 20 };
            image::Rgb([v, v, v])
        });
        let hasher = PerceptualHasher::default();
        let (a, b, c) = (
            hasher.hash(&png(&gradient)).unwrap(),
            hasher.hash(&png(&brighter)).unwrap(),
            hasher.hash(&png(&checker)).unwrap(),
        );
        assert_eq!(a, hasher.hash(&png(&gradient)).unwrap());
        assert!((a ^ b).count_ones() <= 4, "{a:016x} {b:016x}");
        assert!((a ^ c).count_ones() >= 10, "{a:016x} {c:016x}");
        assert!(hasher.hash(b"not an image").unwrap_err().contains("does not decode"));
    }
}
