//! Checkpoints: `last.safetensors` (weights + optimizer state) and `state.json` after every
//! epoch, `best.safetensors` (weights) whenever validation accuracy improves. Each file is
//! written to a temporary name and renamed; `state.json` goes last, so it only ever describes
//! complete weight files.
//!
//! [`policy`] decides what to write (a pure function of the progress so far and the epoch's
//! score); [`execute`] writes it.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::optim::Optimizer;
use mlops_core::artifact::model::EpochMetrics;

use crate::{Error, Result, TrainConfig};

pub const DIR: &str = "checkpoints";
pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
pub const STATE: &str = "state.json";

/// Progress of a run, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub metrics: Vec<EpochMetrics>,
    /// The settings that determine the result; a resume must use the same.
    pub fingerprint: serde_json::Value,
}

impl TrainState {
    pub fn new(config: &TrainConfig) -> Self {
        TrainState {
            epochs_done: 0,
            best_epoch: 0,
            best_val_accuracy: 0.0,
            metrics: Vec::new(),
            fingerprint: fingerprint(config),
        }
    }
}

impl TrainState {
    /// Records a finished epoch; `best` when its weights are the new best.
    pub fn record(&mut self, metrics: EpochMetrics, best: bool) {
        self.epochs_done = metrics.epoch;
        if best {
            self.best_epoch = metrics.epoch;
            self.best_val_accuracy = metrics.val_knn_accuracy;
        }
        self.metrics.push(metrics);
    }
}

/// A checkpoint file to write after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The weights, as `best.safetensors`: they are the best so far.
    SaveBest,
    /// Weights and optimizer state as `last.safetensors`, then `state.json`.
    SaveLast,
}

/// What to write after an epoch that scored `val_accuracy`, given the progress before it: the
/// last checkpoint always (so a resume loses at most the epoch in flight), and the best weights
/// when the score improved on every earlier epoch (the first epoch always does). Best before
/// last, so `state.json`, written last, never names best weights that are not on disk.
pub fn policy(state: &TrainState, val_accuracy: f64) -> Vec<Action> {
    if val_accuracy > state.best_val_accuracy || state.best_epoch == 0 {
        vec![Action::SaveBest, Action::SaveLast]
    } else {
        vec![Action::SaveLast]
    }
}

/// Writes what [`policy`] decided, in its order. With a moving average (`ema`), the best
/// weights are the average's, and the last checkpoint holds both.
pub fn execute(
    dir: &Path,
    actions: &[Action],
    vs: &nn::VarStore,
    ema: Option<&nn::VarStore>,
    opt: &Optimizer,
    state: &TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| mlops_core::Error::io(dir, e))?;
    let vars = named_vars(vs, MODEL);
    let ema_vars = ema.map(|e| named_vars(e, EMA));
    for action in actions {
        match action {
            Action::SaveBest => match &ema_vars {
                // Saved under the plain model names: export loads them as the model.
                Some(ev) => {
                    let renamed: Vec<(String, Tensor)> = ev
                        .iter()
                        .map(|(n, t)| (format!("{MODEL}{}", &n[EMA.len()..]), t.shallow_clone()))
                        .collect();
                    write_tensors(&dir.join(BEST), &renamed)?
                }
                None => write_tensors(&dir.join(BEST), &vars)?,
            },
            Action::SaveLast => {
                let mut all: Vec<(String, Tensor)> = vars
                    .iter()
                    .chain(ema_vars.iter().flatten())
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                all.extend(
                    opt.state()
                        .into_iter()
                        .map(|(n, t)| (n, t.to_device(Device::Cpu))),
                );
                write_tensors(&dir.join(LAST), &all)?;
                let text = serde_json::to_vec_pretty(state).expect("plain data");
                mlops_core::write_atomic(&dir.join(STATE), &text)?;
            }
        }
    }
    Ok(())
}

/// The config without the fields that may differ between an interrupted run and its resume.
fn fingerprint(config: &TrainConfig) -> serde_json::Value {
    let mut c = config.clone();
    c.resume = false;
    c.stop_after_epochs = None;
    c.threads = 0;
    c.device = mlops_torch::DeviceSpec::Auto;
    c.out = Default::default();
    // Export-only: flip averaging is built into model.pt after training, so a finished run can
    // be resumed to export again with or without it.
    c.test_time_flip = true;
    // Decides whether to check the flip, not how to train: the check's winning probe hands its
    // checkpoints to the run it decided (see trainer::flip_check).
    c.augment.flip_check_budget = 0;
    // Only chooses `epochs`, which the run resolved before this is computed.
    c.min_steps = 0;
    serde_json::to_value(c).expect("plain data")
}

/// Removes checkpoints of an earlier run (a fresh run must not resume from them by accident).
pub fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| mlops_core::Error::io(dir, e))?;
    }
    Ok(())
}

/// Name prefixes of the live weights and of their moving average in checkpoint files.
const MODEL: &str = "model.";
const EMA: &str = "ema.";

fn named_vars(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t.detach().to_device(Device::Cpu)))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = path.with_extension("tmp.safetensors");
    // safetensors holds row-major data; convolution weights and their optimizer state live
    // channels-last, so they are written as row-major copies (loading copies back in place).
    let tensors: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), t.contiguous()))
        .collect();
    Tensor::write_safetensors(&tensors, &tmp).map_err(mlops_torch::Error::from)?;
    std::fs::rename(&tmp, path).map_err(|e| mlops_core::Error::io(path, e))?;
    Ok(())
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let named = Tensor::read_safetensors(path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(named.into_iter().collect())
}

/// Copies the tensors named `prefix*` into `vs`, checking names and shapes.
fn load_vars(
    path: &Path,
    named: &HashMap<String, Tensor>,
    prefix: &str,
    vs: &mut nn::VarStore,
) -> Result<()> {
    let bad = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let vars = vs.variables();
    for (name, var) in &vars {
        let saved = named
            .get(&format!("{prefix}{name}"))
            .ok_or_else(|| bad(format!("missing tensor {name}")))?;
        if saved.size() != var.size() {
            return Err(bad(format!(
                "{name} has shape {:?}, the model needs {:?}",
                saved.size(),
                var.size()
            )));
        }
        let mut var = var.shallow_clone();
        tch::no_grad(|| {
            saved
                .f_to_device(var.device())
                .and_then(|t| var.f_copy_(&t))
        })
        .map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Reads a JSON file the checkpoint directory keeps (the training state, the flip check's
/// decision): a missing file says there is nothing to resume from, a malformed one names itself.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Checkpoint {
                path: path.to_path_buf(),
                message: "no checkpoint to resume from".into(),
            }
        } else {
            mlops_core::Error::io(path, e).into()
        }
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Restores weights (and their moving average, `ema`) and optimizer state of the last
/// checkpoint in `dir` for `config`.
pub fn load_last(
    dir: &Path,
    config: &TrainConfig,
    vs: &mut nn::VarStore,
    ema: Option<&mut nn::VarStore>,
    opt: &mut Optimizer,
) -> Result<TrainState> {
    let state_path = dir.join(STATE);
    let state: TrainState = read_json(&state_path)?;
    if state.fingerprint != fingerprint(config) {
        return Err(Error::Checkpoint {
            path: state_path,
            message: "it was made with other settings (architecture, data, seed, schedule...); resume with the same configuration or start over without --resume".into(),
        });
    }
    let last = dir.join(LAST);
    let named = read_tensors(&last)?;
    load_vars(&last, &named, MODEL, vs)?;
    if let Some(ema) = ema {
        load_vars(&last, &named, EMA, ema)?;
    }
    opt.load_state(&named)
        .map_err(|message| Error::Checkpoint {
            path: last,
            message,
        })?;
    Ok(state)
}

/// Loads the best weights in `dir` into `vs`.
pub fn load_best(dir: &Path, vs: &mut nn::VarStore) -> Result<()> {
    let best = dir.join(BEST);
    let named = read_tensors(&best)?;
    load_vars(&best, &named, MODEL, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: usize, acc: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 1.0,
            val_knn_accuracy: acc,
            val_centre_accuracy: acc,
            lr: 0.1,
            images_per_second: 1.0,
            seconds: 1.0,
        }
    }

    /// A finished run resumes to export again with or without flip averaging; a setting that
    /// changes training still refuses the resume.
    #[test]
    fn only_training_settings_fingerprint_a_run() {
        let base = TrainConfig::default();
        let no_flip = TrainConfig {
            test_time_flip: false,
            resume: true,
            ..base.clone()
        };
        assert_eq!(fingerprint(&base), fingerprint(&no_flip));
        let mut checked = base.clone();
        checked.augment.flip_check_budget = 300_000;
        assert_eq!(fingerprint(&base), fingerprint(&checked));
        let resolved = TrainConfig {
            epochs: Some(40),
            ..base.clone()
        };
        let stepped = TrainConfig {
            min_steps: 5,
            ..resolved.clone()
        };
        assert_eq!(fingerprint(&resolved), fingerprint(&stepped));
        let other = TrainConfig {
            epochs: Some(41),
            ..base.clone()
        };
        assert_ne!(fingerprint(&resolved), fingerprint(&other));
    }

    #[test]
    fn policy_saves_best_only_on_improvement() {
        let mut state = TrainState::new(&TrainConfig::default());
        // The first epoch is always the best so far, even at zero accuracy.
        assert_eq!(policy(&state, 0.0), [Action::SaveBest, Action::SaveLast]);
        for (epoch, acc, best) in [
            (1, 0.5, true),
            (2, 0.7, true),
            (3, 0.7, false),
            (4, 0.6, false),
        ] {
            let actions = policy(&state, acc);
            assert_eq!(actions.contains(&Action::SaveBest), best, "epoch {epoch}");
            assert_eq!(actions.last(), Some(&Action::SaveLast));
            state.record(metrics(epoch, acc), best);
        }
        assert_eq!((state.epochs_done, state.best_epoch), (4, 2));
        assert_eq!(state.best_val_accuracy, 0.7);
    }
}
