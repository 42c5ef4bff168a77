//! Training and inference throughput of each architecture on synthetic batches.
//! `cargo run --release -p mlops-train --example throughput -- [threads] [batch]`
use std::time::Instant;

use mlops_train::{Arch, TrainConfig, TrainNet};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let batch: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    tch::set_num_threads(threads);
    for arch in [Arch::Seed, Arch::Res] {
        // AdamW with dropout 0.1, as scripts/torch_eager_throughput.py does.
        let config = TrainConfig {
            arch,
            dropout: 0.1,
            optimizer: mlops_train::OptimizerConfig {
                kind: mlops_train::OptimizerKind::Adam,
                weight_decay: Some(5e-4),
                ..Default::default()
            },
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = TrainNet::new(&vs.root(), &config, [1, 28, 28], 10);
        let mut opt =
            mlops_train::optim::Optimizer::new(config.optimizer, vs.trainable_variables());
        let x = Tensor::rand([batch, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
        let steps = 30;
        for i in 0..steps + 5 {
            if i == 5 {
                let t = Instant::now();
                for _ in 0..steps {
                    opt.zero_grad();
                    net.head.loss(&net.net.forward_t(&x, true), &y).backward();
                    opt.step(1e-3);
                }
                let train = (steps as i64 * batch) as f64 / t.elapsed().as_secs_f64();
                let xe = Tensor::rand([512, 1, 28, 28], (Kind::Float, Device::Cpu));
                let infer = |net: &mlops_train::EmbeddingNet| {
                    tch::no_grad(|| {
                        let _ = net.forward_t(&xe, false);
                        let t = Instant::now();
                        for _ in 0..10 {
                            let _ = net.forward_t(&xe, false);
                        }
                        5120.0 / t.elapsed().as_secs_f64()
                    })
                };
                let plain = infer(&net.net);
                let mut net = net;
                net.net.fuse_batch_norm();
                let fused = infer(&net.net);
                println!("{arch}: train {train:.0} img/s, inference {plain:.0} img/s, with BN folded {fused:.0} img/s (threads {threads}, batch {batch})");
                break;
            }
            opt.zero_grad();
            net.head.loss(&net.net.forward_t(&x, true), &y).backward();
            opt.step(1e-3);
        }
    }
}
