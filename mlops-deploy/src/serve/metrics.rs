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
    Agree,
    Disagree,
    /// The candidate failed or its queue was full (the client's answer is unaffected).
    Failed,
}

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
        let version_labels = ["model_name", "model_version"];
        let routed = IntCounterVec::new(
            Opts::new(
                "mlops_routed_requests_total",
                "Images answered, by version and by how they reached it (default, canary, pinned).",
            ),
            &["model_name", "model_version", "role"],
        )
        .expect("valid metric");
        let pair = ["model_name", "default_version", "candidate_version"];
        let shadow = IntCounterVec::new(
            Opts::new(
                "mlops_shadow_predictions_total",
                "Shadow predictions of a candidate beside the default, by outcome (agree, disagree, failed).",
            ),
            &["model_name", "default_version", "candidate_version", "outcome"],
        )
        .expect("valid metric");
        let agreement = GaugeVec::new(
            Opts::new(
                "mlops_shadow_agreement_ratio",
                "Share of shadow predictions where the candidate's class equals the default's.",
            ),
            &pair,
        )
        .expect("valid metric");
        let nearest = HistogramVec::new(
            HistogramOpts::new(
                "mlops_nearest_similarity",
                "Similarity of each request's image to its nearest gallery image (low: unlike the training data).",
            )
            // Fine near 1, where a trained model puts almost every in-distribution image.
            .buckets(vec![
                0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
                0.9999, 1.0,
            ]),
            &version_labels,
        )
        .expect("valid metric");
        let drift = GaugeVec::new(
            Opts::new(
                "mlops_drift",
                "Recent requests against the version's test-set baseline: figure = low_similarity_share, class_shift, requests, alert (1 while alerting), and their limits (max_low_share, max_class_shift, low_similarity_threshold).",
            ),
            &["model_name", "model_version", "figure"],
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
            Box::new(routed.clone()),
            Box::new(shadow.clone()),
            Box::new(agreement.clone()),
            Box::new(nearest.clone()),
            Box::new(drift.clone()),
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
            routed,
            shadow,
            agreement,
            nearest,
            drift,
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
