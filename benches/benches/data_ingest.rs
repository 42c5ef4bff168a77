//! Data-stage throughput: full ingest (decode, split, dedup, write shards and manifest).
//!
//! Uses the real Fashion-MNIST (70,000 images) when `dataset-fashion-mnist` is installed, the
//! target being under 15 s on 2 cores; else a synthetic IDX set of the same shape and 10,000 images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mlops_data::fixtures::{self, IdxFixture};
use mlops_data::DataConfig;

fn source(tmp: &Path) -> (PathBuf, u64) {
    let fashion = Path::new("/usr/share/datasets/fashion-mnist");
    if fashion.join("train-images-idx3-ubyte.gz").exists() {
        return (fashion.to_path_buf(), 70_000);
    }
    let dir = tmp.join("synthetic");
    let fixture = IdxFixture {
        classes: 10,
        train_per_class: 860,
        test_per_class: 140,
        ..Default::default()
    };
    fixtures::write_idx(&dir, &fixture).expect("write fixture");
    (dir, 10_000)
}

fn ingest(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, images) = source(tmp.path());
    let config = DataConfig {
        sources: vec![src],
        out: tmp.path().join("out"),
        ..Default::default()
    };
    let mut group = c.benchmark_group("data_ingest");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(40));
    group.throughput(Throughput::Elements(images));
    group.bench_function("fashion_mnist_or_synthetic", |b| {
        b.iter(|| mlops_data::run(&config).expect("ingest"))
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
