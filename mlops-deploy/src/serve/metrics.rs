//! Prometheus metrics with TorchServe's names, so its dashboards keep working, plus latency and
//! batch-size histograms TorchServe lacks.

use std::time::Instant;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    hostname: String,
    requests: IntCounterVec,
    inference_us: CounterVec,
    queue_us: CounterVec,
    latency: HistogramVec,
    batch_size: HistogramVec,
    errors: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let labels = ["model_name", "model_version", "hostname"];
        let requests = IntCounterVec::new(
            Opts::new(
                "ts_inference_requests_total",
                "Total number of inference requests.",
            ),
            &labels,
        )
        .expect("valid metric");
        let inference_us = CounterVec::new(
            Opts::new(
                "ts_inference_latency_microseconds",
                "Cumulative inference duration in microseconds (queue wait included).",
            ),
            &labels,
        )
        .expect("valid metric");
        let queue_us = CounterVec::new(
            Opts::new(
                "ts_queue_latency_microseconds",
                "Cumulative queue duration in microseconds.",
            ),
            &labels,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "mlops_inference_latency_seconds",
                "Time from a request's arrival to its prediction.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
            ]),
            &["model_name", "model_version"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("mlops_batch_size", "Images per inference batch.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["model_name", "model_version"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("mlops_http_errors_total", "Error responses by status code."),
            &["code"],
        )
        .expect("valid metric");
        let registry = Registry::new();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(inference_us.clone()),
            Box::new(queue_us.clone()),
            Box::new(latency.clone()),
            Box::new(batch_size.clone()),
            Box::new(errors.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            hostname: hostname(),
            requests,
            inference_us,
            queue_us,
            latency,
            batch_size,
            errors,
        }
    }

    /// Records one answered image: queued from `arrived` to `started`, done at `done`.
    pub fn observe_job(
        &self,
        name: &str,
        version: &str,
        arrived: Instant,
        started: Instant,
        done: Instant,
    ) {
        let labels = [name, version, self.hostname.as_str()];
        self.requests.with_label_values(&labels).inc();
        let total = done.saturating_duration_since(arrived);
        let queued = started.saturating_duration_since(arrived);
        self.inference_us
            .with_label_values(&labels)
            .inc_by(total.as_secs_f64() * 1e6);
        self.queue_us
            .with_label_values(&labels)
            .inc_by(queued.as_secs_f64() * 1e6);
        self.latency
            .with_label_values(&[name, version])
            .observe(total.as_secs_f64());
    }

    /// Records the size of one batch.
    pub fn observe_batch(&self, name: &str, version: &str, size: usize) {
        self.batch_size
            .with_label_values(&[name, version])
            .observe(size as f64);
    }

    /// Counts an error response.
    pub fn observe_error(&self, code: u16) {
        self.errors.with_label_values(&[&code.to_string()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}
