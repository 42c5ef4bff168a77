//! BENCHMARKS.md from a [`Report`].

use std::fmt::Write;

use serde::Serialize;

use super::report::{Comparison, EndToEnd, Report, Serving, Stats};
use crate::root;

/// The GPU kit's last report kept in the repository (the CPU machines here have no GPU).
const GPU_REPORT: &str = "benches/results/gpu-h200/gpu_report.md";

pub fn markdown(r: &Report) -> String {
    let mut s = String::from("# Benchmarks: mlops-rs against the Python stack\n\n");
    s += &format!(
        "Written by `{}` on {} ({}, {} cores); {} threads on both sides, {} interleaved measurements per side and setting (ours, reference, ours, ...), each a fresh process; medians with [min, max]. Reference: PyTorch {}, faiss-cpu {}, TorchServe {}. Run measured: `{}` ({} network, {}).\n\n",
        r.command,
        r.date,
        r.machine.cpu,
        r.machine.cores,
        r.threads,
        r.repeats,
        r.versions.torch,
        r.versions.faiss,
        r.versions.torchserve,
        r.run.display(),
        r.arch,
        r.precision,
    );
    s += &comparison_table(&r.comparisons);
    if let Some(serve) = &r.sections.serve {
        s += &serving(serve, "Serving");
    }
    if let Some(pipeline) = &r.sections.pipeline {
        s += &end_to_end(pipeline);
    }
    if let Some(student) = &r.student {
        s += &format!(
            "## The distilled model: `{}` ({} network, {})\n\nThe same comparisons for the student of `cargo xtask pipeline --profile serve` (README, \"Which model\").\n\n",
            student.run.display(),
            student.arch,
            student.precision
        );
        s += &comparison_table(&student.comparisons);
        if let Some(serve) = &student.sections.serve {
            s += &serving(serve, "Serving the distilled model");
        }
    }
    s.push_str("Raw figures: `benches/results/latest.json`. Reproduce with the command above (the reference venv is set up on first use).\n");
    if root().join(GPU_REPORT).exists() {
        s.push_str(&format!(
            "\nOn a GPU (training step, embedding, the data-parallel path against PyTorch on the same device): [{GPU_REPORT}]({GPU_REPORT}), from `cargo xtask gpu-kit` (README, `mlops-train`, Devices).\n"
        ));
    }
    s
}

fn comparison_table(comparisons: &[Comparison]) -> String {
    if comparisons.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "| measurement | ours | reference | ours / reference | notes |\n|---|---|---|---|---|\n",
    );
    for c in comparisons {
        s += &comparison_row(c);
    }
    s.push('\n');
    s
}

fn comparison_row(c: &Comparison) -> String {
    let cell = |side: &Stats| {
        format!(
            "{:.0} [{:.0}, {:.0}]",
            finite_or(side.median, 0.0),
            finite_or(side.min, 0.0),
            finite_or(side.max, 0.0)
        )
    };
    let mut notes = Vec::new();
    // Infinite (shapes that differ) is written as null and noted as nothing.
    if let Some(d) = c.extra.max_abs_diff.filter(|d| d.is_finite()) {
        notes.push(format!("max abs diff of embeddings {d:.1e}"));
    }
    if let Some(x) = c.extra.identical_ids {
        notes.push(format!("identical top-10 ids {:.2} %", x * 100.0));
    }
    if let Some(t) = c
        .extra
        .threads
        .as_ref()
        .filter(|t| t.ours_omp_threads.is_some())
    {
        notes.push(format!(
            "OpenMP threads: ours {}, reference {}",
            json(&t.ours_omp_threads),
            json(&t.reference_omp_threads)
        ));
    }
    format!(
        "| {} ({}) | {} | {} | {:.2}x | {} |\n",
        c.name,
        c.unit,
        cell(&c.ours),
        cell(&c.reference),
        finite_or(c.ratio, 0.0),
        notes.join("; ")
    )
}

fn serving(serve: &Serving, title: &str) -> String {
    let mut s = format!(
        "## {title}: `mlops-deploy serve` vs TorchServe (our `.mar`, 2 workers, 1 OpenMP thread each, batch 32, 2 ms delay), fp32, wrk on loopback\n\nAccuracy over the test images: ours {:.4}, TorchServe {:.4}. Peak RSS: ours {:.0} MB, TorchServe {:.0} MB (frontend and workers) -> {:.2}.\n\n| clients | ours req/s | p50 / p99 ms | TorchServe req/s | p50 / p99 ms | ratio | errors (ours / TorchServe) |\n|---|---|---|---|---|---|---|\n",
        serve.accuracy.ours,
        serve.accuracy.reference,
        serve.peak_rss_mb.ours,
        serve.peak_rss_mb.reference,
        serve.peak_rss_mb.ours / serve.peak_rss_mb.reference,
    );
    for l in &serve.load {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2}x | {} / {} |",
            l.clients,
            finite_or(l.ours.requests_per_second.median, 0.0),
            l.ours.p50_ms,
            l.ours.p99_ms,
            finite_or(l.reference.requests_per_second.median, 0.0),
            l.reference.p50_ms,
            l.reference.p99_ms,
            finite_or(l.ratio, 0.0),
            l.ours.errors,
            l.reference.errors,
        );
    }
    s.push('\n');
    s
}

fn end_to_end(pipeline: &EndToEnd) -> String {
    let mut s = format!(
        "## End to end: `cargo xtask pipeline`, every stage run (none from the cache)\n\n{:.0} s in all, test accuracy {}; from `{}`.\n\n| stage | seconds | peak RSS MB |\n|---|---|---|\n",
        pipeline.seconds,
        json(&pipeline.accuracy),
        pipeline.source.display()
    );
    for st in &pipeline.stages {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} |",
            st.stage,
            st.seconds,
            st.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    s.push('\n');
    s
}

/// A value as latest.json holds it (`null` when absent).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// What JSON cannot hold (NaN, infinities) reads back as `fallback`, as the report always
/// showed it.
fn finite_or(x: f64, fallback: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{ModelReport, Sections};
    use super::*;

    fn committed() -> Report {
        let path = root().join("benches/results/latest.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_student_gets_its_own_section_after_the_default_model() {
        let mut r = committed();
        r.student = None;
        let plain = markdown(&r);
        assert!(!plain.contains("distilled model"));
        let main = committed();
        r.student = Some(ModelReport {
            arch: "slim".into(),
            comparisons: main.comparisons,
            precision: "bf16".into(),
            run: "runs/serve".into(),
            sections: Sections {
                serve: main.sections.serve,
                pipeline: None,
            },
        });
        let md = markdown(&r);
        let student = md
            .find("## The distilled model: `runs/serve` (slim network, bf16)")
            .expect(&md);
        assert!(md[..student].starts_with(&plain[..plain.find("Raw figures").unwrap()]));
        assert!(md[student..].contains("## Serving the distilled model: `mlops-deploy serve`"));
        assert!(md[student..].contains("| measurement | ours | reference"));
        // The student section round-trips through latest.json.
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.student.unwrap().arch, "slim");
    }
}
