"""
Cost of the merge: tokens/s of the merged model vs its experts run alone, side by side in one run.

The merged model runs every expert in full, so its floor is the SUM of the experts' own times; the
overhead is what the averaging adds on top: time(merge) / (time(expert 1) + ... + time(expert K)) - 1
(target: <= 10%). Three workloads: scoring (forward with logits for every position), the loss path
(return_logits=False, as train.py's validation), and generation with the KV caches (B sequences,
one token at a time). Random weights: speed does not depend on training.

$ python bench/bench_merge.py                         # CPU preset: two experts of the demonstration's size
$ python bench/bench_merge.py --preset=gpu            # two 16x1024 (335M) experts, bf16 autocast
$ python bench/bench_merge.py --threads=1 --reps=5
"""
import json
import statistics
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
from configurator import ConfigError, configure, defaults_from
from common import autocast, resolve_device
from model import GPT, GPTConfig, MergedGPT

# -----------------------------------------------------------------------------
preset = "cpu"  # cpu | gpu: the expert shapes and batch below, unless overridden
experts = ""  # "n_layer x d_model, ..." e.g. "4x128,6x128"; "" = the preset's
vocab_size = 65536
batch_size = 0  # 0 = the preset's
seq_len = 0  # 0 = the preset's
gen_tokens = 0  # new tokens per generation run; 0 = the preset's
mode = "logits"
reps = 5  # timed repetitions of each measurement (interleaved: expert 1, expert 2, ..., merge); median
threads = 0  # torch threads on CPU, 0 = torch's default
device = "auto"
out = ""  # also write the figures as JSON here
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

PRESETS = {
    "cpu": dict(experts="4x128,6x128", batch_size=8, seq_len=128, gen_tokens=32),
    "gpu": dict(experts="16x1024,16x1024", batch_size=8, seq_len=1024, gen_tokens=64),
}


def build(shapes, vocab, block, device):
    table = torch.randint(0, 2, (vocab, 16)).float() * 2 - 1  # a frozen +-1 table shared by all
    out = []
    for i, (n_layer, d_model) in enumerate(shapes):
        torch.manual_seed(i)
        conf = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=max(1, d_model // 64),
                         d_model=d_model, embedding="random")
        out.append(GPT(conf, table).to(device).eval())
    return out


def timer(device):
    def now():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def measure(fns, reps, now):
    """fns: {label: callable}; run each once to warm up, then `reps` interleaved rounds -> median s."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = now()
            f()
            times[k].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv):
    cfg = configure(DEFAULTS, argv, verbose=False)
    if cfg["preset"] not in PRESETS:
        raise ValueError(f"preset={cfg['preset']!r}: expected one of {', '.join(PRESETS)}")
    p = {k: cfg[k] or v for k, v in PRESETS[cfg["preset"]].items()}
    dev = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in p["experts"].split(",")]
    except ValueError:
        raise ValueError(f"experts={p['experts']!r}: expected 'n_layer x d_model' pairs, e.g. '4x128,6x128'") from None
    B, T, G = p["batch_size"], p["seq_len"], p["gen_tokens"]
    es = build(shapes, cfg["vocab_size"], max(T, G + 8), dev)
    merged = MergedGPT(es, mode=cfg["mode"]).eval()
    ctx = autocast(dev)  # what merge.py and eval.py run in: bf16 on a GPU that has it, float32 otherwise
    now = timer(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg["vocab_size"], (B, T), generator=g).to(dev)
    y = torch.randint(0, cfg["vocab_size"], (B, T), generator=g).to(dev)
    prompt = x[:, :8]

    def run(model, what):
        def f():
            with torch.no_grad(), ctx:
                if what == "forward":
                    model(x)
                elif what == "loss":
                    model(x, y, return_logits=False)
                else:
                    model.generate(prompt, G, temperature=0)
        return f

    rows = []
    for what, n_tok in (("forward", B * T), ("loss", B * T), ("generate", B * G)):
        fns = {f"expert {i}": run(e, what) for i, e in enumerate(es)}
        fns["merge"] = run(merged, what)
        t = measure(fns, cfg["reps"], now)
        sum_experts = sum(v for k, v in t.items() if k != "merge")
        rows.append(dict(workload=what, tokens=n_tok, experts_s=[t[f"expert {i}"] for i in range(len(es))],
                         sum_experts_s=sum_experts, merge_s=t["merge"],
                         sum_experts_tok_s=n_tok / sum_experts, merge_tok_s=n_tok / t["merge"],
                         overhead=t["merge"] / sum_experts - 1))
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{len(es)} experts ({p['experts']} as n_layer x d_model), vocab {cfg['vocab_size']}, mode {cfg['mode']}, "
          f"batch {B} x {T} tokens, generation {B} x {G} new tokens, {name}, median of {cfg['reps']}")
    print("| workload | experts alone, tok/s each | sum of experts, tok/s | merge, tok/s | overhead |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        each = " / ".join(f"{r['tokens'] / s:,.0f}" for s in r["experts_s"])
        print(f"| {r['workload']} | {each} | {r['sum_experts_tok_s']:,.0f} | {r['merge_tok_s']:,.0f} | "
              f"{100 * r['overhead']:+.1f}% |")
    if cfg["out"]:
        with open(cfg["out"], "w") as f:
            json.dump(dict(config={**cfg, **p}, device=name, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError) as e:
        sys.exit(f"bench_merge.py: error: {e}")
