//! `mlops-index`: build a FAISS index over the gallery embeddings of `mlops-embed`.
//!
//! Any `index_factory` string works (`Flat` by default; `IVF256,Flat`, `HNSW32`,
//! `IVF256,PQ16`, ...), with the inner-product metric on the normalised embeddings by default.
//! Indexes that need training are trained on a seeded sample of the gallery; shards are added
//! in order, so index id `i` is row `i` of the gallery and `labels.npy[i]` its label. The output
//! directory holds `index.faiss` (FAISS's own format: Python's `faiss.read_index` reads it),
//! `labels.npy`, `classes.json`, `config.json` and the manifest, whose summary records the
//! search parameters (nprobe, efSearch) and, for approximate indexes, recall@k against an
//! exact index on a sample of queries.
//!
//! ```
//! # let tmp = tempfile::tempdir()?;
//! # let embed = tmp.path().join("embed");
//! # mlops_core::testing::write_clusters(&embed, 32, 100, 10, &["gallery", "test"], 0.3, 1)?;
//! // `embed`: an embed-stage output directory.
//! let config = mlops_index::IndexConfig {
//!     embeddings: embed,
//!     out: tmp.path().join("index"),
//!     factory: "IVF16,Flat".into(),
//!     nprobe: Some(4),
//!     ..Default::default()
//! };
//! let summary = mlops_index::run(&config)?;
//! println!("{} vectors, recall@10 {:?}", summary.ntotal, summary.recall);
//! assert_eq!(summary.ntotal, 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod classifier;

use std::path::{Path, PathBuf};
use std::time::Instant;

use faiss::index::autotune::ParameterSpace;
use faiss::index::IndexImpl;
use faiss::{Index, MetricType};
use mlops_core::artifact::index::{Recall, GALLERY_IMAGES_FILE, INDEX_FILE, LABELS_FILE};
use mlops_core::artifact::model::CENTRES_FILE;
use mlops_core::artifact::{
    EmbeddingsDir, IndexDir, IndexSummary, Metric, CLASSES_FILE, CONFIG_FILE,
};
use mlops_core::{Manifest, OutputDir};
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Name of this stage in manifests.
pub const STAGE: &str = <IndexSummary as mlops_core::artifact::StageSummary>::STAGE;

/// Errors of the index stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the embeddings or the index directory, or writing the output, failed (I/O,
    /// `.npy`, JSON, checksums, non-finite embeddings, shapes that disagree with a manifest).
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// A FAISS call failed: an invalid factory string, too few vectors to train on, a search
    /// parameter the index type lacks, an unreadable index file.
    #[error("faiss: {context}: {source}")]
    Faiss {
        /// What was being done.
        context: String,
        /// FAISS's error.
        #[source]
        source: faiss::error::Error,
    },
    /// A search through FAISS's C API failed (its exception's message).
    #[error("faiss: search: {0}")]
    Search(String),
    /// `recall_k` or `train_size` is 0.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use classifier::{Classifier, Neighbours, Prediction};
pub use mlops_core::artifact::{ClassifierSpec, Vote};

pub(crate) fn faiss_err(context: impl Into<String>) -> impl FnOnce(faiss::error::Error) -> Error {
    let context = context.into();
    move |source| Error::Faiss { context, source }
}

fn faiss_metric(metric: Metric) -> MetricType {
    match metric {
        Metric::InnerProduct => MetricType::InnerProduct,
        Metric::L2 => MetricType::L2,
    }
}

/// Configuration of the index stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Output directory of `mlops-embed`.
    pub embeddings: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// The role whose embeddings are indexed.
    pub role: String,
    /// A FAISS `index_factory` description.
    pub factory: String,
    /// Similarity to search by: inner product (cosine on the normalised embeddings) or L2.
    pub metric: Metric,
    /// Most vectors sampled to train indexes that need training.
    pub train_size: usize,
    /// IVF: inverted lists visited per query.
    pub nprobe: Option<usize>,
    /// HNSW: candidate list size at search time.
    pub ef_search: Option<usize>,
    /// Queries sampled for recall@k against an exact index (approximate indexes only; 0 = skip).
    pub recall_queries: usize,
    /// Neighbours compared per query for recall@k (capped at the index size).
    pub recall_k: usize,
    /// Seed of the sample the index is trained on.
    pub seed: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            embeddings: PathBuf::from("embed"),
            out: PathBuf::from("index"),
            role: "gallery".into(),
            factory: "Flat".into(),
            metric: Metric::InnerProduct,
            train_size: 100_000,
            nprobe: None,
            ef_search: None,
            recall_queries: 1000,
            recall_k: 10,
            seed: 42,
        }
    }
}

/// Builds an index over `vectors` (`n x dim`, row-major): trains it on a seeded sample of at
/// most `train_size` rows when the type needs it, then adds the rows in order.
///
/// Graph indexes (HNSW, NSG) are built on one thread: FAISS links their vertices in parallel in
/// whatever order the threads reach them, which gave a different graph, and different
/// neighbours for some queries, on every run.
pub fn build(
    dim: usize,
    vectors: &[f32],
    factory: &str,
    metric: Metric,
    train_size: usize,
    seed: u64,
) -> Result<(IndexImpl, usize)> {
    let mut index =
        faiss::index_factory(dim as u32, factory, faiss_metric(metric)).map_err(faiss_err(
            format!("unknown or invalid index factory string {factory:?}"),
        ))?;
    let n = vectors.len() / dim.max(1);
    let mut trained_on = 0;
    if !index.is_trained() {
        let take = train_size.min(n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut rows: Vec<usize> = sample(&mut rng, n, take).into_vec();
        rows.sort_unstable();
        let mut sample_vectors = Vec::with_capacity(take * dim);
        for r in rows {
            sample_vectors.extend_from_slice(&vectors[r * dim..(r + 1) * dim]);
        }
        index.train(&sample_vectors).map_err(faiss_err(format!(
            "training {factory:?} on {take} vectors (too few for its lists or codes?)"
        )))?;
        trained_on = take;
    }
    let graph = ["HNSW", "NSG"]
        .iter()
        .any(|g| factory.to_ascii_uppercase().contains(g));
    let _one_thread = graph.then(OneOmpThread::new);
    index.add(vectors).map_err(faiss_err("adding vectors"))?;
    Ok((index, trained_on))
}

// FAISS's OpenMP runtime, which the static `faiss-sys` build already links (libgomp).
extern "C" {
    fn omp_get_max_threads() -> std::os::raw::c_int;
    fn omp_set_num_threads(n: std::os::raw::c_int);
}

/// Runs FAISS's OpenMP loops on the calling thread alone until dropped (OpenMP's thread count
/// is a per-thread setting, so other threads are unaffected).
struct OneOmpThread(std::os::raw::c_int);

impl OneOmpThread {
    fn new() -> Self {
        // SAFETY: plain OpenMP runtime calls without pointers.
        let before = unsafe { omp_get_max_threads() };
        unsafe { omp_set_num_threads(1) };
        OneOmpThread(before)
    }
}

impl Drop for OneOmpThread {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { omp_set_num_threads(self.0) };
    }
}

/// Applies search-time parameters (`nprobe`, `efSearch`) that the index type understands.
pub fn set_search_params(
    index: &mut IndexImpl,
    nprobe: Option<usize>,
    ef_search: Option<usize>,
) -> Result<()> {
    let space = ParameterSpace::new().map_err(faiss_err("parameter space"))?;
    if let Some(n) = nprobe {
        space
            .set_index_parameter(index, "nprobe", n as f64)
            .map_err(faiss_err("nprobe applies to IVF indexes only"))?;
    }
    if let Some(ef) = ef_search {
        space
            .set_index_parameter(index, "efSearch", ef as f64)
            .map_err(faiss_err("efSearch applies to HNSW indexes only"))?;
    }
    Ok(())
}

/// Mean recall@k of `index` against exact search for `queries` (`m x dim`).
pub fn recall_at_k(
    index: &mut IndexImpl,
    exact: &mut IndexImpl,
    queries: &[f32],
    k: usize,
) -> Result<f64> {
    let approx = index.search(queries, k).map_err(faiss_err("search"))?;
    let truth = exact
        .search(queries, k)
        .map_err(faiss_err("exact search"))?;
    let m = queries.len() / index.d() as usize;
    let mut hits = 0usize;
    for q in 0..m {
        let want: Vec<_> = truth.labels[q * k..(q + 1) * k]
            .iter()
            .filter_map(|l| l.get())
            .collect();
        hits += approx.labels[q * k..(q + 1) * k]
            .iter()
            .filter_map(|l| l.get())
            .filter(|l| want.contains(l))
            .count();
    }
    Ok(hits as f64 / (m * k).max(1) as f64)
}

/// Runs the index stage (see the crate docs).
pub fn run(config: &IndexConfig) -> Result<IndexSummary> {
    if config.recall_k == 0 || config.train_size == 0 {
        return Err(Error::Config(
            "recall_k and train_size must be at least 1".into(),
        ));
    }
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let emb = EmbeddingsDir::open(&config.embeddings)?;
    let (vectors, labels) = emb.read_role(&config.role)?;
    let approximate = config.factory.trim() != "Flat" && config.recall_queries > 0;
    // Recall is measured on test queries when the embed stage wrote them, else on the gallery.
    let test_queries = approximate && emb.has_role("test");
    let roles: &[&str] = if test_queries {
        &[&config.role, "test"]
    } else {
        &[&config.role]
    };
    manifest.inputs = emb.role_input_entries(roles)?;
    if let Some(bad) = vectors.iter().position(|v| !v.is_finite()) {
        return Err(mlops_core::Error::invalid(
            &config.embeddings,
            format!(
                "non-finite value in {} embeddings at flat position {bad}",
                config.role
            ),
        )
        .into());
    }
    let dim = emb.summary.dim;
    let flat = vectors
        .as_slice()
        .expect("read_role builds a standard array");
    let started = Instant::now();
    let (mut index, trained_on) = build(
        dim,
        flat,
        &config.factory,
        config.metric,
        config.train_size,
        config.seed,
    )?;
    set_search_params(&mut index, config.nprobe, config.ef_search)?;
    let build_seconds = started.elapsed().as_secs_f64();
    tracing::info!(factory = %config.factory, ntotal = index.ntotal(), dim, build_seconds, "built index");

    let recall = if approximate {
        // A test role that is there but unreadable is an error, not a silent fallback.
        let test = if test_queries {
            Some(emb.read_role("test")?.0)
        } else {
            None
        };
        let queries = test.as_ref().unwrap_or(&vectors);
        Some(measure_recall(config, &mut index, flat, dim, queries)?)
    } else {
        None
    };

    let mut out = OutputDir::create(&config.out)?;
    write_classifier(&mut out, &mut manifest, &index, &labels, &emb, &config.role)?;
    manifest.outputs.push(out.write_json(CONFIG_FILE, config)?);
    let summary = IndexSummary {
        factory: config.factory.clone(),
        metric: config.metric,
        dim,
        ntotal: index.ntotal() as usize,
        classes: emb.summary.classes.clone(),
        nprobe: config.nprobe,
        ef_search: config.ef_search,
        trained_on,
        recall,
        build_seconds,
    };
    manifest.summary = serde_json::to_value(&summary).expect("plain data");
    out.commit(manifest)?;
    Ok(summary)
}

/// Writes what the classifier loads: the index, its labels and classes, the gallery's images
/// and the class centres when there are some.
fn write_classifier(
    out: &mut OutputDir,
    manifest: &mut Manifest,
    index: &IndexImpl,
    labels: &ndarray::Array1<i64>,
    emb: &EmbeddingsDir,
    role: &str,
) -> Result<()> {
    let index_path = out.staged_path(INDEX_FILE);
    faiss::write_index(index, index_path.to_string_lossy().as_ref())
        .map_err(faiss_err(format!("writing {}", index_path.display())))?;
    manifest.outputs.push(out.adopt(INDEX_FILE)?);
    manifest.outputs.push(out.write_npy(LABELS_FILE, labels)?);
    manifest
        .outputs
        .push(out.write_json(CLASSES_FILE, &emb.summary.classes)?);
    if let Some((images, data_manifest)) = gallery_images(emb, role, labels.len())? {
        manifest.inputs.push(data_manifest);
        manifest
            .outputs
            .push(out.write_npy(GALLERY_IMAGES_FILE, &images)?);
    }
    // The class centres travel with the index: index + labels + centres are the classifier.
    if let Some((input, output)) = emb.carry(CENTRES_FILE, out)? {
        manifest.inputs.push(input);
        manifest.outputs.push(output);
    }
    Ok(())
}

/// Recall@k of `index` against exact search over the same vectors, on the first
/// `config.recall_queries` of `queries`.
fn measure_recall(
    config: &IndexConfig,
    index: &mut IndexImpl,
    flat: &[f32],
    dim: usize,
    queries: &ndarray::Array2<f32>,
) -> Result<Recall> {
    let (mut exact, _) = build(dim, flat, "Flat", config.metric, 1, config.seed)?;
    let m = config.recall_queries.min(queries.nrows());
    let q = &queries.as_slice().expect("standard layout")[..m * dim];
    let k = config.recall_k.min(index.ntotal() as usize);
    let r = recall_at_k(index, &mut exact, q, k)?;
    tracing::info!(k, queries = m, recall = r, "recall against exact search");
    Ok(Recall {
        k,
        queries: m,
        recall_at_k: r,
    })
}

/// The images of the indexed role as 0-255 bytes aligned with the index ids (the embed stage
/// embedded the data stage's role in order), with the data manifest they come from; `None`,
/// logged, when the data directory the embed stage read is gone or does not match.
fn gallery_images(
    emb: &EmbeddingsDir,
    role: &str,
    n: usize,
) -> Result<Option<(ndarray::Array4<u8>, mlops_core::FileEntry)>> {
    let skip = |why: String| {
        tracing::info!("no gallery images beside the index: {why}");
        Ok(None)
    };
    let Some(data_path) = emb.manifest.parameters["data"].as_str().map(PathBuf::from) else {
        return skip("the embed manifest names no data directory".into());
    };
    let Ok(role) = role.parse::<mlops_core::artifact::Role>() else {
        return skip(format!("{role} is not a data role"));
    };
    let data = match mlops_core::artifact::DataDir::open(&data_path) {
        Ok(d) => d,
        Err(e) => return skip(e.to_string()),
    };
    let (images, _) = data.read_role(role)?;
    if images.shape()[0] != n {
        return skip(format!(
            "{} has {} {role} images, the index {n} vectors",
            data_path.display(),
            images.shape()[0]
        ));
    }
    let [lo, hi] = data.summary.value_range;
    let scale = 255.0 / (hi - lo).max(f32::EPSILON);
    let bytes = images.mapv(|v| ((v - lo) * scale).round().clamp(0.0, 255.0) as u8);
    let entry = mlops_core::FileEntry::input_file(&data.dir.join(mlops_core::MANIFEST_FILE))?;
    Ok(Some((bytes, entry)))
}

/// A finished index-stage output, loaded for searching.
pub struct LoadedIndex {
    /// The FAISS index, with the recorded `nprobe` / `efSearch` applied.
    pub index: IndexImpl,
    /// The class of each index id.
    pub labels: ndarray::Array1<i64>,
    /// The model's ArcFace class centres (`[classes, dim]`), when it exported them.
    pub centres: Option<ndarray::Array2<f32>>,
    /// The index directory it was loaded from, with its manifest and summary.
    pub dir: IndexDir,
}

impl LoadedIndex {
    /// What the index stage recorded about the index.
    pub fn summary(&self) -> &IndexSummary {
        &self.dir.summary
    }

    /// The `k` nearest indexed vectors of each query (`queries` is `[m, dim]` row-major):
    /// `m * k` distances and ids, padded with -1 ids where the index holds fewer than `k`.
    ///
    /// Takes `&self`, so several threads may search one index at once (the server's inference
    /// workers share their version's index rather than hold a copy each). FAISS documents its
    /// CPU indexes as safe for concurrent searches, which do not change the index; the `faiss`
    /// crate offers that (`ConcurrentIndex`) for a few concrete index types only, not for the
    /// [`IndexImpl`] that `read_index` returns, hence the call through the C API here.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<faiss::index::SearchResult> {
        let dim = self.summary().dim;
        if dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(Error::Search(format!(
                "{} query values are not whole vectors of dimension {dim}",
                queries.len()
            )));
        }
        let m = queries.len() / dim;
        let mut distances = vec![0f32; m * k];
        let mut labels = vec![faiss::Idx::none(); m * k];
        // SAFETY: the pointer is the live index `self` owns and the shared borrow keeps it from
        // being changed meanwhile; the buffers hold `m * dim` queries and `m * k` results, and
        // `Idx` is a transparent `i64` (FAISS's `idx_t`).
        let code = unsafe {
            faiss_sys::faiss_Index_search(
                self.index.inner_ptr(),
                m as faiss_sys::idx_t,
                queries.as_ptr(),
                k as faiss_sys::idx_t,
                distances.as_mut_ptr(),
                labels.as_mut_ptr().cast(),
            )
        };
        if code != 0 {
            // SAFETY: after a failed call FAISS's C API keeps the exception's message for the
            // calling thread until its next call.
            let message = unsafe {
                let text = faiss_sys::faiss_get_last_error();
                if text.is_null() {
                    format!("error code {code}")
                } else {
                    std::ffi::CStr::from_ptr(text)
                        .to_string_lossy()
                        .into_owned()
                }
            };
            return Err(Error::Search(message));
        }
        Ok(faiss::index::SearchResult { distances, labels })
    }
}

/// Loads `index.faiss` and `labels.npy` from an index-stage directory (checksums verified),
/// with the recorded search parameters applied.
pub fn load(dir: &Path) -> Result<LoadedIndex> {
    load_dir(IndexDir::open(dir)?)
}

/// [`load`] for an index directory already opened.
pub fn load_dir(dir: IndexDir) -> Result<LoadedIndex> {
    let path = dir.index_path()?;
    let summary = &dir.summary;
    let mut index = faiss::read_index(path.to_string_lossy().as_ref()).map_err(faiss_err(
        format!("{}: corrupt or unreadable index", path.display()),
    ))?;
    if index.d() as usize != summary.dim || index.ntotal() as usize != summary.ntotal {
        return Err(mlops_core::Error::invalid(
            &path,
            format!(
                "index has dimension {} and {} vectors, the manifest says {} and {}",
                index.d(),
                index.ntotal(),
                summary.dim,
                summary.ntotal
            ),
        )
        .into());
    }
    set_search_params(&mut index, summary.nprobe, summary.ef_search)?;
    let labels = dir.labels()?;
    let centres = match dir.verified_if_listed(CENTRES_FILE)? {
        Some(path) => {
            let c: ndarray::Array2<f32> = mlops_core::npy::read(&path)?;
            if c.ncols() != summary.dim || c.nrows() != summary.classes.len() {
                return Err(mlops_core::Error::invalid(
                    dir.dir.join(CENTRES_FILE),
                    format!(
                        "centres of shape {:?} for {} classes of dimension {}",
                        c.shape(),
                        summary.classes.len(),
                        summary.dim
                    ),
                )
                .into());
            }
            Some(c)
        }
        None => None,
    };
    Ok(LoadedIndex {
        index,
        labels,
        centres,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        use rand::Rng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for row in v.chunks_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn flat_finds_each_vector_itself() {
        let v = unit_vectors(200, 16, 1);
        let (mut index, trained) = build(16, &v, "Flat", Metric::InnerProduct, 100, 0).unwrap();
        assert_eq!(trained, 0);
        let r = index.search(&v[..16 * 5], 1).unwrap();
        let ids: Vec<u64> = r.labels.iter().map(|l| l.get().unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn approximate_types_build_and_recall() {
        let v = unit_vectors(2000, 16, 2);
        let (mut exact, _) = build(16, &v, "Flat", Metric::InnerProduct, 1, 0).unwrap();
        for (factory, nprobe, ef) in [
            ("IVF16,Flat", Some(16), None),
            ("HNSW32", None, Some(64)),
            ("IVF16,PQ4", Some(16), None),
        ] {
            let (mut index, trained) =
                build(16, &v, factory, Metric::InnerProduct, 1000, 0).unwrap();
            set_search_params(&mut index, nprobe, ef).unwrap();
            assert_eq!(index.ntotal(), 2000, "{factory}");
            let r = recall_at_k(&mut index, &mut exact, &v[..16 * 50], 10).unwrap();
            let floor = if factory.contains("PQ") { 0.2 } else { 0.9 };
            assert!(r >= floor, "{factory}: recall {r}, trained on {trained}");
        }
    }

    #[test]
    fn unknown_factory_is_an_error() {
        let err = build(8, &[0.0; 8], "NoSuchIndex", Metric::L2, 1, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("NoSuchIndex"), "{err}");
    }
}
