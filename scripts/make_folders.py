"""Small image-folder data sets that look like a user's first data rather than Fashion-MNIST:
what the training defaults are checked against beyond the default data set (docs/stages.md,
"Defaults beyond Fashion-MNIST", and mlops-train/tests/real_world_folders.rs).

    python scripts/make_folders.py OUT [--only NAME]

writes OUT/NAME/<class>/<n>.png (grayscale PNG) for:

- glyphs8: the digits 0-9 rendered in the DejaVu fonts (Debian's fonts-dejavu-core and
  -extra) with small random rotations, scales and shifts, reduced to 8x8 like scikit-learn's
  digits: 1,600 images. Mirroring is not label-preserving here.
- fashion16: 100 training images per class of Fashion-MNIST (Debian's dataset-fashion-mnist)
  reduced to 16x16: 1,000 images.
- shapes32: eight outline shapes (circle, square, two triangles, cross, two arrows, an L and
  its mirror image) of random size, position and stroke on a noisy background, 32x32: 1,200
  images. Two pairs of classes are each other's mirror images.

Deterministic: the same files byte for byte on every run (numpy's PCG64 from fixed seeds).
Needs numpy and Pillow (both in the venv `cargo xtask setup` makes).
"""
import argparse
import glob
import gzip
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu"
FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def save(out, name, cls, i, pixels):
    d = os.path.join(out, name, cls)
    os.makedirs(d, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(
        os.path.join(d, f"{i:04d}.png"), optimize=False)


def glyphs8(out):
    fonts = sorted(f for f in glob.glob(os.path.join(FONTS, "*.ttf")) if "MathTeX" not in f)
    if len(fonts) < 6:
        raise SystemExit(f"glyphs8 needs the DejaVu fonts in {FONTS} (fonts-dejavu-core/-extra)")
    fonts = fonts[:20]
    rng = np.random.default_rng(8)
    per_font = 1600 // (10 * len(fonts))
    i = 0
    for path in fonts:
        font = ImageFont.truetype(path, 26)
        for digit in range(10):
            for _ in range(per_font):
                canvas = Image.new("L", (32, 32), 0)
                ImageDraw.Draw(canvas).text((16, 16), str(digit), fill=255, font=font,
                                            anchor="mm")
                canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR,
                                       translate=(rng.integers(-2, 3), rng.integers(-2, 3)))
                side = int(32 * rng.uniform(0.9, 1.15))
                canvas = canvas.resize((side, side), Image.BILINEAR)
                # Back to 32x32 around the centre, then the 8x8 average (as sklearn's digits).
                frame = Image.new("L", (32, 32), 0)
                frame.paste(canvas, ((32 - side) // 2, (32 - side) // 2))
                small = np.asarray(frame.resize((8, 8), Image.BOX), dtype=np.float64)
                save(out, "glyphs8", str(digit), i, np.clip(small * 1.6, 0, 255))
                i += 1


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion16(out):
    images = read_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(16)
    for c, name in enumerate(FASHION_CLASSES):
        picked = rng.choice(np.flatnonzero(labels == c), size=100, replace=False)
        for i in sorted(picked):
            small = Image.fromarray(images[i]).resize((16, 16), Image.BOX)
            save(out, "fashion16", name, int(i), np.asarray(small))


def shape_points(kind, cx, cy, r):
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle-up":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle-down":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx, cy + r)]
    if kind == "arrow-right":
        return [(cx - r, cy - r / 3), (cx, cy - r / 3), (cx, cy - r), (cx + r, cy),
                (cx, cy + r), (cx, cy + r / 3), (cx - r, cy + r / 3)]
    if kind == "arrow-left":
        return [(2 * cx - x, y) for x, y in shape_points("arrow-right", cx, cy, r)]
    if kind == "ell":
        return [(cx - r, cy - r), (cx - r / 3, cy - r), (cx - r / 3, cy + r / 3),
                (cx + r, cy + r / 3), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "mirrored-ell":
        return [(2 * cx - x, y) for x, y in shape_points("ell", cx, cy, r)]
    raise ValueError(kind)


SHAPES = ["circle", "square", "triangle-up", "triangle-down", "cross",
          "arrow-left", "arrow-right", "ell", "mirrored-ell"]


def shapes32(out):
    rng = np.random.default_rng(32)
    kinds = [k for k in SHAPES if k != "triangle-down"]  # eight classes
    i = 0
    for kind in kinds:
        for _ in range(150):
            img = Image.new("L", (32, 32), 0)
            draw = ImageDraw.Draw(img)
            r = rng.uniform(6, 12)
            cx, cy = rng.uniform(r + 1, 31 - r, size=2)
            width = int(rng.integers(1, 4))
            shade = int(rng.integers(150, 256))
            if kind == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=shade, width=width)
            elif kind == "cross":
                draw.line([cx - r, cy, cx + r, cy], fill=shade, width=width)
                draw.line([cx, cy - r, cx, cy + r], fill=shade, width=width)
            else:
                pts = shape_points(kind, cx, cy, r)
                draw.line(pts + pts[:1], fill=shade, width=width)
            noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 18, size=(32, 32))
            save(out, "shapes32", kind, i, np.clip(noisy, 0, 255))
            i += 1


MAKERS = {"glyphs8": glyphs8, "fashion16": fashion16, "shapes32": shapes32}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--only", choices=sorted(MAKERS))
    args = parser.parse_args()
    for name, make in MAKERS.items():
        if args.only in (None, name):
            make(args.out)
