//! The human-facing outputs: a confusion-matrix heat-map (PNG) and a self-contained HTML report.

use std::path::Path;

use base64::Engine;
use plotters::prelude::*;
use plotters::style::RGBColor;

use mlops_core::artifact::EvalSummary as Outcome;

use mlops_core::plot::register_font;

/// Draws the row-normalised confusion matrix with counts and class names as a PNG.
pub fn confusion_png(
    path: &Path,
    confusion: &[Vec<usize>],
    classes: &[String],
) -> Result<(), String> {
    register_font()?;
    let n = classes.len().max(1);
    let cell = (560 / n).clamp(24, 80) as i32;
    let (left, top) = (170i32, 60i32);
    let size = (left + cell * n as i32 + 30, top + cell * n as i32 + 150);
    let root = BitMapBackend::new(path, (size.0 as u32, size.1 as u32)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let font = |px: i32| ("sans-serif", px as f64).into_font();
    root.draw(&Text::new(
        "Confusion matrix (rows: true class, columns: predicted)",
        (10, 15),
        font(18).color(&BLACK),
    ))
    .map_err(err)?;
    let label_px = (cell / 3).clamp(10, 15);
    for (t, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let shade = |full: u8| (255.0 - (255.0 - full as f64) * share) as u8;
            let color = RGBColor(shade(8), shade(48), shade(107));
            let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                color.filled(),
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(220, 220, 220).stroke_width(1),
            ))
            .map_err(err)?;
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let text = count.to_string();
            let tx = x + cell / 2 - (text.len() as i32 * label_px) / 4;
            root.draw(&Text::new(
                text,
                (tx, y + cell / 2 - label_px / 2),
                font(label_px).color(&ink),
            ))
            .map_err(err)?;
        }
    }
    for (i, name) in classes.iter().enumerate() {
        let y = top + i as i32 * cell + cell / 2 - label_px / 2;
        root.draw(&Text::new(
            name.clone(),
            (8, y),
            font(label_px).color(&BLACK),
        ))
        .map_err(err)?;
        let x = left + i as i32 * cell + cell / 2 - label_px / 2;
        let style = font(label_px)
            .transform(FontTransform::Rotate90)
            .color(&BLACK);
        root.draw(&Text::new(
            name.clone(),
            (x, top + n as i32 * cell + 8),
            style,
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A misclassified test image for the report.
pub struct Thumbnail {
    /// The test image as an enlarged grayscale PNG (see [`thumbnail_png`]).
    pub png: Vec<u8>,
    /// Name of the image's true class.
    pub truth: String,
    /// Name of the class it was predicted as.
    pub predicted: String,
}

/// Encodes a grayscale image (values in `[lo, hi]`) as a PNG scaled up `scale` times.
pub fn thumbnail_png(pixels: &[f32], h: usize, w: usize, lo: f32, hi: f32, scale: u32) -> Vec<u8> {
    let span = (hi - lo).max(1e-6);
    let img = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let v = (pixels[y as usize * w + x as usize] - lo) / span;
        image::Luma([(v.clamp(0.0, 1.0) * 255.0) as u8])
    });
    let img = image::imageops::resize(
        &img,
        w as u32 * scale,
        h as u32 * scale,
        image::imageops::FilterType::Nearest,
    );
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML report: summary, decision, per-class table, heat-map, thumbnails.
pub fn html(
    outcome: &Outcome,
    heatmap_png: &[u8],
    curves_png: Option<&[u8]>,
    thumbnails: &[Thumbnail],
    note: &str,
) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let m = &outcome.metrics;
    let d = &outcome.decision;
    let mut s = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>mlops-rs evaluation</title><style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f0f0}td:first-child{text-align:left}.ok{color:#176b1c}.bad{color:#a01010}figure{display:inline-block;margin:4px;text-align:center;font-size:12px}</style></head><body>");
    s.push_str("<h1>Evaluation report</h1>");
    s.push_str(&format!(
        "<p>Test accuracy <b>{:.4}</b> (kNN vote, k = {}), top-1 {:.4}, macro precision {:.4}, macro recall {:.4}, macro F1 {:.4}; {:.0} queries/s.</p>",
        m.accuracy, outcome.k, outcome.top1_accuracy, m.macro_precision, m.macro_recall, m.macro_f1, outcome.queries_per_second
    ));
    let (class, verdict) = if d.deploy {
        ("ok", "DEPLOY")
    } else {
        ("bad", "REJECT")
    };
    s.push_str(&format!(
        "<h2>Decision: <span class=\"{class}\">{verdict}</span></h2><ul>"
    ));
    for r in &d.reasons {
        s.push_str(&format!("<li>{}</li>", esc(r)));
    }
    s.push_str("</ul>");
    if !outcome.classes_missing_in_gallery.is_empty() {
        s.push_str(&format!(
            "<p class=\"bad\">Test classes with no gallery image (never predicted): {}</p>",
            esc(&outcome.classes_missing_in_gallery.join(", "))
        ));
    }
    if !outcome.k_selection.is_empty() {
        s.push_str(
            "<h2>Choice of k (validation accuracy)</h2><table><tr><th>k</th><th>accuracy</th></tr>",
        );
        for (k, acc) in &outcome.k_selection {
            s.push_str(&format!("<tr><td>{k}</td><td>{acc:.4}</td></tr>"));
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>");
    for c in &m.per_class {
        s.push_str(&format!(
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            esc(&c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        ));
    }
    s.push_str("</table>");
    if !heatmap_png.is_empty() {
        s.push_str(&format!("<h2>Confusion matrix</h2><img alt=\"confusion matrix\" src=\"data:image/png;base64,{}\">", b64(heatmap_png)));
    }
    if let Some(png) = curves_png {
        s.push_str(&format!("<h2>Training curves</h2><img alt=\"training curves\" src=\"data:image/png;base64,{}\">", b64(png)));
    }
    s.push_str("<h2>Misclassified test images</h2>");
    if thumbnails.is_empty() {
        s.push_str(&format!("<p>{}</p>", esc(note)));
    }
    for t in thumbnails {
        s.push_str(&format!(
            "<figure><img src=\"data:image/png;base64,{}\"><figcaption>true: {}<br>predicted: {}</figcaption></figure>",
            b64(&t.png),
            esc(&t.truth),
            esc(&t.predicted)
        ));
    }
    s.push_str("</body></html>\n");
    s
}
