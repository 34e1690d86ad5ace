"""
One optimisation step of every full-size config on the CPU, at its real width, depth and vocabulary:
micro-batch 1, a short context, random token ids (no data needed), the loop's own pieces
(model.GPT's CPU forward, train.configure_optimizer's fused AdamW, gradient clipping). A shape or
plumbing error at width 4096 or with 131,072 ids shows here, not on a rented node. Not run in CI
(minutes per config, up to ~20 GB of memory).

The frozen table is a random one of the config's shape (building the 131,072 x 4096 glyph table takes
minutes and is no part of what is checked here); the embedding kind is the config's, so the same
code runs. A grow.py config steps its last stage (full depth, LoRA adapters where the schedule has
them), or, when plan.py says that does not fit in the memory available now, its deepest stage that
does; the output says which.

$ python bench/full_shape_step.py                       # every config/paper_*.py and full-size grow_*.py
$ python bench/full_shape_step.py config/paper_glyph_335m.py --block_size=64
$ python bench/full_shape_step.py config/grow_abs_4096.py --stage=5   # that stage, whatever memory is free
"""
import glob
import math
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grow  # noqa: E402
import plan  # noqa: E402
import train  # noqa: E402
from glyph_embed import table_width  # noqa: E402
from common import script_main  # noqa: E402
from configurator import read_config_file  # noqa: E402
from model import GPT  # noqa: E402

FULL_SIZE_D = 1024  # configs this wide or wider are the papers' shapes (the Shakespeare demos are narrower)
HEADROOM = 2 * 2 ** 30  # memory left to the rest of the machine


def meminfo(key):
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def full_size_configs():
    paths = sorted(glob.glob(os.path.join(ROOT, "config", "paper_*.py")) + glob.glob(os.path.join(ROOT, "config", "grow_*.py")))
    out = []
    for p in paths:
        keys = read_config_file(p)
        if keys.get("d_model", 0) >= FULL_SIZE_D and (set(keys) <= set(train.DEFAULTS) or "growth" in keys):
            out.append(p)  # merge.py's configs train nothing
    return out


def real_model(cfg, vocab, stage=None):
    """The config's model (or one grow.py stage of it) with real weights and a random frozen table."""
    depth = stage["depth"] if stage else cfg["n_layer"]
    conf = train.model_config(cfg, vocab, n_layer=depth)
    table = None
    if conf.embedding != "trainable":
        table = torch.randn(vocab, table_width(cfg["embedding"], cfg["table_dim"] or cfg["d_model"]))
    torch.manual_seed(cfg["seed"])
    model = GPT(conf, table)
    del table
    if stage:
        grow.prepare_stage(model, stage, cfg, first_from_scratch=stage["stage"] == 1)
    return model


def step_config(path, block_size, want_stage=0):
    keys = read_config_file(path)
    is_grow = "growth" in keys
    cfg = {**(grow.DEFAULTS if is_grow else train.DEFAULTS), **keys, "batch_size": 1, "block_size": block_size}
    vocab = plan.vocab_size_of(cfg["tokenizer"])
    stage, what = None, "the whole model"
    if is_grow:
        free = meminfo("MemAvailable") - HEADROOM
        stages = grow.make_plan(cfg)
        if want_stage:
            stage = stages[want_stage - 1]
        else:  # the deepest stage whose model (built on the meta device, as the run prepares it) fits
            fits = [st for st, m in zip(stages, grow.planned_models(cfg, stages, vocab))
                    if plan.memory(m, 1, block_size, "cpu", "float32")["total"] <= free]
            stage = fits[-1] if fits else None
        if stage is None:
            return f"{os.path.basename(path)}: no stage fits in {free / 2 ** 30:.1f} GiB of available memory: not stepped"
        what = (f"stage {stage['stage']}/{len(stages)} (depth {stage['depth']}, new layers {stage['layers']}"
                f"{', LoRA on the rest' if stage['lora'] else ''})")
    t0 = time.perf_counter()
    model = real_model(cfg, vocab, stage)
    predicted = plan.memory(model, 1, block_size, "cpu", "float32")["total"]
    optimizer = train.configure_optimizer(model, cfg, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    X, Y = (torch.randint(0, vocab, (1, block_size), generator=g) for _ in range(2))
    t1 = time.perf_counter()
    _, loss = model(X, Y, return_logits=False)
    loss.backward()
    if cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t2 = time.perf_counter()
    with torch.no_grad():
        after = model(X, Y, return_logits=False)[1].item()
    c = model.param_counts()
    ok = math.isfinite(loss.item()) and math.isfinite(after)
    return (f"{os.path.basename(path)}: {what}, {c['total'] / 1e6:,.1f}M parameters ({c['trainable'] / 1e6:,.1f}M trainable), "
            f"{vocab:,} ids, 1 x {block_size}: loss {loss.item():.4f} (ln V = {math.log(vocab):.4f}), after the step "
            f"{after:.4f}; build {t1 - t0:.1f} s, step {t2 - t1:.1f} s; peak RSS {peak_rss() / 2 ** 30:.1f} GiB "
            f"(plan.py, CPU float32: {predicted / 2 ** 30:.1f} GiB + the process){'' if ok else '  NON-FINITE'}")


def main(argv):
    block_size, stage = 64, 0
    paths = []
    for a in argv:
        if a.startswith("--block_size="):
            block_size = int(a.split("=", 1)[1])
        elif a.startswith("--stage="):  # a grow.py config's stage (1-based), whatever memory is available
            stage = int(a.split("=", 1)[1])
        else:
            paths.append(a)
    if len(paths) == 1:
        print(step_config(paths[0], block_size, stage), flush=True)
        return
    for p in paths or full_size_configs():  # one process each: its own memory and peak RSS
        subprocess.run([sys.executable, __file__, p, f"--block_size={block_size}"], check=False)


if __name__ == "__main__":
    script_main("full_shape_step.py", main)
