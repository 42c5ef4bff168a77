//! Helpers for the stage crates' tests and benchmarks (feature `test-support`): driving a stage
//! binary, asserting the bad-input contract, optional prerequisites, synthetic artifacts.

pub mod server;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array2};

use crate::artifact::{EmbedSummary, EmbeddedRole, EmbeddingShard, StageSummary};
use crate::{Manifest, OutputDir, Result};

/// Runs a stage binary (`env!("CARGO_BIN_EXE_...")`) with logging off; returns its exit code
/// (-1 when killed by a signal) and stderr.
pub fn run_stage<I, S>(bin: &str, args: I) -> (i32, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the stage contract for bad input: exit code 1, stderr containing every string of
/// `expect`, no panic, and no `manifest.json` in the output directory `out`.
pub fn assert_failed_cleanly((code, stderr): &(i32, String), out: &Path, expect: &[&str]) {
    assert_eq!(*code, 1, "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{stderr:?} should contain {e:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.join(crate::MANIFEST_FILE).exists());
}

/// Asserts that `out`, if it exists, holds nothing: no partial output was left behind.
pub fn assert_empty_or_absent(out: &Path) {
    if out.exists() {
        let left = std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "partial output left in {}", out.display());
    }
}

/// Whether CI asked for every optional check (`CI=true`, where the set-up installs them all).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Gate for a test that needs something optional (a dataset, a Python package): `Some(value)`
/// when it is there; when it is not, a visible `SKIPPED` line on stderr and `None`, except under
/// `CI=true`, where the set-up installs it, so its absence fails the test.
pub fn prerequisite<T>(what: &str, found: Option<T>, how: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    assert!(!in_ci(), "{what} is missing under CI=true ({how})");
    skipped(format!("SKIPPED: {what} is missing ({how})"));
    None
}

/// Prints a skip notice straight to the process's stderr: libtest captures `eprintln!` of a
/// passing test, and a skipped check must stay visible.
pub fn skipped(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The set-up venv's Python (`MLOPS_PYTHON`, set by `cargo xtask test`), as a prerequisite.
pub fn python() -> Option<PathBuf> {
    prerequisite(
        "the set-up venv's Python",
        std::env::var_os("MLOPS_PYTHON").map(PathBuf::from),
        "cargo xtask test sets MLOPS_PYTHON",
    )
}

/// Prometheus's `promtool`, which `cargo xtask setup` unpacks and `cargo xtask test` names in
/// `MLOPS_PROMTOOL`.
pub fn promtool() -> Option<PathBuf> {
    prerequisite(
        "promtool",
        std::env::var_os("MLOPS_PROMTOOL").map(PathBuf::from),
        "cargo xtask test sets MLOPS_PROMTOOL",
    )
}

/// Writes a synthetic embed-stage directory: `classes` clusters of unit vectors of dimension
/// `dim` (noise `spread` around random centres), `per_class` vectors per class in each of
/// `roles`, one shard per role. Deterministic in `seed`.
pub fn write_clusters(
    dir: &Path,
    dim: usize,
    per_class: usize,
    classes: usize,
    roles: &[&str],
    spread: f32,
    seed: u64,
) -> Result<Manifest> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let mut out = OutputDir::create(dir)?;
    let mut manifest = Manifest::begin(EmbedSummary::STAGE, "fixture", &());
    let mut summary_roles = BTreeMap::new();
    for role in roles {
        let n = per_class * classes;
        let mut values = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            let mut v: Vec<f32> = centres[c]
                .iter()
                .map(|x| x + rng.random_range(-spread..=spread))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            values.extend(v);
            labels.push(c as i64);
        }
        let e = out.write_npy(
            &crate::artifact::embeddings::embeddings_file(role, 0),
            &Array2::from_shape_vec((n, dim), values).expect("n * dim values"),
        )?;
        let l = out.write_npy(
            &crate::artifact::embeddings::labels_file(role, 0),
            &Array1::from_vec(labels),
        )?;
        summary_roles.insert(
            role.to_string(),
            EmbeddedRole {
                rows: n,
                shards: vec![EmbeddingShard {
                    embeddings: e.path.clone(),
                    labels: l.path.clone(),
                    rows: n,
                }],
            },
        );
        manifest.outputs.extend([e, l]);
    }
    let summary = EmbedSummary {
        dim,
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        roles: summary_roles,
        device: "Cpu".into(),
        images_per_second: 0.0,
        precision: "fp32".into(),
        cpu: String::new(),
        baseline: None,
    };
    manifest.summary = serde_json::to_value(summary).expect("plain data");
    out.commit(manifest)
}
