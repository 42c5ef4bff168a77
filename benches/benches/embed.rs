//! Embedding throughput of the exported default (`wide`, with and without flip test-time
//! augmentation), the distilled student `slim` (without), `res` and `seed` models, through `mlops_embed::embed_batches` as the embed
//! stage runs them: TorchScript, eval mode, batch-norm folded, batches of 64 (its default), one thread per
//! core, in the default precision (`auto`: bf16 where the CPU has it natively). Target:
//! >= 3,000 img/s on 2 cores for the default model.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlops_core::OutputDir;
use mlops_train::{Arch, EmbeddingNet};
use tch::nn::ModuleT;
use tch::{nn, CModule, Device, Kind, Tensor};

fn export(arch: Arch, flip: bool, dir: &std::path::Path) -> CModule {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut net = EmbeddingNet::new(&vs.root(), arch, [1, 28, 28], 128, 0.1);
    // Non-trivial batch-norm statistics, as after training.
    for _ in 0..3 {
        let _ = net.forward_t(
            &Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu)),
            true,
        );
    }
    let mut out = OutputDir::create(dir).expect("output dir");
    let example = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    mlops_train::export::trace_and_verify(&mut vs, &mut net, &example, flip, &mut out)
        .expect("export");
    let module =
        CModule::load(out.staged_path(mlops_core::artifact::model::MODEL_FILE)).expect("load");
    drop(out);
    module
}

fn embed(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads(threads as i32);
    let images = Tensor::rand([5000, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mut group = c.benchmark_group("embed");
    group.sample_size(10);
    group.throughput(Throughput::Elements(5000));
    let precision = mlops_torch::Precision::Auto.resolve(Device::Cpu);
    for (arch, flip) in [
        (Arch::Wide, true),
        (Arch::Wide, false),
        (Arch::Slim, false),
        (Arch::Res, false),
        (Arch::Seed, false),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let module = export(arch, flip, tmp.path());
        let name = if flip { "_flip" } else { "" };
        group.bench_function(
            format!("{arch}{name}_{precision}_5000_images_batch_64"),
            |b| {
                b.iter(|| {
                    mlops_torch::autocast(precision, Device::Cpu, || {
                        mlops_embed::embed_batches(&module, &images, 64, Device::Cpu)
                    })
                    .expect("embed")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
