//! `mlops-deploy serve`: an HTTP server for every model in a registry, on TorchServe's three
//! listeners (inference 8080, management 8081, metrics 8082), answering TorchServe's and
//! KServe's (Open Inference Protocol v2) APIs, so their existing clients work unchanged.
//!
//! - Each model's default version is loaded at start (files verified against the version's
//!   manifest) and answers a warm-up prediction before `/ping` says Healthy.
//! - Requests are batched dynamically per version on its own inference thread ([`worker`]).
//! - The registry is watched: `mlops-deploy promote` (or `rollback`) on it reaches a running
//!   server within `watch_interval_ms`; `PUT /models/{m}/{v}/set-default` swaps at once. Either
//!   way requests in flight finish on the old version and none fails.
//! - Rollouts: `mlops-deploy promote --canary PERCENT` or `--shadow` on the registry starts one
//!   (a canary answers its share of the unversioned requests, deterministically by
//!   `X-Request-Id` or KServe `id`; a shadow predicts beside the default and is compared with
//!   it), `promote --finish` or `rollback` ends it; the responses carry `X-Model-Version`.
//! - Every prediction's similarity to its nearest gallery image is exported, and compared with
//!   the version's test-set baseline over a window of recent requests ([`drift`]): a departure
//!   raises an alert (log, Slack through `SLACK_WEBHOOK_URL`, `mlops_drift{figure="alert"}`).
//! - SIGTERM or Ctrl-C: stop accepting, finish what is in flight, exit 0.

pub mod drift;
pub mod explain;
mod http;
pub mod metrics;
pub mod state;
pub mod v2;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mlops_torch::DeviceSpec;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use state::State;

/// A secret (the management token): never printed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings of the server (`serve.toml`; every field also a flag or environment variable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The registry whose models are served.
    pub registry: PathBuf,
    /// TorchServe inference API and KServe v2.
    pub inference_addr: String,
    /// TorchServe management API.
    pub management_addr: String,
    /// Prometheus metrics.
    pub metrics_addr: String,
    /// Most images per inference batch.
    pub batch_size: usize,
    /// Longest wait for a batch to fill, from the first queued request's arrival (ms).
    pub max_batch_delay_ms: f64,
    /// Requests waiting per model version before the server answers 503.
    pub queue_capacity: usize,
    /// Inference threads per model version, each computing whole batches; 0 means one per core
    /// on a CPU and one on a GPU.
    pub workers: usize,
    /// libtorch intra-op threads of each inference thread; 0 shares the cores out among the
    /// inference threads (at least one each).
    pub threads: usize,
    /// Threads serving HTTP; 0 means one per core.
    pub io_threads: usize,
    /// Neighbours that vote; `None` uses the k the eval stage chose for the version.
    pub k: Option<usize>,
    /// Largest request body accepted (bytes).
    pub body_limit: usize,
    /// How often the registry is checked for promoted versions (ms).
    pub watch_interval_ms: u64,
    /// `auto`, `cpu` or `cuda:N` for inference.
    pub device: DeviceSpec,
    /// `auto` (bf16 where the hardware has it natively), `fp32` or `bf16` inference.
    pub precision: mlops_torch::Precision,
    /// Drift and out-of-distribution alerts (`[drift]`).
    pub drift: drift::DriftConfig,
    /// Bearer token for the management API's changing calls; required when the management
    /// listener is not on loopback. From `--management-token` or `MLOPS_MANAGEMENT_TOKEN`.
    #[serde(skip)]
    pub management_token: Option<Secret>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            registry: PathBuf::from("registry"),
            inference_addr: "127.0.0.1:8080".into(),
            management_addr: "127.0.0.1:8081".into(),
            metrics_addr: "127.0.0.1:8082".into(),
            batch_size: 32,
            max_batch_delay_ms: 2.0,
            queue_capacity: 1024,
            workers: 0,
            threads: 0,
            io_threads: 0,
            k: None,
            body_limit: 10 << 20,
            watch_interval_ms: 1000,
            device: DeviceSpec::Auto,
            precision: mlops_torch::Precision::Auto,
            drift: drift::DriftConfig::default(),
            management_token: None,
        }
    }
}

impl ServeConfig {
    /// Inference threads per version and libtorch threads of each, on `device`.
    ///
    /// On a CPU the default is a thread per core of one libtorch thread each: measured on two
    /// cores (docs/stages.md), whole batches on each core served more requests at every client
    /// count than one inference thread splitting each batch across the cores, which pays for
    /// handing work between its threads on every layer.
    pub fn inference_threads(&self, device: tch::Device) -> (usize, usize) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match (self.workers, device) {
            (0, tch::Device::Cpu) => cores,
            (0, _) => 1,
            (n, _) => n,
        };
        let threads = match self.threads {
            0 => (cores / workers).max(1),
            n => n,
        };
        (workers, threads)
    }

    fn check(&self) -> Result<[SocketAddr; 3]> {
        let parse = |what: &str, addr: &str| -> Result<SocketAddr> {
            addr.parse()
                .map_err(|e| Error::Config(format!("{what} address {addr:?}: {e}")))
        };
        let addrs = [
            parse("inference", &self.inference_addr)?,
            parse("management", &self.management_addr)?,
            parse("metrics", &self.metrics_addr)?,
        ];
        if !addrs[1].ip().is_loopback() && self.management_token.is_none() {
            return Err(Error::Config(format!(
                "the management listener {} is not on loopback: set --management-token or MLOPS_MANAGEMENT_TOKEN",
                addrs[1]
            )));
        }
        if self.batch_size == 0 || self.queue_capacity == 0 || self.body_limit == 0 {
            return Err(Error::Config(
                "batch_size, queue_capacity and body_limit must be at least 1".into(),
            ));
        }
        if !(0.0..=10_000.0).contains(&self.max_batch_delay_ms) {
            return Err(Error::Config(
                "max_batch_delay_ms must lie in 0..=10000".into(),
            ));
        }
        self.drift.check()?;
        if !self.registry.is_dir() {
            return Err(
                mlops_core::Error::invalid(&self.registry, "no such registry directory").into(),
            );
        }
        Ok(addrs)
    }
}

/// The addresses the server listens on (port 0 in the config gets a free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bound {
    /// TorchServe inference API and KServe.
    pub inference: SocketAddr,
    /// TorchServe management API.
    pub management: SocketAddr,
    /// Prometheus metrics.
    pub metrics: SocketAddr,
}

/// Serves until SIGTERM or Ctrl-C (see the module docs).
pub fn run(config: ServeConfig) -> Result<()> {
    run_with(config, |_| {})
}

/// [`run`], calling `on_bound` once the listeners are bound (the binary prints the addresses).
pub fn run_with(config: ServeConfig, on_bound: impl FnOnce(Bound)) -> Result<()> {
    let addrs = config.check()?;
    let device = config.device.resolve()?[0];
    let (workers, threads) = config.inference_threads(device);
    // Also the count that threads libtorch has not seen yet start with.
    mlops_torch::set_threads(threads);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.io_threads > 0 {
        runtime.worker_threads(config.io_threads);
    }
    let runtime = runtime.enable_all().build().map_err(|source| Error::Io {
        what: "starting the async runtime".into(),
        source,
    })?;
    runtime.block_on(async move {
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Io {
                    what: format!("cannot listen on {addr}"),
                    source,
                })
        };
        let inference = bind(addrs[0]).await?;
        let management = bind(addrs[1]).await?;
        let metrics = bind(addrs[2]).await?;
        let local = |l: &tokio::net::TcpListener| {
            l.local_addr().map_err(|source| Error::Io {
                what: "reading a bound address".into(),
                source,
            })
        };
        let bound = Bound {
            inference: local(&inference)?,
            management: local(&management)?,
            metrics: local(&metrics)?,
        };
        let precision = config.precision.resolve(device);
        tracing::info!(?bound, ?device, %precision, workers, threads, registry = %config.registry.display(), "listening");
        on_bound(bound);
        let state = Arc::new(State::new(config, device));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(watch_registry(state.clone(), stop_rx.clone()));
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing requests in flight");
            let _ = stop_tx.send(true);
        });
        let serve = |listener, router: axum::Router| {
            let mut stop = stop_rx.clone();
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
                    .map_err(|source| Error::Io {
                        what: "serving".into(),
                        source,
                    })
            }
        };
        tokio::try_join!(
            serve(inference, http::inference(state.clone())),
            serve(management, http::management(state.clone())),
            serve(metrics, http::metrics(state.clone())),
        )?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Loads defaults at start, then follows the registry's pointers until shutdown.
async fn watch_registry(state: Arc<State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = std::time::Duration::from_millis(state.config.watch_interval_ms.max(50));
    loop {
        state.sync().await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_serve_toml_holds_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("serve.toml");
        let config: ServeConfig =
            mlops_core::config::merge(Some(&path), &[], &serde_json::json!({})).unwrap();
        assert_eq!(config, ServeConfig::default());
        // And documents every setting that has a default (only `k` is left unset).
        let text = std::fs::read_to_string(&path).unwrap();
        let written: toml::Table = text.parse().unwrap();
        let defaults = serde_json::to_value(ServeConfig::default()).unwrap();
        for (key, value) in defaults.as_object().unwrap() {
            assert!(
                value.is_null() || written.contains_key(key),
                "serve.toml does not document {key}"
            );
        }
    }

    #[test]
    fn inference_threads_share_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = |workers, threads, device| {
            ServeConfig {
                workers,
                threads,
                ..Default::default()
            }
            .inference_threads(device)
        };
        assert_eq!(threads(0, 0, tch::Device::Cpu), (cores, 1));
        assert_eq!(threads(0, 0, tch::Device::Cuda(0)), (1, cores));
        assert_eq!(threads(1, 0, tch::Device::Cpu), (1, cores));
        assert_eq!(threads(3, 2, tch::Device::Cpu), (3, 2));
        assert_eq!(threads(2 * cores, 0, tch::Device::Cpu), (2 * cores, 1));
    }

    #[test]
    fn secrets_are_not_printed_and_compare_exactly() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let c = ServeConfig {
            management_token: Some(s.clone()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
        assert!(s.matches("hunter2") && !s.matches("hunter") && !s.matches("hunter3"));
    }

    #[test]
    fn management_off_loopback_needs_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ServeConfig {
            registry: dir.path().to_path_buf(),
            management_addr: "0.0.0.0:8081".into(),
            ..Default::default()
        };
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("MLOPS_MANAGEMENT_TOKEN"));
        c.management_token = Some(Secret::new("t"));
        assert!(c.check().is_ok());
    }
}
