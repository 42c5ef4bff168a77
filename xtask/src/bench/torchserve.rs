//! TorchServe serving our `.mar` of the run's registered version, against our server on the
//! same version: accuracy, wrk load at 1, 8 and 32 clients, peak memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::compare::Sides;
use super::report::{median, BothServers, Load, LoadSide, Serving, Stats, TorchServeSettings};
use crate::bench_serve::{self, Server, Wrk};
use crate::{release_dir, run_cmd};

/// TorchServe (from our `.mar`) and our server on the same registered version, both fp32.
pub fn serve(sides: &Sides, run_dir: &Path, seconds: u32) -> Result<Serving> {
    let work = sides.work.join("serve");
    std::fs::create_dir_all(&work)?;
    bench_serve::prepare(run_dir, &work, "fp32")?;
    let registry = work.join("registry");
    let mut ours = Server::start(&registry, 0, 0, 0, "fp32")?;
    let ours_accuracy = bench_serve::served_accuracy(&ours.inference, &work)?;
    let torchserve = TorchServe::start(sides, &registry, &work)?;
    let ts_accuracy = bench_serve::served_accuracy(&torchserve.inference, &work)?;
    let png = work.join("images/000000.png");
    let urls = BothServers {
        ours: format!("http://{}/predictions/fashion-mnist", ours.inference),
        reference: format!("http://{}/predictions/fashion-mnist", torchserve.inference),
    };
    let mut load = Vec::new();
    for clients in [1u32, 8, 32] {
        load.push(under_load(sides, &urls, &png, clients, seconds, &work)?);
    }
    let ours_rss = ours.peak_rss_mb()?;
    let ts_rss = torchserve.peak_rss_mb()?;
    ours.stop()?;
    drop(torchserve);
    Ok(Serving {
        accuracy: BothServers {
            ours: ours_accuracy,
            reference: ts_accuracy,
        },
        load,
        peak_rss_mb: BothServers {
            ours: ours_rss,
            reference: ts_rss,
        },
        precision: "fp32".into(),
        torchserve: TorchServeSettings {
            batch_size: 32,
            max_batch_delay_ms: 2,
            omp_threads_per_worker: 1,
            workers: 2,
        },
    })
}

/// `repeats` wrk runs against each server in turn at `clients` connections.
fn under_load(
    sides: &Sides,
    urls: &BothServers<String>,
    png: &Path,
    clients: u32,
    seconds: u32,
    work: &Path,
) -> Result<Load> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..sides.repeats {
        a.push(bench_serve::wrk(&urls.ours, png, clients, seconds, work)?);
        b.push(bench_serve::wrk(
            &urls.reference,
            png,
            clients,
            seconds,
            work,
        )?);
    }
    let rps = |v: &[Wrk]| -> Vec<f64> { v.iter().map(|r| r.requests_per_second).collect() };
    eprintln!(
        "serve {clients} clients: ours {:.0} req/s, TorchServe {:.0} req/s",
        median(&rps(&a)),
        median(&rps(&b))
    );
    Ok(Load {
        clients,
        ours: side(&a),
        ratio: median(&rps(&a)) / median(&rps(&b)),
        reference: side(&b),
    })
}

/// One server's wrk runs: rates, median latency percentiles, errors.
fn side(runs: &[Wrk]) -> LoadSide {
    let p = |pick: fn(&Wrk) -> Option<f64>| -> f64 {
        median(
            &runs
                .iter()
                .map(|r| pick(r).unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
        )
    };
    let rps: Vec<f64> = runs.iter().map(|r| r.requests_per_second).collect();
    LoadSide {
        errors: runs.iter().map(Wrk::errors).sum(),
        p50_ms: p(|r| r.p50_ms),
        p99_ms: p(|r| r.p99_ms),
        requests_per_second: Stats::of(&rps),
    }
}

/// A TorchServe instance on ports 18080-18082 serving our package of the registry's default
/// version; stopped on drop.
struct TorchServe {
    inference: String,
    python: PathBuf,
    dir: PathBuf,
}

impl TorchServe {
    fn start(sides: &Sides, registry: &Path, work: &Path) -> Result<TorchServe> {
        let dir = work.join("torchserve");
        let pkg = dir.join("pkg");
        run_cmd(
            Command::new(release_dir().join("mlops-deploy"))
                .args(["package", "--registry"])
                .arg(registry)
                .args(["--name", "fashion-mnist", "--out"])
                .arg(&pkg)
                .env("PATH", path_with(&sides.python)),
            "mlops-deploy package",
        )?;
        let store = dir.join("model-store");
        std::fs::create_dir_all(&store)?;
        std::fs::copy(
            pkg.join("fashion-mnist.mar"),
            store.join("fashion-mnist.mar"),
        )?;
        let properties = std::fs::read_to_string(pkg.join("config.properties"))?
            .replace(
                "install_py_dep_per_model=true",
                "install_py_dep_per_model=false",
            )
            .replace(":8080", ":18080")
            .replace(":8081", ":18081")
            .replace(":8082", ":18082")
            + "disable_token_authorization=true\n";
        std::fs::write(dir.join("config.properties"), properties)?;
        let bin = sides.python.parent().context("venv bin")?.to_path_buf();
        let status = Command::new(bin.join("torchserve"))
            .args(["--start", "--ncs", "--model-store", "model-store"])
            .args(["--ts-config", "config.properties"])
            .current_dir(&dir)
            .env("PATH", path_with(&sides.python))
            // TorchServe's CPU guide: one OpenMP thread per worker, a worker per core.
            .env("OMP_NUM_THREADS", "1")
            .stdout(std::fs::File::create(dir.join("ts.log"))?)
            .stderr(std::process::Stdio::null())
            .status()
            .context("cannot start torchserve")?;
        ensure!(status.success(), "torchserve --start failed ({status})");
        let ts = TorchServe {
            inference: "127.0.0.1:18080".into(),
            python: sides.python.clone(),
            dir,
        };
        // Ready when a prediction succeeds (the workers load the model after the frontend).
        let png = std::fs::read(work.join("images/000000.png"))?;
        let until = Instant::now() + Duration::from_secs(180);
        let agent = bench_serve::agent();
        loop {
            let r = agent
                .post(&format!(
                    "http://{}/predictions/fashion-mnist",
                    ts.inference
                ))
                .header("Content-Type", "image/png")
                .send(&png[..]);
            if matches!(r, Ok(ref r) if r.status() == 200) {
                return Ok(ts);
            }
            if let Some(cause) = worker_failure(&ts.dir.join("logs")) {
                bail!("TorchServe's model worker died before it served:\n{cause}");
            }
            if Instant::now() > until {
                bail!(
                    "TorchServe never answered a prediction; its log: {}",
                    ts.dir.join("ts.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sum of the peak RSS of the frontend (Java) and its worker processes.
    fn peak_rss_mb(&self) -> Result<f64> {
        let mut total = 0.0;
        for pattern in ["org.pytorch.serve.ModelServer", "model_service_worker"] {
            let out = Command::new("pgrep").args(["-f", pattern]).output()?;
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                total += bench_serve::vm_hwm_mb(pid.parse()?)?;
            }
        }
        ensure!(total > 0.0, "no TorchServe processes found");
        Ok(total)
    }
}

impl Drop for TorchServe {
    fn drop(&mut self) {
        if let Some(bin) = self.python.parent() {
            let _ = Command::new(bin.join("torchserve"))
                .arg("--stop")
                .current_dir(&self.dir)
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// Why TorchServe's model worker died, from the logs it writes under `logs` (relative to the
/// directory it was started in): the last Python traceback of `model_log.log` (or its last
/// lines) once the frontend or the worker has reported the death. `None` while nothing died.
/// TorchServe itself keeps restarting a dead worker with back-off and never gives up, so
/// without this the readiness wait would sit out its whole timeout on an error that is final.
fn worker_failure(logs: &Path) -> Option<String> {
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    let (frontend, model) = (read("ts_log.log"), read("model_log.log"));
    // 0.12 logs "Backend worker error" (then "Auto recovery failed again"); older releases
    // "Backend worker process died".
    let died = [
        "Backend worker error",
        "Backend worker process died",
        "Load model failed",
    ]
    .iter()
    .any(|m| frontend.contains(m) || model.contains(m));
    if !died {
        return None;
    }
    let lines: Vec<&str> = model.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains("Traceback (most recent call last)"))
        .unwrap_or(lines.len().saturating_sub(20));
    let mut cause: Vec<&str> = lines[start..].iter().take(40).copied().collect();
    if cause.is_empty() {
        cause.push("(model_log.log is empty; see ts_log.log)");
    }
    Some(format!(
        "{}\n(from {})",
        cause.join("\n"),
        logs.join("model_log.log").display()
    ))
}

/// PATH with the venv's bin first (torch-model-archiver, torchserve, java stays from PATH).
fn path_with(python: &Path) -> String {
    let bin = python
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{bin}:{}", std::env::var("PATH").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as TorchServe 0.12 wrote them here when the venv lacked PyYAML (paths shortened).
    #[test]
    fn a_dead_worker_is_reported_with_its_traceback() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        assert_eq!(worker_failure(logs), None, "no logs yet");
        let prefix = "2026-12-06T09:54:45,969 [WARN ] W-9000-fashion-mnist_1.0-stderr MODEL_LOG -";
        std::fs::write(
            logs.join("model_log.log"),
            format!(
                "2026-12-06T09:54:45,900 [INFO ] W-9000-fashion-mnist_1.0-stdout MODEL_LOG - \
                 s_name_part0=/tmp/.ts.sock, s_name_part1=9000, pid=1\n\
                 {prefix} Traceback (most recent call last):\n\
                 {prefix}   File \"ts/utils/util.py\", line 10, in <module>\n\
                 {prefix}     import yaml\n\
                 {prefix} ModuleNotFoundError: No module named 'yaml'\n"
            ),
        )
        .unwrap();
        std::fs::write(logs.join("ts_log.log"), "[INFO ] starting\n").unwrap();
        assert_eq!(
            worker_failure(logs),
            None,
            "a worker still starting has not died"
        );
        std::fs::write(
            logs.join("ts_log.log"),
            "2026-12-06T09:54:47,123 [ERROR] W-9001-fashion-mnist_1.0 \
             org.pytorch.serve.wlm.WorkerThread - Backend worker error\n\
             org.pytorch.serve.wlm.WorkerInitializationException: Backend stream closed.\n",
        )
        .unwrap();
        let cause = worker_failure(logs).expect("a dead worker");
        assert!(cause.contains("No module named 'yaml'"), "{cause}");
        assert!(cause.starts_with(&format!("{prefix} Traceback")), "{cause}");
        assert!(!cause.contains("s_name_part0"), "{cause}");
    }
}
