"""Python half of the GPU check of `cargo xtask gpu-kit` (run.sh calls it; needs torch and numpy).

    compare.py libs   --kit KIT --device DEV     shell assignments: LIBPATH, PRELOAD
    compare.py step   --kit KIT --device DEV --arch A --batch B --steps S --precision P --out OUT
    compare.py embed  --kit KIT --device DEV --model PT --data DIR --batch B [--no-fuser] --out OUT
    compare.py report --kit KIT --work W --out OUT --device DEV --epochs N

`libs` imports the machine's PyTorch, runs one CUDA convolution and matmul so that every
library they need is mapped, and reads the directories of the mapped shared objects from
/proc/self/maps: our binaries get exactly the libraries PyTorch itself uses.

`step` times PyTorch eager's training step on one fixed batch (bench_reference.py's `train`,
the network stored channels-last as ours is) and appends a JSON line to OUT/step_timings.jsonl,
beside the lines of our `train_step`.

`report` compares what run.sh produced (trainings on the CPU, on the GPU and data parallel;
embeddings of one model on both devices; the step timings) and times torch.jit.load of our
model.pt on the same device, then writes OUT/gpu_report.json and OUT/gpu_report.md. Whatever
a failed step did not produce is reported missing, not guessed.
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


def step(args):
    sys.path.insert(0, HERE)
    from bench_reference import train

    r = train(args.arch, args.batch, args.steps, args.precision, device=args.device,
              channels_last=True, warmup=5)
    r.update({"impl": "pytorch", "device": args.device, "precision": args.precision,
              "arch": args.arch, "batch": args.batch})
    with open(os.path.join(args.out, "step_timings.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")


def step_comparison(out):
    """Median img/s of each side per (arch, batch, precision) and the ratio ours / PyTorch."""
    path = os.path.join(out, "step_timings.jsonl")
    rows = [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(path) else []
    table = {}
    for r in rows:
        key = f"{r['arch']} batch {r['batch']} {r['precision']}"
        side = "ours" if r["impl"] == "mlops-train" else "pytorch"
        table.setdefault(key, {"ours": [], "pytorch": []})[side].append(r["img_per_s"])
    result = {}
    for key, v in table.items():
        ours = statistics.median(v["ours"]) if v["ours"] else None
        ref = statistics.median(v["pytorch"]) if v["pytorch"] else None
        result[key] = {"ours": ours, "pytorch": ref, "runs": v,
                       "ratio": ours / ref if ours and ref else None}
    return result


ROLES = ("val", "gallery", "test")  # the embed stage's order


def torch_embed(model_pt, data_dir, device, batch=512):
    """torch.jit.load of our model.pt over the roles the embed stage embeds, as the stage works:
    role by role in batches of `batch` (so the same input shapes), bf16 autocast, each batch
    moved to the device and its embeddings back. The first pass is timed from the first batch
    (the stage's figure includes its cold start too); the second pass is warm."""
    import numpy as np
    import torch

    roles = [
        torch.from_numpy(np.concatenate([
            np.load(p) for p in sorted(glob.glob(os.path.join(data_dir, f"{role}_images_*.npy")))
        ]))
        for role in ROLES
    ]
    m = torch.jit.load(model_pt, map_location=device).eval()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    images = sum(len(x) for x in roles)
    rates = []
    with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16):
        for _ in range(2):
            sync(device)
            t = time.perf_counter()
            for x in roles:
                for i in range(0, len(x), batch):
                    m(x[i : i + batch].to(device)).float().cpu()
            rates.append(images / (time.perf_counter() - t))
    return {"cold": rates[0], "warm": rates[1], "images": images}


def embed(args):
    """One PyTorch embedding measurement in a fresh process (cold caches, as the stage starts),
    with TorchScript's TensorExpr fuser as PyTorch leaves it or turned off; appends a JSON line
    to OUT/embed_timings.jsonl."""
    import torch

    if args.no_fuser:
        torch._C._jit_set_texpr_fuser_enabled(False)
    r = torch_embed(args.model, args.data, args.device, args.batch)
    r.update({"impl": "pytorch", "fuser": not args.no_fuser, "device": args.device,
              "batch": args.batch})
    with open(os.path.join(args.out, "embed_timings.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")


def attempt(what, f, missing):
    """f(), or None with the reason recorded in `missing` when its inputs are absent."""
    try:
        return f()
    except (OSError, SystemExit, KeyError, ValueError) as e:
        missing[what] = str(e) or type(e).__name__
        return None


def fmt(x, spec):
    return "missing" if x is None else format(x, spec)


def report(args):
    import numpy as np
    import torch

    w, out = args.work, args.out
    missing = {}
    steps = {}
    for line in open(os.path.join(out, "step_seconds.txt")):
        name, t0, t1 = line.split()
        steps[name] = float(t1) - float(t0)
    failed = [l.strip() for l in open(os.path.join(out, "failed.txt")) if l.strip()]
    names = ("cpu", "gpu", "dp")
    extra = [n for n in ("gpu-b1024", "dp-b1024") if os.path.isdir(os.path.join(w, f"train-{n}"))]
    trains = {n: attempt(f"train-{n}", lambda n=n: train_summary(os.path.join(w, f"train-{n}", "metrics.jsonl")), missing) for n in (*names, *extra)}
    accuracy = {n: attempt(f"embed-{n}-model", lambda n=n: knn_accuracy(os.path.join(w, f"embed-{n}-model")), missing) for n in names}

    def fp32_diff():
        a, _ = load_role(os.path.join(w, "embed-gpu-model-cpu-fp32"), "test")
        b, _ = load_role(os.path.join(w, "embed-gpu-model-gpu-fp32"), "test")
        return {"max_abs_diff": float(np.abs(a - b).max()), "mean_cosine": float((a * b).sum(1).mean())}

    def ours_embed():
        with open(os.path.join(w, "embed-gpu-model", "manifest.json")) as f:
            return json.load(f)["summary"]["images_per_second"]

    def embed_timings():
        path = os.path.join(out, "embed_timings.jsonl")
        rows = [json.loads(line) for line in open(path) if line.strip()]
        ours = {name: json.load(open(os.path.join(out, f"embed-{name}.manifest.json")))["summary"]["images_per_second"]
                for name in ("gpu-model", "gpu-model-fuser")
                if os.path.exists(os.path.join(out, f"embed-{name}.manifest.json"))}
        return {
            "ours_stage": ours.get("gpu-model"),
            "ours_stage_fuser_on": ours.get("gpu-model-fuser"),
            "pytorch": [r for r in rows if r["impl"] == "pytorch"],
        }

    e = attempt("embed-timings", embed_timings, missing) or {"pytorch": []}
    ref = next((r for r in e["pytorch"] if r["fuser"]), None)
    e["ratio_vs_pytorch_default"] = e["ours_stage"] / ref["cold"] if ref and e.get("ours_stage") else None
    r = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu",
        "torch": torch.__version__,
        "kit": kit_info(args.kit),
        "epochs": args.epochs,
        "failed_steps": failed,
        "missing": missing,
        "step_seconds": steps,
        "train": trains,
        "test_knn_accuracy": accuracy,
        "embeddings_cpu_vs_device_fp32": attempt("embed-fp32-pair", fp32_diff, missing),
        "train_step_img_per_s": step_comparison(out),
        "embed_img_per_s": e,
    }
    with open(os.path.join(out, "gpu_report.json"), "w") as f:
        json.dump(r, f, indent=2)
    md = [
        f"# GPU check: {r['device_name']} ({args.device}), PyTorch {r['torch']}, kit for torch {r['kit']['torch']}",
        "",
        "| training | epochs | val kNN | val centre | test kNN (k 10) | img/s (median epoch) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        s = trains[n] or {}
        md.append(
            f"| {n} | {s.get('epochs', 'missing')} | {fmt(s.get('val_knn_accuracy'), '.4f')} | {fmt(s.get('val_centre_accuracy'), '.4f')} | {fmt(accuracy[n], '.4f')} | {fmt(s.get('images_per_second'), '.0f')} |"
        )
    for n in extra:
        s = trains[n] or {}
        md.append(f"| {n} (throughput only) | {s.get('epochs', 'missing')} | {fmt(s.get('val_knn_accuracy'), '.4f')} | | | {fmt(s.get('images_per_second'), '.0f')} |")
    d = r["embeddings_cpu_vs_device_fp32"] or {}
    md += [
        "",
        f"Same model embedded in fp32 on the CPU and on {args.device}: max abs diff {fmt(d.get('max_abs_diff'), '.2e')}, mean cosine {fmt(d.get('mean_cosine'), '.6f')}.",
        "",
        "| training step, one fixed batch | ours img/s | PyTorch eager (channels-last) img/s | ratio |",
        "|---|---|---|---|",
    ]
    for key, v in r["train_step_img_per_s"].items():
        md.append(f"| {key} | {fmt(v['ours'], '.0f')} | {fmt(v['pytorch'], '.0f')} | {fmt(v['ratio'], '.2f')}x |")
    md += [
        "",
        "| embedding gallery+val+test, batch 512, bf16, to the device and back | first pass img/s | second pass img/s |",
        "|---|---|---|",
        f"| ours (the embed stage; TensorExpr fuser off on GPUs) | {fmt(e.get('ours_stage'), '.0f')} | |",
        f"| ours with PYTORCH_TENSOREXPR=1 (fuser on) | {fmt(e.get('ours_stage_fuser_on'), '.0f')} | |",
    ]
    for row in e["pytorch"]:
        md.append(f"| torch.jit.load, fuser {'on (PyTorch default)' if row['fuser'] else 'off'} | {row['cold']:.0f} | {row['warm']:.0f} |")
    md += [
        "",
        f"Embedding, ours / torch.jit.load as PyTorch ships (first passes): {fmt(e.get('ratio_vs_pytorch_default'), '.2f')}x.",
        "",
        "Step wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
    ]
    if failed or missing:
        md += ["", f"Failed steps: {', '.join(failed) or 'none'}. Missing: {json.dumps(missing)}"]
    with open(os.path.join(out, "gpu_report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["libs", "step", "embed", "report"])
    p.add_argument("--kit", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--work")
    p.add_argument("--out")
    p.add_argument("--epochs", type=int)
    p.add_argument("--arch")
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--precision")
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--no-fuser", action="store_true")
    args = p.parse_args()
    {"libs": libs, "step": step, "embed": embed, "report": report}[args.what](args)


if __name__ == "__main__":
    main()
