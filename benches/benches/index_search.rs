//! Index build and 10,000 searches (k = 10) over the Fashion-MNIST gallery embeddings of
//! `runs/default/embed`, for Flat and IVF64,Flat (nprobe 8). A benchmark run without that
//! directory fails (run `cargo xtask pipeline` first); only the test-mode pass of
//! `cargo test --benches`, which checks that the benchmark runs, uses 12,000 synthetic
//! clustered vectors instead, and says so. Python's faiss-cpu on the same vectors, interleaved
//! and thread-pinned: `cargo xtask bench --compare --parts search`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use faiss::Index;
use mlops_core::artifact::{EmbeddingsDir, Metric};
use mlops_core::testing::write_clusters;
use mlops_index::{build, set_search_params};

fn vectors(tmp: &std::path::Path) -> (usize, Vec<f32>, Vec<f32>) {
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runs/default/embed");
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let dir = if EmbeddingsDir::open(&real).is_ok() {
        real
    } else if benchmarking {
        panic!(
            "{}: no finished embed stage; run `cargo xtask pipeline` first",
            real.display()
        );
    } else {
        eprintln!(
            "index_search (test mode): synthetic vectors, {} is missing",
            real.display()
        );
        let dir = tmp.join("embed");
        write_clusters(&dir, 128, 1200, 10, &["gallery", "test"], 0.5, 1).expect("fixture");
        dir
    };
    let emb = EmbeddingsDir::open(&dir).expect("embeddings");
    let (gallery, _) = emb.read_role("gallery").expect("gallery");
    let (test, _) = emb.read_role("test").expect("test");
    let mut queries = test.as_slice().expect("standard").to_vec();
    let dim = emb.summary.dim;
    queries.truncate(10_000 * dim);
    while queries.len() < 10_000 * dim {
        let extra = queries[..(10_000 * dim - queries.len()).min(queries.len())].to_vec();
        queries.extend(extra);
    }
    (dim, gallery.as_slice().expect("standard").to_vec(), queries)
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dim, gallery, queries) = vectors(tmp.path());
    let mut group = c.benchmark_group("index");
    group.sample_size(10);
    for (factory, nprobe) in [("Flat", None), ("IVF64,Flat", Some(8))] {
        group.throughput(Throughput::Elements((gallery.len() / dim) as u64));
        group.bench_function(format!("build_{factory}"), |b| {
            b.iter(|| {
                build(dim, &gallery, factory, Metric::InnerProduct, 100_000, 0).expect("build")
            })
        });
        let (mut index, _) =
            build(dim, &gallery, factory, Metric::InnerProduct, 100_000, 0).expect("build");
        set_search_params(&mut index, nprobe, None).expect("params");
        group.throughput(Throughput::Elements(10_000));
        group.bench_function(format!("search_10000_k10_{factory}"), |b| {
            b.iter(|| index.search(&queries, 10).expect("search"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
