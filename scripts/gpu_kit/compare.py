"""Python half of the GPU check of `cargo xtask gpu-kit` (run.sh calls it; needs torch and numpy).

    compare.py libs   --kit KIT --device DEV     shell assignments: LIBPATH, PRELOAD
    compare.py report --kit KIT --work W --out OUT --device DEV --epochs N

`libs` imports the machine's PyTorch, runs one CUDA convolution and matmul so that every
library they need is mapped, and reads the directories of the mapped shared objects from
/proc/self/maps: our binaries get exactly the libraries PyTorch itself uses.

`report` compares what run.sh produced (trainings on the CPU, on the GPU and data parallel;
embeddings of one model on both devices) and times PyTorch on the same device doing the same
work (the `wide` network's training step from torch_replica.py, torch.jit.load of our
model.pt), then writes OUT/gpu_report.json and OUT/gpu_report.md.
"""
import argparse
import glob
import json
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def kit_info(kit):
    with open(os.path.join(kit, "kit.json")) as f:
        return json.load(f)


def libs(args):
    import torch

    want = kit_info(args.kit)["torch"]
    have = torch.__version__.split("+")[0]
    if have.split(".")[:2] != want.split(".")[:2]:
        sys.exit(f"compare.py: this PyTorch is {have}, the kit was built for {want}")
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    preload = []
    if args.device != "cpu":
        if not torch.cuda.is_available():
            sys.exit("compare.py: torch.cuda.is_available() is false on this machine")
        x = torch.ones(2, 1, 8, 8, device=args.device)
        torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device=args.device))
        (x.flatten(1) @ x.flatten(1).t()).sum().item()
        preload = [os.path.join(torch_lib, "libtorch_cuda.so")]
    dirs = [torch_lib]
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if ".so" not in path or path.startswith(("/lib", "/usr/lib")):
                continue
            d = os.path.dirname(path)
            if d not in dirs:
                dirs.append(d)
    print(f"LIBPATH={shlex.quote(':'.join(dirs))}")
    print(f"PRELOAD={shlex.quote(':'.join(preload))}")


def load_role(d, role):
    import numpy as np

    emb = [np.load(p) for p in sorted(glob.glob(os.path.join(d, f"{role}_embeddings_*.npy")))]
    lab = [np.load(p) for p in sorted(glob.glob(os.path.join(d, f"{role}_labels_*.npy")))]
    if not emb:
        sys.exit(f"compare.py: no {role} embeddings in {d}")
    return np.concatenate(emb), np.concatenate(lab)


def knn_accuracy(d, k=10):
    """Test accuracy of a similarity-weighted k-NN vote over the gallery (the eval stage's
    default vote), computed here so the kit needs no FAISS."""
    import numpy as np

    g, gl = load_role(d, "gallery")
    t, tl = load_role(d, "test")
    sims = t @ g.T
    idx = np.argsort(-sims, axis=1)[:, :k]
    classes = int(max(gl.max(), tl.max())) + 1
    votes = np.zeros((len(t), classes))
    for j in range(k):
        np.add.at(votes, (np.arange(len(t)), gl[idx[:, j]]), sims[np.arange(len(t)), idx[:, j]])
    return float((votes.argmax(1) == tl).mean())


def train_summary(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    speeds = [r["images_per_second"] for r in rows[1:]] or [rows[0]["images_per_second"]]
    last = rows[-1]
    return {
        "epochs": len(rows),
        "val_knn_accuracy": last["val_knn_accuracy"],
        "val_centre_accuracy": last["val_centre_accuracy"],
        "train_loss": last["train_loss"],
        "images_per_second": statistics.median(speeds),
    }


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_train_step(device, batch=128, steps=50):
    """PyTorch eager, the stage's recipe: SGD Nesterov, weight decay on >= 2-d tensors only,
    the network under bf16 autocast, ArcFace and the loss in fp32."""
    import torch

    sys.path.insert(0, HERE)
    from torch_replica import ArcFace, Wide

    torch.manual_seed(0)
    net = Wide().to(device).to(memory_format=torch.channels_last)
    head = ArcFace(128, 10).to(device)
    params = list(net.parameters()) + list(head.parameters())
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": 5e-4},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def step():
        opt.zero_grad()
        with torch.autocast(kind, dtype=torch.bfloat16):
            emb = net(x)
        head(emb.float(), y).backward()
        opt.step()

    for _ in range(5):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def torch_embed(model_pt, data_dir, device, batch=512):
    """torch.jit.load of our model.pt, bf16 autocast, batched over the test images."""
    import numpy as np
    import torch

    xs = np.concatenate(
        [np.load(p) for p in sorted(glob.glob(os.path.join(data_dir, "test_images_*.npy")))]
    )
    m = torch.jit.load(model_pt, map_location=device).eval()
    x = torch.from_numpy(xs).to(device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16):
        m(x[:batch])
        sync(device)
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            m(x[i : i + batch])
        sync(device)
    return len(x) / (time.perf_counter() - t)


def report(args):
    import numpy as np
    import torch

    w, out = args.work, args.out
    steps = {}
    for line in open(os.path.join(out, "step_seconds.txt")):
        name, t0, t1 = line.split()
        steps[name] = float(t1) - float(t0)
    trains = {n: train_summary(os.path.join(w, f"train-{n}", "metrics.jsonl")) for n in ("cpu", "gpu", "dp")}
    accuracy = {n: knn_accuracy(os.path.join(w, f"embed-{n}-model")) for n in ("cpu", "gpu", "dp")}
    a, _ = load_role(os.path.join(w, "embed-gpu-model-cpu-fp32"), "test")
    b, _ = load_role(os.path.join(w, "embed-gpu-model-gpu-fp32"), "test")
    with open(os.path.join(w, "embed-gpu-model", "manifest.json")) as f:
        ours_embed = json.load(f)["summary"]["images_per_second"]
    r = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu",
        "torch": torch.__version__,
        "kit": kit_info(args.kit),
        "epochs": args.epochs,
        "step_seconds": steps,
        "train": trains,
        "test_knn_accuracy": accuracy,
        "embeddings_cpu_vs_device_fp32": {
            "max_abs_diff": float(np.abs(a - b).max()),
            "mean_cosine": float((a * b).sum(1).mean()),
        },
        "throughput": {
            "train_img_per_s": {
                "ours_epoch_median": trains["gpu"]["images_per_second"],
                "pytorch_eager_step": torch_train_step(args.device),
            },
            "embed_img_per_s": {
                "ours_stage": ours_embed,
                "pytorch_jit": torch_embed(
                    os.path.join(w, "train-gpu", "model.pt"), os.path.join(w, "data"), args.device
                ),
            },
        },
    }
    t, e = r["throughput"]["train_img_per_s"], r["throughput"]["embed_img_per_s"]
    t["ratio"] = t["ours_epoch_median"] / t["pytorch_eager_step"]
    e["ratio"] = e["ours_stage"] / e["pytorch_jit"]
    with open(os.path.join(out, "gpu_report.json"), "w") as f:
        json.dump(r, f, indent=2)
    md = [
        f"# GPU check: {r['device_name']} ({args.device}), PyTorch {r['torch']}, kit for torch {r['kit']['torch']}",
        "",
        "| training | epochs | val kNN | val centre | test kNN (k 10) | img/s (median epoch) |",
        "|---|---|---|---|---|---|",
    ]
    for n in ("cpu", "gpu", "dp"):
        s = trains[n]
        md.append(
            f"| {n} | {s['epochs']} | {s['val_knn_accuracy']:.4f} | {s['val_centre_accuracy']:.4f} | {accuracy[n]:.4f} | {s['images_per_second']:.0f} |"
        )
    d = r["embeddings_cpu_vs_device_fp32"]
    md += [
        "",
        f"Same model embedded in fp32 on the CPU and on {args.device}: max abs diff {d['max_abs_diff']:.2e}, mean cosine {d['mean_cosine']:.6f}.",
        "",
        f"Training: ours {t['ours_epoch_median']:.0f} img/s (whole epochs: batches, augmentation, step) vs PyTorch eager {t['pytorch_eager_step']:.0f} img/s (steps on one fixed batch): {t['ratio']:.2f}x.",
        f"Embedding: ours {e['ours_stage']:.0f} img/s (the embed stage) vs torch.jit.load {e['pytorch_jit']:.0f} img/s (batch 512): {e['ratio']:.2f}x.",
        "",
        "Step wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
    ]
    with open(os.path.join(out, "gpu_report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["libs", "report"])
    p.add_argument("--kit", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--work")
    p.add_argument("--out")
    p.add_argument("--epochs", type=int)
    args = p.parse_args()
    {"libs": libs, "report": report}[args.what](args)


if __name__ == "__main__":
    main()
