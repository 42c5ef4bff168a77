//! Prometheus metrics with TorchServe's names, so its dashboards keep working, plus what
//! TorchServe lacks: latency and batch-size histograms, requests by rollout role, shadow
//! agreement, and the nearest-neighbour similarity and drift figures of every served version.

use std::time::Instant;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use super::drift::DriftStatus;

/// How a request reached the version that answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The model's default version.
    Default,
    /// The candidate of a canary rollout.
    Canary,
    /// A version named in the URL.
    Pinned,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Default => "default",
            Role::Canary => "canary",
            Role::Pinned => "pinned",
        }
    }
}

/// What a shadow prediction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadowed {
    /// The candidate predicted the default's class.
    Agree,
    /// The candidate predicted another class.
    Disagree,
    /// The candidate failed or its queue was full (the client's answer is unaffected).
    Failed,
}

/// Buckets of `mlops_inference_latency_seconds` (seconds).
const LATENCY_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Buckets of `mlops_batch_size` (images).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Buckets of `mlops_nearest_similarity`: fine near 1, where a trained model puts almost every
/// in-distribution image.
const SIMILARITY_BUCKETS: [f64; 15] = [
    0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0,
];

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
    routed: IntCounterVec,
    shadow: IntCounterVec,
    agreement: GaugeVec,
    nearest: HistogramVec,
    drift: GaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let torchserve = ["model_name", "model_version", "hostname"];
        let version = ["model_name", "model_version"];
        Metrics {
            requests: int_counter(
                r,
                "ts_inference_requests_total",
                "Total number of inference requests.",
                &torchserve,
            ),
            inference_us: counter(
                r,
                "ts_inference_latency_microseconds",
                "Cumulative inference duration in microseconds (queue wait included).",
                &torchserve,
            ),
            queue_us: counter(
                r,
                "ts_queue_latency_microseconds",
                "Cumulative queue duration in microseconds.",
                &torchserve,
            ),
            latency: histogram(
                r,
                "mlops_inference_latency_seconds",
                "Time from a request's arrival to its prediction.",
                &LATENCY_BUCKETS,
                &version,
            ),
            batch_size: histogram(
                r,
                "mlops_batch_size",
                "Images per inference batch.",
                &BATCH_BUCKETS,
                &version,
            ),
            errors: int_counter(
                r,
                "mlops_http_errors_total",
                "Error responses by status code.",
                &["code"],
            ),
            routed: int_counter(
                r,
                "mlops_routed_requests_total",
                "Images answered, by version and by how they reached it (default, canary, pinned).",
                &["model_name", "model_version", "role"],
            ),
            shadow: int_counter(
                r,
                "mlops_shadow_predictions_total",
                "Shadow predictions of a candidate beside the default, by outcome (agree, disagree, failed).",
                &["model_name", "default_version", "candidate_version", "outcome"],
            ),
            agreement: gauge(
                r,
                "mlops_shadow_agreement_ratio",
                "Share of shadow predictions where the candidate's class equals the default's.",
                &["model_name", "default_version", "candidate_version"],
            ),
            nearest: histogram(
                r,
                "mlops_nearest_similarity",
                "Similarity of each request's image to its nearest gallery image (low: unlike the training data).",
                &SIMILARITY_BUCKETS,
                &version,
            ),
            drift: gauge(
                r,
                "mlops_drift",
                "Recent requests against the version's test-set baseline: figure = low_similarity_share, class_shift, requests, alert (1 while alerting), and their limits (max_low_share, max_class_shift, low_similarity_threshold).",
                &["model_name", "model_version", "figure"],
            ),
            hostname: hostname(),
            registry,
        }
    }

    /// Counts `images` answered by `version` of `name`, reached as `role`.
    pub fn observe_route(&self, name: &str, version: u64, role: Role, images: usize) {
        self.routed
            .with_label_values(&[name, &version.to_string(), role.label()])
            .inc_by(images as u64);
    }

    /// Counts one shadow prediction of `candidate` beside `default`.
    pub fn observe_shadow(&self, name: &str, default: u64, candidate: u64, outcome: Shadowed) {
        let (d, c) = (default.to_string(), candidate.to_string());
        let label = match outcome {
            Shadowed::Agree => "agree",
            Shadowed::Disagree => "disagree",
            Shadowed::Failed => "failed",
        };
        self.shadow.with_label_values(&[name, &d, &c, label]).inc();
        let count = |l: &str| self.shadow.with_label_values(&[name, &d, &c, l]).get() as f64;
        let (agree, compared) = (count("agree"), count("agree") + count("disagree"));
        if compared > 0.0 {
            self.agreement
                .with_label_values(&[name, &d, &c])
                .set(agree / compared);
        }
    }

    /// Records one prediction's similarity to its nearest gallery image.
    pub fn observe_nearest(&self, name: &str, version: &str, similarity: f32) {
        self.nearest
            .with_label_values(&[name, version])
            .observe(f64::from(similarity));
    }

    /// Publishes a version's drift figures and limits.
    pub fn set_drift(
        &self,
        name: &str,
        version: &str,
        status: &DriftStatus,
        limits: (&super::drift::DriftConfig, f32),
    ) {
        let (config, threshold) = limits;
        for (figure, value) in [
            ("low_similarity_share", status.low_similarity_share),
            ("class_shift", status.class_shift),
            ("requests", status.requests as f64),
            ("alert", f64::from(u8::from(status.alerting))),
            ("max_low_share", config.max_low_share),
            ("max_class_shift", config.max_class_shift),
            ("low_similarity_threshold", f64::from(threshold)),
        ] {
            self.drift
                .with_label_values(&[name, version, figure])
                .set(value);
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

/// Registers `metric` (valid by construction: constant names and labels) and returns it.
fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric names");
    metric
}

/// A registered integer counter per `labels`.
fn int_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A registered counter per `labels`.
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    register(registry, CounterVec::new(Opts::new(name, help), labels))
}

/// A registered gauge per `labels`.
fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

/// A registered histogram with `buckets` per `labels`.
fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

/// The machine's name, a label of TorchServe's metrics.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_agreement_is_the_share_of_compared_predictions() {
        let m = Metrics::new();
        for outcome in [
            Shadowed::Agree,
            Shadowed::Agree,
            Shadowed::Disagree,
            Shadowed::Failed,
            Shadowed::Agree,
        ] {
            m.observe_shadow("m", 1, 2, outcome);
        }
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("mlops_shadow_agreement_ratio{"))
            .unwrap();
        assert!(line.ends_with(" 0.75"), "{line}");
        assert!(text.contains(r#"outcome="failed"} 1"#), "{text}");
    }
}
