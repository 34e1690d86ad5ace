"""
The glyph PCA's exact int8 products (int8_matmul.py) on one device against the CPU: the pixel counts
X^T X must be equal, the projection equal up to float rounding; and the time of each. bench/gpu_check.sh
runs it at the abs table's shape on the GPU.

    python bench/int8_products.py 131072 4096 3663 cuda   # rows, pixels, live axes, device
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
import int8_matmul  # noqa: E402

if len(sys.argv) != 5 or not all(a.isdigit() for a in sys.argv[1:4]):
    sys.exit(f"int8_products.py: error: expected ROWS PIXELS AXES DEVICE (e.g. 131072 4096 3663 cuda), got {sys.argv[1:]}")
V, D, n, dev = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
X = (rng.integers(0, 5, (V, D), dtype=np.uint8) == 0).astype(np.uint8)  # 0/1 bitmaps, 20% ink
W = np.linalg.qr(rng.standard_normal((D, n)))[0]  # orthonormal axes
mu = X.mean(axis=0)
out = {}
for device in (dev, "cpu"):
    t0 = time.time()
    G = int8_matmul.gram_counts(X, device=device)
    t1 = time.time()
    T = int8_matmul.centred_unit_rows(X, mu, W, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out[device] = (G, T, t1 - t0, time.time() - t1)
(G, T, g, p), (Gc, Tc, gc, pc) = out[dev], out["cpu"]
print(f"{V:,} x {D:,} bitmaps, {n:,} axes: gram {g:.2f} s on {dev}, {gc:.2f} s on cpu, equal: {torch.equal(G, Gc)}; "
      f"projection {p:.2f} s vs {pc:.2f} s, max |difference| {(T - Tc).abs().max().item():.3g}")
