//! Training-step throughput on one fixed batch: the stage's network, loss and optimizer with
//! nothing else (no data loading, augmentation, evaluation or checkpoints), so that it compares
//! like with like against a PyTorch eager loop doing the same (`cargo xtask bench --compare` on
//! the CPU, the GPU kit's check on a GPU).

use std::time::Instant;

use mlops_torch::Precision;
use tch::{nn, Device, Kind, Tensor};

use crate::{optim::Optimizer, Result, TrainConfig, TrainNet};

/// What [`step_throughput`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    /// Images trained on per second over the timed steps (steps times batch, over `seconds`).
    pub images_per_second: f64,
    /// Wall seconds of the timed steps (the warm-up excluded).
    pub seconds: f64,
}

/// Times `steps` training steps of `config`'s network on `device`, a random batch of `batch`
/// 28x28 images in 10 classes, after `warmup` untimed steps (cuDNN's algorithm search and
/// oneDNN's primitive cache fill there). Each step: zero the gradients, ArcFace loss with the
/// network under `precision`, backward, the optimizer's step at learning rate 0.01. The clock
/// stops only once the device has finished (a value is read back), so GPU work queued
/// asynchronously is counted.
pub fn step_throughput(
    config: &TrainConfig,
    device: Device,
    batch: i64,
    warmup: usize,
    steps: usize,
    precision: Precision,
) -> Result<StepTiming> {
    let precision = precision.resolve(device);
    mlops_torch::tune_allocator();
    let timing = mlops_torch::catch("the timed training steps", || {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let net = TrainNet::new(&vs.root(), config, [1, 28, 28], 10);
        let mut opt = Optimizer::new(config.optimizer.resolved(), vs.trainable_variables());
        let x = Tensor::rand([batch, 1, 28, 28], (Kind::Float, device));
        let y = Tensor::randint(10, [batch], (Kind::Int64, device));
        let mut step = || {
            opt.zero_grad();
            net.loss(&x, &y, precision, 0.0).backward();
            opt.step(0.01);
        };
        let finished = || {
            vs.trainable_variables()[0]
                .sum(Kind::Float)
                .double_value(&[])
        };
        for _ in 0..warmup {
            step();
        }
        finished();
        let started = Instant::now();
        for _ in 0..steps {
            step();
        }
        finished();
        let seconds = started.elapsed().as_secs_f64();
        StepTiming {
            images_per_second: (steps as i64 * batch) as f64 / seconds.max(1e-9),
            seconds,
        }
    })?;
    Ok(timing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    #[test]
    fn times_the_steps_it_was_asked_for() {
        let config = TrainConfig {
            arch: Arch::Seed,
            ..Default::default()
        };
        let t = step_throughput(&config, Device::Cpu, 8, 1, 2, Precision::Fp32).unwrap();
        assert!(t.seconds > 0.0 && t.images_per_second.is_finite());
        assert!((t.images_per_second * t.seconds - 16.0).abs() < 1e-6);
    }
}
