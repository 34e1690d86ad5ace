"""
What a run will need before it runs: `python train.py CONFIG --plan` (grow.py's --plan_only prints the
same per stage). The model is built on the meta device (no memory, no table, no data), so even the
2.28B abs config plans in a second.

The memory model, per GPU, in bytes (eager PyTorch; torch.compile fuses elementwise ops and needs less):
- weights: every parameter in float32 (bf16 autocast keeps float32 masters), the frozen table
  shown apart;
- gradients: float32, trainable parameters only; under DDP (torchrun) the gradient buckets are one
  more copy of them;
- AdamW: float32 m and v per trainable parameter (fused AdamW updates in place: no temporaries);
- activations, what autograd keeps for backward at micro-batch B and context T, per token, for each
  block from the lowest trainable one up (blocks below it keep nothing: see grow.py). A pre-LN block
  with SDPA (flash, no [T, T] scores) keeps: its input (the residual, float32) and ln_1's output,
  c_attn's output (v is a view of it), the rotated q and k, the attention output, the mid-block
  residual and ln_2's output, c_fc's output and the GELU's output, 4d-wide each:
      float32:          4 + 4 + 12 + 8 + 4 + 4 + 4 + 16 + 16 = 72 d bytes
      bf16/fp16 autocast: the residual and LayerNorm inputs stay float32, linear inputs are saved
                        as their bf16 casts: 4 + 2 + 6 + 4 + 2 + 4 + 2 + 8 + 8 = 40 d bytes
  (+ 2 d bytes of dropout masks when dropout > 0; a LoRA stage's rank-r adapter outputs are not
  counted), then ln_f's input and output;
- the head on a GPU (plain route): float32 [B, T, V] log-probabilities kept for backward and two more
  float32 [B, T, V] gradients alive in its backward: 12 V bytes per token, which dominate at
  65,536 / 131,072 ids; on the CPU (fused_head, float32): one chunk of logits, the head's gradient
  (computed in the forward pass) and the input's gradient.
Peak = the sum of all of these: an upper bound (gradients are not all allocated while every
activation is alive), tests/test_plan.py checks it against the measured peak on CPU within 15%.

Time: train.flops_per_token at an assumed MFU of the GPU's bf16 peak (common.PEAK_FLOPS, H100 unless
peak_flops is set).
"""
import math

import fused_head
from common import PEAK_FLOPS, fail
from unicode_tokenizer import LAYOUTS, RELEASED, get_tokenizer

GIB = 2 ** 30
PLAN_GPU = "H100"  # whose peak (common.PEAK_FLOPS) the hours assume when peak_flops is 0


def vocab_size_of(name):
    """The vocabulary size of a tokenizer name: from the released layouts without building one."""
    base = name.removesuffix("-lossless")
    if base in RELEASED:
        return LAYOUTS[RELEASED[base][0]][0]
    return get_tokenizer(name).vocab_size


def compute_dtype(cfg):
    """The precision the run computes in on a GPU: common.resolve_dtype's rule without asking one
    ('auto' is bfloat16, which every GPU in common.PEAK_FLOPS since the A100 has)."""
    return "bfloat16" if cfg["dtype"] == "auto" else cfg["dtype"]


def memory(model, batch_size, block_size, device="cuda", dtype="bfloat16"):
    """-> dict of bytes per GPU (or for the CPU process): weights, table, grads, adamw, activations,
    head (the [B, T, V] part, or the CPU fused head's buffers), total; per_sequence: the bytes one
    more sequence of the micro-batch adds (for the largest micro-batch that fits). DDP's gradient
    buckets (one more copy of grads under torchrun) are not in total: describe() names them."""
    c = model.config
    d, V = c.d_model, c.vocab_size
    params = list(model.parameters())
    table = model.frozen_table.numel() * 4 if model.frozen_table is not None else 0
    trainable = sum(p.numel() for p in params if p.requires_grad)
    out = dict(weights=sum(p.numel() for p in params) * 4 - table, table=table, grads=4 * trainable,
               adamw=8 * trainable)
    half = dtype != "float32"
    per_layer = (40 if half else 72) * d + (2 * d if c.dropout > 0 else 0)
    n_backward = len(model.transformer.h) - model.first_backward_block()
    per_token = n_backward * per_layer + (4 + (2 if half else 4)) * d * (n_backward > 0)  # + ln_f in and out
    N = batch_size * block_size
    if device == "cpu":  # fused_head: a chunk of float32 logits, the head's and the input's gradients
        chunk = min(N, max(1, fused_head.CHUNK_ELEMS // V))
        head = 4 * chunk * V + 4 * V * d + 4 * N * d
        head_per_token = 4 * d
    else:
        head_per_token = 12 * V
        head = head_per_token * N
    out["activations"] = per_token * N
    out["head"] = head
    out["total"] = sum(out.values())
    out["per_sequence"] = (per_token + head_per_token) * block_size
    return out


def largest_batch(mem, batch_size, gib):
    """The largest micro-batch whose memory fits in gib GiB (0 when not even one sequence does)."""
    fixed = mem["total"] - mem["per_sequence"] * batch_size
    return max(0, int((gib * GIB - fixed) // mem["per_sequence"]))


def peak_flops(cfg):
    return cfg["peak_flops"] or dict(PEAK_FLOPS)[PLAN_GPU]


def gpu_hours(flops, cfg, iters):
    """GPU-hours for `iters` iterations at cfg's tokens per iteration, `flops` training FLOPs per token
    (train.flops_per_token) and plan_mfu of the peak."""
    tokens = iters * cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    return tokens * flops / (peak_flops(cfg) * cfg["plan_mfu"]) / 3600


def check_plan_config(cfg):
    if not cfg["plan_gpu_gib"] > 0:
        fail(f"plan_gpu_gib={cfg['plan_gpu_gib']}: expected a positive number of GiB")
    if not 0 < cfg["plan_mfu"] <= 1:
        fail(f"plan_mfu={cfg['plan_mfu']}: expected a fraction in (0, 1]")


def gib(n):
    return f"{n / GIB:.2f} GiB"


def hours_text(h):
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def describe(model, cfg, iters, flops):
    """The plan of one model (a run, or one grow.py stage; on the meta device: train.meta_model) with
    `flops` training FLOPs per token, as lines of text."""
    check_plan_config(cfg)
    dtype = compute_dtype(cfg)
    B, T = cfg["batch_size"], cfg["block_size"]
    counts = model.param_counts()
    mem = memory(model, B, T, "cuda", dtype)
    fit = largest_batch(mem, B, cfg["plan_gpu_gib"])
    hours = gpu_hours(flops, cfg, iters)
    peak = "peak_flops" if cfg["peak_flops"] else PLAN_GPU
    lines = [
        f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable, {counts['frozen']:,} frozen",
        f"tokens per iteration: {cfg['gradient_accumulation_steps'] * B * T:,} "
        f"({cfg['gradient_accumulation_steps']} micro-steps x {B} x {T})",
        f"memory per GPU at micro-batch {B} x {T}, {dtype} autocast, eager:",
        f"  weights (float32)     {gib(mem['weights'])}",
        f"  frozen table          {gib(mem['table'])}",
        f"  gradients (float32)   {gib(mem['grads'])}  (+{gib(mem['grads'])} DDP buckets under torchrun)",
        f"  AdamW m, v (float32)  {gib(mem['adamw'])}",
        f"  activations           {gib(mem['activations'])}  ({(mem['activations'] // (B * T)):,} bytes per token)",
        f"  logits [B, T, V]      {gib(mem['head'])}  (float32, {mem['head'] // (B * T):,} bytes per token)",
        f"  total                 {gib(mem['total'])}  ({'fits' if mem['total'] <= cfg['plan_gpu_gib'] * GIB else 'does NOT fit'}"
        f" in {cfg['plan_gpu_gib']:g} GiB)",
        f"largest micro-batch in {cfg['plan_gpu_gib']:g} GiB: {fit}"
        + (f" (then gradient_accumulation_steps could be {math.ceil(cfg['gradient_accumulation_steps'] * B / fit)})"
           if fit and fit != B else ""),
        f"time: {flops / 1e9:.2f} GFLOP per token; {iters:,} iterations = {hours_text(hours)} GPU-hours "
        f"at {100 * cfg['plan_mfu']:g}% MFU of {peak} ({peak_flops(cfg) / 1e12:g} TFLOP/s bf16), "
        f"{hours_text(hours / 8)} hours on 8 GPUs (ideal scaling)",
    ]
    return lines


def plan_run(cfg, model, flops):
    """train.py --plan: print the plan of cfg's run (model: train.meta_model's). -> the lines printed."""
    lines = [f"plan of a {cfg['n_layer']} x {cfg['d_model']} model, {model.config.vocab_size:,} ids, "
             f"embedding {cfg['embedding']}"] + describe(model, cfg, cfg["max_iters"], flops)
    print("\n".join(lines))
    return lines


def plan_stages(cfg, stages, models, flops):
    """grow.py --plan_only: the stages, then each stage's plan (models: its meta models, prepared as grow.py prepares
    them; flops: their training FLOPs per token). -> the lines printed."""
    lines, hours = ["stage | new layers | depth | LoRA | trainable | frozen | iters | tokens | lr"], 0
    for st, m in zip(stages, models):
        c = m.param_counts()
        lines.append(f"{st['stage']} | {st['layers']} | {st['depth']} | {'yes' if st['lora'] else 'no'} | "
                     f"{c['trainable'] / 1e6:.1f}M ({c['trainable']:,}) | {c['frozen'] / 1e6:.1f}M ({c['frozen']:,}) | "
                     f"{st['iters']} | {st['tokens']:,} | {st['lr']:g}")
    for st, m, f in zip(stages, models, flops):
        lines.append(f"-- stage {st['stage']}: depth {st['depth']}, {st['iters']:,} iterations")
        lines += describe(m, cfg, st["iters"], f)
        hours += gpu_hours(f, cfg, st["iters"])
    lines.append(f"all {len(stages)} stages: {hours_text(hours)} GPU-hours at {100 * cfg['plan_mfu']:g}% MFU")
    print("\n".join(lines))
    return lines


