//! Classification metrics from predictions: pure functions, no I/O.

use mlops_core::artifact::eval::{ClassMetrics, Metrics};

/// Computes [`Metrics`] for `truth` and `pred` (class ids below `classes.len()`).
/// Classes without test samples get zero recall and are left out of the macro averages.
pub fn compute(truth: &[usize], pred: &[usize], classes: &[String]) -> Metrics {
    let n = classes.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..n).map(|c| confusion[c][c]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..n)
        .map(|c| {
            let tp = confusion[c][c];
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = (0..n).map(|t| confusion[t][c]).sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let mean = |f: fn(&ClassMetrics) -> f64| {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64
        }
    };
    Metrics {
        accuracy: ratio(correct, truth.len()),
        macro_precision: mean(|m| m.precision),
        macro_recall: mean(|m| m.recall),
        macro_f1: mean(|m| m.f1),
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[test]
    fn hand_computed_metrics() {
        // truth 0,0,0,1,1,2 ; pred 0,0,1,1,2,2
        let m = compute(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], &names(3));
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        let c1 = &m.per_class[1];
        assert!(
            (c1.precision - 0.5).abs() < 1e-12
                && (c1.recall - 0.5).abs() < 1e-12
                && (c1.f1 - 0.5).abs() < 1e-12
        );
        let c0 = &m.per_class[0];
        assert!((c0.precision - 1.0).abs() < 1e-12 && (c0.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((c0.f1 - 0.8).abs() < 1e-12);
        let expected_macro_f1 = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((m.macro_f1 - expected_macro_f1).abs() < 1e-12);
    }

    #[test]
    fn absent_class_does_not_skew_macro_averages() {
        let m = compute(&[0, 1], &[0, 1], &names(3));
        assert_eq!(m.per_class[2].support, 0);
        assert!((m.macro_f1 - 1.0).abs() < 1e-12);
    }
}
