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

/// Measures `args.run` against `baseline` (see the module docs).
pub fn run(args: &BenchServeArgs, baseline: &Path) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let work = std::env::temp_dir().join(format!("mlops-bench-serve-vs-{}", std::process::id()));
    let dirs = [root().join(&args.run), root().join(baseline)];
    let mut prepared = Vec::new();
    for (i, run_dir) in dirs.iter().enumerate() {
        bench_serve::check_run(run_dir)?;
        let w = work.join(i.to_string());
        std::fs::create_dir_all(&w)?;
        let precision = bench_serve::run_precision(run_dir)?;
        let inprocess = bench_serve::prepare(run_dir, &w, &precision)?;
        prepared.push((w, precision, inprocess));
    }
    let mut rates = vec![vec![Vec::new(); CLIENTS.len()]; 2];
    let mut accuracy = [f64::NAN; 2];
    let mut errors = [0u64; 2];
    for repeat in 0..args.repeats {
        // Alternate the order so neither side always runs on a warmer machine.
        let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (w, precision, _) = &prepared[i];
            let mut server = Server::start(
                &w.join("registry"),
                args.io_threads,
                args.threads,
                precision,
            )?;
            accuracy[i] = bench_serve::served_accuracy(&server.inference, w)?;
            let url = format!("http://{}/predictions/fashion-mnist", server.inference);
            for (c, &clients) in CLIENTS.iter().enumerate() {
                let r =
                    bench_serve::wrk(&url, &w.join("images/000000.png"), clients, args.seconds, w)?;
                eprintln!(
                    "{} {clients:>2} clients: {:.0} req/s",
                    dirs[i].display(),
                    r.requests_per_second
                );
                errors[i] += r.errors();
                rates[i][c].push(r.requests_per_second);
            }
            server.stop()?;
        }
    }
    let mut sides = prepared.into_iter().zip(&dirs).enumerate().map(
        |(i, ((_, _, inprocess), dir))| -> Result<Side> {
            let model = mlops_core::artifact::ModelDir::open(&dir.join("train"))?;
            let description = model.description()?;
            Ok(Side {
                run: dir.strip_prefix(root()).unwrap_or(dir).to_path_buf(),
                arch: description.arch.clone(),
                test_time_flip: description.test_time_flip,
                inprocess,
                served_accuracy: accuracy[i],
                load: CLIENTS
                    .iter()
                    .zip(&rates[i])
                    .map(|(&c, v)| (c, Stats::of(v)))
                    .collect(),
                errors: errors[i],
            })
        },
    );
    let (run, baseline) = (sides.next().unwrap()?, sides.next().unwrap()?);
    let ratio = CLIENTS
        .iter()
        .enumerate()
        .map(|(c, &clients)| (clients, median(&rates[0][c]) / median(&rates[1][c])))
        .collect();
    let versus = Versus {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        date: bench_serve::chrono_like_now(),
        machine: bench_serve::machine(),
        repeats: args.repeats,
        seconds: args.seconds,
        run,
        baseline,
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
