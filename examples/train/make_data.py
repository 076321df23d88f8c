#!/usr/bin/env python3
"""Writes the digits shards and the held-out test set of examples/train/data/.

Uses scikit-learn's bundled 8x8 digits (1,797 images, `load_digits`, no
download). Deterministic (fixed seed): re-running it rewrites the same bytes.

Split: 297 images (a seeded shuffle's first 297) are the held-out test set
`test.bin`; the other 1,500 are dealt to 8 shards `shard-0.bin`..`shard-7.bin`,
mildly non-iid: an image of label c goes to shard c % 8 with probability 0.3,
otherwise to a uniformly random shard. So every shard sees every class, but
shard k holds about 3x more of classes k (and k + 8) than the others.

Format (little-endian): b"AGTD", u32 version 1, u32 features (64),
u32 classes (10), u32 n, then n records of 64 pixel bytes (0..16) and one
label byte (0..9). See README.md.

Run: python3 -m venv target/train-venv && target/train-venv/bin/pip install
scikit-learn && target/train-venv/bin/python examples/train/make_data.py
"""

import hashlib
import os
import struct

import numpy as np
from sklearn.datasets import load_digits

SHARDS = 8
TEST = 297
SEED = 20261202


def encode(x, y):
    out = bytearray(b"AGTD")
    out += struct.pack("<IIII", 1, 64, 10, len(y))
    for row, label in zip(x, y):
        out += bytes(int(v) for v in row)
        out.append(int(label))
    return bytes(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.join(here, "data")
    os.makedirs(data, exist_ok=True)
    digits = load_digits()
    x = digits.data.astype(np.uint8)
    y = digits.target.astype(np.uint8)
    assert x.shape == (1797, 64) and x.max() <= 16
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(y))
    test, train = order[:TEST], order[TEST:]
    files = {"test.bin": encode(x[test], y[test])}
    owner = []
    for i in train:
        if rng.random() < 0.3:
            owner.append(int(y[i]) % SHARDS)
        else:
            owner.append(int(rng.integers(SHARDS)))
    owner = np.array(owner)
    for k in range(SHARDS):
        idx = train[owner == k]
        files[f"shard-{k}.bin"] = encode(x[idx], y[idx])
    sums = []
    for name in sorted(files):
        with open(os.path.join(data, name), "wb") as f:
            f.write(files[name])
        sums.append(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n")
        print(name, (len(files[name]) - 20) // 65, "samples")
    with open(os.path.join(data, "SHA256SUMS"), "w") as f:
        f.writelines(sums)


if __name__ == "__main__":
    main()
