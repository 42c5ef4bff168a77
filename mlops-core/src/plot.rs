//! Charts drawn with plotters: the shared font and the training curves (the train stage draws
//! them beside the model; eval's report shows them).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::artifact::model::EpochMetrics;

/// Registers the font charts are drawn with as plotters' `sans-serif`, once per process:
/// DejaVu Sans, built into the binary (so a machine without fonts, a GPU node or a slim
/// container, draws the same pixels), or the TrueType file `MLOPS_FONT` names.
pub fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| match std::env::var_os("MLOPS_FONT") {
            None => plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                dejavu::sans::regular(),
            )
            .map_err(|_| "the built-in DejaVu Sans font is not usable".to_string()),
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("{} (MLOPS_FONT): {e}", path.display()))?;
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(
                    |_| {
                        format!(
                            "{} (MLOPS_FONT): not a usable TrueType font",
                            path.display()
                        )
                    },
                )
            }
        })
        .clone()
}

/// One chart: title, y-axis name, the named coloured lines, the y range.
type Panel<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a Vec<(f64, f64)>, RGBColor)>,
    std::ops::Range<f64>,
);

/// Draws the training curves as a PNG at `path`: training loss, validation accuracy (kNN vote
/// and nearest centre) and learning rate per epoch, one panel each over a shared epoch axis.
pub fn training_curves_png(path: &Path, metrics: &[EpochMetrics]) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (720, 780)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let epochs = metrics.len().max(1) as f64;
    let x_range = 0.5..epochs + 0.5;
    let points = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics.iter().map(|m| (m.epoch as f64, f(m))).collect()
    };
    let loss = points(|m| m.train_loss);
    let knn = points(|m| m.val_knn_accuracy);
    let centre = points(|m| m.val_centre_accuracy);
    let lr = points(|m| m.lr);
    let both: Vec<(f64, f64)> = knn.iter().chain(&centre).copied().collect();
    let series: [Panel; 3] = [
        (
            "Training loss (ArcFace)",
            "loss",
            vec![("train loss", &loss, RGBColor(200, 60, 40))],
            span(&loss, 0.05),
        ),
        (
            "Validation accuracy",
            "accuracy",
            vec![
                ("kNN vote", &knn, RGBColor(30, 90, 180)),
                ("nearest centre", &centre, RGBColor(40, 150, 70)),
            ],
            span(&both, 0.05),
        ),
        (
            "Learning rate",
            "lr",
            vec![("lr (end of epoch)", &lr, RGBColor(120, 120, 120))],
            span(&lr, 0.05),
        ),
    ];
    for (i, (panel, series)) in panels.iter().zip(series).enumerate() {
        // Loss and learning rate fall, accuracy rises: keep the legend off the lines' ends.
        let legend_at = if i == 1 {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        };
        draw_panel(panel, series, x_range.clone(), metrics.len(), legend_at).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The value range of `values` widened by `pad` of its span on each side; a unit range around
/// a constant (or empty) series.
fn span(values: &[(f64, f64)], pad: f64) -> std::ops::Range<f64> {
    let lo = values.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = values.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() && hi > lo {
        (lo - (hi - lo) * pad)..(hi + (hi - lo) * pad)
    } else {
        let c = if lo.is_finite() { lo } else { 0.0 };
        (c - 0.5)..(c + 0.5)
    }
}

/// One panel: its axes, a line with markers per series, and the legend.
fn draw_panel<'b>(
    panel: &DrawingArea<BitMapBackend<'b>, Shift>,
    (title, y_desc, lines, y_range): Panel<'_>,
    x_range: std::ops::Range<f64>,
    epochs: usize,
    legend_at: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'b> as DrawingBackend>::ErrorType>> {
    let mut chart = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.clamp(2, 12))
        .label_style(("sans-serif", 12))
        .draw()?;
    for (name, values, color) in lines {
        chart
            .draw_series(LineSeries::new(
                values.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(values.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_a_png_that_grows_with_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let metrics: Vec<EpochMetrics> = (1..=5)
            .map(|e| EpochMetrics {
                epoch: e,
                train_loss: 5.0 / e as f64,
                val_knn_accuracy: 0.8 + 0.02 * e as f64,
                val_centre_accuracy: 0.79 + 0.02 * e as f64,
                lr: 0.1 / e as f64,
                images_per_second: 1000.0,
                seconds: 1.0,
            })
            .collect();
        let path = dir.path().join("curves.png");
        training_curves_png(&path, &metrics).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (720, 780));
        // Not a blank canvas: the lines put colour on it.
        let rgb = img.to_rgb8();
        let coloured = rgb
            .pixels()
            .filter(|p| p[0] != p[1] || p[1] != p[2])
            .count();
        assert!(coloured > 500, "{coloured}");
        // One epoch (a flat range) still draws.
        training_curves_png(&path, &metrics[..1]).unwrap();
    }
}
