//! Small synthetic datasets in the on-disk formats `mlops-data` reads, for tests and benchmarks.
//!
//! Each class draws a bright bar at a class-specific place over seeded noise, so classes are
//! learnable and no two images are identical (unless a duplicate is asked for).

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::idx::encode_idx;

/// One synthetic image of `class`, `h x w` bytes.
pub fn synthetic_image(class: usize, h: usize, w: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut pixels: Vec<u8> = (0..h * w).map(|_| rng.random_range(0..64u8)).collect();
    let row = (class * 3 + 2) % h;
    let col = (class * 5 + 1) % w;
    for x in 0..w {
        pixels[row * w + x] = 200 + rng.random_range(0..56u8);
    }
    for y in 0..h {
        pixels[y * w + col] = 180 + rng.random_range(0..76u8);
    }
    pixels
}

/// Options for [`write_idx`].
#[derive(Debug, Clone)]
pub struct IdxFixture {
    /// Number of classes; labels are `0..classes`.
    pub classes: usize,
    /// Images of each class in the `train-*` files.
    pub train_per_class: usize,
    /// Images of each class in the `t10k-*` files.
    pub test_per_class: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Write the files gzip-compressed, with a `.gz` suffix.
    pub gzip: bool,
    /// Seed of the noise; the same seed writes the same files.
    pub seed: u64,
    /// Make this many test images exact copies of training images (a leak).
    pub duplicates: usize,
}

impl Default for IdxFixture {
    fn default() -> Self {
        IdxFixture {
            classes: 3,
            train_per_class: 40,
            test_per_class: 10,
            height: 28,
            width: 28,
            gzip: true,
            seed: 0,
            duplicates: 0,
        }
    }
}

/// Writes `train-*` and `t10k-*` IDX image/label files into `dir`; returns the four paths
/// (train images, train labels, test images, test labels).
pub fn write_idx(dir: &Path, f: &IdxFixture) -> std::io::Result<[PathBuf; 4]> {
    std::fs::create_dir_all(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(f.seed);
    let mut make = |per_class: usize| {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..per_class * f.classes {
            let class = i % f.classes;
            images.extend(synthetic_image(class, f.height, f.width, &mut rng));
            labels.push(class as u8);
        }
        (images, labels)
    };
    let (train_images, train_labels) = make(f.train_per_class);
    let (mut test_images, mut test_labels) = make(f.test_per_class);
    let frame = f.height * f.width;
    for i in 0..f.duplicates {
        test_images[i * frame..(i + 1) * frame]
            .copy_from_slice(&train_images[i * frame..(i + 1) * frame]);
        test_labels[i] = train_labels[i];
    }
    let ext = if f.gzip { ".gz" } else { "" };
    let paths = [
        dir.join(format!("train-images-idx3-ubyte{ext}")),
        dir.join(format!("train-labels-idx1-ubyte{ext}")),
        dir.join(format!("t10k-images-idx3-ubyte{ext}")),
        dir.join(format!("t10k-labels-idx1-ubyte{ext}")),
    ];
    let n_train = f.train_per_class * f.classes;
    let n_test = f.test_per_class * f.classes;
    let contents = [
        encode_idx(&[n_train, f.height, f.width], &train_images),
        encode_idx(&[n_train], &train_labels),
        encode_idx(&[n_test, f.height, f.width], &test_images),
        encode_idx(&[n_test], &test_labels),
    ];
    for (path, bytes) in paths.iter().zip(contents) {
        write_maybe_gz(path, &bytes, f.gzip)?;
    }
    Ok(paths)
}

/// Writes `bytes` to `path`, gzip-compressed if `gzip`.
pub fn write_maybe_gz(path: &Path, bytes: &[u8], gzip: bool) -> std::io::Result<()> {
    if gzip {
        let file = std::fs::File::create(path)?;
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        enc.write_all(bytes)?;
        enc.finish()?;
        Ok(())
    } else {
        std::fs::write(path, bytes)
    }
}

/// Writes one synthetic `size x size` grayscale PNG of `class` at `path` (drawn from `seed`,
/// so it differs from every image of [`write_folder`] with another seed).
pub fn write_image(path: &Path, class: usize, size: u32, seed: u64) -> image::ImageResult<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels = synthetic_image(class, size as usize, size as usize, &mut rng);
    image::GrayImage::from_raw(size, size, pixels)
        .expect("size * size bytes")
        .save(path)
}

/// Writes an image folder `dir/<class>/<i>.png|jpg` with `per_class` images of `size x size`
/// per class name, alternating PNG and JPEG, in RGB so that conversion to grayscale is exercised.
pub fn write_folder(
    dir: &Path,
    classes: &[&str],
    per_class: usize,
    size: u32,
    seed: u64,
) -> image::ImageResult<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (c, name) in classes.iter().enumerate() {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir)?;
        for i in 0..per_class {
            let gray = synthetic_image(c, size as usize, size as usize, &mut rng);
            let rgb = image::RgbImage::from_fn(size, size, |x, y| {
                let v = gray[(y * size + x) as usize];
                image::Rgb([v, v, v])
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            rgb.save(class_dir.join(format!("{i:04}.{ext}")))?;
        }
    }
    Ok(())
}
