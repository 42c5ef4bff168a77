//! `cargo xtask bench --compare`: ours against the Python stack on identical inputs and thread
//! counts, interleaved (ours, theirs, ours, theirs, ...), each measurement in a fresh process.
//!
//! 1. **train**: one training step of the same network (the run's architecture and `seed`),
//!    batch, optimizer and parameter groups: `mlops-train` vs PyTorch eager, in fp32 and in the
//!    precision the run trained in.
//! 2. **embed**: the run's `model.pt` over its test images: `mlops-embed`'s inference vs
//!    `torch.jit.load` + batched forward, batches 64/256/512, with the largest difference of the
//!    embeddings.
//! 3. **search**: the run's gallery and test embeddings: our FAISS vs Python faiss-cpu, Flat,
//!    IVF64,Flat (nprobe 8) and HNSW32 (efSearch 64), k = 10, OpenMP threads pinned and printed
//!    on both sides, with the share of identical top-k ids.
//! 4. **serve**: `mlops-deploy serve` vs TorchServe serving our `.mar` of the same registered
//!    version (2 workers, one OpenMP thread each, batch 32 with a 2 ms delay, as TorchServe's
//!    CPU guide advises), both fp32, the same `wrk` at 1/8/32 clients on loopback; accuracy
//!    over every test image through each, and each server's peak RSS.
//! 5. **pipeline**: wall time and peak RSS of every stage, from the run's `run.json` when all
//!    its stages ran, else from the pipeline run again on its parameters, forced.
//!
//! Writes `BENCHMARKS.md` and `benches/results/latest.json`. A missing input is an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::bench_serve::{self, Server};
use crate::{cargo, release_dir, root, run_cmd, setup};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Train,
    Embed,
    Search,
    Serve,
    Pipeline,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Compare with PyTorch, faiss-cpu and TorchServe (without it: the criterion suite).
    #[arg(long)]
    compare: bool,
    /// The pipeline run whose model, data and embeddings are measured.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// Measurements per side and setting (at least 5 for the report's medians).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Threads on both sides (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// What to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "train,embed,search,serve,pipeline"
    )]
    parts: Vec<Part>,
}

/// Medians and spread of the two sides of one comparison.
struct Pair {
    name: String,
    unit: &'static str,
    ours: Vec<f64>,
    theirs: Vec<f64>,
    extra: Value,
}

impl Pair {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "unit": self.unit,
            "ours": stats(&self.ours),
            "reference": stats(&self.theirs),
            "ratio": median(&self.ours) / median(&self.theirs),
            "extra": self.extra,
        })
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn stats(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median": median(v), "min": min, "max": max, "n": v.len(), "values": v })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !args.compare {
        return run_cmd(
            cargo().args(["bench", "-p", "mlops-benches"]),
            "cargo bench",
        );
    }
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    setup::run(&setup::SetupArgs::default())?;
    let python = setup::reference_venv()?;
    let run_dir = root().join(&args.run);
    for stage in ["data", "train", "embed", "index", "eval"] {
        ensure!(
            run_dir.join(stage).join("manifest.json").is_file(),
            "{} has no finished {stage} stage: run `cargo xtask pipeline` first",
            run_dir.display()
        );
    }
    run_cmd(
        cargo().args([
            "build",
            "--release",
            "-p",
            "mlops-benches",
            "--example",
            "compare_worker",
        ]),
        "cargo build",
    )?;
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let train_summary = &crate::read_json(&run_dir.join("train/manifest.json"))?["summary"];
    let arch = train_summary["arch"].as_str().unwrap_or("wide").to_string();
    let precision = crate::read_json(&run_dir.join("embed/manifest.json"))?["summary"]["precision"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or("fp32")
        .to_string();
    let work = std::env::temp_dir().join(format!("mlops-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let sides = Sides {
        python,
        worker: release_dir().join("examples/compare_worker"),
        script: root().join("scripts/bench_reference.py"),
        threads,
        repeats: args.repeats,
        work: work.clone(),
    };
    let versions = json!({
        "torch": sides.python_eval("import torch; print(torch.__version__)")?,
        "faiss": sides.python_eval("import faiss; print(faiss.__version__)")?,
        "torchserve": sides.python_eval("import ts.version; print(ts.version.__version__)").unwrap_or_default(),
        "libtorch_ours": "2.13.0",
    });
    let mut pairs: Vec<Pair> = Vec::new();
    let mut sections = serde_json::Map::new();
    // fp32, and the run's own precision when that is another.
    let mut precisions = vec!["fp32"];
    if precision != "fp32" {
        precisions.push(precision.as_str());
    }
    if args.parts.contains(&Part::Train) {
        for a in [arch.as_str(), "seed"] {
            for &p in &precisions {
                let argv = ["train", a, "128", "20", p].map(String::from);
                let name = format!("train step {a} {p} batch 128");
                pairs.push(sides.measure(name, "img/s", &argv, &argv, "img_per_s")?);
            }
        }
    }
    if args.parts.contains(&Part::Embed) {
        let run = run_dir.display().to_string();
        for batch in [64, 256, 512] {
            for &p in &precisions {
                let ours_out = work.join("ours.npy").display().to_string();
                let ref_out = work.join("ref.npy").display().to_string();
                let argv =
                    |out: &str| ["embed", &run, &batch.to_string(), p, out].map(String::from);
                let name = format!("embed {arch} {p} batch {batch}");
                let mut pair = sides.measure(
                    name,
                    "img/s",
                    &argv(&ours_out),
                    &argv(&ref_out),
                    "img_per_s",
                )?;
                let diff = sides.python_eval(&format!(
                    "import numpy as np; a=np.load('{ours_out}'); b=np.load('{ref_out}'); print(float(np.abs(a-b).max()) if a.shape==b.shape else 'inf')"
                ))?;
                pair.extra =
                    json!({ "max_abs_diff": diff.parse::<f64>().unwrap_or(f64::INFINITY) });
                pairs.push(pair);
            }
        }
    }
    if args.parts.contains(&Part::Search) {
        let run = run_dir.display().to_string();
        for factory in ["Flat", "IVF64,Flat", "HNSW32"] {
            let ours_out = work.join("ours_ids.npy").display().to_string();
            let ref_out = work.join("ref_ids.npy").display().to_string();
            let argv = |out: &str| ["search", &run, factory, "10", out].map(String::from);
            let name = format!("search {factory} k 10");
            let mut pair = sides.measure(
                name,
                "queries/s",
                &argv(&ours_out),
                &argv(&ref_out),
                "q_per_s",
            )?;
            let same = sides.python_eval(&format!(
                "import numpy as np; a=np.load('{ours_out}'); b=np.load('{ref_out}'); print(float((a==b).mean()))"
            ))?;
            pair.extra["identical_ids"] = json!(same.parse::<f64>()?);
            pairs.push(pair);
        }
    }
    if args.parts.contains(&Part::Serve) {
        sections.insert("serve".into(), serve(&sides, &run_dir, args.seconds)?);
    }
    if args.parts.contains(&Part::Pipeline) {
        sections.insert("pipeline".into(), pipeline(&run_dir)?);
    }
    let report = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": bench_serve::machine(),
        "threads": threads,
        "repeats": args.repeats,
        "run": args.run,
        "arch": arch,
        "precision": precision,
        "versions": versions,
        "comparisons": pairs.iter().map(Pair::json).collect::<Vec<_>>(),
        "sections": sections,
        "command": command_line(args),
    });
    let json_path = root().join("benches/results/latest.json");
    std::fs::create_dir_all(json_path.parent().expect("has a parent"))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = markdown(&report);
    std::fs::write(root().join("BENCHMARKS.md"), &md)?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn command_line(args: &BenchArgs) -> String {
    let parts: Vec<String> = args
        .parts
        .iter()
        .map(|p| format!("{p:?}").to_lowercase())
        .collect();
    format!(
        "cargo xtask bench --compare --run {} --repeats {} --threads {} --seconds {} --parts {}",
        args.run.display(),
        args.repeats,
        args.threads,
        args.seconds,
        parts.join(",")
    )
}

/// The two sides' commands and settings.
struct Sides {
    python: PathBuf,
    worker: PathBuf,
    script: PathBuf,
    threads: usize,
    repeats: usize,
    work: PathBuf,
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

    fn one(&self, mut cmd: Command, key: &str, what: &str) -> Result<(f64, Value)> {
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
        let line = String::from_utf8_lossy(&out.stdout);
        let value: Value = serde_json::from_str(line.trim().lines().last().unwrap_or_default())
            .with_context(|| format!("{what} printed no JSON line: {line}"))?;
        let x = value[key]
            .as_f64()
            .with_context(|| format!("{what}: no {key} in {value}"))?;
        Ok((x, value))
    }

    /// `repeats` rounds of ours then theirs, each a fresh process.
    fn measure(
        &self,
        name: String,
        unit: &'static str,
        ours: &[String],
        theirs: &[String],
        key: &str,
    ) -> Result<Pair> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut extra = json!({});
        for _ in 0..self.repeats {
            let mut cmd = Command::new(&self.worker);
            cmd.args(ours);
            let (x, v) = self.one(cmd, key, "compare_worker")?;
            a.push(x);
            extra["ours_omp_threads"] = v["omp_threads"].clone();
            extra["ours_torch_threads"] = v["torch_threads"].clone();
            let mut cmd = Command::new(&self.python);
            cmd.arg(&self.script).args(theirs);
            let (y, v) = self.one(cmd, key, "scripts/bench_reference.py")?;
            b.push(y);
            extra["reference_omp_threads"] = v["omp_threads"].clone();
            extra["reference_torch_threads"] = v["torch_threads"].clone();
        }
        eprintln!(
            "{name}: ours {:.0}, reference {:.0} {unit} (medians of {})",
            median(&a),
            median(&b),
            self.repeats
        );
        Ok(Pair {
            name,
            unit,
            ours: a,
            theirs: b,
            extra,
        })
    }

    fn python_eval(&self, code: &str) -> Result<String> {
        let out = Command::new(&self.python).args(["-c", code]).output()?;
        ensure!(
            out.status.success(),
            "python -c {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// TorchServe (from our `.mar`) and our server on the same registered version, both fp32.
fn serve(sides: &Sides, run_dir: &Path, seconds: u32) -> Result<Value> {
    let work = sides.work.join("serve");
    std::fs::create_dir_all(&work)?;
    bench_serve::prepare(run_dir, &work, "fp32")?;
    let registry = work.join("registry");
    let mut ours = Server::start(&registry, 0, 0, "fp32")?;
    let ours_accuracy = bench_serve::served_accuracy(&ours.inference, &work)?;
    let torchserve = TorchServe::start(sides, &registry, &work)?;
    let ts_accuracy = bench_serve::served_accuracy(&torchserve.inference, &work)?;
    let png = work.join("images/000000.png");
    let ours_url = format!("http://{}/predictions/fashion-mnist", ours.inference);
    let ts_url = format!("http://{}/predictions/fashion-mnist", torchserve.inference);
    let mut loads = Vec::new();
    for clients in [1u32, 8, 32] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..sides.repeats {
            a.push(bench_serve::wrk(&ours_url, &png, clients, seconds, &work)?);
            b.push(bench_serve::wrk(&ts_url, &png, clients, seconds, &work)?);
        }
        let rps = |v: &[Value]| -> Vec<f64> {
            v.iter()
                .map(|r| r["requests_per_second"].as_f64().unwrap_or(0.0))
                .collect()
        };
        let p = |v: &[Value], key: &str| -> f64 {
            median(
                &v.iter()
                    .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
                    .collect::<Vec<_>>(),
            )
        };
        let errors = |v: &[Value]| -> u64 {
            v.iter()
                .map(|r| {
                    r["non_2xx"].as_u64().unwrap_or(0) + r["socket_errors"].as_u64().unwrap_or(0)
                })
                .sum()
        };
        eprintln!(
            "serve {clients} clients: ours {:.0} req/s, TorchServe {:.0} req/s",
            median(&rps(&a)),
            median(&rps(&b))
        );
        loads.push(json!({
            "clients": clients,
            "ours": { "requests_per_second": stats(&rps(&a)), "p50_ms": p(&a, "p50_ms"), "p99_ms": p(&a, "p99_ms"), "errors": errors(&a) },
            "reference": { "requests_per_second": stats(&rps(&b)), "p50_ms": p(&b, "p50_ms"), "p99_ms": p(&b, "p99_ms"), "errors": errors(&b) },
            "ratio": median(&rps(&a)) / median(&rps(&b)),
        }));
    }
    let ours_rss = ours.peak_rss_mb()?;
    let ts_rss = torchserve.peak_rss_mb()?;
    ours.stop()?;
    drop(torchserve);
    Ok(json!({
        "precision": "fp32",
        "accuracy": { "ours": ours_accuracy, "reference": ts_accuracy },
        "peak_rss_mb": { "ours": ours_rss, "reference": ts_rss },
        "torchserve": { "workers": 2, "omp_threads_per_worker": 1, "batch_size": 32, "max_batch_delay_ms": 2 },
        "load": loads,
    }))
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

/// PATH with the venv's bin first (torch-model-archiver, torchserve, java stays from PATH).
fn path_with(python: &Path) -> String {
    let bin = python
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{bin}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Every stage's wall time and peak RSS: from the run's own record when all its stages ran
/// (none from the cache), else from the pipeline run again on its parameters, forced.
fn pipeline(run_dir: &Path) -> Result<Value> {
    let record = crate::read_json(&run_dir.join("run.json"))?;
    let stages_of = |record: &Value| -> Result<Vec<Value>> {
        Ok(record["stages"]
            .as_array()
            .context("run.json has no stages")?
            .iter()
            .map(|s| json!({ "stage": s["stage"], "status": s["status"], "seconds": s["seconds"], "peak_rss_mb": s["peak_rss_mb"] }))
            .collect())
    };
    let stages = stages_of(&record)?;
    if stages
        .iter()
        .all(|s| s["status"] == "ran" && !s["peak_rss_mb"].is_null())
    {
        let seconds = record["seconds"].as_f64().unwrap_or(0.0);
        eprintln!(
            "pipeline: every stage of {} ran; using its record",
            run_dir.display()
        );
        return Ok(
            json!({ "seconds": seconds, "accuracy": record["metrics"]["accuracy"], "stages": stages, "source": run_dir.join("run.json") }),
        );
    }
    let name = "bench-e2e";
    // The run's recorded parameter table is a parameters file as it stands; the flags only
    // rename the run and its registry.
    let config = std::env::temp_dir().join(format!("mlops-bench-e2e-{}.toml", std::process::id()));
    std::fs::write(&config, parameters_file(&record)?)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["pipeline", "--no-setup", "--force", "--name", name])
        .args(["--registry", "runs/registry-bench"])
        .arg("--config")
        .arg(&config);
    let started = Instant::now();
    let ran = run_cmd(cmd.current_dir(root()), "the pipeline");
    let _ = std::fs::remove_file(&config);
    ran?;
    let seconds = started.elapsed().as_secs_f64();
    let path = root().join("runs").join(name).join("run.json");
    let done = crate::read_json(&path)?;
    Ok(
        json!({ "seconds": seconds, "accuracy": done["metrics"]["accuracy"], "stages": stages_of(&done)?, "source": path }),
    )
}

/// The parameter table a `run.json` recorded, as a parameters file for `--config`.
fn parameters_file(record: &Value) -> Result<String> {
    let params: toml::Table = serde_json::from_value(record["parameters"].clone())
        .context("run.json: parameters are not a parameter table")?;
    Ok(toml::to_string(&params)?)
}

fn markdown(r: &Value) -> String {
    let mut s = String::from("# Benchmarks: mlops-rs against the Python stack\n\n");
    s.push_str(&format!(
        "Written by `{}` on {} ({}, {} cores); {} threads on both sides, {} interleaved measurements per side and setting (ours, reference, ours, ...), each a fresh process; medians with [min, max]. Reference: PyTorch {}, faiss-cpu {}, TorchServe {}. Run measured: `{}` ({} network, {}).\n\n",
        r["command"].as_str().unwrap_or_default(),
        r["date"].as_str().unwrap_or_default(),
        r["machine"]["cpu"].as_str().unwrap_or_default(),
        r["machine"]["cores"],
        r["threads"],
        r["repeats"],
        r["versions"]["torch"].as_str().unwrap_or_default(),
        r["versions"]["faiss"].as_str().unwrap_or_default(),
        r["versions"]["torchserve"].as_str().unwrap_or_default(),
        r["run"].as_str().unwrap_or_default(),
        r["arch"].as_str().unwrap_or_default(),
        r["precision"].as_str().unwrap_or_default(),
    ));
    let comparisons = r["comparisons"].as_array().cloned().unwrap_or_default();
    if !comparisons.is_empty() {
        s.push_str("| measurement | ours | reference | ours / reference | notes |\n|---|---|---|---|---|\n");
        for c in &comparisons {
            let cell = |side: &Value| {
                format!(
                    "{:.0} [{:.0}, {:.0}]",
                    side["median"].as_f64().unwrap_or(0.0),
                    side["min"].as_f64().unwrap_or(0.0),
                    side["max"].as_f64().unwrap_or(0.0)
                )
            };
            let mut notes = Vec::new();
            if let Some(d) = c["extra"]["max_abs_diff"].as_f64() {
                notes.push(format!("max abs diff of embeddings {d:.1e}"));
            }
            if let Some(x) = c["extra"]["identical_ids"].as_f64() {
                notes.push(format!("identical top-10 ids {:.2} %", x * 100.0));
            }
            if !c["extra"]["ours_omp_threads"].is_null() {
                notes.push(format!(
                    "OpenMP threads: ours {}, reference {}",
                    c["extra"]["ours_omp_threads"], c["extra"]["reference_omp_threads"]
                ));
            }
            s.push_str(&format!(
                "| {} ({}) | {} | {} | {:.2}x | {} |\n",
                c["name"].as_str().unwrap_or_default(),
                c["unit"].as_str().unwrap_or_default(),
                cell(&c["ours"]),
                cell(&c["reference"]),
                c["ratio"].as_f64().unwrap_or(0.0),
                notes.join("; ")
            ));
        }
        s.push('\n');
    }
    let serve = &r["sections"]["serve"];
    if !serve.is_null() {
        s.push_str(&format!(
            "## Serving: `mlops-deploy serve` vs TorchServe (our `.mar`, 2 workers, 1 OpenMP thread each, batch 32, 2 ms delay), fp32, wrk on loopback\n\nAccuracy over the test images: ours {:.4}, TorchServe {:.4}. Peak RSS: ours {:.0} MB, TorchServe {:.0} MB (frontend and workers) -> {:.2}.\n\n| clients | ours req/s | p50 / p99 ms | TorchServe req/s | p50 / p99 ms | ratio | errors (ours / TorchServe) |\n|---|---|---|---|---|---|---|\n",
            serve["accuracy"]["ours"].as_f64().unwrap_or(0.0),
            serve["accuracy"]["reference"].as_f64().unwrap_or(0.0),
            serve["peak_rss_mb"]["ours"].as_f64().unwrap_or(0.0),
            serve["peak_rss_mb"]["reference"].as_f64().unwrap_or(0.0),
            serve["peak_rss_mb"]["ours"].as_f64().unwrap_or(0.0) / serve["peak_rss_mb"]["reference"].as_f64().unwrap_or(1.0),
        ));
        for l in serve["load"].as_array().into_iter().flatten() {
            let side = |k: &str| &l[k];
            s.push_str(&format!(
                "| {} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2}x | {} / {} |\n",
                l["clients"],
                side("ours")["requests_per_second"]["median"]
                    .as_f64()
                    .unwrap_or(0.0),
                side("ours")["p50_ms"].as_f64().unwrap_or(f64::NAN),
                side("ours")["p99_ms"].as_f64().unwrap_or(f64::NAN),
                side("reference")["requests_per_second"]["median"]
                    .as_f64()
                    .unwrap_or(0.0),
                side("reference")["p50_ms"].as_f64().unwrap_or(f64::NAN),
                side("reference")["p99_ms"].as_f64().unwrap_or(f64::NAN),
                l["ratio"].as_f64().unwrap_or(0.0),
                side("ours")["errors"],
                side("reference")["errors"],
            ));
        }
        s.push('\n');
    }
    let pipeline = &r["sections"]["pipeline"];
    if !pipeline.is_null() {
        s.push_str(&format!(
            "## End to end: `cargo xtask pipeline`, every stage run (none from the cache)\n\n{:.0} s in all, test accuracy {}; from `{}`.\n\n| stage | seconds | peak RSS MB |\n|---|---|---|\n",
            pipeline["seconds"].as_f64().unwrap_or(0.0),
            pipeline["accuracy"],
            pipeline["source"].as_str().unwrap_or_default()
        ));
        for st in pipeline["stages"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                st["stage"].as_str().unwrap_or_default(),
                st["seconds"].as_f64().unwrap_or(0.0),
                st["peak_rss_mb"]
                    .as_f64()
                    .map_or("-".into(), |m| format!("{m:.0}"))
            ));
        }
        s.push('\n');
    }
    s.push_str("Raw figures: `benches/results/latest.json`. Reproduce with the command above (the reference venv is set up on first use).\n");
    if root().join(GPU_REPORT).exists() {
        s.push_str(&format!(
            "\nOn a GPU (training step, embedding, the data-parallel path against PyTorch on the same device): [{GPU_REPORT}]({GPU_REPORT}), from `cargo xtask gpu-kit` (README, `mlops-train`, Devices).\n"
        ));
    }
    s
}

/// The GPU kit's last report kept in the repository (the CPU machines here have no GPU).
const GPU_REPORT: &str = "benches/results/gpu-h200/gpu_report.md";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_parameter_table_becomes_the_same_parameters_file() {
        let text = "[pipeline]\nrun = \"x\"\nsources = [\"/a\"]\n[data]\nimage_size = [8, 8]\n\
                    [train]\nepochs = 3\narch = \"res\"\naugment = { max_shift = 0, hflip = false }\n\
                    [eval.gate]\nmin_accuracy = 0.5\n";
        let table: toml::Table = toml::from_str(text).unwrap();
        // run.json holds the table as JSON.
        let record = json!({ "parameters": serde_json::to_value(&table).unwrap() });
        let back: toml::Table = toml::from_str(&parameters_file(&record).unwrap()).unwrap();
        assert_eq!(back, table);
        assert!(parameters_file(&json!({ "parameters": [1] })).is_err());
    }
}
