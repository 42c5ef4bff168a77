use std::io::Write;
use std::path::Path;
use std::time::Instant;

use mlops_core::artifact::model::{
    EpochMetrics, ModelDescription, CENTRES_FILE, CURVES_FILE, MODEL_DESCRIPTION_FILE,
};
use mlops_core::artifact::{DataDir, Role, TrainSummary};
use mlops_core::progress::{self, Progress};
use mlops_core::{Manifest, OutputDir};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::ema::Ema;
use crate::optim::{lr_at, Optimizer};
use crate::parallel::DataParallel;
use crate::{export, ArcFace, EmbeddingNet, Error, NetOptions, Result, TrainConfig, STAGE};
use mlops_torch::Precision;

/// The embedding network with its ArcFace head: what is trained.
#[derive(Debug)]
pub struct TrainNet {
    /// The embedding network: what is exported as `model.pt`.
    pub net: EmbeddingNet,
    /// The ArcFace head over the embeddings, used for the loss and the class centres.
    pub head: ArcFace,
}

impl TrainNet {
    /// Builds the network (under `vs/net`) and its head (under `vs/head`) for images of shape
    /// `input` (`[channels, height, width]`) in `classes` classes, as `config` describes.
    pub fn new(vs: &nn::Path, config: &TrainConfig, input: [i64; 3], classes: i64) -> Self {
        let dim = config.embedding_dim as i64;
        let options = NetOptions {
            width: config.width.map(|w| w as i64),
            squeeze_excite: config.squeeze_excite,
            spatial_head: config.spatial_head,
        };
        TrainNet {
            net: EmbeddingNet::with_options(
                &(vs / "net"),
                config.arch,
                &options,
                input,
                dim,
                config.dropout,
            ),
            head: ArcFace::new(vs / "head", dim, classes, config.arcface),
        }
    }

    /// Mean ArcFace loss of a training batch. With `Bf16` the network runs under autocast
    /// (bf16 convolutions and matmuls, fp32 master weights); the head and the loss always run
    /// in fp32, where the margin arithmetic needs the precision.
    pub fn loss(&self, xs: &Tensor, ys: &Tensor, precision: Precision, smoothing: f64) -> Tensor {
        let emb = self.train_embeddings(xs, precision);
        self.head.smoothed_loss(&emb, ys, smoothing)
    }

    /// The training-mode embeddings of a batch, in fp32 for the head (see [`Self::loss`]).
    fn train_embeddings(&self, xs: &Tensor, precision: Precision) -> Tensor {
        mlops_torch::autocast(precision, xs.device(), || self.net.forward_t(xs, true))
            .to_kind(Kind::Float)
    }

    /// [`Self::loss`] plus `weight * mean(1 - cos)` between the student's embeddings and the
    /// teacher's. `targets` is `[n, 1 + dim]` float: the label in column 0, the teacher's
    /// normalised embedding after it (one tensor, so data parallelism splits both alike).
    pub fn distill_loss(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        precision: Precision,
        smoothing: f64,
        weight: f64,
    ) -> Tensor {
        let emb = self.train_embeddings(xs, precision);
        let labels = targets.select(1, 0).to_kind(Kind::Int64);
        let teacher = targets.narrow(1, 1, targets.size()[1] - 1);
        let arcface = self.head.smoothed_loss(&emb, &labels, smoothing);
        let norm = emb
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12);
        let cos = (emb / norm * teacher).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let distance: Tensor = cos.neg() + 1.0;
        arcface + distance.mean(Kind::Float) * weight
    }

    /// The CutMix loss: `targets` is `[n, 3]` float, each image's own label, the label of the
    /// image a rectangle of it came from, and the share of pixels it kept (1 and its own
    /// label twice when nothing was pasted); the ArcFace losses on both labels are weighed by
    /// the shares.
    pub fn mixed_loss(
        &self,
        xs: &Tensor,
        targets: &Tensor,
        precision: Precision,
        smoothing: f64,
    ) -> Tensor {
        let emb = self.train_embeddings(xs, precision);
        let label = |column: i64| targets.select(1, column).to_kind(Kind::Int64);
        let kept = targets.select(1, 2);
        let own = self.head.sample_losses(&emb, &label(0), smoothing);
        let pasted = self.head.sample_losses(&emb, &label(1), smoothing);
        let rest: Tensor = 1.0 - &kept;
        (own * &kept + pasted * rest).mean(Kind::Float)
    }
}

/// Which loss a training step computes, from what its targets hold.
#[derive(Debug, Clone, Copy)]
enum Objective {
    /// ArcFace on the labels.
    Plain,
    /// ArcFace plus the distance to the teacher's embeddings, weighed so.
    Distill(f64),
    /// ArcFace on both labels of CutMix images.
    CutMix,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// False when `stop_after_epochs` stopped the run before it finished (nothing exported).
    pub finished: bool,
    /// Epochs completed, resumed ones included.
    pub epochs_done: usize,
    /// The epoch (1-based) with the best validation kNN accuracy; its weights are exported.
    pub best_epoch: usize,
    /// Validation kNN accuracy of `best_epoch`, in `[0, 1]`.
    pub best_val_accuracy: f64,
    /// Every completed epoch's metrics, in order.
    pub metrics: Vec<EpochMetrics>,
}

const METRICS_FILE: &str = "metrics.jsonl";
const TRAIN_CONFIG_FILE: &str = "train_config.json";

/// Runs the train stage without reporting progress: see [`run_with`].
pub fn run(config: &TrainConfig) -> Result<Outcome> {
    run_with(config, &mlops_core::progress::Silent)
}

/// Runs the train stage (see the crate docs): prepare, train epoch by epoch (saving the last
/// checkpoint after every epoch and the best weights whenever validation improves), export. Each epoch is a task of `progress` counted in images,
/// with the running loss as its note.
///
/// Deterministic given the config on one device and thread count. libtorch's random generator
/// is process-wide: two runs overlapping in one process disturb each other's draws.
pub fn run_with(config: &TrainConfig, progress: &dyn Progress) -> Result<Outcome> {
    config.check()?;
    // The schedule in steps becomes a number of epochs once, here: the check, the probes, the
    // checkpoint fingerprint and the saved config all see the number trained.
    let rows = train_rows(config)?;
    let config = &TrainConfig {
        epochs: Some(config.epochs_for(rows)),
        ..config.clone()
    };
    // Again, now that the epochs are known: `low_res.epochs` must leave some at full size.
    config.check()?;
    let checked = match flip_check(config, rows, progress)? {
        FlipCheck::Stopped(outcome) => return Ok(outcome),
        FlipCheck::Decided(config) => Some(*config),
        FlipCheck::Off => None,
    };
    let config = checked.as_ref().unwrap_or(config);
    // Record (and fingerprint for --resume) the learning rate and weight decay in force, not
    // "the optimizer's default", which a later version may change.
    let first_device = config.device.resolve()?[0];
    let config = &TrainConfig {
        optimizer: config.optimizer.resolved(),
        // Recorded as what it means on this machine; a resume on another must match it.
        precision: config.precision.resolve(first_device),
        ..config.clone()
    };
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let prepared = prepare(config, &mut manifest)?;
    let mut session = if checked.is_some() {
        // The winning probe trained this very run: continue from its checkpoints, which
        // leaves only the export.
        let resume = TrainConfig {
            resume: true,
            ..config.clone()
        };
        Session::start(&resume, &prepared)?
    } else {
        Session::start(config, &prepared)?
    };
    let last_epoch = config
        .stop_after_epochs
        .map_or(config.epochs(), |s| s.min(config.epochs()));
    for epoch in session.state.epochs_done..last_epoch {
        let metrics = session.train_epoch(config, &prepared, epoch, progress)?;
        session.end_epoch(metrics)?;
    }
    if session.state.epochs_done < config.epochs() {
        tracing::info!(
            epochs = session.state.epochs_done,
            "stopped before the last epoch; resume with --resume"
        );
        return Ok(outcome(false, &session.state));
    }
    export_model(config, &prepared, &session.state, manifest)?;
    Ok(outcome(true, &session.state))
}

/// Training images of `config`'s train roles, as the data manifest counts them.
fn train_rows(config: &TrainConfig) -> Result<usize> {
    let data = DataDir::open(&config.data)?;
    Ok(config
        .train_roles
        .iter()
        .map(|&r| data.summary.role(r).map_or(0, |r| r.rows))
        .sum())
}

/// What the flip check made of a run.
enum FlipCheck {
    /// Not checked: train as configured.
    Off,
    /// A probe stopped early (`stop_after_epochs`): the run stops too; its resume resumes
    /// the probes.
    Stopped(Outcome),
    /// Decided: the config to run (the flip and flip averaging off unless the flip's probe
    /// won), whose training the winning probe's checkpoints in `out/checkpoints` hold.
    Decided(Box<TrainConfig>),
}

/// The flip check's decision, kept beside the checkpoints it moved so a resume (of an export
/// cut short) knows it without training the probes again.
#[derive(Debug, Serialize, Deserialize)]
struct FlipDecision {
    keep: bool,
    with_flip: f64,
    without_flip: f64,
}

const FLIP_DECISION: &str = "flip-check.json";

/// On a small data set (`rows` training images, as [`run_with`] counted them) with the flip
/// on, decides whether mirroring keeps labels (see
/// [`crate::AugmentConfig::flip_check_budget`]). The probes train in `out/flip-check/` and are
/// as deterministic as the run itself (a resumed run resumes them), so an interrupted run
/// decides as an uninterrupted one. The winning probe is the decided run's training (only
/// export settings and the budget differ, which the checkpoint fingerprint ignores): its
/// checkpoints move to `out/checkpoints`, for the run to resume and export.
fn flip_check(config: &TrainConfig, rows: usize, progress: &dyn Progress) -> Result<FlipCheck> {
    let budget = config.augment.flip_check_budget;
    if !config.augment.hflip || budget == 0 {
        return Ok(FlipCheck::Off);
    }
    if rows * config.epochs() > budget {
        return Ok(FlipCheck::Off);
    }
    let decided = |keep: bool| {
        FlipCheck::Decided(Box::new(if keep {
            config.clone()
        } else {
            TrainConfig {
                augment: crate::AugmentConfig {
                    hflip: false,
                    ..config.augment
                },
                test_time_flip: false,
                ..config.clone()
            }
        }))
    };
    let ckpt = config.out.join(checkpoint::DIR);
    let decision_path = ckpt.join(FLIP_DECISION);
    if config.resume && decision_path.is_file() {
        let d: FlipDecision = checkpoint::read_json(&decision_path)?;
        return Ok(decided(d.keep));
    }
    // While the probes train, an earlier run in `out` must neither look finished nor lend its
    // checkpoints (or decision) to this one.
    unfinish(&config.out)?;
    if !config.resume {
        checkpoint::clear(&ckpt)?;
    }
    let dir = config.out.join("flip-check");
    let probe_dir = |hflip: bool| dir.join(if hflip { "flip" } else { "no-flip" });
    let probe = |hflip: bool| -> Result<Outcome> {
        let out = probe_dir(hflip);
        let probe = TrainConfig {
            // A resumed run resumes its probes where the interruption left them.
            resume: config.resume && out.join(checkpoint::DIR).join(checkpoint::STATE).is_file(),
            out,
            // The whole schedule: half of it (25 steps on shapes32) left both probes near
            // chance in fp32, and the flip survived on mirrored classes by the noise.
            epochs: config.epochs,
            augment: crate::AugmentConfig {
                hflip,
                flip_check_budget: 0,
                ..config.augment
            },
            test_time_flip: false,
            ..config.clone()
        };
        run_with(&probe, progress)
    };
    let mut best = [0.0; 2];
    for (i, hflip) in [true, false].into_iter().enumerate() {
        let outcome = probe(hflip)?;
        if !outcome.finished {
            return Ok(FlipCheck::Stopped(outcome));
        }
        best[i] = outcome.best_val_accuracy;
    }
    let [with, without] = best;
    // The flip has to earn its place: on a tie (small validation sets score 1.0 both ways on
    // easy data) the cheaper model, without flip averaging, wins.
    let keep = with > without;
    tracing::info!(
        with_flip = format!("{with:.4}"),
        without_flip = format!("{without:.4}"),
        keep,
        "flip check: validation accuracy of the probes"
    );
    checkpoint::clear(&ckpt)?;
    let won = probe_dir(keep).join(checkpoint::DIR);
    std::fs::rename(&won, &ckpt).map_err(|e| mlops_core::Error::io(&won, e))?;
    let decision = FlipDecision {
        keep,
        with_flip: with,
        without_flip: without,
    };
    let text = serde_json::to_vec_pretty(&decision).expect("plain data");
    mlops_core::write_atomic(&decision_path, &text)?;
    std::fs::remove_dir_all(&dir).map_err(|e| mlops_core::Error::io(&dir, e))?;
    Ok(decided(keep))
}

/// Removes an earlier run's manifest from `out`, so that a run rewriting the directory never
/// leaves it looking finished if interrupted (OutputDir::create does the same).
fn unfinish(out: &Path) -> Result<()> {
    let old_manifest = out.join(mlops_core::MANIFEST_FILE);
    if old_manifest.exists() {
        std::fs::remove_file(&old_manifest).map_err(|e| mlops_core::Error::io(&old_manifest, e))?;
    }
    Ok(())
}

/// The data, devices and threads a run uses, read and checked before anything trains.
struct Prepared {
    devices: Vec<Device>,
    threads: usize,
    data: DataDir,
    /// `[channels, height, width]`.
    input: [i64; 3],
    classes: usize,
    train_pixels: Vec<f32>,
    train_labels: Vec<i64>,
    val_images: Tensor,
    val_labels: Tensor,
    /// The teacher's embedding of every training image, `[n_train, dim]`, when distilling.
    teacher: Option<Teacher>,
}

/// The teacher's targets and where they came from.
struct Teacher {
    embeddings: Tensor,
    lineage: mlops_core::artifact::TeacherLineage,
    weight: f64,
}

impl Prepared {
    fn frame(&self) -> usize {
        self.input.iter().product::<i64>() as usize
    }
}

fn prepare(config: &TrainConfig, manifest: &mut Manifest) -> Result<Prepared> {
    let devices: Vec<Device> = config
        .device
        .resolve()?
        .into_iter()
        .flat_map(|d| std::iter::repeat_n(d, config.replicas_per_device))
        .collect();
    mlops_torch::tune_allocator();
    let threads = mlops_torch::set_threads(config.threads);
    let data = DataDir::open(&config.data)?;
    if let Some(validated) = &config.validated {
        check_validated(validated, &data)?;
    }
    let [c, h, w] = data.summary.image_shape;
    if let Some(expected) = config.input_shape {
        if expected != [c, h, w] {
            return Err(Error::Config(format!(
                "input_shape {expected:?} does not match the data's image shape {:?} ({})",
                [c, h, w],
                config.data.display()
            )));
        }
    }
    let min = config.arch.min_side() as usize;
    if c != 1 || h < min || w < min {
        return Err(Error::Config(format!(
            "the {} architecture takes 1-channel images of at least {min}x{min}; {} holds {c}x{h}x{w}",
            config.arch,
            config.data.display()
        )));
    }
    if let Some(l) = config.low_res.filter(|l| l.side >= h.min(w)) {
        return Err(Error::Config(format!(
            "low_res.side {} is not smaller than the images' shorter side {} ({})",
            l.side,
            h.min(w),
            config.data.display()
        )));
    }
    let classes = data.summary.classes.len();
    let (train_x, train_y) = data.read_roles(&config.train_roles)?;
    let (val_x, val_y) = data.read_role(Role::Val)?;
    let mut consumed = config.train_roles.clone();
    consumed.push(Role::Val);
    manifest.inputs = data.role_input_entries(&consumed)?;
    if train_y.len() < config.batch_size {
        return Err(Error::Config(format!(
            "batch_size {} exceeds the {} training images",
            config.batch_size,
            train_y.len()
        )));
    }
    let input = [c as i64, h as i64, w as i64];
    let val_images = Tensor::f_from_slice(&val_x.into_raw_vec_and_offset().0)?.f_reshape([
        val_y.len() as i64,
        input[0],
        input[1],
        input[2],
    ])?;
    tracing::info!(
        arch = %config.arch_name(), devices = ?devices, threads, train = train_y.len(),
        val = val_y.len(), classes, "training"
    );
    let train_pixels = train_x.into_raw_vec_and_offset().0;
    let teacher = match &config.teacher {
        Some(t) => Some(teach(t, config, &data, &train_pixels, input, manifest)?),
        None => None,
    };
    Ok(Prepared {
        devices,
        threads,
        input,
        classes,
        teacher,
        train_pixels,
        train_labels: train_y.to_vec(),
        val_labels: Tensor::f_from_slice(&val_y.to_vec())?,
        val_images,
        data,
    })
}

/// A validate-stage manifest exists only when every check passed; it must have checked this
/// very data manifest.
fn check_validated(validated: &Path, data: &DataDir) -> Result<()> {
    let manifest = Manifest::load_stage(validated, "validate")?;
    let data_manifest = mlops_core::sha256_file(&data.dir.join(mlops_core::MANIFEST_FILE))?;
    if !manifest.inputs.iter().any(|e| e.sha256 == data_manifest) {
        return Err(mlops_core::Error::invalid(
            validated.join(mlops_core::MANIFEST_FILE),
            format!("did not validate the data in {}", data.dir.display()),
        )
        .into());
    }
    Ok(())
}

/// The model, optimizer and progress of a run in flight.
struct Session {
    dp: DataParallel<TrainNet>,
    /// The moving average of the weights, when `ema` > 0.
    ema: Option<Ema<TrainNet>>,
    opt: Optimizer,
    state: TrainState,
    ckpt_dir: std::path::PathBuf,
    metrics_path: std::path::PathBuf,
}

impl Session {
    /// Builds the model (from the seed, or the last checkpoint with `resume`).
    fn start(config: &TrainConfig, p: &Prepared) -> Result<Self> {
        tch::manual_seed(config.seed as i64);
        let build = |path: &nn::Path| TrainNet::new(path, config, p.input, p.classes as i64);
        let mut dp = DataParallel::new(&p.devices, build)?;
        let mut opt = dp.optimizer(config.optimizer);
        let mut ema = if config.ema > 0.0 {
            Some(Ema::new(&dp.primary().vs, config.ema, build)?)
        } else {
            None
        };
        std::fs::create_dir_all(&config.out).map_err(|e| mlops_core::Error::io(&config.out, e))?;
        // From here on the directory is being rewritten.
        unfinish(&config.out)?;
        let ckpt_dir = config.out.join(checkpoint::DIR);
        let state = if config.resume {
            let state = checkpoint::load_last(
                &ckpt_dir,
                config,
                &mut dp.primary_mut().vs,
                ema.as_mut().map(|e| &mut e.vs),
                &mut opt,
            )?;
            dp.broadcast();
            tracing::info!(epoch = state.epochs_done, "resumed");
            state
        } else {
            checkpoint::clear(&ckpt_dir)?;
            TrainState::new(config)
        };
        let metrics_path = config.out.join(METRICS_FILE);
        rewrite_metrics(&metrics_path, &state.metrics)?;
        Ok(Session {
            dp,
            ema,
            opt,
            state,
            ckpt_dir,
            metrics_path,
        })
    }

    /// One pass over the shuffled training set, then the validation scores.
    fn train_epoch(
        &mut self,
        config: &TrainConfig,
        p: &Prepared,
        epoch: usize,
        progress: &dyn Progress,
    ) -> Result<EpochMetrics> {
        let started = Instant::now();
        let n_train = p.train_labels.len();
        let steps_per_epoch = n_train / config.batch_size;
        let total_steps = steps_per_epoch * config.epochs();
        let warmup = (total_steps as f64 * config.warmup_fraction) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(
            config.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)),
        );
        // Dropout draws from libtorch's generator: seed it per epoch so a resumed run matches.
        tch::manual_seed(config.seed as i64 + epoch as i64 + 1);
        let mut order: Vec<usize> = (0..n_train).collect();
        order.shuffle(&mut rng);
        // Counted in images, so a bar's rate reads as img/s.
        let label = format!("epoch {}/{}", epoch + 1, config.epochs());
        let task = progress::start(
            progress,
            &label,
            (steps_per_epoch * config.batch_size) as u64,
        );
        let (mut loss_sum, mut lr) = (0.0, 0.0);
        let augmenter = Augmenter::new(p, config);
        let batch_size = config.batch_size;
        let low_res = config
            .low_res
            .and_then(|l| l.shape_at(epoch, [p.input[1] as usize, p.input[2] as usize]));
        // Batches are assembled and augmented on another thread, two steps ahead of the one
        // training, so the step never waits for them. That thread owns the epoch's generator
        // and draws in the same order as before, so the batches, and the model, are the same.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let order = &order;
            scope.spawn(move || {
                for step in 0..steps_per_epoch {
                    let idx = &order[step * batch_size..(step + 1) * batch_size];
                    if tx.send(augmenter.batch(idx, &mut rng)).is_err() {
                        break; // the training loop stopped early (an error)
                    }
                }
            });
            for step in 0..steps_per_epoch {
                let idx = &order[step * batch_size..(step + 1) * batch_size];
                let batch = rx
                    .recv()
                    .expect("the batch thread makes one batch per step");
                let (xs, ys) = batch_tensors(p, idx, &batch)?;
                let xs = match low_res {
                    Some([h, w]) => xs.f_adaptive_avg_pool2d([h as i64, w as i64])?,
                    None => xs,
                };
                let global_step = epoch * steps_per_epoch + step;
                lr = lr_at(
                    config.schedule,
                    config.optimizer.lr(),
                    global_step,
                    total_steps,
                    warmup,
                );
                let objective = match &p.teacher {
                    Some(t) => Objective::Distill(t.weight),
                    None if batch.pasted.is_some() => Objective::CutMix,
                    None => Objective::Plain,
                };
                let loss = self.step(config, &xs, &ys, lr, objective)?;
                if !loss.is_finite() {
                    return Err(Error::Config(format!(
                        "training diverged at epoch {} step {step} (loss {loss}); lower the learning rate",
                        epoch + 1
                    )));
                }
                loss_sum += loss;
                task.inc(batch_size as u64);
                task.note(&format!("{label} loss {:.3}", loss_sum / (step + 1) as f64));
            }
            Ok(())
        })?;
        drop(task);
        let train_seconds = started.elapsed().as_secs_f64();
        let (model, vs) = self.scored();
        let (knn, centre) = mlops_torch::catch("scoring the validation set", || {
            evaluate(
                model,
                vs.device(),
                &p.val_images,
                &p.val_labels,
                config.val_k,
                p.classes,
                config.precision,
            )
        })?;
        Ok(EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_knn_accuracy: knn,
            val_centre_accuracy: centre,
            lr,
            images_per_second: (steps_per_epoch * config.batch_size) as f64 / train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// One optimizer step on every replica (and the moving average after it); the loss.
    /// `ys` holds what `objective` needs: labels, or labels and teacher embeddings (see
    /// [`TrainNet::distill_loss`]), or CutMix targets ([`TrainNet::mixed_loss`]).
    fn step(
        &mut self,
        config: &TrainConfig,
        xs: &Tensor,
        ys: &Tensor,
        lr: f64,
        objective: Objective,
    ) -> Result<f64> {
        let (dp, opt) = (&mut self.dp, &mut self.opt);
        let (precision, smoothing) = (config.precision, config.label_smoothing);
        let ema = &mut self.ema;
        Ok(mlops_torch::catch("running a training step", || {
            let loss = dp.step(
                xs,
                ys,
                |m: &TrainNet, x, y| match objective {
                    Objective::Distill(w) => m.distill_loss(x, y, precision, smoothing, w),
                    Objective::CutMix => m.mixed_loss(x, y, precision, smoothing),
                    Objective::Plain => m.loss(x, y, precision, smoothing),
                },
                opt,
                lr,
            );
            if let Some(ema) = ema {
                ema.update(opt.steps());
            }
            loss
        })?)
    }

    /// The network that validation scores and export uses: the moving average when there is
    /// one, else the live weights.
    fn scored(&self) -> (&TrainNet, &nn::VarStore) {
        match &self.ema {
            Some(e) => (&e.model, &e.vs),
            None => (&self.dp.primary().model, &self.dp.primary().vs),
        }
    }

    /// Logs and records the epoch, then writes the checkpoints the policy asks for.
    fn end_epoch(&mut self, m: EpochMetrics) -> Result<()> {
        tracing::info!(
            epoch = m.epoch,
            loss = format!("{:.4}", m.train_loss),
            val_knn = format!("{:.4}", m.val_knn_accuracy),
            val_centre = format!("{:.4}", m.val_centre_accuracy),
            img_per_s = format!("{:.0}", m.images_per_second),
            "epoch done"
        );
        append_metrics(&self.metrics_path, &m)?;
        let actions = checkpoint::policy(&self.state, m.val_knn_accuracy);
        self.state
            .record(m, actions.contains(&checkpoint::Action::SaveBest));
        checkpoint::execute(
            &self.ckpt_dir,
            &actions,
            &self.dp.primary().vs,
            self.ema.as_ref().map(|e| &e.vs),
            &self.opt,
            &self.state,
        )
    }
}

/// Exports the best epoch's weights, traced on the CPU so the model loads anywhere, with its
/// description, and commits the stage's output.
fn export_model(
    config: &TrainConfig,
    p: &Prepared,
    state: &TrainState,
    mut manifest: Manifest,
) -> Result<()> {
    let ckpt_dir = config.out.join(checkpoint::DIR);
    let mut export_vs = nn::VarStore::new(Device::Cpu);
    let mut export_net = TrainNet::new(&export_vs.root(), config, p.input, p.classes as i64);
    checkpoint::load_best(&ckpt_dir, &mut export_vs)?;
    let mut out = OutputDir::create(&config.out)?;
    let example = p
        .val_images
        .f_narrow(0, 0, p.val_images.size()[0].min(256))?;
    let model_entry = mlops_torch::catch("exporting the model", || {
        export::trace_and_verify(
            &mut export_vs,
            &mut export_net.net,
            &example,
            config.test_time_flip,
            &mut out,
        )
    })??;
    let [c, h, w] = p.data.summary.image_shape;
    let description = ModelDescription {
        arch: config.arch_name(),
        input_shape: [c, h, w],
        embedding_dim: config.embedding_dim,
        normalization: p.data.summary.normalization,
        value_range: p.data.summary.value_range,
        classes: p.data.summary.classes.clone(),
        arcface: config.arcface,
        test_time_flip: config.test_time_flip,
        epochs_trained: state.epochs_done,
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        torch_version: mlops_torch::LIBTORCH_VERSION.to_string(),
        data_manifest_sha256: manifest.inputs[0].sha256.clone(),
        teacher: p.teacher.as_ref().map(|t| t.lineage.clone()),
    };
    manifest.outputs.push(model_entry);
    manifest
        .outputs
        .push(out.write_json(MODEL_DESCRIPTION_FILE, &description)?);
    manifest
        .outputs
        .push(out.write_npy(CENTRES_FILE, &class_centres(&export_net, p)?)?);
    manifest
        .outputs
        .push(out.write_json(TRAIN_CONFIG_FILE, config)?);
    let curves = out.staged_path(CURVES_FILE);
    mlops_core::plot::training_curves_png(&curves, &state.metrics).map_err(Error::Plot)?;
    manifest.outputs.push(out.adopt(CURVES_FILE)?);
    for name in [
        METRICS_FILE.to_string(),
        format!("{}/{}", checkpoint::DIR, checkpoint::LAST),
        format!("{}/{}", checkpoint::DIR, checkpoint::BEST),
        format!("{}/{}", checkpoint::DIR, checkpoint::STATE),
    ] {
        manifest.outputs.push(out.keep_in_place(&name)?);
    }
    let summary = TrainSummary {
        arch: config.arch_name(),
        epochs: state.epochs_done,
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        devices: p.devices.iter().map(|d| format!("{d:?}")).collect(),
        threads: p.threads,
        last: state.metrics.last().cloned(),
        precision: config.precision.to_string(),
        cpu: mlops_torch::cpu_model(),
    };
    manifest.summary = serde_json::to_value(&summary).expect("plain data");
    out.commit(manifest)?;
    Ok(())
}

/// The ArcFace head's class centres, L2-normalised, as `[classes, dim]` (with sub-centres,
/// each class's dominant one on the validation images).
fn class_centres(model: &TrainNet, p: &Prepared) -> Result<ndarray::Array2<f32>> {
    let head = &model.head;
    let centres = tch::no_grad(|| {
        if head.sub_centres() == 1 {
            return crate::arcface::normalize(&head.weight);
        }
        let emb = embed(&model.net, Device::Cpu, &p.val_images).to_kind(Kind::Float);
        head.class_centres(&emb, &p.val_labels)
    })
    .f_to_kind(Kind::Float)?
    .f_to_device(Device::Cpu)?;
    let [rows, cols] = <[i64; 2]>::try_from(centres.size())
        .map_err(|_| Error::Config("the ArcFace head is not a matrix".into()))?;
    let values = Vec::<f32>::try_from(centres.f_flatten(0, -1)?)?;
    ndarray::Array2::from_shape_vec((rows as usize, cols as usize), values)
        .map_err(|e| Error::Config(e.to_string()))
}

/// Labels `ys` with the teacher's embeddings of images `idx` beside them: `[n, 1 + dim]`.
fn with_teacher_targets(ys: &Tensor, teacher: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let rows: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let targets = teacher.f_index_select(0, &Tensor::f_from_slice(&rows)?)?;
    Ok(Tensor::f_cat(
        &[ys.to_kind(Kind::Float).unsqueeze(1), targets],
        1,
    )?)
}

/// A batch from the batch thread as tensors: images `[n, c, h, w]`, and labels (with the
/// teacher's embeddings of images `idx` beside them when distilling, see
/// [`with_teacher_targets`]; or the CutMix targets of [`TrainNet::mixed_loss`]).
fn batch_tensors(p: &Prepared, idx: &[usize], batch: &Batch) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = p.input;
    let xs = Tensor::f_from_slice(&batch.pixels)?.f_reshape([idx.len() as i64, c, h, w])?;
    let ys = Tensor::f_from_slice(&batch.labels)?;
    let ys = match (&p.teacher, &batch.pasted) {
        (Some(t), _) => with_teacher_targets(&ys, &t.embeddings, idx)?,
        (None, Some(pasted)) => {
            let rows: Vec<f32> = batch
                .labels
                .iter()
                .zip(pasted)
                .flat_map(|(&own, &(other, kept))| [own as f32, other as f32, kept])
                .collect();
            Tensor::f_from_slice(&rows)?.f_reshape([idx.len() as i64, 3])?
        }
        (None, None) => ys,
    };
    Ok((xs, ys))
}

/// Training images as the batch thread hands them over.
struct Batch {
    /// The augmented images, row after row.
    pixels: Vec<f32>,
    /// Their labels.
    labels: Vec<i64>,
    /// With CutMix on, for each image the label of the image a rectangle was pasted from and
    /// the share of its own pixels kept (its own label and 1 when nothing was pasted).
    pasted: Option<Vec<(i64, f32)>>,
}

/// What a training batch is made from: the training set's pixels and labels, and the
/// augmentation settings. Plain data, so a thread other than the training one can use it.
struct Augmenter<'a> {
    pixels: &'a [f32],
    labels: &'a [i64],
    frame: usize,
    height: usize,
    width: usize,
    /// The data's lowest and highest normalised values: a shift uncovers the lowest (the
    /// background), erasing draws between the two.
    range: [f32; 2],
    config: &'a TrainConfig,
}

impl<'a> Augmenter<'a> {
    fn new(p: &'a Prepared, config: &'a TrainConfig) -> Self {
        Augmenter {
            pixels: &p.train_pixels,
            labels: &p.train_labels,
            frame: p.frame(),
            height: p.input[1] as usize,
            width: p.input[2] as usize,
            range: p.data.summary.value_range,
            config,
        }
    }

    /// The augmented images `idx` of the training set and their labels. Draws from `rng` in
    /// row order (the order a resumed run repeats).
    fn batch(&self, idx: &[usize], rng: &mut ChaCha8Rng) -> Batch {
        let frame = self.frame;
        let mut pixels = vec![0f32; idx.len() * frame];
        let cutmix = self.config.augment.cutmix;
        let mut pasted = (cutmix > 0.0).then(|| Vec::with_capacity(idx.len()));
        let mut other = vec![0f32; frame];
        for (row, &i) in idx.iter().enumerate() {
            let dst = &mut pixels[row * frame..(row + 1) * frame];
            self.augment(i, dst, rng);
            if let Some(pasted) = &mut pasted {
                let mut mix = (self.labels[i], 1.0);
                if rng.random_bool(cutmix) {
                    let j = rng.random_range(0..self.labels.len());
                    self.augment(j, &mut other, rng);
                    let kept = paste(dst, &other, self.height, self.width, rng);
                    mix = (self.labels[j], kept);
                }
                pasted.push(mix);
            }
        }
        Batch {
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            pasted,
        }
    }

    /// Training image `i`, augmented, into `dst`.
    fn augment(&self, i: usize, dst: &mut [f32], rng: &mut ChaCha8Rng) {
        let frame = self.frame;
        augment(
            &self.pixels[i * frame..(i + 1) * frame],
            dst,
            self.height,
            self.width,
            self.config,
            self.range,
            rng,
        );
    }
}

/// CutMix's rectangle: a share of the image drawn uniformly, the rectangle's sides that
/// share's square root of the image's, centred on a uniform pixel and clipped to the image
/// (Yun et al.'s sampler); copies it from `src` into `dst` and returns the share of `dst`'s
/// own pixels left.
fn paste(dst: &mut [f32], src: &[f32], h: usize, w: usize, rng: &mut ChaCha8Rng) -> f32 {
    let side = rng.random::<f64>().sqrt();
    let (ph, pw) = ((h as f64 * side) as usize, (w as f64 * side) as usize);
    let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
    let (top, bottom) = (cy.saturating_sub(ph / 2), (cy + ph / 2).min(h));
    let (left, right) = (cx.saturating_sub(pw / 2), (cx + pw / 2).min(w));
    for y in top..bottom {
        dst[y * w + left..y * w + right].copy_from_slice(&src[y * w + left..y * w + right]);
    }
    1.0 - ((bottom - top) * (right - left)) as f32 / (h * w) as f32
}

/// Loads the teacher, checks it takes this data, and embeds every training image with it (in
/// evaluation mode, batches of 256, the run's precision): the student's targets. Its
/// `model.pt` joins the manifest's inputs.
fn teach(
    t: &crate::TeacherConfig,
    config: &TrainConfig,
    data: &DataDir,
    pixels: &[f32],
    input: [i64; 3],
    manifest: &mut Manifest,
) -> Result<Teacher> {
    // A registry version or a train-stage directory: both hold `model.pt` and `model.json`.
    let (description, path) = match mlops_core::artifact::VersionDir::open(&t.model) {
        Ok(v) => (v.description()?, v.model_path()?),
        Err(_) => {
            let m = mlops_core::artifact::ModelDir::open(&t.model)?;
            (m.description()?, m.model_path()?)
        }
    };
    let mismatch = |what: &str| {
        Error::Config(format!(
            "teacher {}: {what} differs from the student's",
            t.model.display()
        ))
    };
    if description.input_shape != data.summary.image_shape
        || description.normalization != data.summary.normalization
    {
        return Err(mismatch("the input (shape or normalisation)"));
    }
    if description.classes != data.summary.classes {
        return Err(mismatch("the class list"));
    }
    if description.embedding_dim != config.embedding_dim {
        return Err(mismatch("embedding_dim"));
    }
    let entry = mlops_core::FileEntry::input_file(&path)?;
    let module = tch::CModule::load_on_device(&path, Device::Cpu)
        .map_err(|e| Error::Config(format!("teacher {}: {e}", path.display())))?;
    let frame = input.iter().product::<i64>() as usize;
    let n = pixels.len() / frame;
    let started = Instant::now();
    let images =
        Tensor::f_from_slice(pixels)?.f_reshape([n as i64, input[0], input[1], input[2]])?;
    let embeddings = mlops_torch::catch("running the teacher", || {
        mlops_torch::autocast(config.precision, Device::Cpu, || {
            mlops_torch::embed_batches(&module, &images, 256, Device::Cpu)
        })
    })??
    .to_kind(Kind::Float);
    tracing::info!(
        teacher = %t.model.display(),
        images = n,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "teacher embedded the training set"
    );
    let lineage = mlops_core::artifact::TeacherLineage {
        dir: t.model.display().to_string(),
        model_sha256: entry.sha256.clone(),
        arch: description.arch.clone(),
        test_time_flip: description.test_time_flip,
    };
    manifest.inputs.push(entry);
    Ok(Teacher {
        embeddings,
        lineage,
        weight: t.weight,
    })
}

fn outcome(finished: bool, state: &TrainState) -> Outcome {
    Outcome {
        finished,
        epochs_done: state.epochs_done,
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        metrics: state.metrics.clone(),
    }
}

/// Copies `src` into `dst` shifted by up to `max_shift` pixels (filling with the lowest value
/// of `range`), maybe mirrored, maybe with a rectangle erased, all drawn from `rng` so the
/// batch is reproducible. Erasing draws nothing when it is off, so turning it on changes no
/// other image's shift or flip before its own draws.
fn augment(
    src: &[f32],
    dst: &mut [f32],
    h: usize,
    w: usize,
    config: &TrainConfig,
    range: [f32; 2],
    rng: &mut ChaCha8Rng,
) {
    let s = if h.min(w) >= config.augment.shift_min_side {
        config.augment.max_shift as i64
    } else {
        0
    };
    let (dy, dx) = if s > 0 {
        (rng.random_range(-s..=s), rng.random_range(-s..=s))
    } else {
        (0, 0)
    };
    let flip = config.augment.hflip && rng.random_bool(0.5);
    if dy == 0 && dx == 0 && !flip {
        dst.copy_from_slice(src);
    } else {
        for y in 0..h as i64 {
            let sy = y - dy;
            for x in 0..w as i64 {
                let sx = if flip {
                    w as i64 - 1 - (x - dx)
                } else {
                    x - dx
                };
                let inside = (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx);
                dst[(y as usize) * w + x as usize] = if inside {
                    src[sy as usize * w + sx as usize]
                } else {
                    range[0]
                };
            }
        }
    }
    let p = config.augment.erase;
    if p > 0.0 && rng.random_bool(p) {
        erase(dst, h, w, config.augment.erase_area, range, rng);
    }
}

/// Random erasing: one rectangle of `dst` covering a share of the image drawn from `area`,
/// aspect ratio log-uniform in [0.3, 3.3], filled with values uniform in `range`. Tries up
/// to ten shapes for one that fits, as the paper's sampler does, and erases nothing if none
/// does.
fn erase(
    dst: &mut [f32],
    h: usize,
    w: usize,
    area: [f64; 2],
    range: [f32; 2],
    rng: &mut ChaCha8Rng,
) {
    let pixels = (h * w) as f64;
    for _ in 0..10 {
        let target = rng.random_range(area[0]..=area[1]) * pixels;
        let ratio = rng.random_range(0.3f64.ln()..=3.3f64.ln()).exp();
        let eh = (target * ratio).sqrt().round() as usize;
        let ew = (target / ratio).sqrt().round() as usize;
        if eh == 0 || ew == 0 || eh > h || ew > w {
            continue;
        }
        let top = rng.random_range(0..=h - eh);
        let left = rng.random_range(0..=w - ew);
        let spread = range[1] - range[0];
        for y in top..top + eh {
            for v in &mut dst[y * w + left..y * w + left + ew] {
                *v = range[0] + spread * rng.random::<f32>();
            }
        }
        return;
    }
}

/// Embeds `images` in eval mode, in batches, without gradients.
pub(crate) fn embed(net: &EmbeddingNet, device: Device, images: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = images.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(1024)
            .map(|i| {
                net.forward_t(
                    &images.narrow(0, i, (n - i).min(1024)).to_device(device),
                    false,
                )
                .to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&parts, 0)
    })
}

/// Leave-one-out kNN accuracy (similarity-weighted vote of the `k` nearest other validation
/// embeddings) and nearest-class-centre accuracy.
fn evaluate(
    model: &TrainNet,
    device: Device,
    images: &Tensor,
    labels: &Tensor,
    k: usize,
    classes: usize,
    precision: Precision,
) -> (f64, f64) {
    // Only the network runs in the training precision; the scoring below is fp32.
    let emb = mlops_torch::autocast(precision, device, || embed(&model.net, device, images))
        .to_kind(Kind::Float);
    tch::no_grad(|| {
        let n = emb.size()[0];
        let k = (k as i64).min(n - 1).max(1);
        let mut correct = 0i64;
        for start in (0..n).step_by(1024) {
            let len = (n - start).min(1024);
            let mut sims = emb.narrow(0, start, len).matmul(&emb.transpose(0, 1));
            // A sample is not its own neighbour.
            let rows = Tensor::arange(len, (Kind::Int64, Device::Cpu));
            let _ = sims.index_put_(
                &[Some(&rows), Some(&(&rows + start))],
                &Tensor::from(-10.0f32),
                false,
            );
            let (top, idx) = sims.topk(k, 1, true, true);
            let votes = Tensor::zeros([len, classes as i64], (Kind::Float, Device::Cpu))
                .scatter_add(
                    1,
                    &labels
                        .index_select(0, &idx.flatten(0, -1))
                        .reshape([len, k]),
                    &(top + 1.0),
                );
            let pred = votes.argmax(1, false);
            correct += pred
                .eq_tensor(&labels.narrow(0, start, len))
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        let centre_pred = model
            .head
            .cosine(&emb.to_device(model.head.weight.device()))
            .argmax(1, false)
            .to_device(Device::Cpu);
        let centre = centre_pred
            .eq_tensor(labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
        (correct as f64 / n as f64, centre as f64 / n as f64)
    })
}

fn rewrite_metrics(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in metrics {
        text.push_str(&serde_json::to_string(m).expect("plain data"));
        text.push('\n');
    }
    mlops_core::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| mlops_core::Error::io(path, e))?;
    writeln!(file, "{}", serde_json::to_string(m).expect("plain data"))
        .map_err(|e| mlops_core::Error::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_images_are_flipped_but_not_shifted() {
        let config = TrainConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (mut shifted_28, mut moved_8) = (0, 0);
        for _ in 0..50 {
            let src: Vec<f32> = (0..28 * 28).map(|i| i as f32).collect();
            let mut dst = vec![0.0; src.len()];
            augment(&src, &mut dst, 28, 28, &config, [-1.0, 1.0], &mut rng);
            // A shift brings in the fill value at an edge.
            shifted_28 += usize::from(dst.contains(&-1.0));
            let src: Vec<f32> = (0..64).map(|i| i as f32).collect();
            let mut dst = vec![0.0; 64];
            augment(&src, &mut dst, 8, 8, &config, [-1.0, 1.0], &mut rng);
            assert!(!dst.contains(&-1.0), "an 8x8 image was shifted");
            let mirrored: Vec<f32> = (0..64).map(|i| (i / 8 * 8 + 7 - i % 8) as f32).collect();
            assert!(dst == src || dst == mirrored);
            moved_8 += usize::from(dst == mirrored);
        }
        assert!(shifted_28 > 20 && moved_8 > 10, "{shifted_28} {moved_8}");
    }

    #[test]
    fn erasing_covers_a_bounded_rectangle_of_values_in_range() {
        let config = TrainConfig {
            augment: crate::AugmentConfig {
                max_shift: 0,
                hflip: false,
                erase: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let src = vec![5.0f32; 28 * 28];
        let mut sizes = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let mut dst = vec![0.0; src.len()];
            augment(&src, &mut dst, 28, 28, &config, [0.0, 1.0], &mut rng);
            let erased: Vec<usize> = (0..dst.len()).filter(|&i| dst[i] != 5.0).collect();
            assert!(erased.iter().all(|&i| (0.0..1.0).contains(&dst[i])));
            // One rectangle: its pixel count is its bounding box's.
            let (ys, xs): (Vec<usize>, Vec<usize>) =
                erased.iter().map(|&i| (i / 28, i % 28)).unzip();
            let bbox = (ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1)
                * (xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1);
            assert_eq!(erased.len(), bbox);
            let share = erased.len() as f64 / 784.0;
            assert!((0.01..=0.45).contains(&share), "{share}");
            sizes.insert(erased.len());
        }
        assert!(sizes.len() > 20, "the rectangles hardly vary: {sizes:?}");
        // Off, it draws nothing: the generator is where the shift and flip left it, so the
        // default's batches are those of the versions before erasing existed.
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(2), ChaCha8Rng::seed_from_u64(2));
        let mut dst = vec![0.0; src.len()];
        augment(
            &src,
            &mut dst,
            28,
            28,
            &TrainConfig::default(),
            [0.0, 1.0],
            &mut a,
        );
        let _: (i64, i64, bool) = (
            b.random_range(-1..=1),
            b.random_range(-1..=1),
            b.random_bool(0.5),
        );
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }

    #[test]
    fn cutmix_pastes_one_rectangle_of_another_image_and_says_how_much_is_left() {
        // Image k is all k (labelled k), so a pasted pixel tells where it came from.
        let (h, w, n) = (12, 10, 50);
        let pixels: Vec<f32> = (0..n * h * w).map(|i| (i / (h * w)) as f32).collect();
        let labels: Vec<i64> = (0..n as i64).collect();
        let mut config = TrainConfig::default();
        config.augment.max_shift = 0;
        config.augment.hflip = false;
        fn augmenter<'a>(
            pixels: &'a [f32],
            labels: &'a [i64],
            config: &'a TrainConfig,
            [h, w]: [usize; 2],
        ) -> Augmenter<'a> {
            Augmenter {
                pixels,
                labels,
                frame: h * w,
                height: h,
                width: w,
                range: [0.0, 50.0],
                config,
            }
        }
        let with_cutmix = |p| {
            let mut c = config.clone();
            c.augment.cutmix = p;
            c
        };
        let idx: Vec<usize> = (0..n).collect();
        let off = augmenter(&pixels, &labels, &config, [h, w])
            .batch(&idx, &mut ChaCha8Rng::seed_from_u64(3));
        assert!(off.pasted.is_none());
        assert_eq!(off.pixels, pixels);

        let always = with_cutmix(1.0);
        let always = augmenter(&pixels, &labels, &always, [h, w]);
        let (mut pasted, mut shares) = (0, 0.0);
        for seed in 0..20 {
            let batch = always.batch(&idx, &mut ChaCha8Rng::seed_from_u64(seed));
            let again = always.batch(&idx, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(
                (&batch.pixels, &batch.pasted),
                (&again.pixels, &again.pasted)
            );
            assert_eq!(batch.labels, labels);
            for (row, &(other, kept)) in batch.pasted.as_ref().unwrap().iter().enumerate() {
                let image = &batch.pixels[row * h * w..(row + 1) * h * w];
                let foreign: Vec<usize> = (0..h * w).filter(|&i| image[i] != row as f32).collect();
                if other == row as i64 {
                    // From itself: nothing shows, and both labels are its own.
                    assert!(foreign.is_empty());
                    continue;
                }
                assert!(foreign.iter().all(|&i| image[i] == other as f32));
                let expected = 1.0 - foreign.len() as f32 / (h * w) as f32;
                assert!((kept - expected).abs() < 1e-6, "{kept} {expected}");
                if foreign.is_empty() {
                    continue;
                }
                // One solid rectangle.
                let (ys, xs): (Vec<usize>, Vec<usize>) =
                    foreign.iter().map(|&i| (i / w, i % w)).unzip();
                let height = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
                let width = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
                assert_eq!(foreign.len(), height * width);
                pasted += 1;
                shares += 1.0 - kept as f64;
            }
        }
        // Nearly every image gets a rectangle (only a tiny one or one from itself shows
        // none), covering on average a share below the drawn 1/2 (clipping at the edges).
        assert!(pasted > 900, "{pasted}");
        let mean = shares / pasted as f64;
        assert!((0.15..0.5).contains(&mean), "{mean}");

        let sometimes = with_cutmix(0.3);
        let batch = augmenter(&pixels, &labels, &sometimes, [h, w])
            .batch(&idx, &mut ChaCha8Rng::seed_from_u64(1));
        let mixed = batch.pasted.unwrap().iter().filter(|m| m.1 < 1.0).count();
        assert!((5..=30).contains(&mixed), "{mixed} of 50 at p 0.3");
    }

    #[test]
    fn the_cutmix_loss_weighs_both_labels_by_the_pixels_kept() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = TrainConfig {
            arch: crate::Arch::Res,
            embedding_dim: 16,
            ..Default::default()
        };
        let net = TrainNet::new(&vs.root(), &config, [1, 28, 28], 10);
        let xs = Tensor::rand([6, 1, 28, 28], tch::kind::FLOAT_CPU);
        let own = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
        let other = Tensor::from_slice(&[9i64, 8, 7, 6, 5, 4]);
        let targets = |kept: f64| {
            Tensor::stack(
                &[
                    own.to_kind(Kind::Float),
                    other.to_kind(Kind::Float),
                    Tensor::full([6], kept, tch::kind::FLOAT_CPU),
                ],
                1,
            )
        };
        let value = |t: Tensor| t.double_value(&[]);
        let plain = |ys: &Tensor| value(net.loss(&xs, ys, Precision::Fp32, 0.1));
        let mixed = |kept| value(net.mixed_loss(&xs, &targets(kept), Precision::Fp32, 0.1));
        let (a, b) = (plain(&own), plain(&other));
        assert!((a - b).abs() > 1e-3, "{a} {b}");
        for (kept, expected) in [(1.0, a), (0.0, b), (0.25, 0.25 * a + 0.75 * b)] {
            assert!(
                (mixed(kept) - expected).abs() < 1e-5,
                "{kept}: {} {expected}",
                mixed(kept)
            );
        }
    }
}
