//! Image preprocessing shared by ingestion and serving (feature `image`): decode any format the
//! `image` crate knows (by content, not name), convert to 8-bit grayscale, resize (bilinear) to
//! the model's input size, and map pixels to model inputs with [`pixel_scale_shift`].
//!
//! The data stage's image-folder ingest and a server answering a request call the same
//! functions, so a served image reaches the model exactly as the same file did in training data.
//!
//! ```
//! use mlops_core::preprocess::Preprocess;
//! let png = {
//!     let img = image::GrayImage::from_pixel(56, 56, image::Luma([255]));
//!     let mut bytes = Vec::new();
//!     img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
//!     bytes
//! };
//! let pre = Preprocess::new([1, 28, 28], None);
//! let input = pre.image_bytes(&png).unwrap();
//! assert_eq!(input.len(), 28 * 28);
//! assert!(input.iter().all(|&v| (v - 1.0).abs() < 1e-6));
//! ```

use std::io::Cursor;

use image::{DynamicImage, ImageReader, Limits};

use crate::artifact::data::{pixel_scale_shift, Normalization};

/// Largest width or height accepted when decoding (larger images are refused, not resized).
pub const MAX_SIDE: u32 = 16_384;
/// Most memory the decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decodes an encoded image (PNG, JPEG, BMP, GIF, TIFF, WebP), detecting the format from the
/// content, within [`MAX_SIDE`] and [`MAX_DECODE_BYTES`].
pub fn decode(bytes: &[u8]) -> image::ImageResult<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode()
}

/// Resizes `height x width` grayscale bytes to `to_height x to_width` (bilinear, as the data
/// stage has always done); the same size is returned unchanged.
pub fn resize_gray(
    pixels: Vec<u8>,
    height: usize,
    width: usize,
    to_height: usize,
    to_width: usize,
) -> Vec<u8> {
    if (height, width) == (to_height, to_width) {
        return pixels;
    }
    match image::GrayImage::from_raw(width as u32, height as u32, pixels) {
        Some(img) => image::imageops::resize(
            &img,
            to_width as u32,
            to_height as u32,
            image::imageops::FilterType::Triangle,
        )
        .into_raw(),
        // Unreachable for callers passing width * height bytes; an empty image stays empty.
        None => vec![0; to_height * to_width],
    }
}

/// A decoded image as `height x width` 8-bit grayscale, resized when its size differs.
pub fn to_gray(img: &DynamicImage, height: usize, width: usize) -> Vec<u8> {
    let gray = img.to_luma8();
    let (w, h) = gray.dimensions();
    resize_gray(gray.into_raw(), h as usize, w as usize, height, width)
}

/// The whole path from encoded bytes to a model input, for one model's input shape and
/// normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Rows of the model's input image, in pixels; decoded images are resized to it.
    pub height: usize,
    /// Columns of the model's input image, in pixels; decoded images are resized to it.
    pub width: usize,
    scale: f32,
    shift: f32,
}

impl Preprocess {
    /// For inputs of `[channels, height, width]` (one channel) normalised as the data stage did.
    pub fn new(image_shape: [usize; 3], normalization: Option<Normalization>) -> Self {
        let (scale, shift) = pixel_scale_shift(normalization);
        Preprocess {
            height: image_shape[1],
            width: image_shape[2],
            scale,
            shift,
        }
    }

    /// Grayscale bytes of this size -> model input values, appended to `out`.
    pub fn pixels_into(&self, pixels: &[u8], out: &mut Vec<f32>) {
        out.extend(pixels.iter().map(|&p| p as f32 * self.scale + self.shift));
    }

    /// A decoded image -> `height * width` model input values.
    pub fn image(&self, img: &DynamicImage) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.height * self.width);
        self.pixels_into(&to_gray(img, self.height, self.width), &mut out);
        out
    }

    /// Encoded bytes -> `height * width` model input values.
    pub fn image_bytes(&self, bytes: &[u8]) -> image::ImageResult<Vec<f32>> {
        Ok(self.image(&decode(bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    #[test]
    fn rgb_png_becomes_normalised_gray() {
        let rgb = image::RgbImage::from_fn(28, 28, |x, _| image::Rgb([x as u8 * 9, 0, 0]));
        let png = encode(
            &DynamicImage::ImageRgb8(rgb.clone()),
            image::ImageFormat::Png,
        );
        let norm = Normalization {
            mean: 0.25,
            std: 0.5,
        };
        let pre = Preprocess::new([1, 28, 28], Some(norm));
        let got = pre.image_bytes(&png).unwrap();
        let gray = DynamicImage::ImageRgb8(rgb).to_luma8();
        let (scale, shift) = pixel_scale_shift(Some(norm));
        for (g, p) in got.iter().zip(gray.as_raw()) {
            assert_eq!(*g, *p as f32 * scale + shift);
        }
    }

    #[test]
    fn other_sizes_are_resized_and_garbage_refused() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(7, 90, image::Luma([9])));
        let pre = Preprocess::new([1, 28, 28], None);
        let got = pre
            .image_bytes(&encode(&img, image::ImageFormat::Bmp))
            .unwrap();
        assert_eq!(got.len(), 28 * 28);
        assert!(pre.image_bytes(b"not an image at all").is_err());
        let png = encode(&img, image::ImageFormat::Png);
        assert!(pre.image_bytes(&png[..png.len() / 2]).is_err(), "truncated");
    }
}
