"""Writes the UCI digits as an MNIST IDX folder (train- and t10k- images and labels): each 8x8
digit scaled (bilinear) to 20x20 and centred in a 28x28 frame with a 4-pixel margin, as MNIST
lays out its digits, in 0..255. Used for the RTAS run on an IDX folder (docs/RESULTS.md).

    python3 docs/results/rtas-idx-28/make_idx.py OUT_DIR [digits.csv.gz]
"""
import gzip
import os
import random
import struct
import sys


def scale(img8):
    out = [0] * 784
    for y in range(20):
        for x in range(20):
            sy = (y + 0.5) * 8 / 20 - 0.5
            sx = (x + 0.5) * 8 / 20 - 0.5
            y0 = max(0, min(7, int(sy // 1)))
            x0 = max(0, min(7, int(sx // 1)))
            y1, x1 = min(7, y0 + 1), min(7, x0 + 1)
            fy = min(1, max(0, sy - y0))
            fx = min(1, max(0, sx - x0))
            v = (img8[y0 * 8 + x0] * (1 - fx) * (1 - fy) + img8[y0 * 8 + x1] * fx * (1 - fy)
                 + img8[y1 * 8 + x0] * (1 - fx) * fy + img8[y1 * 8 + x1] * fx * fy)
            out[(y + 4) * 28 + (x + 4)] = max(0, min(255, round(v * 255 / 16)))
    return out


def main():
    out = sys.argv[1]
    src = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "assets", "data", "digits.csv.gz")
    rows = [l.strip().split(",") for l in gzip.open(src, "rt") if l.strip()]
    rows = [r for r in rows if all(x.strip().lstrip("-").isdigit() for x in r)]
    random.seed(0)
    order = list(range(len(rows)))
    random.shuffle(order)
    os.makedirs(out, exist_ok=True)
    for name, ids in {"t10k": order[:360], "train": order[360:]}.items():
        with open(os.path.join(out, f"{name}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(ids), 28, 28))
            for i in ids:
                f.write(bytes(scale([int(v) for v in rows[i][:64]])))
        with open(os.path.join(out, f"{name}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, len(ids)))
            f.write(bytes(int(rows[i][64]) for i in ids))


if __name__ == "__main__":
    main()
