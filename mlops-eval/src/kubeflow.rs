//! Kubeflow Pipelines' metric and visualisation files.

use serde_json::{json, Value};

use mlops_core::artifact::EvalSummary as Outcome;
use mlops_core::artifact::Metrics;

/// `(file name, content)` of `mlpipeline-metrics.json` (v1), `mlpipeline-ui-metadata.json` and
/// `metrics.json` (v2 style).
pub fn files(outcome: &Outcome, classes: &[String]) -> Vec<(&'static str, Value)> {
    let m = &outcome.metrics;
    let v1 = json!({
        "metrics": [
            {"name": "accuracy-score", "numberValue": m.accuracy, "format": "PERCENTAGE"},
            {"name": "top1-accuracy", "numberValue": outcome.top1_accuracy, "format": "PERCENTAGE"},
            {"name": "macro-precision", "numberValue": m.macro_precision, "format": "PERCENTAGE"},
            {"name": "macro-recall", "numberValue": m.macro_recall, "format": "PERCENTAGE"},
            {"name": "macro-f1", "numberValue": m.macro_f1, "format": "PERCENTAGE"},
            {"name": "knn-k", "numberValue": outcome.k, "format": "RAW"},
            {"name": "search-queries-per-second", "numberValue": outcome.queries_per_second, "format": "RAW"},
            {"name": "deploy", "numberValue": u8::from(outcome.decision.deploy), "format": "RAW"},
        ]
    });
    let ui = json!({
        "version": 1,
        "outputs": [
            {
                "type": "confusion_matrix",
                "format": "csv",
                "schema": [
                    {"name": "target", "type": "CATEGORY"},
                    {"name": "predicted", "type": "CATEGORY"},
                    {"name": "count", "type": "NUMBER"},
                ],
                "storage": "inline",
                "source": confusion_csv_body(m, classes),
                "labels": classes,
            },
            {"type": "markdown", "storage": "inline", "source": markdown(outcome)},
        ]
    });
    let mut v2 = serde_json::Map::new();
    v2.insert("accuracy".into(), json!(m.accuracy));
    v2.insert("top1_accuracy".into(), json!(outcome.top1_accuracy));
    v2.insert("macro_precision".into(), json!(m.macro_precision));
    v2.insert("macro_recall".into(), json!(m.macro_recall));
    v2.insert("macro_f1".into(), json!(m.macro_f1));
    v2.insert("k".into(), json!(outcome.k));
    v2.insert(
        "queries_per_second".into(),
        json!(outcome.queries_per_second),
    );
    for c in &m.per_class {
        let key = metric_key(&c.class);
        v2.insert(format!("precision_{key}"), json!(c.precision));
        v2.insert(format!("recall_{key}"), json!(c.recall));
        v2.insert(format!("f1_{key}"), json!(c.f1));
    }
    v2.insert(
        "confusionMatrix".into(),
        json!({
            "annotationSpecs": classes.iter().map(|c| json!({"displayName": c})).collect::<Vec<_>>(),
            "rows": m.confusion.iter().map(|row| json!({"row": row})).collect::<Vec<_>>(),
        }),
    );
    vec![
        ("mlpipeline-metrics.json", v1),
        ("mlpipeline-ui-metadata.json", ui),
        (crate::METRICS_FILE, Value::Object(v2)),
    ]
}

/// A class name as a metric-name fragment: letters, digits and `_` only.
pub fn metric_key(class: &str) -> String {
    let key: String = class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    key.trim_matches('_').to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn confusion_csv_body(m: &Metrics, classes: &[String]) -> String {
    let mut out = String::new();
    for (t, row) in m.confusion.iter().enumerate() {
        for (p, count) in row.iter().enumerate() {
            out.push_str(&format!(
                "{},{},{count}\n",
                csv_field(&classes[t]),
                csv_field(&classes[p])
            ));
        }
    }
    out
}

/// `confusion_matrix.csv`: a `target,predicted,count` header and one line per cell.
pub fn confusion_csv(m: &Metrics, classes: &[String]) -> String {
    format!("target,predicted,count\n{}", confusion_csv_body(m, classes))
}

fn markdown(o: &Outcome) -> String {
    let m = &o.metrics;
    let mut s = format!(
        "## Evaluation\n\naccuracy **{:.4}** (kNN, k = {}), top-1 {:.4}, macro F1 {:.4}; decision: **{}**\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n",
        m.accuracy,
        o.k,
        o.top1_accuracy,
        m.macro_f1,
        if o.decision.deploy { "deploy" } else { "reject" }
    );
    for c in &m.per_class {
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {} |\n",
            c.class.replace('|', "\\|"),
            c.precision,
            c.recall,
            c.f1,
            c.support
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_valid_for_kubeflow() {
        let re_ok = |name: &str| {
            let b = name.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && b[0].is_ascii_alphabetic()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        };
        let classes: Vec<String> = ["T-shirt/top", "Ankle boot"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = crate::metrics::compute(&[0, 1], &[0, 0], &classes);
        let o = Outcome {
            metrics: m,
            top1_accuracy: 0.5,
            k: 3,
            vote: crate::Vote::Weighted,
            scoring: crate::Scoring::Knn,
            centre_weight: 0.0,
            temperature: 0.1,
            blend_selection: vec![],
            k_selection: vec![],
            queries_per_second: 1.0,
            classes_missing_in_gallery: vec![],
            decision: crate::decide(0.5, &crate::Baseline::None, Default::default()),
        };
        let files = files(&o, &classes);
        for metric in files[0].1["metrics"].as_array().unwrap() {
            assert!(re_ok(metric["name"].as_str().unwrap()), "{metric}");
        }
        assert_eq!(metric_key("T-shirt/top"), "t_shirt_top");
        let v2 = &files[2].1;
        assert_eq!(v2["confusionMatrix"]["rows"][1]["row"], json!([1, 0]));
        assert_eq!(
            v2["confusionMatrix"]["annotationSpecs"][0]["displayName"],
            "T-shirt/top"
        );
        assert!(confusion_csv(&o.metrics, &classes)
            .starts_with("target,predicted,count\nT-shirt/top,T-shirt/top,1\n"));
    }
}
