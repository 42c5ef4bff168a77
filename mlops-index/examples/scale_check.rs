//! Scale check: 1,000,000 synthetic 128-d unit vectors (clustered, like embeddings), an IVF
//! index against exact search: recall@10 and search speed-up, side by side in one run.
//!
//! `cargo run --release -p mlops-index --example scale_check -- [n] [queries] [factory] [nprobe]`
//! (defaults: 1000000 1000 IVF1024,Flat 16)
use std::time::Instant;

use faiss::Index;
use mlops_core::artifact::Metric;
use mlops_index::{build, recall_at_k, set_search_params};
use rand::{Rng, SeedableRng};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let factory = args.next().unwrap_or_else(|| "IVF1024,Flat".into());
    let nprobe: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let dim = 128;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // 1,000 cluster centres with noise: real embeddings are clustered, uniform noise is not.
    let centres: Vec<f32> = (0..1000 * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut make = |count: usize| {
        let mut v = Vec::with_capacity(count * dim);
        for _ in 0..count {
            let c = rng.random_range(0..1000);
            let row: Vec<f32> = (0..dim)
                .map(|j| centres[c * dim + j] + rng.random_range(-0.5f32..0.5))
                .collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.extend(row.iter().map(|x| x / norm));
        }
        v
    };
    let base = make(n);
    let q = make(queries);

    let t = Instant::now();
    let (mut exact, _) = build(dim, &base, "Flat", Metric::InnerProduct, 1, 0).expect("flat");
    let flat_build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut ivf, trained) =
        build(dim, &base, &factory, Metric::InnerProduct, 100_000, 0).expect("ivf");
    set_search_params(&mut ivf, Some(nprobe), None).expect("nprobe");
    let ivf_build = t.elapsed().as_secs_f64();

    let t = Instant::now();
    exact.search(&q, 10).expect("search");
    let flat_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    ivf.search(&q, 10).expect("search");
    let ivf_s = t.elapsed().as_secs_f64();
    let recall = recall_at_k(&mut ivf, &mut exact, &q, 10).expect("recall");
    println!("n = {n}, dim = {dim}, queries = {queries}, k = 10");
    println!(
        "Flat:          build {flat_build:.2} s, search {flat_s:.3} s ({:.0} q/s)",
        queries as f64 / flat_s
    );
    println!("{factory} nprobe {nprobe}: build {ivf_build:.2} s (trained on {trained}), search {ivf_s:.3} s ({:.0} q/s)", queries as f64 / ivf_s);
    println!("speed-up {:.1}x, recall@10 {recall:.4}", flat_s / ivf_s);
}
