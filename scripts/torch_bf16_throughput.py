"""PyTorch eager, fp32 and `torch.autocast("cpu", dtype=torch.bfloat16)`, side by side: the
reference for `cargo bench -p mlops-benches --bench precision`.

The same `res` / `seed` networks and ArcFace head as mlops-train (from
scripts/torch_replica.py), the default recipe (SGD, Nesterov 0.9, lr 0.1, weight decay
5e-4 on weights only, no dropout), batch 128, on random 28x28 batches; inference of an exported
`model.pt` (torch.jit.load) at batch 256. Rounds interleave fp32 and bf16; medians printed.

    python scripts/torch_bf16_throughput.py THREADS [MODEL_PT]
"""
import statistics
import sys
import time

import torch

from torch_replica import ArcFace, Res, Seed


def train_rate(make, bf16, steps=30, batch=128):
    torch.manual_seed(0)
    net, head = make(), ArcFace(128, 10)
    params = list(net.parameters()) + list(head.parameters())
    decay = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, nesterov=True)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    net.train()

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = head(net(x), y)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def infer_rate(module, bf16, n=5120, batch=256):
    x = torch.rand(n, 1, 28, 28)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, n, batch):
            module(x[i:i + batch])
        t = time.perf_counter()
        for _ in range(3):
            for i in range(0, n, batch):
                module(x[i:i + batch])
    return 3 * n / (time.perf_counter() - t)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    rounds = 5
    for name, make in [("res", lambda: Res(dropout=0.0)), ("seed", Seed)]:
        fp32, bf16 = [], []
        for _ in range(rounds):
            fp32.append(train_rate(make, False))
            bf16.append(train_rate(make, True))
        a, b = statistics.median(fp32), statistics.median(bf16)
        print(f"pytorch train {name:<4} batch 128: fp32 {a:6.0f} img/s, bf16 {b:6.0f} img/s, ratio {b / a:.2f}x")
    if len(sys.argv) > 2:
        module = torch.jit.load(sys.argv[2]).eval()
        fp32, bf16 = [], []
        for _ in range(rounds):
            fp32.append(infer_rate(module, False))
            bf16.append(infer_rate(module, True))
        a, b = statistics.median(fp32), statistics.median(bf16)
        print(f"pytorch embed model.pt batch 256: fp32 {a:6.0f} img/s, bf16 {b:6.0f} img/s, ratio {b / a:.2f}x")
    print(f"(pytorch {torch.__version__}, threads {threads})")


if __name__ == "__main__":
    main()
