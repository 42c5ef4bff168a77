//! The comparison loop: the same work through our `compare_worker` and the reference Python
//! script, interleaved, each measurement a fresh process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use super::report::{median, Comparison, Extra, Stats, Threads, Versions};
use crate::root;

/// The two sides' commands and settings.
pub struct Sides {
    pub python: PathBuf,
    pub worker: PathBuf,
    pub script: PathBuf,
    pub threads: usize,
    pub repeats: usize,
    pub work: PathBuf,
}

/// The rate a measurement reports.
#[derive(Debug, Clone, Copy)]
enum Rate {
    ImagesPerSecond,
    QueriesPerSecond,
}

impl Rate {
    /// Its key in a measurement's JSON line.
    fn key(self) -> &'static str {
        match self {
            Rate::ImagesPerSecond => "img_per_s",
            Rate::QueriesPerSecond => "q_per_s",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Rate::ImagesPerSecond => "img/s",
            Rate::QueriesPerSecond => "queries/s",
        }
    }
}

/// The JSON line either side prints per measurement.
#[derive(Debug, Deserialize)]
struct Measurement {
    img_per_s: Option<f64>,
    q_per_s: Option<f64>,
    omp_threads: Option<i64>,
    torch_threads: Option<i64>,
}

impl Measurement {
    fn rate(&self, rate: Rate) -> Option<f64> {
        match rate {
            Rate::ImagesPerSecond => self.img_per_s,
            Rate::QueriesPerSecond => self.q_per_s,
        }
    }
}

impl Sides {
    fn env(&self, cmd: &mut Command) {
        let t = self.threads.to_string();
        cmd.env("OMP_NUM_THREADS", &t)
            .env("MKL_NUM_THREADS", &t)
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("RUST_LOG", "warn")
            .current_dir(root());
    }

    fn one(&self, mut cmd: Command, rate: Rate, what: &str) -> Result<(f64, Measurement)> {
        self.env(&mut cmd);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {what}"))?;
        ensure!(
            out.status.success(),
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.trim().lines().last().unwrap_or_default();
        let m: Measurement = serde_json::from_str(line)
            .with_context(|| format!("{what} printed no JSON line: {text}"))?;
        let x = m
            .rate(rate)
            .with_context(|| format!("{what}: no {} in {line}", rate.key()))?;
        Ok((x, m))
    }

    /// `repeats` rounds of ours then theirs, each a fresh process.
    fn measure(
        &self,
        name: String,
        rate: Rate,
        ours: &[String],
        theirs: &[String],
    ) -> Result<Comparison> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut threads = Threads::default();
        for _ in 0..self.repeats {
            let mut cmd = Command::new(&self.worker);
            cmd.args(ours);
            let (x, m) = self.one(cmd, rate, "compare_worker")?;
            a.push(x);
            threads.ours_omp_threads = m.omp_threads;
            threads.ours_torch_threads = m.torch_threads;
            let mut cmd = Command::new(&self.python);
            cmd.arg(&self.script).args(theirs);
            let (y, m) = self.one(cmd, rate, "scripts/bench_reference.py")?;
            b.push(y);
            threads.reference_omp_threads = m.omp_threads;
            threads.reference_torch_threads = m.torch_threads;
        }
        let unit = rate.unit();
        eprintln!(
            "{name}: ours {:.0}, reference {:.0} {unit} (medians of {})",
            median(&a),
            median(&b),
            self.repeats
        );
        Ok(Comparison {
            extra: Extra {
                threads: Some(threads),
                ..Extra::default()
            },
            name,
            ratio: median(&a) / median(&b),
            ours: Stats::of(&a),
            reference: Stats::of(&b),
            unit: unit.to_string(),
        })
    }

    pub fn python_eval(&self, code: &str) -> Result<String> {
        let out = Command::new(&self.python).args(["-c", code]).output()?;
        ensure!(
            out.status.success(),
            "python -c {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The reference stack's versions, as its Python reports them.
    pub fn versions(&self) -> Result<Versions> {
        let torch = self.python_eval("import torch; print(torch.__version__)")?;
        Ok(Versions {
            faiss: self.python_eval("import faiss; print(faiss.__version__)")?,
            libtorch_ours: "2.13.0".into(),
            torch,
            torchserve: self
                .python_eval("import ts.version; print(ts.version.__version__)")
                .unwrap_or_default(),
        })
    }

    /// One training step of the run's architecture, and of `seed` when `with_seed` (the main
    /// run's report has that row; the student's would repeat it), in each precision.
    pub fn train(
        &self,
        arch: &str,
        precisions: &[&str],
        with_seed: bool,
    ) -> Result<Vec<Comparison>> {
        let mut archs = vec![arch];
        if with_seed && arch != "seed" {
            archs.push("seed");
        }
        let mut out = Vec::new();
        for a in archs {
            for &p in precisions {
                let argv = ["train", a, "128", "20", p].map(String::from);
                let name = format!("train step {a} {p} batch 128");
                out.push(self.measure(name, Rate::ImagesPerSecond, &argv, &argv)?);
            }
        }
        Ok(out)
    }

    /// The run's model over its test images at three batch sizes, with the largest difference
    /// of the two sides' embeddings.
    pub fn embed(
        &self,
        run_dir: &Path,
        arch: &str,
        precisions: &[&str],
    ) -> Result<Vec<Comparison>> {
        let run = run_dir.display().to_string();
        let mut out = Vec::new();
        for batch in [64, 256, 512] {
            for &p in precisions {
                let ours_out = self.work.join("ours.npy").display().to_string();
                let ref_out = self.work.join("ref.npy").display().to_string();
                let argv =
                    |out: &str| ["embed", &run, &batch.to_string(), p, out].map(String::from);
                let name = format!("embed {arch} {p} batch {batch}");
                let mut c = self.measure(
                    name,
                    Rate::ImagesPerSecond,
                    &argv(&ours_out),
                    &argv(&ref_out),
                )?;
                let diff = self.python_eval(&format!(
                    "import numpy as np; a=np.load('{ours_out}'); b=np.load('{ref_out}'); print(float(np.abs(a-b).max()) if a.shape==b.shape else 'inf')"
                ))?;
                // The difference replaces the thread counts: both sides embed with the same.
                c.extra = Extra {
                    max_abs_diff: Some(diff.parse::<f64>().unwrap_or(f64::INFINITY)),
                    ..Extra::default()
                };
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The run's test embeddings searched in its gallery through three index types, with the
    /// share of identical top-k ids.
    pub fn search(&self, run_dir: &Path) -> Result<Vec<Comparison>> {
        let run = run_dir.display().to_string();
        let mut out = Vec::new();
        for factory in ["Flat", "IVF64,Flat", "HNSW32"] {
            let ours_out = self.work.join("ours_ids.npy").display().to_string();
            let ref_out = self.work.join("ref_ids.npy").display().to_string();
            let argv = |out: &str| ["search", &run, factory, "10", out].map(String::from);
            let name = format!("search {factory} k 10");
            let mut c = self.measure(
                name,
                Rate::QueriesPerSecond,
                &argv(&ours_out),
                &argv(&ref_out),
            )?;
            let same = self.python_eval(&format!(
                "import numpy as np; a=np.load('{ours_out}'); b=np.load('{ref_out}'); print(float((a==b).mean()))"
            ))?;
            c.extra.identical_ids = Some(same.parse::<f64>()?);
            out.push(c);
        }
        Ok(out)
    }
}
