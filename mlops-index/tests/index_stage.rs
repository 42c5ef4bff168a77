//! Integration tests of the index stage on a synthetic embed-stage directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use mlops_core::Manifest;
use mlops_index::IndexConfig;
use ndarray::{Array1, Array2};

/// A synthetic embed-stage directory with gallery and test roles.
fn embed_dir(root: &Path, dim: usize, per_class: usize, classes: usize) -> Result<PathBuf> {
    let dir = root.join("embed");
    mlops_core::testing::write_clusters(
        &dir,
        dim,
        per_class,
        classes,
        &["gallery", "test"],
        0.4,
        5,
    )?;
    Ok(dir)
}

#[test]
fn flat_and_ivf_indexes_are_written_and_reloaded() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let emb = embed_dir(tmp.path(), 32, 100, 4)?;
    for (factory, nprobe) in [("Flat", None), ("IVF8,Flat", Some(4))] {
        let out = tmp.path().join(factory.replace(',', "_"));
        let summary = mlops_index::run(&IndexConfig {
            embeddings: emb.clone(),
            out: out.clone(),
            factory: factory.into(),
            nprobe,
            ..Default::default()
        })?;
        assert_eq!(summary.ntotal, 400);
        assert_eq!(summary.recall.is_some(), factory != "Flat");
        if let Some(r) = &summary.recall {
            assert!(r.recall_at_k > 0.8, "{r:?}");
        }
        let manifest = Manifest::load_stage(&out, "index")?;
        manifest.verify_outputs(&out)?;
        // The test shards are inputs exactly when they served as recall queries.
        let reads_test = manifest
            .inputs
            .iter()
            .any(|e| e.path.ends_with("test_embeddings_000.npy"));
        assert_eq!(reads_test, factory != "Flat", "{factory}");
        let mut loaded = mlops_index::load(&out)?;
        assert_eq!(loaded.labels.len(), 400);
        // Id i is gallery row i: searching row 7 finds id 7 with its label.
        let (gallery, labels) =
            mlops_core::artifact::EmbeddingsDir::open(&emb)?.read_role("gallery")?;
        use faiss::Index;
        let hit = loaded.index.search(gallery.row(7).as_slice().unwrap(), 1)?;
        let id = hit.labels[0].get().unwrap() as usize;
        assert_eq!(id, 7);
        assert_eq!(loaded.labels[id], labels[7]);
        python_faiss_reads(&out, 400)?;
    }

    // A tampered test role fails the recall measurement instead of being skipped silently.
    std::fs::write(emb.join("test_embeddings_000.npy"), b"junk")?;
    let err = mlops_index::run(&IndexConfig {
        embeddings: emb.clone(),
        out: tmp.path().join("tampered"),
        factory: "IVF8,Flat".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("test_embeddings_000.npy"), "{err}");
    Ok(())
}

#[test]
fn hnsw_builds_the_same_index_every_run_and_serves_concurrent_searches() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let emb = embed_dir(tmp.path(), 32, 600, 5)?;
    let build = |name: &str| -> Result<PathBuf> {
        let out = tmp.path().join(name);
        mlops_index::run(&IndexConfig {
            embeddings: emb.clone(),
            out: out.clone(),
            factory: "HNSW16".into(),
            ef_search: Some(32),
            ..Default::default()
        })?;
        Ok(out)
    };
    // FAISS links HNSW vertices from every OpenMP thread at once; the stage must not let the
    // threads' order shape the graph.
    let (one, two) = (build("one")?, build("two")?);
    assert_eq!(
        mlops_core::sha256_file(&one.join("index.faiss"))?,
        mlops_core::sha256_file(&two.join("index.faiss"))?,
        "two HNSW builds of one gallery differ"
    );

    // Four threads searching one loaded index at once get what one search at a time gets.
    let index = mlops_index::load(&one)?;
    let (gallery, _) = mlops_core::artifact::EmbeddingsDir::open(&emb)?.read_role("gallery")?;
    let queries = gallery.as_slice().unwrap();
    let alone = index.search(queries, 5)?;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| s.spawn(|| index.search(queries, 5)))
            .collect();
        for t in threads {
            let r = t.join().expect("a search thread panicked").expect("search");
            assert_eq!(r.distances, alone.distances);
            assert_eq!(
                r.labels.iter().map(|l| l.get()).collect::<Vec<_>>(),
                alone.labels.iter().map(|l| l.get()).collect::<Vec<_>>()
            );
        }
    });
    // Queries that are not whole vectors are refused, not read past.
    let err = index.search(&queries[..31], 5).unwrap_err().to_string();
    assert!(err.contains("not whole vectors of dimension 32"), "{err}");
    Ok(())
}

/// Python's faiss (from the set-up venv) reads our index file.
fn python_faiss_reads(dir: &Path, ntotal: usize) -> Result<()> {
    let Some(python) = mlops_core::testing::python() else {
        return Ok(());
    };
    let script = "import sys, faiss; i = faiss.read_index(sys.argv[1]); print(i.ntotal, i.d)";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(dir.join("index.faiss"))
        .output()?;
    assert!(
        out.status.success(),
        "python faiss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{ntotal} 32")
    );
    Ok(())
}

fn assert_fails(emb: &Path, extra: &[&str], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut args = vec![
        std::ffi::OsStr::new("--embeddings"),
        emb.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let result = mlops_core::testing::run_stage(env!("CARGO_BIN_EXE_mlops-index"), args);
    mlops_core::testing::assert_failed_cleanly(&result, &out, &[expect]);
}

#[test]
fn bad_inputs_fail_cleanly() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let emb = embed_dir(tmp.path(), 16, 20, 3)?;
    assert_fails(&emb, &["--factory", "NoSuchThing99"], "NoSuchThing99");
    assert_fails(&emb, &["--factory", "IVF4096,Flat"], "training");
    assert_fails(&tmp.path().join("missing"), &[], "no manifest");

    // Labels not aligned with embeddings (the manifest rehashed, as a buggy producer would).
    let labels = emb.join("gallery_labels_000.npy");
    ndarray_npy::write_npy(&labels, &Array1::<i64>::zeros(59))?;
    let mut m = Manifest::load(&emb)?;
    for e in m
        .outputs
        .iter_mut()
        .filter(|e| e.path == "gallery_labels_000.npy")
    {
        e.sha256 = mlops_core::sha256_file(&labels)?;
    }
    std::fs::write(emb.join("manifest.json"), serde_json::to_vec(&m)?)?;
    assert_fails(&emb, &[], "not aligned");

    // Embeddings of another dimension than the manifest says.
    let emb2 = embed_dir(&tmp.path().join("b"), 16, 20, 3)?;
    let e = emb2.join("gallery_embeddings_000.npy");
    ndarray_npy::write_npy(&e, &Array2::<f32>::zeros((60, 8)))?;
    let mut m = Manifest::load(&emb2)?;
    for x in m
        .outputs
        .iter_mut()
        .filter(|x| x.path == "gallery_embeddings_000.npy")
    {
        x.sha256 = mlops_core::sha256_file(&e)?;
    }
    std::fs::write(emb2.join("manifest.json"), serde_json::to_vec(&m)?)?;
    assert_fails(&emb2, &[], "dimension 8");
    // Tampered without rehash: the checksum catches it.
    let emb3 = embed_dir(&tmp.path().join("c"), 16, 20, 3)?;
    ndarray_npy::write_npy(
        emb3.join("gallery_embeddings_000.npy"),
        &Array2::<f32>::zeros((60, 16)),
    )?;
    assert_fails(&emb3, &[], "checksum mismatch");
    Ok(())
}
