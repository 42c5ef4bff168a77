"""Python faiss-cpu on the same vectors as `cargo bench -p mlops-benches --bench index_search`:
build Flat / IVF64,Flat (nprobe 8) over the gallery embeddings and run 10,000 searches, k = 10.

    python scripts/faiss_search_throughput.py runs/default/embed
"""
import glob
import sys
import time

import faiss
import numpy as np


def load(d, role):
    return np.ascontiguousarray(np.concatenate(
        [np.load(f) for f in sorted(glob.glob(f"{d}/{role}_embeddings_*.npy"))]).astype("float32"))


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "runs/default/embed"
    gallery, test = load(d, "gallery"), load(d, "test")
    queries = np.ascontiguousarray(np.resize(test, (10000, test.shape[1])))
    print(f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}, gallery {gallery.shape}")
    for factory, nprobe in [("Flat", None), ("IVF64,Flat", 8)]:
        t = time.perf_counter()
        index = faiss.index_factory(gallery.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(gallery)
        index.add(gallery)
        build = time.perf_counter() - t
        if nprobe:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            index.search(queries, 10)
            times.append(time.perf_counter() - t)
        best, median = min(times), sorted(times)[len(times) // 2]
        print(f"{factory}: build {build * 1000:.1f} ms, 10000 searches median {median * 1000:.1f} ms "
              f"(best {best * 1000:.1f} ms, {10000 / median:.0f} q/s)")


if __name__ == "__main__":
    main()
