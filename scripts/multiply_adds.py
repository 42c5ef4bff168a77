"""Multiply-adds per image of exported models, counted by PyTorch from the operators the
TorchScript model really runs (torch.utils.flop_counter; a multiply-add is two FLOPs).

    python scripts/multiply_adds.py runs/default/train/model.pt runs/serve/train/model.pt

Flip averaging built into a model counts twice, as it runs twice. Run it with the reference
venv (`cargo xtask bench --compare` makes it) or any Python with torch.
"""
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode


def multiply_adds(path):
    model = torch.jit.load(path, map_location="cpu").eval()
    with open(path.rsplit("/", 1)[0] + "/model.json") as f:
        shape = json.load(f)["input_shape"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"{path}\t{multiply_adds(path) / 1e6:.2f} M multiply-adds per image")
