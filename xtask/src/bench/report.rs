//! `benches/results/latest.json`: every figure of a comparison run, and what BENCHMARKS.md is
//! written from.
//!
//! Fields are declared in alphabetical order: the file was first written from sorted JSON maps,
//! and the same order keeps old and new results comparable line by line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bench_serve::Machine;
use crate::pipeline::StageStatus;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The run's network architecture.
    pub arch: String,
    /// The command line that reproduces the report.
    pub command: String,
    pub comparisons: Vec<Comparison>,
    pub date: String,
    pub machine: Machine,
    /// The precision the run trained and embedded in.
    pub precision: String,
    pub repeats: usize,
    pub run: PathBuf,
    pub sections: Sections,
    /// The distilled model's figures (`--student`), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<ModelReport>,
    pub threads: usize,
    pub versions: Versions,
}

/// What was measured about one run's model.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelReport {
    pub arch: String,
    pub comparisons: Vec<Comparison>,
    pub precision: String,
    pub run: PathBuf,
    pub sections: Sections,
}

/// The versions of the reference stack (and of our libtorch).
#[derive(Debug, Serialize, Deserialize)]
pub struct Versions {
    pub faiss: String,
    pub libtorch_ours: String,
    pub torch: String,
    pub torchserve: String,
}

/// Median, range and every value of one side's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub max: f64,
    pub median: f64,
    pub min: f64,
    pub n: usize,
    pub values: Vec<f64>,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        Stats {
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            n: values.len(),
            values: values.to_vec(),
        }
    }
}

/// The middle value (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One setting measured on both sides.
#[derive(Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub extra: Extra,
    pub name: String,
    pub ours: Stats,
    /// Ours over the reference, of the medians.
    pub ratio: f64,
    pub reference: Stats,
    pub unit: String,
}

/// What a comparison checked beside the rate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Extra {
    /// Share of top-k ids both searches returned (search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identical_ids: Option<f64>,
    /// Largest difference between the two sides' embeddings (embed; infinite, written as
    /// null, when their shapes differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_diff: Option<f64>,
    /// The thread counts each side reported (train and search).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<Threads>,
}

/// The threads each side's last measurement ran with, as it reported them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Threads {
    pub ours_omp_threads: Option<i64>,
    pub ours_torch_threads: Option<i64>,
    pub reference_omp_threads: Option<i64>,
    pub reference_torch_threads: Option<i64>,
}

/// The sections beside the comparisons, present when their part was measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sections {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<EndToEnd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Serving>,
}

/// A figure of each server.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BothServers<T> {
    pub ours: T,
    pub reference: T,
}

/// Our server against TorchServe on the same registered version.
#[derive(Debug, Serialize, Deserialize)]
pub struct Serving {
    /// Share of the test images each server classified correctly.
    pub accuracy: BothServers<f64>,
    pub load: Vec<Load>,
    pub peak_rss_mb: BothServers<f64>,
    pub precision: String,
    pub torchserve: TorchServeSettings,
}

/// How TorchServe was configured (as its CPU guide advises).
#[derive(Debug, Serialize, Deserialize)]
pub struct TorchServeSettings {
    pub batch_size: u32,
    pub max_batch_delay_ms: u32,
    pub omp_threads_per_worker: u32,
    pub workers: u32,
}

/// Both servers under wrk at one client count.
#[derive(Debug, Serialize, Deserialize)]
pub struct Load {
    pub clients: u32,
    pub ours: LoadSide,
    /// Ours over TorchServe, of the median requests per second.
    pub ratio: f64,
    pub reference: LoadSide,
}

/// One server's wrk runs at one client count.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoadSide {
    pub errors: u64,
    /// Median over the runs of each run's latency percentile.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests_per_second: Stats,
}

/// The whole pipeline, every stage run.
#[derive(Debug, Serialize, Deserialize)]
pub struct EndToEnd {
    pub accuracy: Option<f64>,
    pub seconds: f64,
    /// The run.json the figures come from.
    pub source: PathBuf,
    pub stages: Vec<StageTime>,
}

/// One stage's wall time and peak memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageTime {
    pub peak_rss_mb: Option<f64>,
    pub seconds: f64,
    pub stage: String,
    pub status: StageStatus,
}
