//! `cargo xtask bench-serve`: the real server on loopback under `wrk`, against the in-process
//! rate of the same work, on a pipeline run's model.
//!
//! 1. `serve_bench_prepare` (an example of `mlops-deploy`) registers the run twice, writes its
//!    test images as PNGs and measures decode + embed + search in process (batches of 32).
//! 2. The server starts on free loopback ports; every test image is posted once and the served
//!    accuracy compared with the eval stage's.
//! 3. `wrk` posts one 28x28 PNG per request with 1, 8 and 32 connections, then again with 32
//!    while `set-default` swaps between the two versions every half second.
//! 4. Peak RSS of the server (`VmHWM`). Results go to `benches/results/serve.json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mlops_core::artifact::EmbeddingsDir;
use serde::{Deserialize, Serialize};

use crate::{cargo, release_dir, root, run_cmd, setup};

#[derive(clap::Args)]
pub struct BenchServeArgs {
    /// Pipeline run whose model is served (needs data, train, index, eval).
    #[arg(long, default_value = "runs/default")]
    pub(crate) run: PathBuf,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u32,
    /// Server HTTP threads (0: the server's default, one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) io_threads: usize,
    /// Server inference threads per model (0: the server's default, one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) workers: usize,
    /// Server libtorch threads of each inference thread (0: the server's default, the cores
    /// shared out among the inference threads).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Serve this run's model too and compare the two side by side (wrk at 1, 8 and 32
    /// clients, alternating runs; `benches/results/serve-vs-baseline.json`), e.g.
    /// `--run runs/serve --baseline runs/default`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Rounds of the comparison with `--baseline` (each run serves once per round).
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
}

pub fn run(args: &BenchServeArgs) -> Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    if let Some(baseline) = &args.baseline {
        return crate::bench_serve_vs::run(args, baseline);
    }
    let run_dir = root().join(&args.run);
    check_run(&run_dir)?;
    let work = std::env::temp_dir().join(format!("mlops-bench-serve-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    // Serve in the precision the run's embeddings were computed in, so served predictions can
    // equal eval's.
    let precision = run_precision(&run_dir)?;
    let inprocess = prepare(&run_dir, &work, &precision)?;
    eprintln!("in process: {}", serde_json::to_string(&inprocess)?);

    let mut server = Server::start(
        &work.join("registry"),
        args.io_threads,
        args.workers,
        args.threads,
        &precision,
    )?;
    let accuracy = served_accuracy(&server.inference, &work)?;
    eprintln!(
        "served accuracy {accuracy} (eval {})",
        inprocess.eval_accuracy
    );
    let png = work.join("images/000000.png");
    let url = format!("http://{}/predictions/fashion-mnist", server.inference);
    let mut loads = Vec::new();
    for clients in [1, 8, 32] {
        let r = wrk(&url, &png, clients, args.seconds, &work)?;
        eprintln!("{clients:>2} clients: {}", serde_json::to_string(&r)?);
        loads.push(r);
    }
    let swap = swap_under_load(&server, &url, &png, args.seconds, &work)?;
    eprintln!(
        "32 clients while swapping: {}",
        serde_json::to_string(&swap)?
    );
    let rss_mb = server.peak_rss_mb()?;
    server.stop()?;
    let results = Results {
        command: "cargo xtask bench-serve",
        date: chrono_like_now(),
        inprocess,
        load: loads,
        machine: machine(),
        peak_rss_mb: rss_mb,
        served_accuracy: accuracy,
        server: ServerSettings {
            batch_size: 32,
            io_threads: args.io_threads,
            max_batch_delay_ms: 2.0,
            precision,
            workers: args.workers,
            threads: args.threads,
        },
        swap_under_load: swap,
    };
    crate::write_json(&root().join("benches/results/serve.json"), &results)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Fails unless `run_dir` holds the finished stages a served benchmark reads.
pub(crate) fn check_run(run_dir: &Path) -> Result<()> {
    for stage in ["data", "train", "embed", "index", "eval"] {
        ensure!(
            run_dir
                .join(stage)
                .join(mlops_core::MANIFEST_FILE)
                .is_file(),
            "{} has no finished {stage} stage: run `cargo xtask pipeline` first",
            run_dir.display()
        );
    }
    Ok(())
}

/// `benches/results/serve.json` (fields in alphabetical order, as the file has always had them).
#[derive(Serialize)]
struct Results {
    command: &'static str,
    date: String,
    inprocess: InProcess,
    load: Vec<Wrk>,
    machine: Machine,
    peak_rss_mb: f64,
    served_accuracy: f64,
    server: ServerSettings,
    swap_under_load: Wrk,
}

#[derive(Serialize)]
struct ServerSettings {
    batch_size: usize,
    io_threads: usize,
    max_batch_delay_ms: f64,
    precision: String,
    workers: usize,
    threads: usize,
}

/// What `serve_bench_prepare` (an example of `mlops-deploy`) prints: the in-process rate and
/// accuracy of the work the server does per request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InProcess {
    pub eval_accuracy: f64,
    pub images: usize,
    pub inprocess_accuracy: f64,
    pub inprocess_images_per_second: f64,
    pub precision: String,
    pub threads: usize,
}

/// The CPU the figures were measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub cores: usize,
    pub cpu: String,
}

/// The precision the run's embeddings were computed in (`fp32` for runs that did not record
/// it): the one a server must use to reproduce eval's predictions.
pub(crate) fn run_precision(run_dir: &Path) -> Result<String> {
    let embed = EmbeddingsDir::open(&run_dir.join("embed"))?;
    Ok(Some(embed.summary.precision)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "fp32".into()))
}

/// Builds the server and `serve_bench_prepare`, which registers the run (twice) into
/// `work/registry`, writes its test images as PNGs with their labels, and measures the
/// in-process rate; returns that example's report.
pub(crate) fn prepare(run_dir: &Path, work: &Path, precision: &str) -> Result<InProcess> {
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "mlops-deploy",
                "--bin",
                "mlops-deploy",
            ])
            .args(["--example", "serve_bench_prepare"]),
        "cargo build",
    )?;
    let prepared = Command::new(release_dir().join("examples/serve_bench_prepare"))
        .arg(run_dir)
        .arg(work)
        .arg(precision)
        .env("RUST_LOG", "warn")
        .output()?;
    ensure!(
        prepared.status.success(),
        "serve_bench_prepare failed: {}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    serde_json::from_slice(&prepared.stdout)
        .context("serve_bench_prepare printed an unexpected report")
}

/// `mlops-deploy serve` on free loopback ports; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub inference: String,
    pub management: String,
}

impl Server {
    pub fn start(
        registry: &Path,
        io_threads: usize,
        workers: usize,
        threads: usize,
        precision: &str,
    ) -> Result<Server> {
        let mut child = Command::new(release_dir().join("mlops-deploy"))
            .args(["serve", "--registry"])
            .arg(registry)
            .args([
                "--inference-addr",
                "127.0.0.1:0",
                "--management-addr",
                "127.0.0.1:0",
            ])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--io-threads", &io_threads.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--precision", precision])
            .env("RUST_LOG", "warn")
            .env_remove("MLOPS_MANAGEMENT_TOKEN")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
        let bound: Bound = serde_json::from_str(
            line.strip_prefix("listening ")
                .with_context(|| format!("server did not start: {line:?}"))?,
        )?;
        let server = Server {
            child,
            inference: bound.inference,
            management: bound.management,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = agent()
                .get(&format!("http://{}/ping", server.inference))
                .call();
            if matches!(ping, Ok(ref r) if r.status() == 200) {
                return Ok(server);
            }
            ensure!(Instant::now() < until, "the server never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn peak_rss_mb(&self) -> Result<f64> {
        vm_hwm_mb(self.child.id())
    }

    pub fn stop(&mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "the server exited with {status} on SIGTERM"
        );
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses the server prints on its first line (`listening {...}`).
#[derive(Deserialize)]
struct Bound {
    inference: String,
    management: String,
}

/// Peak resident set size of a live process (MB), from `/proc/PID/status`.
pub(crate) fn vm_hwm_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kb / 1024.0)
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Posts every test image once (8 clients) and returns the share classified correctly.
pub(crate) fn served_accuracy(inference: &str, work: &Path) -> Result<f64> {
    let labels: Vec<i64> = serde_json::from_slice(&std::fs::read(work.join("labels.json"))?)?;
    let url = format!("http://{inference}/predictions/fashion-mnist");
    let correct = std::thread::scope(|s| -> Result<usize> {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (labels, url) = (&labels, &url);
                s.spawn(move || -> Result<usize> {
                    let agent = agent();
                    let mut correct = 0;
                    for i in (t..labels.len()).step_by(8) {
                        let png = std::fs::read(work.join(format!("images/{i:06}.png")))?;
                        let mut r = agent
                            .post(url)
                            .header("Content-Type", "image/png")
                            .send(&png[..])?;
                        ensure!(r.status() == 200, "image {i}: {}", r.status());
                        let p: Prediction = serde_json::from_str(&r.body_mut().read_to_string()?)?;
                        correct += usize::from(p.class == Some(labels[i]));
                    }
                    Ok(correct)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .sum()
    })?;
    Ok(correct as f64 / labels.len() as f64)
}

/// The part of a prediction the accuracy check reads: the class index.
#[derive(Deserialize)]
struct Prediction {
    class: Option<i64>,
}

/// One wrk run: requests/s, latency percentiles (ms), errors (fields in alphabetical order, as
/// the result files have always had them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Wrk {
    pub clients: u32,
    pub non_2xx: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
    pub requests_per_second: f64,
    pub socket_errors: u64,
    /// Default-version swaps made during the run (the swap-under-load run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swaps: Option<u32>,
}

impl Wrk {
    /// Requests that failed: non-2xx answers and socket errors.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// One wrk run at `clients` connections for `seconds`, posting `png` to `url`.
pub(crate) fn wrk(url: &str, png: &Path, clients: u32, seconds: u32, work: &Path) -> Result<Wrk> {
    let script = work.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"image/png\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*all\")\nf:close()\n",
            png.display()
        ),
    )?;
    let threads = clients.min(2);
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &clients.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run wrk (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&String::from_utf8_lossy(&out.stdout), clients)
}

fn parse_wrk(text: &str, clients: u32) -> Result<Wrk> {
    let ms = |v: &str| -> Option<f64> {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().ok().map(|x| x / 1000.0)
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().ok()
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().ok().map(|x| x * 1000.0)
        } else {
            None
        }
    };
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).and_then(ms))
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok());
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .unwrap_or(0);
    let (Some(rps), Some(requests)) = (rps, requests) else {
        bail!("cannot read wrk's output:\n{text}");
    };
    Ok(Wrk {
        clients,
        non_2xx,
        p50_ms: percentile("50%"),
        p90_ms: percentile("90%"),
        p99_ms: percentile("99%"),
        requests,
        requests_per_second: rps,
        socket_errors,
        swaps: None,
    })
}

/// wrk at 32 clients while another thread swaps the default between versions 1 and 2.
fn swap_under_load(
    server: &Server,
    url: &str,
    png: &Path,
    seconds: u32,
    work: &Path,
) -> Result<Wrk> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let management = &server.management;
    let (load, swaps) = std::thread::scope(|s| {
        let swapper = s.spawn(|| -> Result<u32> {
            let agent = agent();
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let v = if swaps % 2 == 0 { 2 } else { 1 };
                let r = agent
                    .put(&format!(
                        "http://{management}/models/fashion-mnist/{v}/set-default"
                    ))
                    .send_empty()?;
                ensure!(r.status() == 200, "set-default {v}: {}", r.status());
                swaps += 1;
            }
            Ok(swaps)
        });
        let load = wrk(url, png, 32, seconds, work);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (load, swapper.join().expect("swapper thread"))
    });
    Ok(Wrk {
        swaps: Some(swaps?),
        ..load?
    })
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: model,
    }
}

pub(crate) fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
