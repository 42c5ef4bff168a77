//! `cargo xtask bench-serve --run A --baseline B`: two pipeline runs' models served by our
//! server on the same machine, side by side: for each repeat, each run in turn starts its own
//! server (the same settings), posts every test image once (served accuracy, which must equal
//! that run's eval) and takes `wrk` at 1, 8 and 32 clients. Medians, and the run's rate over
//! the baseline's, go to `benches/results/serve-vs-baseline.json`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use serde::Serialize;

use crate::bench::report::{median, Stats};
use crate::bench_serve::{self, BenchServeArgs, InProcess, Machine, Server};
use crate::root;

/// One run's side of the comparison.
#[derive(Serialize)]
struct Side {
    run: PathBuf,
    arch: String,
    test_time_flip: bool,
    inprocess: InProcess,
    served_accuracy: f64,
    /// Requests per second at 1, 8 and 32 clients, over the repeats.
    load: Vec<(u32, Stats)>,
    errors: u64,
}

/// `benches/results/serve-vs-baseline.json`.
#[derive(Serialize)]
struct Versus {
    command: String,
    date: String,
    machine: Machine,
    repeats: usize,
    seconds: u32,
    run: Side,
    baseline: Side,
    /// The run's median rate over the baseline's, per client count.
    ratio: Vec<(u32, f64)>,
}

const CLIENTS: [u32; 3] = [1, 8, 32];

/// One run under measurement: where its server's registry lies and what it measured so far.
struct Contender {
    dir: PathBuf,
    work: PathBuf,
    precision: String,
    inprocess: InProcess,
    /// Requests per second at each of [`CLIENTS`], one entry per repeat.
    rates: Vec<Vec<f64>>,
    accuracy: f64,
    errors: u64,
}

impl Contender {
    fn prepare(dir: PathBuf, work: PathBuf) -> Result<Self> {
        bench_serve::check_run(&dir)?;
        std::fs::create_dir_all(&work)?;
        let precision = bench_serve::run_precision(&dir)?;
        let inprocess = bench_serve::prepare(&dir, &work, &precision)?;
        Ok(Contender {
            dir,
            work,
            precision,
            inprocess,
            rates: vec![Vec::new(); CLIENTS.len()],
            accuracy: f64::NAN,
            errors: 0,
        })
    }

    /// Starts this run's server, posts every test image, takes `wrk` at each client count.
    fn measure(&mut self, args: &BenchServeArgs) -> Result<()> {
        let w = &self.work;
        let mut server = Server::start(
            &w.join("registry"),
            args.io_threads,
            args.workers,
            args.threads,
            &self.precision,
        )?;
        self.accuracy = bench_serve::served_accuracy(&server.inference, w)?;
        let url = format!("http://{}/predictions/fashion-mnist", server.inference);
        for (c, &clients) in CLIENTS.iter().enumerate() {
            let r = bench_serve::wrk(&url, &w.join("images/000000.png"), clients, args.seconds, w)?;
            eprintln!(
                "{} {clients:>2} clients: {:.0} req/s",
                self.dir.display(),
                r.requests_per_second
            );
            self.errors += r.errors();
            self.rates[c].push(r.requests_per_second);
        }
        server.stop()
    }

    fn side(self) -> Result<Side> {
        let description =
            mlops_core::artifact::ModelDir::open(&self.dir.join("train"))?.description()?;
        Ok(Side {
            run: self
                .dir
                .strip_prefix(root())
                .unwrap_or(&self.dir)
                .to_path_buf(),
            arch: description.arch.clone(),
            test_time_flip: description.test_time_flip,
            inprocess: self.inprocess,
            served_accuracy: self.accuracy,
            load: CLIENTS
                .iter()
                .zip(&self.rates)
                .map(|(&c, v)| (c, Stats::of(v)))
                .collect(),
            errors: self.errors,
        })
    }
}

/// Measures `args.run` against `baseline` (see the module docs).
pub fn run(args: &BenchServeArgs, baseline: &Path) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let work = std::env::temp_dir().join(format!("mlops-bench-serve-vs-{}", std::process::id()));
    let mut sides = [
        Contender::prepare(root().join(&args.run), work.join("0"))?,
        Contender::prepare(root().join(baseline), work.join("1"))?,
    ];
    for repeat in 0..args.repeats {
        // Alternate the order so neither side always runs on a warmer machine.
        let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            sides[i].measure(args)?;
        }
    }
    let ratio = CLIENTS
        .iter()
        .enumerate()
        .map(|(c, &clients)| {
            (
                clients,
                median(&sides[0].rates[c]) / median(&sides[1].rates[c]),
            )
        })
        .collect();
    let [run, baseline] = sides;
    let versus = Versus {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        date: bench_serve::chrono_like_now(),
        machine: bench_serve::machine(),
        repeats: args.repeats,
        seconds: args.seconds,
        run: run.side()?,
        baseline: baseline.side()?,
        ratio,
    };
    crate::write_json(
        &root().join("benches/results/serve-vs-baseline.json"),
        &versus,
    )?;
    println!("{}", serde_json::to_string_pretty(&versus)?);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
