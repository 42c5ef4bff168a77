"""PyTorch replicas of mlops-train's networks (`wide`, `res`, `seed`) and ArcFace head: the
reference side of `cargo xtask bench --compare` (scripts/bench_reference.py) and the model of
scripts/recipe_sweep.py. Keep them in step with mlops-train/src/model.rs.
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Sequential):
    def __init__(self, cin, cout, k, stride, pad):
        super().__init__(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = ConvBn(cin, cout, 3, stride, 1)
        self.b = ConvBn(cout, cout, 3, 1, 1)
        self.proj = ConvBn(cin, cout, 1, stride, 0) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        return F.relu(y + (self.proj(x) if self.proj is not None else x))


class Res(nn.Module):
    """mlops-train's `res`; the widths and pooling are knobs for scripts/recipe_sweep.py."""

    def __init__(self, dim=128, dropout=0.1, stem=32, c1=48, c2=48, pool="avgmax"):
        super().__init__()
        self.stem = ConvBn(1, stem, 3, 1, 1)
        self.stage1 = Block(stem, c1, 2)
        self.stage2 = Block(c1, c2, 1)
        self.dropout = nn.Dropout(dropout)
        self.pool = pool
        width = c2 * (2 if pool == "avgmax" else 1)
        self.head = nn.Sequential(nn.Linear(width, dim), nn.BatchNorm1d(dim))

    def forward(self, x):
        # conv, max-pool, then BN and ReLU on the pooled map (as mlops-train's stem).
        x = F.relu(self.stem[1](F.max_pool2d(self.stem[0](x), 2)))
        x = self.stage2(self.stage1(x))
        pooled = [F.adaptive_avg_pool2d(x, 1)]
        if self.pool == "avgmax":
            pooled.append(F.adaptive_max_pool2d(x, 1))
        return F.normalize(self.head(self.dropout(torch.cat(pooled, 1).flatten(1))))


class Wide(nn.Module):
    """mlops-train's `wide` (the default): thin at 28x28, wide at 7x7 and 4x4, each block's
    last batch-norm scale starting at zero."""

    def __init__(self, dim=128, dropout=0.0, stem=24, widths=((48, 1), (96, 2), (192, 2)), width=None):
        super().__init__()
        if width is not None:  # mlops-train's `width`: the stem's channels, doubled per stage
            stem, widths = width, ((2 * width, 1), (4 * width, 2), (8 * width, 2))
        self.stem = ConvBn(1, stem, 3, 1, 1)
        blocks, cin = [], stem
        for cout, stride in widths:
            block = Block(cin, cout, stride)
            nn.init.zeros_(block.b[1].weight)
            blocks.append(block)
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(cin * 2, dim), nn.BatchNorm1d(dim))

    def forward(self, x):
        x = F.relu(self.stem[1](F.max_pool2d(self.stem[0](x), 2)))
        x = self.blocks(x)
        pooled = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1)
        return F.normalize(self.head(self.dropout(pooled.flatten(1))))


def Slim(dim=128, dropout=0.0):
    """mlops-train's `slim`: `wide` at half the width (12, 24, 48, 96 channels)."""
    return Wide(dim, dropout, stem=12, widths=((24, 1), (48, 2), (96, 2)))


class Seed(nn.Module):
    def __init__(self, dim=128):
        super().__init__()
        self.conv1 = ConvBn(1, 32, 3, 1, 0)
        self.conv2 = ConvBn(32, 64, 3, 1, 0)
        self.fc1 = nn.Sequential(nn.Linear(64 * 11 * 11, 128), nn.BatchNorm1d(128))
        self.fc2 = nn.Linear(128, dim)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).flatten(1)
        return F.normalize(self.fc2(F.relu(self.fc1(x))))


class ArcFace(nn.Module):
    def __init__(self, dim, classes, s=32.0, m=0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.s, self.m = s, m
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def forward(self, emb, labels):
        cosine = (emb @ F.normalize(self.weight).t()).clamp(-1 + 1e-7, 1 - 1e-7)
        sine = (1 - cosine * cosine).clamp(1e-12, 1).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = torch.zeros_like(cosine).scatter_(1, labels.unsqueeze(1), 1.0)
        return F.cross_entropy((one_hot * phi + (1 - one_hot) * cosine) * self.s, labels)
