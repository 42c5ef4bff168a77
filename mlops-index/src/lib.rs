//! `mlops-index`: FAISS index over gallery embeddings (work in progress).
//!
//! Today this crate links the statically built FAISS and offers one helper, so that CI builds
//! and exercises the native stack from the first day. Index building lands with its issue.
//!
//! ```
//! let nearest = mlops_index::flat_ip_nearest(2, &[1.0, 0.0, 0.0, 1.0], &[0.1, 0.9]).unwrap();
//! assert_eq!(nearest, vec![1]);
//! ```

use faiss::Index;

/// Nearest base vector (by inner product) for each query, with an exact `IndexFlatIP`.
pub fn flat_ip_nearest(dim: u32, base: &[f32], queries: &[f32]) -> faiss::error::Result<Vec<u64>> {
    let mut index = faiss::index_factory(dim, "Flat", faiss::MetricType::InnerProduct)?;
    index.add(base)?;
    let result = index.search(queries, 1)?;
    Ok(result
        .labels
        .iter()
        .map(|l| l.get().unwrap_or(u64::MAX))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn faiss_searches() {
        let base = [1.0, 0.0, 0.0, 1.0, 0.7, 0.7];
        let got = super::flat_ip_nearest(2, &base, &[0.0, 1.0, 1.0, 0.1, 0.6, 0.65]).unwrap();
        assert_eq!(got, vec![1, 0, 2]);
    }
}
