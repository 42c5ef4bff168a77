//! bf16 against fp32, side by side in one run (interleaved rounds, medians and spread):
//! training steps of the `res` and `seed` networks with the default SGD recipe, batch 128, and
//! inference of the exported `res` model, batch 256, on this machine's cores.
//!
//! `cargo bench -p mlops-benches --bench precision` (under `cargo test --benches` it runs one
//! short round to keep compiling and running).

use std::time::Instant;

use mlops_core::OutputDir;
use mlops_torch::Precision;
use mlops_train::{Arch, TrainConfig, TrainNet};
use tch::nn::ModuleT;
use tch::{nn, CModule, Device, Kind, Tensor};

fn train_rate(arch: Arch, precision: Precision, batch: i64, steps: usize) -> f64 {
    tch::manual_seed(0);
    let config = TrainConfig {
        arch,
        ..Default::default()
    };
    let config = TrainConfig {
        optimizer: config.optimizer.resolved(),
        ..config
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = TrainNet::new(&vs.root(), &config, [1, 28, 28], 10);
    let mut opt = mlops_train::optim::Optimizer::new(config.optimizer, vs.trainable_variables());
    let x = Tensor::rand([batch, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let mut step = || {
        opt.zero_grad();
        net.loss(&x, &y, precision, 0.0).backward();
        opt.step(0.05);
    };
    // oneDNN builds its bf16 kernels on first use: warm up well before timing.
    for _ in 0..10 {
        step();
    }
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    (steps as i64 * batch) as f64 / t.elapsed().as_secs_f64()
}

fn exported_res(dir: &std::path::Path) -> CModule {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut net = mlops_train::EmbeddingNet::new(&vs.root(), Arch::Res, [1, 28, 28], 128, 0.0);
    for _ in 0..3 {
        let _ = net.forward_t(&Tensor::rand([64, 1, 28, 28], tch::kind::FLOAT_CPU), true);
    }
    let mut out = OutputDir::create(dir).expect("output dir");
    let example = Tensor::rand([8, 1, 28, 28], tch::kind::FLOAT_CPU);
    mlops_train::export::trace_and_verify(&mut vs, &mut net, &example, false, &mut out)
        .expect("export");
    let module = CModule::load(out.staged_path("model.pt")).expect("load");
    drop(out);
    module
}

fn infer_rate(
    module: &CModule,
    images: &Tensor,
    precision: Precision,
    rounds: usize,
) -> (f64, Tensor) {
    let run = || {
        mlops_torch::autocast(precision, Device::Cpu, || {
            mlops_embed::embed_batches(module, images, 256, Device::Cpu).expect("embed")
        })
        .to_kind(Kind::Float)
    };
    let out = run();
    let t = Instant::now();
    for _ in 0..rounds {
        let _ = run();
    }
    let n = images.size()[0] as f64 * rounds as f64;
    (n / t.elapsed().as_secs_f64(), out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, steps) = if full { (5, 30) } else { (1, 2) };
    let threads = mlops_torch::set_threads(0);
    println!(
        "cpu: {}, threads {threads}, native bf16: {}",
        mlops_torch::cpu_model(),
        mlops_torch::cpu_has_bf16()
    );
    for arch in [Arch::Wide, Arch::Res, Arch::Seed] {
        let (mut fp32, mut bf16) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            fp32.push(train_rate(arch, Precision::Fp32, 128, steps));
            bf16.push(train_rate(arch, Precision::Bf16, 128, steps));
        }
        let spread = |v: &[f64]| {
            format!(
                "{:.0}-{:.0}",
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(0.0, f64::max)
            )
        };
        let (sf, sb) = (spread(&fp32), spread(&bf16));
        let (mf, mb) = (median(&mut fp32), median(&mut bf16));
        println!("train {arch:<4} batch 128: fp32 {mf:>6.0} img/s ({sf}), bf16 {mb:>6.0} img/s ({sb}), ratio {:.2}x", mb / mf);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = exported_res(tmp.path());
    let images = Tensor::rand(
        [if full { 5120 } else { 512 }, 1, 28, 28],
        tch::kind::FLOAT_CPU,
    );
    let (mut fp32, mut bf16) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (None, None);
    for _ in 0..rounds {
        let (r, e) = infer_rate(&module, &images, Precision::Fp32, if full { 3 } else { 1 });
        fp32.push(r);
        a = Some(e);
        let (r, e) = infer_rate(&module, &images, Precision::Bf16, if full { 3 } else { 1 });
        bf16.push(r);
        b = Some(e);
    }
    let (a, b) = (a.expect("ran"), b.expect("ran"));
    let b = &b / b.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
    let cosine = (&a * &b).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let min_cos = cosine.min().double_value(&[]);
    let (mf, mb) = (median(&mut fp32), median(&mut bf16));
    println!("embed res batch 256:   fp32 {mf:>6.0} img/s, bf16 {mb:>6.0} img/s, ratio {:.2}x, min cosine to fp32 {min_cos:.5}", mb / mf);
    assert!(min_cos > 0.99, "bf16 embeddings drifted: cosine {min_cos}");
}
