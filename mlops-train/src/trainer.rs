use std::io::Write;
use std::path::Path;
use std::time::Instant;

use mlops_core::{Manifest, OutputDir};
use mlops_data::{DataDir, Role};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::optim::lr_at;
use crate::parallel::DataParallel;
use crate::{
    export, ArcFace, EmbeddingNet, Error, ModelConfig, Result, TrainConfig, MODEL_CONFIG_FILE,
    STAGE,
};

/// The embedding network with its ArcFace head: what is trained.
#[derive(Debug)]
pub struct TrainNet {
    pub net: EmbeddingNet,
    pub head: ArcFace,
}

impl TrainNet {
    pub fn new(vs: &nn::Path, config: &TrainConfig, input: [i64; 3], classes: i64) -> Self {
        let dim = config.embedding_dim as i64;
        TrainNet {
            net: EmbeddingNet::new(&(vs / "net"), config.arch, input, dim, config.dropout),
            head: ArcFace::new(vs / "head", dim, classes, config.arcface),
        }
    }

    /// Mean ArcFace loss of a training batch.
    pub fn loss(&self, xs: &Tensor, ys: &Tensor) -> Tensor {
        self.head.loss(&self.net.forward_t(xs, true), ys)
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    /// Leave-one-out kNN accuracy among the validation embeddings.
    pub val_knn_accuracy: f64,
    /// Accuracy of the nearest ArcFace class centre.
    pub val_centre_accuracy: f64,
    pub lr: f64,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// False when `stop_after_epochs` stopped the run before it finished (nothing exported).
    pub finished: bool,
    pub epochs_done: usize,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub metrics: Vec<EpochMetrics>,
}

const METRICS_FILE: &str = "metrics.jsonl";
const TRAIN_CONFIG_FILE: &str = "train_config.json";

/// Runs the train stage (see the crate docs).
///
/// Deterministic given the config on one device and thread count. libtorch's random generator
/// is process-wide: two runs overlapping in one process disturb each other's draws.
pub fn run(config: &TrainConfig) -> Result<Outcome> {
    config.check()?;
    // Record (and fingerprint for --resume) the learning rate and weight decay in force, not
    // "the optimizer's default", which a later version may change.
    let config = &TrainConfig {
        optimizer: config.optimizer.resolved(),
        ..config.clone()
    };
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let devices = config.device.resolve()?;
    let threads = crate::device::set_threads(config.threads);

    let data = DataDir::open(&config.data)?;
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
    let n_classes = data.summary.classes.len();
    let (train_x, train_y) = data.read_role(Role::Train)?;
    let (val_x, val_y) = data.read_role(Role::Val)?;
    manifest.inputs = data.input_entries(&[Role::Train, Role::Val])?;
    let n_train = train_y.len();
    if n_train < config.batch_size {
        return Err(Error::Config(format!(
            "batch_size {} exceeds the {n_train} training images",
            config.batch_size
        )));
    }
    let frame = c * h * w;
    let train_pixels = train_x.into_raw_vec_and_offset().0;
    let train_labels: Vec<i64> = train_y.to_vec();
    let val_images =
        Tensor::from_slice(val_x.as_slice().expect("read_role builds a standard array")).reshape([
            val_y.len() as i64,
            c as i64,
            h as i64,
            w as i64,
        ]);
    let val_labels = Tensor::from_slice(val_y.as_slice().expect("contiguous"));

    tracing::info!(
        arch = %config.arch, devices = ?devices, threads, train = n_train, val = val_y.len(),
        classes = n_classes, "training"
    );
    tch::manual_seed(config.seed as i64);
    let input = [c as i64, h as i64, w as i64];
    let mut dp = DataParallel::new(&devices, |p| {
        TrainNet::new(p, config, input, n_classes as i64)
    })?;
    let mut opt = dp.optimizer(config.optimizer);

    std::fs::create_dir_all(&config.out).map_err(|e| mlops_core::Error::io(&config.out, e))?;
    // From here on the directory is being rewritten: drop an earlier run's manifest so that an
    // interruption never leaves it looking finished (OutputDir::create does the same at export).
    let old_manifest = config.out.join(mlops_core::MANIFEST_FILE);
    if old_manifest.exists() {
        std::fs::remove_file(&old_manifest).map_err(|e| mlops_core::Error::io(&old_manifest, e))?;
    }
    let ckpt_dir = config.out.join(checkpoint::DIR);
    let mut state = if config.resume {
        let state = checkpoint::load_last(&ckpt_dir, config, &mut dp.primary_mut().vs, &mut opt)?;
        dp.broadcast();
        tracing::info!(epoch = state.epochs_done, "resumed");
        state
    } else {
        checkpoint::clear(&ckpt_dir)?;
        TrainState::new(config)
    };
    let metrics_path = config.out.join(METRICS_FILE);
    let mut metrics = state.metrics.clone();
    rewrite_metrics(&metrics_path, &metrics)?;

    let steps_per_epoch = n_train / config.batch_size;
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (total_steps as f64 * config.warmup_fraction) as usize;
    let fill = data.summary.value_range[0];
    let last_epoch = config
        .stop_after_epochs
        .map_or(config.epochs, |s| s.min(config.epochs));
    for epoch in state.epochs_done..last_epoch {
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(
            config.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)),
        );
        // Dropout draws from libtorch's generator: seed it per epoch so a resumed run matches.
        tch::manual_seed(config.seed as i64 + epoch as i64 + 1);
        let mut order: Vec<usize> = (0..n_train).collect();
        order.shuffle(&mut rng);
        // Counted in images, so the bar's rate reads as img/s.
        let bar = mlops_core::telemetry::progress(
            (steps_per_epoch * config.batch_size) as u64,
            &format!("epoch {}/{}", epoch + 1, config.epochs),
        );
        let (mut loss_sum, mut lr) = (0.0, 0.0);
        let mut batch = vec![0f32; config.batch_size * frame];
        for step in 0..steps_per_epoch {
            let idx = &order[step * config.batch_size..(step + 1) * config.batch_size];
            let labels: Vec<i64> = idx.iter().map(|&i| train_labels[i]).collect();
            for (row, &i) in idx.iter().enumerate() {
                let src = &train_pixels[i * frame..(i + 1) * frame];
                augment(
                    src,
                    &mut batch[row * frame..(row + 1) * frame],
                    h,
                    w,
                    config,
                    fill,
                    &mut rng,
                );
            }
            let xs = Tensor::from_slice(&batch).reshape([
                idx.len() as i64,
                input[0],
                input[1],
                input[2],
            ]);
            let ys = Tensor::from_slice(&labels);
            lr = lr_at(
                config.schedule,
                config.optimizer.lr(),
                epoch * steps_per_epoch + step,
                total_steps,
                warmup,
            );
            let loss = dp.step(&xs, &ys, TrainNet::loss, &mut opt, lr);
            if !loss.is_finite() {
                return Err(Error::Config(format!(
                    "training diverged at epoch {} step {step} (loss {loss}); lower the learning rate",
                    epoch + 1
                )));
            }
            loss_sum += loss;
            bar.inc(config.batch_size as u64);
            bar.set_message(format!(
                "epoch {}/{} loss {:.3}",
                epoch + 1,
                config.epochs,
                loss_sum / (step + 1) as f64
            ));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (knn, centre) = evaluate(
            &dp.primary().model,
            dp.primary().vs.device(),
            &val_images,
            &val_labels,
            config.val_k,
            n_classes,
        );
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_knn_accuracy: knn,
            val_centre_accuracy: centre,
            lr,
            images_per_second: (steps_per_epoch * config.batch_size) as f64 / train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch = m.epoch,
            loss = format!("{:.4}", m.train_loss),
            val_knn = format!("{:.4}", knn),
            val_centre = format!("{centre:.4}"),
            img_per_s = format!("{:.0}", m.images_per_second),
            "epoch done"
        );
        append_metrics(&metrics_path, &m)?;
        metrics.push(m);
        state.epochs_done = epoch + 1;
        state.metrics = metrics.clone();
        let improved = knn > state.best_val_accuracy || state.best_epoch == 0;
        if improved {
            state.best_val_accuracy = knn;
            state.best_epoch = epoch + 1;
        }
        checkpoint::save(&ckpt_dir, &dp.primary().vs, &opt, &state, improved)?;
    }
    if state.epochs_done < config.epochs {
        tracing::info!(
            epochs = state.epochs_done,
            "stopped before the last epoch; resume with --resume"
        );
        return Ok(outcome(false, &state));
    }

    // Export the best epoch's weights, traced on the CPU so the model loads anywhere.
    let mut export_vs = nn::VarStore::new(Device::Cpu);
    let mut export_net = TrainNet::new(&export_vs.root(), config, input, n_classes as i64);
    checkpoint::load_best(&ckpt_dir, &mut export_vs)?;
    let mut out = OutputDir::create(&config.out)?;
    let example = val_images.narrow(0, 0, val_y.len().min(256) as i64);
    let model_entry =
        export::trace_and_verify(&mut export_vs, &mut export_net.net, &example, &mut out)?;
    let model_config = ModelConfig {
        arch: config.arch,
        input_shape: [c, h, w],
        embedding_dim: config.embedding_dim,
        normalization: data.summary.normalization,
        value_range: data.summary.value_range,
        classes: data.summary.classes.clone(),
        arcface: config.arcface,
        epochs_trained: state.epochs_done,
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        torch_version: "2.13.0".to_string(),
        data_manifest_sha256: manifest.inputs[0].sha256.clone(),
    };
    manifest.outputs.push(model_entry);
    manifest
        .outputs
        .push(out.write_json(MODEL_CONFIG_FILE, &model_config)?);
    manifest
        .outputs
        .push(out.write_json(TRAIN_CONFIG_FILE, config)?);
    for name in [
        METRICS_FILE.to_string(),
        format!("{}/{}", checkpoint::DIR, checkpoint::LAST),
        format!("{}/{}", checkpoint::DIR, checkpoint::BEST),
        format!("{}/{}", checkpoint::DIR, checkpoint::STATE),
    ] {
        manifest.outputs.push(out.keep_in_place(&name)?);
    }
    manifest.summary = serde_json::json!({
        "arch": config.arch,
        "epochs": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_val_accuracy": state.best_val_accuracy,
        "devices": devices.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>(),
        "threads": threads,
        "final": metrics.last(),
    });
    out.commit(manifest)?;
    Ok(outcome(true, &state))
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

/// Copies `src` into `dst` shifted by up to `max_shift` pixels (filling with `fill`) and maybe
/// mirrored, all drawn from `rng` so the batch is reproducible.
fn augment(
    src: &[f32],
    dst: &mut [f32],
    h: usize,
    w: usize,
    config: &TrainConfig,
    fill: f32,
    rng: &mut ChaCha8Rng,
) {
    let s = config.augment.max_shift as i64;
    let (dy, dx) = if s > 0 {
        (rng.random_range(-s..=s), rng.random_range(-s..=s))
    } else {
        (0, 0)
    };
    let flip = config.augment.hflip && rng.random_bool(0.5);
    if dy == 0 && dx == 0 && !flip {
        dst.copy_from_slice(src);
        return;
    }
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
                fill
            };
        }
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
) -> (f64, f64) {
    let emb = embed(&model.net, device, images);
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
