"""The Python side of `cargo xtask bench --compare`: PyTorch eager, torch.jit and faiss-cpu doing
what `benches/examples/compare_worker.rs` does, one measurement per process, one JSON line on
stdout. Threads come from OMP_NUM_THREADS, set by the caller for both sides alike.

    python scripts/bench_reference.py train  ARCH BATCH STEPS PRECISION
    python scripts/bench_reference.py embed  RUN_DIR BATCH PRECISION OUT.npy
    python scripts/bench_reference.py search RUN_DIR FACTORY K OUT.npy
"""
import glob
import json
import os
import sys
import time

import numpy as np

THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))


def autocast(precision, device="cpu"):
    import contextlib
    import torch
    if precision == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(arch, batch, steps, precision, device="cpu", channels_last=False, warmup=3):
    """The stage's default recipe: SGD, Nesterov momentum 0.9, weight decay 5e-4 (L2) on tensors
    of two or more dimensions only; the network under autocast, ArcFace and the loss in fp32.
    `channels_last` stores the network NHWC, as ours is (the GPU kit's stronger reference)."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_replica import ArcFace, Res, Seed, Slim, Wide
    if device == "cpu":
        torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    nets = {"wide": Wide, "slim": Slim, "res": lambda: Res(dropout=0.0), "seed": Seed}
    # model.json names a width other than the architecture's own as `slim-w15`.
    name, _, width = arch.partition("-w")
    net = Wide(width=int(width)) if width else nets[name]()
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    head = ArcFace(128, 10).to(device)
    params = list(net.parameters()) + list(head.parameters())
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": 5e-4},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    net.train()

    def step():
        opt.zero_grad()
        with autocast(precision, device):
            emb = net(x)
        head(emb.float(), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t
    return {"img_per_s": steps * batch / seconds, "seconds": seconds}


def load_role(d, prefix, role):
    files = sorted(glob.glob(f"{d}/{role}_{prefix}_*.npy"))
    if not files:
        raise SystemExit(f"{d}: no {role}_{prefix}_*.npy")
    return np.ascontiguousarray(np.concatenate([np.load(f) for f in files]))


def embed(run, batch, precision, out):
    """torch.jit.load of the run's model.pt, batched forward over its test images."""
    import torch
    torch.set_num_threads(THREADS)
    model = torch.jit.load(f"{run}/train/model.pt")
    model.eval()
    images = torch.from_numpy(load_role(f"{run}/data", "images", "test").astype(np.float32))

    def forward(xs):
        with torch.no_grad(), autocast(precision):
            e = model(xs)
        if precision == "bf16":
            e = e.float()
            e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return e

    forward(images[:batch])
    t = time.perf_counter()
    emb = torch.cat([forward(images[i:i + batch]) for i in range(0, len(images), batch)])
    seconds = time.perf_counter() - t
    np.save(out, emb.numpy())
    return {"img_per_s": len(images) / seconds, "seconds": seconds, "images": len(images)}


def search(run, factory, k, out):
    """faiss-cpu: the same factory and search parameters over the run's gallery embeddings."""
    import faiss
    faiss.omp_set_num_threads(THREADS)
    gallery = load_role(f"{run}/embed", "embeddings", "gallery").astype(np.float32)
    test = load_role(f"{run}/embed", "embeddings", "test").astype(np.float32)
    index = faiss.index_factory(gallery.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(gallery)
    index.add(gallery)
    if factory.startswith("IVF"):
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", 8)
    elif factory.startswith("HNSW"):
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", 64)
    times = []
    for rep in range(6):
        t = time.perf_counter()
        _, ids = index.search(test, k)
        if rep > 0:
            times.append(time.perf_counter() - t)
    np.save(out, ids.astype(np.int64))
    seconds = sorted(times)[len(times) // 2]
    return {"q_per_s": len(test) / seconds, "seconds": seconds, "queries": len(test),
            "omp_threads": faiss.omp_get_max_threads()}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "train":
        result = train(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "embed":
        result = embed(args[0], int(args[1]), args[2], args[3])
    elif cmd == "search":
        result = search(args[0], args[1], int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown command {cmd!r} (train, embed, search)")
    import torch
    result["threads"] = THREADS
    result["torch_threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
