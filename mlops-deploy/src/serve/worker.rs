//! One loaded model version: its model and index shared by a pool of inference threads that
//! take requests from one queue in dynamic batches.
//!
//! A batch closes when it holds `batch_size` images or when `max_delay` has passed since the
//! first queued request arrived, whichever comes first (TorchServe users report that its delay
//! is counted from the wrong moment, serve#2478); and at once when every image in flight that
//! no other thread is computing is already in it, so a lone client never waits for a batch that
//! cannot fill. One thread collects at a time while the others compute: on a CPU, several
//! threads of one libtorch thread each keep every core busy on whole batches, where one thread
//! split across the cores spends its time handing work between them. Inference never runs on
//! the async executor's threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlops_core::artifact::{ModelDescription, VersionDir, VersionSummary};
use mlops_core::notify::{Event, Notifier};
use mlops_core::preprocess::Preprocess;
use mlops_index::Prediction;
use tokio::sync::oneshot;

use super::drift::{DriftConfig, DriftMonitor, Transition};
use super::explain::Gallery;
use super::metrics::Metrics;
use crate::model::Predictor;
use crate::Result;

/// One image waiting for a prediction.
pub struct Job {
    /// Preprocessed model input (`c * h * w` values).
    pub pixels: Vec<f32>,
    /// When the request arrived: the batch delay counts from the first job's.
    pub arrived: Instant,
    /// Where the prediction (or the inference error's message) goes.
    pub reply: oneshot::Sender<Result<Prediction, String>>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the server is overloaded.
    Full,
    /// The worker has stopped.
    Stopped,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images per batch.
    pub batch_size: usize,
    /// Longest wait for a batch to fill, from its first job's arrival.
    pub max_delay: Duration,
    /// Jobs that may wait; more are refused ([`Refused::Full`]).
    pub queue: usize,
}

/// What every loaded version is served with.
pub struct Settings {
    /// Where models run.
    pub device: tch::Device,
    /// fp32 or bf16 inference (`auto`: bf16 where the hardware has it natively).
    pub precision: mlops_torch::Precision,
    /// Neighbours that vote; `None` keeps the version's.
    pub k: Option<usize>,
    /// How jobs are batched.
    pub batching: Batching,
    /// Inference threads per version, each taking whole batches.
    pub workers: usize,
    /// libtorch intra-op threads of each inference thread.
    pub threads_per_worker: usize,
    /// Where the inference threads record batches, latencies and similarities.
    pub metrics: Arc<Metrics>,
    /// Drift watching.
    pub drift: DriftConfig,
    /// Where drift alerts go (off without `SLACK_WEBHOOK_URL`).
    pub notifier: Arc<Notifier>,
}

/// A model version ready to serve.
pub struct LoadedVersion {
    /// The model's name.
    pub name: String,
    /// The version.
    pub version: u64,
    /// What the registry recorded of it (accuracy, classifier, index).
    pub summary: VersionSummary,
    /// What the model takes and gives.
    pub description: ModelDescription,
    /// The preprocessing of its request images.
    pub preprocess: Preprocess,
    /// The gallery's images, for explanations (versions registered before they were carried
    /// have none).
    pub gallery: Option<Gallery>,
    /// When it was loaded.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    sender: SyncSender<Job>,
    /// Images admitted and not yet answered: when a batch holds all of them (but those other
    /// threads are computing), nobody else is coming and waiting out the delay would only add
    /// latency.
    in_flight: Arc<AtomicUsize>,
    /// The inference threads, joined when the version is dropped.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for LoadedVersion {
    /// Stops the inference threads and waits for them: the queue's sender goes first, so the
    /// threads answer what is queued, finish their batches and return, and the model is freed
    /// on the last. A process must never exit (running libtorch's static destructors) while an
    /// inference thread still computes: that crashed with SIGSEGV or SIGABRT at shutdown under
    /// load.
    fn drop(&mut self) {
        let (closed, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.sender, closed));
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(model = %self.name, version = self.version, "an inference thread panicked");
            }
        }
    }
}

/// Counts `n` images as in flight until dropped.
pub struct InFlight {
    counter: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl LoadedVersion {
    /// Loads a registered version (every file verified against its manifest) and starts its
    /// inference threads, each of which answers one warm-up prediction before the version is
    /// returned: a `LoadedVersion` that exists is ready to serve.
    pub fn load(dir: VersionDir, settings: &Settings) -> Result<Arc<Self>> {
        let predictor = Predictor::load(&dir, settings.device, settings.precision, settings.k)?;
        let description = predictor.description().clone();
        let preprocess = predictor.preprocess();
        let drift = match dir.similarity_baseline()? {
            Some(baseline) => DriftMonitor::new(&baseline, &settings.drift),
            None => {
                tracing::info!(
                    model = %dir.summary.name,
                    version = dir.summary.version,
                    "no similarity baseline (registered before it was recorded): drift is not watched"
                );
                None
            }
        };
        let batching = settings.batching;
        let gallery = Gallery::load(&dir)?;
        let (sender, receiver) = sync_channel(batching.queue.max(1));
        let summary = dir.summary.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(Pool {
            jobs: Mutex::new(receiver),
            predictor,
            batching,
            metrics: settings.metrics.clone(),
            in_flight: in_flight.clone(),
            computing: AtomicUsize::new(0),
            labels: (summary.name.clone(), summary.version.to_string()),
            drift: Mutex::new(drift),
            notifier: settings.notifier.clone(),
        });
        let mut loaded = LoadedVersion {
            name: summary.name.clone(),
            version: summary.version,
            preprocess,
            description,
            summary,
            gallery,
            loaded_at: chrono::Utc::now(),
            sender,
            in_flight,
            threads: Vec::new(),
        };
        // Each thread warms up on its own (libtorch's set-up is per thread) and says so.
        let (warmed_tx, warmed_rx) = std::sync::mpsc::channel();
        for i in 0..settings.workers.max(1) {
            let (pool, warmed, threads) =
                (pool.clone(), warmed_tx.clone(), settings.threads_per_worker);
            let thread = std::thread::Builder::new()
                .name(format!("infer-{}-{}-{i}", loaded.name, loaded.version))
                .spawn(move || {
                    let _ = warmed.send(pool.warm_up(threads));
                    drop(warmed);
                    pool.run();
                })
                .map_err(|source| crate::Error::Io {
                    what: "starting an inference thread".into(),
                    source,
                })?;
            // Pushed at once, so an early return joins what was started (through `Drop`).
            loaded.threads.push(thread);
        }
        drop(warmed_tx);
        for _ in 0..loaded.threads.len() {
            warmed_rx
                .recv()
                .map_err(|_| crate::Error::Config("warm-up: an inference thread stopped".into()))?
                .map_err(|e| crate::Error::Config(format!("warm-up failed: {e}")))?;
        }
        Ok(Arc::new(loaded))
    }

    /// How many inference threads serve the version.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Counts `n` images of a request as in flight (from admission to answer) while the guard
    /// lives.
    pub fn track(&self, n: usize) -> InFlight {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
        InFlight {
            counter: self.in_flight.clone(),
            n,
        }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

/// What a version's inference threads share.
struct Pool {
    /// The queue; whoever holds the lock is collecting the next batch.
    jobs: Mutex<Receiver<Job>>,
    predictor: Predictor,
    batching: Batching,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
    /// Images in batches that threads are computing now.
    computing: AtomicUsize,
    labels: (String, String),
    drift: Mutex<Option<DriftMonitor>>,
    notifier: Arc<Notifier>,
}

impl Pool {
    /// Sets this thread's libtorch thread count (per thread in libtorch's OpenMP build) and
    /// predicts one blank image, so the first client does not pay for lazy set-up and the
    /// version is proven to answer before it is called ready.
    fn warm_up(&self, threads: usize) -> Result<(), String> {
        mlops_torch::set_threads(threads);
        let d = self.predictor.description();
        let [c, h, w] = d.input_shape;
        self.predictor
            .predict(&vec![d.value_range[0]; c * h * w], 1)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Take the queue, collect a batch, let go of the queue, embed, classify, answer; until
    /// every sender is gone.
    fn run(&self) {
        loop {
            let batch = {
                let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(first) = jobs.recv() else { return };
                let batch = self.collect(&jobs, first);
                self.computing.fetch_add(batch.len(), Ordering::AcqRel);
                batch
            };
            let n = batch.len();
            self.answer(batch);
            self.computing.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Adds jobs to `first` until the batch is full, the delay since the first job's arrival
    /// has passed, or every image in flight is in the batch or being computed.
    fn collect(&self, jobs: &Receiver<Job>, first: Job) -> Vec<Job> {
        let deadline = first.arrived + self.batching.max_delay;
        let mut batch = vec![first];
        while batch.len() < self.batching.batch_size {
            if let Ok(job) = jobs.try_recv() {
                batch.push(job);
                continue;
            }
            let now = Instant::now();
            let others = self.computing.load(Ordering::Acquire);
            if now >= deadline || batch.len() + others >= self.in_flight.load(Ordering::Acquire) {
                break;
            }
            // Wake up now and then to notice that nobody else is coming.
            let wait = (deadline - now).min(Duration::from_micros(200));
            match jobs.recv_timeout(wait) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        batch
    }

    fn answer(&self, batch: Vec<Job>) {
        let labels = self.labels.clone();
        let (name, version) = (&labels.0, &labels.1);
        let frame: usize = self.predictor.description().input_shape.iter().product();
        let started = Instant::now();
        let mut pixels = Vec::with_capacity(batch.len() * frame);
        for job in &batch {
            pixels.extend_from_slice(&job.pixels);
        }
        let result = self
            .predictor
            .predict(&pixels, batch.len())
            .map_err(|e| e.to_string());
        let done = Instant::now();
        self.metrics.observe_batch(name, version, batch.len());
        match result {
            Ok(predictions) => {
                // Warm-ups predict on their own, so every job here is a client's. One lock for
                // the batch: the other threads wait at most for this loop.
                let mut drift = self.drift.lock().unwrap_or_else(|p| p.into_inner());
                for (job, prediction) in batch.into_iter().zip(predictions) {
                    self.metrics
                        .observe_job(name, version, job.arrived, started, done);
                    self.watch(&mut drift, &prediction);
                    let _ = job.reply.send(Ok(prediction));
                }
                if let Some(drift) = drift.as_ref() {
                    let limits = (drift.config(), drift.threshold);
                    self.metrics
                        .set_drift(name, version, &drift.status(), limits);
                }
            }
            Err(message) => {
                tracing::error!(model = %name, version = %version, "inference failed: {message}");
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

impl Pool {
    /// Feeds one answered request's nearest similarity to the metrics and the drift monitor,
    /// and carries out an alert's change of state (log, Slack).
    fn watch(&self, drift: &mut Option<DriftMonitor>, prediction: &Prediction) {
        let Some(nearest) = prediction
            .neighbours
            .iter()
            .map(|n| n.score)
            .reduce(f32::max)
        else {
            return;
        };
        let (name, version) = (&self.labels.0, &self.labels.1);
        self.metrics.observe_nearest(name, version, nearest);
        let Some(drift) = drift.as_mut() else { return };
        let Some(transition) = drift.observe(nearest, prediction.class) else {
            return;
        };
        let (status, alerting) = match transition {
            Transition::Fired(s) => (s, true),
            Transition::Cleared(s) => (s, false),
        };
        let config = drift.config();
        if alerting {
            tracing::warn!(model = %name, version = %version, ?status, "drift: recent requests do not look like the test set");
        } else {
            tracing::info!(model = %name, version = %version, ?status, "drift cleared");
        }
        let notifier = self.notifier.clone();
        let (model, version_number) = (name.clone(), version.parse().unwrap_or(0));
        let (low_limit, shift_limit) = (config.max_low_share, config.max_class_shift);
        // Delivery can take seconds of retries: never on the inference thread.
        let _ = std::thread::Builder::new()
            .name("notify-drift".into())
            .spawn(move || {
                notifier.send(&Event::Drift {
                    model: &model,
                    version: version_number,
                    alerting,
                    window: status.requests,
                    low_similarity_share: status.low_similarity_share,
                    low_similarity_limit: low_limit,
                    class_shift: status.class_shift,
                    class_shift_limit: shift_limit,
                });
            });
    }
}
