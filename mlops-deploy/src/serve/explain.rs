//! Explanations a kNN model gives for free: the gallery images that decided a prediction.
//!
//! A registered version carries its gallery's images (`gallery_images.npy`, aligned with the
//! index ids, written by the index stage); an explanation lists each of the k neighbours that
//! voted with its id, label, similarity and a PNG thumbnail, and every class's share of the
//! vote. Versions registered before the images were carried answer with ids only.

use base64::Engine;
use image::ImageEncoder;
use mlops_core::artifact::index::GALLERY_IMAGES_FILE;
use mlops_core::artifact::VersionDir;
use mlops_index::Prediction;
use ndarray::Array4;
use serde_json::{json, Value};

use crate::Result;

/// A version's gallery images, `[n, c, h, w]` bytes.
pub struct Gallery {
    images: Array4<u8>,
}

impl Gallery {
    /// The version's gallery images (checksum verified); `None` for a version without them.
    pub fn load(dir: &VersionDir) -> Result<Option<Self>> {
        let Some(path) = dir.verified_if_listed(GALLERY_IMAGES_FILE)? else {
            return Ok(None);
        };
        let images: Array4<u8> = mlops_core::npy::read(&path)?;
        Ok(Some(Gallery { images }))
    }

    /// Gallery image `id` as a PNG file; `None` for an id outside the gallery.
    pub fn png(&self, id: u64) -> Option<Vec<u8>> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < self.images.shape()[0])?;
        let (c, h, w) = (
            self.images.shape()[1],
            self.images.shape()[2],
            self.images.shape()[3],
        );
        let image = self.images.index_axis(ndarray::Axis(0), i);
        // Channels last, as image files hold them.
        let pixels: Vec<u8> = image.permuted_axes([1, 2, 0]).iter().copied().collect();
        let color = match c {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            _ => return None,
        };
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, w as u32, h as u32, color)
            .ok()?;
        Some(out)
    }
}

/// The explanation of `prediction`: the prediction, each class's vote share, and the
/// neighbours that voted (with thumbnails as `data:` URLs when the gallery is at hand).
pub fn explanation(
    prediction: &Prediction,
    classes: &[String],
    vote: mlops_index::Vote,
    gallery: Option<&Gallery>,
) -> Value {
    let label = |c: usize| classes.get(c).cloned().unwrap_or_default();
    let shares = prediction.vote_shares(classes.len(), vote);
    let neighbours: Vec<Value> = prediction
        .neighbours
        .iter()
        .map(|n| {
            let mut v = json!({
                "id": n.id,
                "class": n.class,
                "label": label(n.class),
                "similarity": n.score,
            });
            if let Some(png) = gallery.and_then(|g| g.png(n.id)) {
                v["thumbnail"] = json!(format!(
                    "data:image/png;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(png)
                ));
            }
            v
        })
        .collect();
    json!({
        "class": prediction.class,
        "label": label(prediction.class),
        "score": prediction.score,
        "votes": classes.iter().zip(&shares).map(|(c, s)| json!({ "label": c, "share": s })).collect::<Vec<_>>(),
        "neighbors": neighbours,
        "thumbnails": gallery.is_some(),
    })
}
