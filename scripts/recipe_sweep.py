"""Sweep training recipes for the `res` embedding network on Fashion-MNIST, on a GPU.

How the defaults of `mlops-train` were chosen: a PyTorch replica of the stage (the same `res`
network, ArcFace head, decoupled AdamW without decay on 1-d tensors, one-cycle schedule,
batch size and epoch count, a stratified 70/10/20 train/val/gallery split of the training
images, the t10k images as test) is trained under many recipes, several at once on one GPU,
and each is scored like the pipeline scores it: the epoch with the best leave-one-out kNN
accuracy on val is kept, and the test images are classified by a similarity-weighted kNN vote
over the gallery embeddings (k chosen on val among 10, 20, 30).

The replica is not bit-identical to the Rust stage (other initial draws, cuDNN kernels), so a
recipe found here is confirmed by `cargo xtask pipeline` on the CPU before it becomes default.

    python scripts/recipe_sweep.py DATA_DIR OUT.jsonl [WORKERS] [SEEDS] [SET]

SET is one-factor (default), around-wd, sgd or wide (the lists below).

DATA_DIR holds the four Fashion-MNIST `*-ubyte.gz` files. Results are appended one JSON line
per run, so a sweep cut short keeps what finished.
"""
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from torch_replica import ArcFace, Res, Wide

BASE = dict(
    arch="res", stem=32, c1=48, c2=48, dim=128, dropout=0.1, s=32.0, m=0.5, lr=3e-3, wd=5e-4,
    epochs=12, batch=128, warmup=0.2, ema=0.0, erase=0.0, shift=0, flip=False,
    final_div=1e4, pool="avgmax", opt="adamw",
)

# One factor at a time from the current default, then a few combinations.
VARIANTS = [
    {},
    {"wd": 5e-2}, {"wd": 2e-1},
    {"ema": 0.999}, {"ema": 0.995},
    {"erase": 0.25}, {"erase": 0.5},
    {"lr": 2e-3}, {"lr": 5e-3},
    {"batch": 256, "lr": 5e-3},
    {"batch": 64, "lr": 2e-3},
    {"dropout": 0.0}, {"dropout": 0.3},
    {"s": 16.0}, {"s": 64.0},
    {"m": 0.3}, {"m": 0.2, "s": 16.0},
    {"warmup": 0.1}, {"warmup": 0.3},
    {"shift": 1}, {"flip": True},
    {"epochs": 14}, {"epochs": 10},
    {"dim": 64},
    {"stem": 24, "c1": 56, "c2": 56},
    {"wd": 5e-2, "ema": 0.999},
    {"wd": 5e-2, "erase": 0.25},
    {"wd": 5e-2, "ema": 0.999, "erase": 0.25},
    {"wd": 5e-2, "ema": 0.999, "flip": True},
    {"wd": 2e-1, "ema": 0.999, "dropout": 0.0},
    {"pool": "avg"},
    {"epochs": 20},
    {"wd": 5e-2, "ema": 0.999, "epochs": 14},
]


# Second round, around the first round's winner (weight decay 0.2).
AROUND_WD = [
    {"wd": 0.1}, {"wd": 0.2}, {"wd": 0.4},
    {"wd": 0.2, "dropout": 0.0}, {"wd": 0.2, "m": 0.3},
    {"wd": 0.2, "dropout": 0.0, "m": 0.3}, {"wd": 0.4, "dropout": 0.0},
    {"wd": 0.2, "s": 16.0},
]
# SGD with Nesterov momentum (the stage's default since the CPU runs confirmed it), around its
# default of lr 0.1, L2 weight decay 5e-4, no dropout.
SGD = [
    {"opt": "sgd", "lr": 0.1, "wd": 5e-4, "dropout": 0.0},
    {"opt": "sgd", "lr": 0.05, "wd": 5e-4, "dropout": 0.0},
    {"opt": "sgd", "lr": 0.2, "wd": 5e-4, "dropout": 0.0},
    {"opt": "sgd", "lr": 0.1, "wd": 1e-3, "dropout": 0.0},
    {"opt": "sgd", "lr": 0.1, "wd": 5e-4, "dropout": 0.1},
]
# The `wide` network (mlops-train's default since the CPU runs confirmed it) around its recipe:
# SGD lr 0.05, shift 1 + flip, EMA 0.999, 30 epochs.
WIDE_BASE = {"arch": "wide", "opt": "sgd", "lr": 0.05, "wd": 5e-4, "dropout": 0.0,
             "shift": 1, "flip": True, "ema": 0.999, "epochs": 30}
WIDE = [
    WIDE_BASE,
    {**WIDE_BASE, "m": 0.3}, {**WIDE_BASE, "m": 0.4}, {**WIDE_BASE, "m": 0.2, "s": 16.0},
    {**WIDE_BASE, "s": 64.0}, {**WIDE_BASE, "lr": 0.1}, {**WIDE_BASE, "shift": 2},
    {**WIDE_BASE, "epochs": 20}, {**WIDE_BASE, "epochs": 40}, {**WIDE_BASE, "ema": 0.0},
    {**WIDE_BASE, "erase": 0.25},
]
SETS = {"one-factor": VARIANTS, "around-wd": AROUND_WD, "sgd": SGD, "wide": WIDE}


def load_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def split(labels, seed=0):
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "gallery": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_gal = round(len(idx) * 0.1), round(len(idx) * 0.2)
        parts["val"].append(idx[:n_val])
        parts["gallery"].append(idx[n_val:n_val + n_gal])
        parts["train"].append(idx[n_val + n_gal:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def lr_at(peak, step, total, warmup, final_div):
    warmup = max(warmup, 1)
    if step < warmup:
        start = peak / 25
        return start + (peak - start) * step / warmup
    t = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    to = peak / final_div
    return to + (peak - to) * 0.5 * (1 + math.cos(math.pi * t))


def augment(x, cfg, gen):
    n = x.shape[0]
    if cfg["flip"]:
        flip = torch.rand(n, device=x.device, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg["shift"]:
        s = cfg["shift"]
        padded = F.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * s + 1, (n,), device=x.device, generator=gen)
        ar = torch.arange(28, device=x.device)
        rows = (dy[:, None] + ar[None, :])[:, :, None].expand(n, 28, 28)
        cols = (dx[:, None] + ar[None, :])[:, None, :].expand(n, 28, 28)
        x = padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols][:, None]
    if cfg["erase"] > 0:
        # Random erasing: one rectangle of 2-40 % of the area, aspect 0.3-3.3, set to 0.
        area = torch.empty(n, device=x.device).uniform_(0.02, 0.4, generator=gen) * 784
        aspect = torch.exp(torch.empty(n, device=x.device).uniform_(math.log(0.3), math.log(3.3), generator=gen))
        h = (area * aspect).sqrt().round().clamp(1, 27)
        w = (area / aspect).sqrt().round().clamp(1, 27)
        y0 = (torch.rand(n, device=x.device, generator=gen) * (28 - h + 1)).floor()
        x0 = (torch.rand(n, device=x.device, generator=gen) * (28 - w + 1)).floor()
        ar = torch.arange(28, device=x.device)
        inside = ((ar[None, :, None] >= y0[:, None, None]) & (ar[None, :, None] < (y0 + h)[:, None, None])
                  & (ar[None, None, :] >= x0[:, None, None]) & (ar[None, None, :] < (x0 + w)[:, None, None]))
        apply = torch.rand(n, device=x.device, generator=gen) < cfg["erase"]
        x = x.masked_fill((inside & apply[:, None, None])[:, None], 0.0)
    return x


@torch.no_grad()
def embed(net, x):
    net.eval()
    out = torch.cat([net(x[i:i + 4096]) for i in range(0, len(x), 4096)])
    net.train()
    return out


def vote(sims, labels, k):
    top, idx = sims.topk(k, 1)
    votes = torch.zeros(sims.shape[0], 10, device=sims.device).scatter_add_(1, labels[idx], top + 1)
    return votes.argmax(1)


@torch.no_grad()
def score(net, data):
    v = embed(net, data["val_x"])
    sims = v @ v.t()
    sims.fill_diagonal_(-10)
    loo = (vote(sims, data["val_y"], 5) == data["val_y"]).float().mean().item()
    g = embed(net, data["gallery_x"])
    t = embed(net, data["test_x"])
    ks = [10, 20, 30]
    val_acc = {k: (vote(v @ g.t(), data["gallery_y"], k) == data["val_y"]).float().mean().item() for k in ks}
    k = max(ks, key=lambda k: (val_acc[k], -k))
    tg = t @ g.t()
    test = {kk: (vote(tg, data["gallery_y"], kk) == data["test_y"]).float().mean().item() for kk in ks}
    return loo, k, test[k], test


def train(cfg, seed, data):
    torch.manual_seed(seed)
    dev = data["train_x"].device
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    if cfg["arch"] == "wide":
        net = Wide(cfg["dim"], cfg["dropout"]).to(dev)
    else:
        net = Res(cfg["dim"], cfg["dropout"], cfg["stem"], cfg["c1"], cfg["c2"], cfg["pool"]).to(dev)
    head = ArcFace(cfg["dim"], 10, cfg["s"], cfg["m"]).to(dev)
    params = list(net.parameters()) + list(head.parameters())
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg["wd"]},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    if cfg["opt"] == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, nesterov=True, foreach=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg["lr"], foreach=True)
    ema = copy.deepcopy(net) if cfg["ema"] > 0 else None
    n = len(data["train_y"])
    spe = n // cfg["batch"]
    total = spe * cfg["epochs"]
    warm = int(total * cfg["warmup"])
    best = None
    history = []
    step = 0
    started = time.time()
    for epoch in range(cfg["epochs"]):
        order = torch.randperm(n, device=dev, generator=gen)
        loss_sum = torch.zeros((), device=dev)
        for i in range(spe):
            idx = order[i * cfg["batch"]:(i + 1) * cfg["batch"]]
            x = augment(data["train_x"][idx], cfg, gen)
            y = data["train_y"][idx]
            lr = lr_at(cfg["lr"], step, total, warm, cfg["final_div"])
            for g in opt.param_groups:
                g["lr"] = lr
            loss = head(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
            if ema is not None:
                d = min(cfg["ema"], (1 + step) / (10 + step))
                with torch.no_grad():
                    # Every floating-point tensor, batch-norm statistics included, as the stage.
                    for ep, p in zip(ema.parameters(), net.parameters()):
                        ep.lerp_(p, 1 - d)
                    for eb, b in zip(ema.buffers(), net.buffers()):
                        if eb.is_floating_point():
                            eb.lerp_(b, 1 - d)
                        else:
                            eb.copy_(b)
        scored = ema if ema is not None else net
        loo, k, test, tests = score(scored, data)
        history.append(dict(epoch=epoch + 1, loss=loss_sum.item() / spe, val_loo=loo, k=k, test=test))
        if best is None or loo > best["val_loo"]:
            best = history[-1]
    return dict(best=best, last=history[-1], history=history, seconds=time.time() - started)


def worker(rank, jobs, data_dir, out_path, lock):
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr_x = load_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    tr_y = load_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    te_x = load_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    te_y = load_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    parts = split(tr_y)
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None].to(dev)
    data = {}
    for role, idx in parts.items():
        data[f"{role}_x"], data[f"{role}_y"] = to_x(tr_x[idx]), torch.from_numpy(tr_y[idx]).to(dev)
    data["test_x"], data["test_y"] = to_x(te_x), torch.from_numpy(te_y).to(dev)
    for j, (variant, seed) in enumerate(jobs):
        cfg = {**BASE, **variant}
        result = train(cfg, seed, data)
        line = json.dumps({"variant": variant, "seed": seed, **result})
        with lock:
            with open(out_path, "a") as f:
                f.write(line + "\n")
        print(f"[{rank}] {variant} seed {seed}: best {result['best']} ({result['seconds']:.0f} s)", flush=True)


def main():
    data_dir, out_path = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    variants = SETS[sys.argv[5] if len(sys.argv) > 5 else "one-factor"]
    jobs = [(v, s) for s in range(seeds) for v in variants]
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()
    procs = [ctx.Process(target=worker, args=(r, jobs[r::workers], data_dir, out_path, lock)) for r in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
