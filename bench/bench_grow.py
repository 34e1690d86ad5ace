"""
What a growth stage costs next to training the whole model: one training step (forward, backward,
grad clip, fused AdamW: the work of one train.py iteration) of
  mono        all L = N + k blocks trainable (the monolithic model of the same depth)
  stage       N frozen blocks + k new ones (grow.prepare_stage: exactly what grow.py trains)
  stage_lora  the same stage with LoRA adapters on the N frozen blocks (grow.py's LoRA stages)
on the same batch. The arms run interleaved (A B C A B C ...) in one process, so a shared, noisy CPU
slows them alike; the figure is the median step time and its ratio to mono.

Memory, three ways:
  saved      bytes autograd keeps for backward (torch.autograd.graph.saved_tensors_hooks on one
             forward): the activations; also for 'stage_nograd', the stage with its frozen prefix
             explicitly under torch.no_grad(), which must equal 'stage'
  peak RSS   CPU: ru_maxrss of a separate process per arm that builds that arm and runs 2 steps
             (weights + gradients + AdamW state + activations, plus ~0.3 GB of Python/torch)
  CUDA       torch.cuda.max_memory_allocated per arm
A FLOP model (matmuls only) predicts the ratio: forward 2 FLOPs per weight per token for every
block and the head; backward 4 per weight only for the head and the new blocks (the frozen prefix
has no backward at all); attention 4*T*d per layer forward, twice that backward.

$ python bench/bench_grow.py --threads=1                            # blocks-dominated shape, CPU, ~2 min
$ python bench/bench_grow.py --threads=1 --d_model=1024 --n_head=32 --vocab=65536 --block_size=256 --batch_size=1 --steps=3
  (the 9x1024 study's shape with its 65,536-id head, short sequences: ~8 GB of RAM, several minutes)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
import grow as G
import train as T
from model import GPT, GPTConfig

ARMS = ("mono", "stage", "stage_lora")


def build(arm, a):
    torch.manual_seed(0)
    L = a.frozen + a.new
    conf = GPTConfig(vocab_size=a.vocab, block_size=a.block_size, n_layer=L, n_head=a.n_head, d_model=a.d_model,
                     embedding="random")
    model = GPT(conf, table=torch.randn(a.vocab, a.d_model).sign()).to(a.device)
    if arm != "mono":
        st = dict(stage=2, new=list(range(a.frozen, L)), depth=L, lora=arm == "stage_lora")
        G.prepare_stage(model, st, {**G.DEFAULTS, "lora_rank": a.lora_rank, "lora_alpha": float(a.lora_rank)})
    opt = T.configure_optimizer(model, T.DEFAULTS, "cuda" if a.device.startswith("cuda") else "cpu")
    return model, opt


def step(model, opt, X, Y):
    """One train.py iteration without data loading or logging."""
    _, loss = model(X, Y, return_logits=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def no_grad_prefix(model, n_frozen):
    """Run blocks 0..n_frozen-1 under torch.no_grad() (forward hooks toggle grad mode)."""
    def off(module, args):
        torch.set_grad_enabled(False)

    def on(module, args, out):
        torch.set_grad_enabled(True)
    h = model.transformer.h
    return [h[0].register_forward_pre_hook(off), h[n_frozen - 1].register_forward_hook(on)]


def saved_bytes(model, X, Y):
    acc = [0]

    def pack(t):
        acc[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(X, Y, return_logits=False)
    del loss
    return acc[0]


def flop_ratio(a):
    """Predicted stage/mono step FLOPs (matmuls only)."""
    d, V, T, L, k = a.d_model, a.vocab, a.block_size, a.frozen + a.new, a.new
    blk, head, att = 12 * d * d, d * V, 4 * T * d
    fwd = 2 * (L * blk + head) + L * att
    mono = fwd + 4 * (L * blk + head) + 2 * L * att
    stage = fwd + 4 * (k * blk + head) + 2 * k * att
    return stage / mono


def rss_child(a):
    """In a fresh process: build one arm, run 2 steps, print peak RSS ('none': imports only)."""
    if a.rss_arm != "none":
        model, opt = build(a.rss_arm, a)
        X = torch.randint(0, a.vocab, (a.batch_size, a.block_size), device=a.device)
        for _ in range(2):
            step(model, opt, X, X)
    print(json.dumps(dict(arm=a.rss_arm, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--n_head", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--frozen", type=int, default=6, help="N frozen blocks")
    p.add_argument("--new", type=int, default=3, help="k new blocks")
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per arm (after one warm-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no_rss", action="store_true", help="skip the per-arm peak-RSS processes (CPU)")
    p.add_argument("--rss_arm", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.rss_arm:
        return rss_child(a)
    if a.frozen < 1 or a.new < 1:
        sys.exit("bench_grow.py: error: --frozen and --new must be >= 1")
    L = a.frozen + a.new
    print(f"shape: {L} layers (N={a.frozen} frozen + k={a.new} new), d_model {a.d_model}, {a.n_head} heads, "
          f"vocab {a.vocab:,}, batch {a.batch_size} x {a.block_size} tokens, {a.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rss = {}
    if not a.device.startswith("cuda") and not a.no_rss:
        # first, while this process is small: Linux carries a parent's peak RSS into a fork+exec'd child
        base = [sys.executable, os.path.abspath(__file__)] + [f"--{k}={v}" for k, v in vars(a).items()
                                                              if k not in ("rss_arm", "no_rss")]
        for arm in ("none",) + ARMS:
            out = subprocess.run(base + [f"--rss_arm={arm}"], capture_output=True, text=True, check=True).stdout
            rss[arm] = json.loads(out.strip().splitlines()[-1])["maxrss_mb"]
    X = torch.randint(0, a.vocab, (a.batch_size, a.block_size), device=a.device)
    Y = torch.randint(0, a.vocab, (a.batch_size, a.block_size), device=a.device)
    models = {arm: build(arm, a) for arm in ARMS}
    res = {arm: dict(trainable=m.param_counts()["trainable"]) for arm, (m, _) in models.items()}
    for arm in rss:
        if arm in res:
            res[arm]["peak_mb"] = rss[arm]

    # activations kept for backward
    for arm, (m, _) in models.items():
        res[arm]["saved_mb"] = saved_bytes(m, X, Y) / 2 ** 20
    hooks = no_grad_prefix(models["stage"][0], a.frozen)
    nograd_mb = saved_bytes(models["stage"][0], X, Y) / 2 ** 20
    for h in hooks:
        h.remove()

    # step time, interleaved
    # wall time, and on CPU also this process's CPU time (all threads): the work done, which other
    # processes competing for the cores disturb far less than the wall clock
    times = {arm: [] for arm in ARMS}
    cpu = {arm: [] for arm in ARMS}
    for i in range(a.steps + 1):
        for arm in ARMS:
            m, opt = models[arm]
            sync(a.device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(m, opt, X, Y)
            sync(a.device)
            if i > 0:  # the first step warms up (allocations, lazy init)
                times[arm].append(time.perf_counter() - t0)
                cpu[arm].append(time.process_time() - c0)
    for arm in ARMS:
        res[arm]["step_s"] = statistics.median(times[arm])
        res[arm]["cpu_s"] = statistics.median(cpu[arm])

    # peak memory
    if a.device.startswith("cuda"):
        del models
        for arm in ARMS:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            m, opt = build(arm, a)
            for _ in range(2):
                step(m, opt, X, Y)
            torch.cuda.synchronize()
            res[arm]["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
            del m, opt
    mono = res["mono"]
    mem = "peak CUDA MB" if a.device.startswith("cuda") else "peak RSS MB (own process)"
    print(f"arm | trainable | wall s/step (median of {a.steps}) | ratio | CPU s/step | ratio | "
          f"saved activations MB | {mem}")
    for arm in ARMS:
        r = res[arm]
        print(f"{arm} | {r['trainable'] / 1e6:.2f}M | {r['step_s']:.4f} | {r['step_s'] / mono['step_s']:.3f} | "
              f"{r['cpu_s']:.4f} | {r['cpu_s'] / mono['cpu_s']:.3f} | {r['saved_mb']:.1f} | {r.get('peak_mb', float('nan')):.0f}")
    if "none" in rss:
        print(f"(peak RSS of a process that only imports torch and grow.py: {rss['none']:.0f} MB)")
    print(f"stage with the frozen prefix under an explicit torch.no_grad(): {nograd_mb:.1f} MB saved "
          f"(requires_grad=False alone: {res['stage']['saved_mb']:.1f} MB)")
    print(f"FLOP model, stage/mono: {flop_ratio(a):.3f}; measured {res['stage']['step_s'] / mono['step_s']:.3f} (wall), "
          f"{res['stage']['cpu_s'] / mono['cpu_s']:.3f} (CPU time)")
    return res


if __name__ == "__main__":
    main()
