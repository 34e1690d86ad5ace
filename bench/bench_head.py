"""
The CPU training path's output head + cross-entropy (fused_head.head_loss) against the plain route
(F.linear, then F.cross_entropy, then autograd), forward + backward, taking turns in one process.

$ python bench/bench_head.py                  # the quick-start shape: 3,072 rows x 128 wide, 65,536 ids
$ python bench/bench_head.py --d_model=256 --rounds=6
"""
import os
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fused_head  # noqa: E402
from configurator import configure, defaults_from, key_docs  # noqa: E402

rows = 12 * 256  # tokens per micro-step (batch_size x block_size)
d_model = 128  # width of the hidden states
vocab_size = 65536  # rows of the head
rounds = 4  # turns per route; the best of them is reported
threads = 0  # torch threads; 0 = torch's default
DEFAULTS = defaults_from(globals())


def main(argv):
    cfg = configure(DEFAULTS, argv, verbose=False, docs=key_docs(__file__), prog="bench_head.py")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["rows"], cfg["d_model"], generator=g, requires_grad=True)
    w = (torch.randn(cfg["vocab_size"], cfg["d_model"], generator=g) * 0.02).requires_grad_()
    b = torch.zeros(cfg["vocab_size"], requires_grad=True)
    t = torch.randint(0, cfg["vocab_size"], (cfg["rows"],), generator=g)
    routes = {"plain": lambda: F.cross_entropy(F.linear(x, w, b), t, ignore_index=-1),
              "fused": lambda: fused_head.head_loss(x, w, b, t)}
    best = {}
    for _ in range(cfg["rounds"]):
        for name, loss in routes.items():
            x.grad = w.grad = b.grad = None
            t0 = time.perf_counter()
            loss().backward()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    print(f"{cfg['rows']:,} rows x {cfg['d_model']} wide, {cfg['vocab_size']:,} ids, {torch.get_num_threads()} threads, "
          f"best of {cfg['rounds']}")
    for name, s in best.items():
        print(f"  {name}: {1e3 * s:.0f} ms forward + backward, {best['plain'] / s:.2f}x the plain route")


if __name__ == "__main__":
    main(sys.argv[1:])
