"""
Train a frozen-glyph (or trainable-embedding) GPT. nanoGPT-shaped: defaults below, then config files
and --key=value overrides, then one training loop, readable top to bottom.

Single process (CPU or GPU):
$ python train.py config/train_shakespeare_glyph.py
DDP, N processes on one node (NCCL on GPUs, gloo on CPU):
$ torchrun --standalone --nproc_per_node=4 train.py config/paper_glyph_335m.py
Resume where the last checkpoint (out_dir/ckpt.pt) left off, with the run's own settings (only
MID_RUN_KEYS, such as max_iters, may be changed):
$ python train.py --out_dir=out-shakespeare-glyph --init_from=resume
Every key, its default and meaning:
$ python train.py --help

Other scripts (grow.py) reuse the loop: `from train import train, DEFAULTS; train({**DEFAULTS, ...},
model=my_model)`. Importing this file has no side effects.

Determinism: every batch is a function of (seed, iteration, global micro-step), and the torch RNG
(dropout) is reseeded from the same triple before every micro-step. So the data position and RNG
state are fully determined by the iteration number: resume continues exactly, and 2 ranks x k
accumulation steps compute the same micro-batches, dropout masks included, as 1 rank x 2k.

The disk side (atomic checkpoints, the log, resuming, refusing to start over a run) is checkpoint.py's;
devices, precision and DDP are common.py's; the data sampler is data/common.py's MixtureData.
"""
import math
import os
import sys
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (RunFolder, check_finite, check_tokenizer, hold_out_dir, load_table, make_out_dir,
                        model_checkpoint, model_from_checkpoint, open_run, run_checkpoint)
from common import Progress, fail, script_main, setup_runtime
from configurator import Config, defaults_from, key_docs, parse
from data.common import MixtureData
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config values: a small frozen-glyph model on the plays of Shakespeare. The comment next to
# each key is its documentation: `python train.py --help` prints them.
# I/O
out_dir = "out"  # checkpoint (ckpt.pt) and log (log.jsonl) folder
eval_interval = 250  # evaluate (and save ckpt.pt) every this many iterations
log_interval = 10  # print and log the training loss every this many iterations
eval_iters = 20  # validation batches per dataset (fixed: the same batches at every evaluation)
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # else only when the validation loss improves
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt, with its run's settings), or a checkpoint path (weights only)
overwrite = False  # let a fresh run start over in an out_dir holding a run (its files are replaced at the first save)
progress = True  # a tqdm bar on a terminal (never into a file or a pipe); False = no bar
wandb_log = False  # log to Weights & Biases
wandb_project = "glyphgpt"  # W&B project
wandb_run_name = "run"  # W&B run name
# data: a training mixture of prepared datasets (data_root/<name>/{train,val}.bin + meta.json)
data_root = ""  # folder of the prepared datasets; "" = the data/ folder next to this file
datasets = {"shakespeare": 1.0}  # name (or folder) -> sampling weight, e.g. {'shakespeare': 0.9, 'sft_qa': 0.1}
tokenizer = "bvv241-2-3"  # the tokenizer the datasets were prepared with
gradient_accumulation_steps = 1  # micro-steps per iteration in total: divided among the DDP ranks
batch_size = 12  # sequences per micro-step per rank
block_size = 256  # context length in tokens
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads (must divide d_model)
d_model = 256  # width of the residual stream
dropout = 0.0  # dropout probability in attention and MLP
bias = True  # biases in linear layers and LayerNorms
rope_base = 10000.0  # base of the rotary position frequencies
embedding = "glyph"  # glyph | glyph_unique | binary16 | random | random_bits | random_float (all frozen) | trainable
table_dim = 0  # columns of the frozen table (PCA components); 0 = d_model; narrower is repeat_interleave'd
table_path = ""  # use a table saved by `glyph_tools.py --out` instead of building one
# AdamW optimizer
learning_rate = 1e-3  # peak learning rate
max_iters = 2000  # total training iterations
weight_decay = 0.1  # AdamW weight decay of the >=2-D weights
beta1 = 0.9  # AdamW beta1
beta2 = 0.95  # AdamW beta2
grad_clip = 1.0  # clip the gradient norm at this value; 0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True  # False = constant learning_rate
warmup_iters = 100  # linear warmup iterations
lr_decay_iters = 0  # iteration where the cosine reaches min_lr; 0 = max_iters (the schedule follows the run)
min_lr = 1e-4  # learning rate at the end of the decay
# system
device = "auto"  # auto | cpu | cuda | cuda:N
dtype = "auto"  # auto (bfloat16 on capable GPUs, float32 on CPU) | float32 | bfloat16 | float16
compile = False  # torch.compile the model
seed = 1337  # seeds the initial weights, the batches and dropout
peak_flops = 0.0  # accelerator peak for MFU in FLOP/s; 0 = look the GPU up in common.PEAK_FLOPS
# planning (nothing is allocated, no data is read)
plan = False  # print parameters, memory per GPU, the largest micro-batch that fits and GPU-hours (plan.py), then exit
plan_gpu_gib = 80.0  # the GPU memory --plan fits the run into, in GiB
plan_mfu = 0.4  # the model FLOPs utilisation --plan's hours assume (of peak_flops, or an H100's bf16 peak)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

# what a resumed run may change: its length and learning-rate schedule (e.g. a lower rate after a loss
# spike), how often it evaluates and logs, paths and hardware. The rest is the run's own (its checkpoint's).
MID_RUN_KEYS = ("max_iters", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "decay_lr", "grad_clip",
                "eval_interval", "log_interval", "eval_iters", "eval_only", "always_save_checkpoint", "init_from",
                "overwrite", "out_dir", "data_root", "progress", "wandb_log", "wandb_project", "wandb_run_name",
                "device", "dtype", "compile", "peak_flops", "plan", "plan_gpu_gib", "plan_mfu")


def check_config(cfg):
    """One line for the first bad value of a training key, before anything is read or written (the
    model's own keys are checked by GPTConfig)."""
    for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "log_interval", "eval_iters"):
        if cfg[key] < 1:
            fail(f"{key}={cfg[key]}: expected a positive whole number")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip",
                "seed"):
        if not cfg[key] >= 0:
            fail(f"{key}={cfg[key]}: expected a number >= 0")
    make_out_dir(cfg.out_dir, create=False)  # only checked: nothing is written before the data is read
    model_config(cfg, 1)


def model_config(cfg, vocab_size, **changes):
    """The GPTConfig of a run's config (the model keys share GPTConfig's field names)."""
    args = {f.name: cfg[f.name] for f in fields(GPTConfig) if f.name != "vocab_size"}
    return GPTConfig(vocab_size=vocab_size, **{**args, **changes})


def build_model(cfg, tok):
    """A fresh model for cfg, with its frozen table from glyph_embed (built once, cached on disk)."""
    cfg = Config(cfg)
    table, info = None, {}
    if cfg.embedding != "trainable":
        import glyph_embed
        if cfg.table_path:
            table, info = load_table(cfg.table_path, tok.fingerprint)
        else:
            table, info = glyph_embed.frozen_table(tok, kind=cfg.embedding, table_dim=cfg.table_dim or cfg.d_model)
    torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
    model = GPT(model_config(cfg, tok.vocab_size), table)
    model.table_info = info
    return model


def meta_model(cfg, vocab_size, n_layer=None):
    """cfg's model (at depth n_layer) on the meta device: shapes and requires_grad, no memory and no
    table to build, for counting parameters, FLOPs and memory before anything runs."""
    from glyph_embed import table_width
    conf = model_config(cfg, vocab_size, n_layer=n_layer or cfg["n_layer"])
    width = table_width(cfg["embedding"], cfg["table_dim"] or cfg["d_model"])
    with torch.device("meta"):
        return GPT(conf, None if conf.embedding == "trainable" else torch.empty(vocab_size, width))


def start_model(cfg, tok, ckpt, model=None):
    """The model a run trains: the checkpoint's (resume, or init_from a path), the given one (grow.py's
    stage, with the checkpoint's weights when it resumes), or a fresh one. A checkpoint's weights decide
    the architecture, so cfg takes its model keys."""
    if ckpt is None:
        return model if model is not None else build_model(cfg, tok)
    source = cfg.init_from if cfg.init_from != "resume" else run_checkpoint(cfg.out_dir)
    check_tokenizer(ckpt, tok, f"checkpoint {source}")
    if model is not None:
        check_finite(ckpt["model"], f"checkpoint {source}: not used")
        model.load_state_dict(ckpt["model"])
        return model
    if ckpt["kind"] != "gpt":
        fail(f"{source} is a {ckpt['kind']!r} checkpoint: train.py continues only 'gpt' checkpoints "
             f"(of train.py, or a finished grow.py stage)")
    model = model_from_checkpoint(ckpt, "cpu", source)
    cfg.update({k: getattr(model.config, k) for k in ("n_layer", "n_head", "d_model", "bias", "embedding", "rope_base")})
    if cfg.block_size > model.config.block_size:
        fail(f"block_size={cfg.block_size} exceeds the model's context {model.config.block_size}")
    return model


# -----------------------------------------------------------------------------
# pieces of the loop

def get_lr(it, cfg):
    """Linear warmup, cosine decay to min_lr at lr_decay_iters (0: at max_iters), then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def configure_optimizer(model, cfg, device_type):
    """AdamW over the parameters with requires_grad=True only (a frozen table, or layers frozen by
    grow.py, never enter it); weight decay on >=2-D weights, none on biases and LayerNorms."""
    cfg = Config(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    # fused AdamW: one kernel per step on CUDA, and a vectorised loop on CPU (torch >= 2.4)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device_type in ("cuda", "cpu"))


@torch.no_grad()
def evaluate(model, data, cfg, ctx, rank=0, world=1):
    """Mean loss and bits per byte on the fixed validation batches of every dataset, averaged over
    ranks (each rank takes every world-th batch), plus the mixture-weighted average."""
    eval_iters = Config(cfg).eval_iters
    was_training = model.training
    model.eval()
    out = {}
    for k, name in enumerate(data.names):
        acc = torch.zeros(2, dtype=torch.float64, device=data.device)  # loss sum, batches
        for j in range(rank, eval_iters, world):
            X, Y = data.batch("val", j, k)
            with ctx:
                _, loss = model(X, Y, return_logits=False)
            acc += torch.stack([loss.double(), torch.ones((), dtype=torch.float64, device=acc.device)])
        if world > 1:
            dist.all_reduce(acc)
        loss = (acc[0] / acc[1].clamp(min=1)).item()
        out[name] = dict(loss=loss, bpb=loss / math.log(2) / data.bytes_per_token(k))
    model.train(was_training)
    avg = lambda key: float(sum(w * out[n][key] for n, w in zip(data.names, data.weights)))
    return dict(val_loss=avg("loss"), val_bpb=avg("bpb"), val=out)


def flops_per_token(model, T):
    """Training FLOPs per token, matmuls only, the way PaLM/nanoGPT count (6N + 12*L*T*d), but split
    by what actually runs: a matmul weight costs 2 FLOPs per token forward, 2 more for the gradient
    w.r.t. its input when the backward pass goes through it, and 2 more for its own gradient when it
    trains. The frozen table is a lookup: 0. Blocks below the lowest trainable one (a grow.py stage)
    get no backward at all, so they cost their forward only. Attention scores and weighted sums:
    2*2*T*d per layer forward, twice that backward (counted in full as PaLM does, though causal
    flash attention skips half). For a fully trainable model this is exactly 6N + 12*L*T*d."""
    c = model.config
    blocks = model.transformer.h
    lowest = model.first_backward_block()
    total = 0
    for i, b in enumerate(blocks):
        backward = i >= lowest
        total += sum(p.numel() * (2 + 2 * backward + 2 * p.requires_grad) for p in b.parameters() if p.dim() >= 2)
        total += (12 if backward else 4) * T * c.d_model
    head = model.lm_head.weight
    return total + head.numel() * (2 + 2 * (lowest < len(blocks)) + 2 * head.requires_grad)


def seed_of(*numbers):
    return int(np.random.SeedSequence(numbers).generate_state(1)[0])


def train_step(model, params, optimizer, scaler, data, cfg, it, rt, accum):
    """One optimisation step: gradient accumulation over this rank's micro-batches. -> the summed loss
    (a tensor on the device: reading it back is left to the caller)."""
    loss_sum = torch.zeros((), device=rt.device)
    for micro in range(accum):
        step = rt.rank * accum + micro  # the global micro-step: the same batch and dropout on any number of ranks
        if rt.ddp:  # only the last micro-step all-reduces the gradients (set before the forward)
            model.require_backward_grad_sync = micro == accum - 1
        X, Y = data.batch("train", it, step)
        torch.manual_seed(seed_of(cfg.seed, it, step))
        with rt.autocast():
            _, loss = model(X, Y, return_logits=False)
            loss = loss / accum
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def stop_if_diverged(first_nonfinite, folder):
    if first_nonfinite.item() >= 0:
        fail(f"the training loss became non-finite at iteration {first_nonfinite.item()}: stopped; "
             f"{folder.kept()} (a lower learning_rate, or a float32 run, may help)")


def training_checkpoint(model, tok, folder, **state):
    """The checkpoint of a training run: the model and the state to resume from. Never one with
    non-finite weights: it would replace the last good checkpoint with a useless one."""
    try:
        return model_checkpoint(model, tok, **state)
    except ValueError as e:
        fail(f"iteration {state['iter_num']}: {e}: stopped without saving; {folder.kept()}")


# -----------------------------------------------------------------------------
# the training loop

def train(cfg, model=None, ckpt_path=None, ckpt_extra=None, overrides=None):
    """Train per cfg (a dict with DEFAULTS' keys; extra keys are kept in the checkpoint's config). model:
    a pre-built GPT to train instead of a fresh one; only its parameters with requires_grad=True are
    optimised. ckpt_path: where checkpoints go and resume reads from (default out_dir/ckpt.pt).
    ckpt_extra: entries merged into every checkpoint. overrides: the keys the command line set (a
    resumed run takes the rest from its checkpoint; default: all of cfg).
    Returns dict(val_loss, val_bpb, val, iters)."""
    cfg = Config({**DEFAULTS, **cfg})
    ckpt_path = ckpt_path or run_checkpoint(cfg.out_dir)
    cfg, ckpt = open_run(cfg, cfg if overrides is None else overrides, MID_RUN_KEYS, ckpt_path)
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype)
    if cfg.gradient_accumulation_steps % rt.world:
        fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is not divisible by the {rt.world} "
             f"DDP ranks: use a multiple of {rt.world}")
    accum = cfg.gradient_accumulation_steps // rt.world  # micro-steps per rank per iteration

    # -- everything that can fail on bad input happens before anything is written to out_dir --
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer(cfg.tokenizer)
    model = start_model(cfg, tok, ckpt, model)
    if model.config.vocab_size != tok.vocab_size:
        fail(f"model vocab_size {model.config.vocab_size} != tokenizer {tok.name!r} vocab_size {tok.vocab_size}")
    data = MixtureData(cfg, tok, rt.device)
    model.to(rt.device)
    optimizer = configure_optimizer(model, cfg, rt.device_type)
    params = [p for p in model.parameters() if p.requires_grad]  # what the optimizer trains (and clips)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=(rt.dtype == "float16"))
    resumed_at, best_val_loss = None, float("inf")
    if cfg.init_from == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler.is_enabled() and ckpt.get("scaler"):  # float16: the loss scale it had reached
            scaler.load_state_dict(ckpt["scaler"])
        resumed_at, best_val_loss = ckpt["iter_num"], ckpt.get("best_val_loss", float("inf"))
        if rt.master:
            print(f"resuming from iteration {resumed_at} of {ckpt_path}")
    iter_num = resumed_at or 0
    raw_model = model
    if cfg.compile:
        print("compiling the model... (takes a minute)")
        model = torch.compile(model)
    eval_model = model  # validation runs without the DDP wrapper (no gradient hooks, no syncs)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)

    # -- from here on we write to out_dir --
    folder = RunFolder(cfg.out_dir, ckpt_path, resumed_at, rt.master)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    progress = Progress(cfg, rt, iter_num, flops_per_token(raw_model, cfg.block_size), tokens_per_iter)
    progress.write(f"{raw_model.describe()}; {tokens_per_iter:,} tokens per iteration on {rt.world} rank(s), "
                   f"{rt.device}, {rt.dtype}; {progress.fpt / 1e6:.1f} MFLOP per token")
    first_nonfinite = torch.full((), -1, device=rt.device)  # iteration of the first non-finite loss
    result = {}
    while True:
        rec = {"iter": iter_num}
        # evaluate (deterministic: a resumed run re-logs the same numbers) and checkpoint
        if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only:
            stop_if_diverged(first_nonfinite, folder)
            ev = evaluate(eval_model, data, cfg, rt.autocast(), rt.rank, rt.world)
            rec.update(ev)
            result = dict(ev, iters=iter_num)
            progress.evaluated(iter_num, ev)
            if not math.isfinite(ev["val_loss"]):
                fail(f"iteration {iter_num}: the validation loss is {ev['val_loss']}: stopped; {folder.kept()}")
            improved = ev["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, ev["val_loss"])
            if iter_num not in (0, resumed_at) and not cfg.eval_only and (improved or cfg.always_save_checkpoint):
                state = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), iter_num=iter_num,
                             best_val_loss=best_val_loss, config=dict(cfg), metrics=ev,
                             data_state=dict(seed=cfg.seed, iter_num=iter_num, datasets=dict(cfg.datasets)))
                folder.save(training_checkpoint(raw_model, tok, folder, **state, **(ckpt_extra or {})), iter_num)
                progress.write(f"saved {ckpt_path} (iteration {iter_num})")
        if iter_num >= cfg.max_iters or cfg.eval_only:
            if len(rec) > 1:
                folder.write(rec)
            break

        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = train_step(model, params, optimizer, scaler, data, cfg, iter_num, rt, accum)
        # noted on the device (no sync per step), checked at the next log line or evaluation
        first_nonfinite.masked_fill_((first_nonfinite < 0) & ~torch.isfinite(loss_sum), iter_num)
        progress.stepped()
        if iter_num % cfg.log_interval == 0:
            if rt.ddp:
                dist.all_reduce(loss_sum)
                loss_sum /= rt.world
            lossf = loss_sum.item()  # also waits for the GPU, so the throughput is real
            stop_if_diverged(first_nonfinite, folder)
            rec.update(progress.logged(iter_num, lossf, lr))
        if len(rec) > 1:
            folder.write(rec)
        iter_num += 1
    progress.close()
    return result


# -----------------------------------------------------------------------------
# the command line

def main(argv):
    overrides = parse(DEFAULTS, argv, docs=key_docs(__file__), prog="train.py")
    cfg = Config({**DEFAULTS, **overrides})
    if cfg.plan:  # before anything is read or written
        import plan
        model = meta_model(cfg, plan.vocab_size_of(cfg.tokenizer))
        plan.plan_run(cfg, model, flops_per_token(model, cfg.block_size))
        return
    ckpt_path = run_checkpoint(cfg.out_dir)
    try:
        with hold_out_dir(cfg.out_dir):  # one run at a time in an out_dir
            result = train(cfg, overrides=overrides)
    except KeyboardInterrupt:  # Ctrl-C: where things stand, in one line
        print(interrupted_hint(ckpt_path, cfg), file=sys.stderr)
        raise
    if result and int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {result['iters']} iterations, val loss {result['val_loss']:.4f}, "
              f"{result['val_bpb']:.4f} bits/byte; checkpoint {ckpt_path}")


def interrupted_hint(ckpt_path, cfg):
    if os.path.exists(ckpt_path):
        return (f"interrupted; the last checkpoint is {ckpt_path}: resume with "
                f"python train.py --out_dir={cfg.out_dir} --init_from=resume")
    return (f"interrupted before the first checkpoint (written at iteration eval_interval={cfg.eval_interval}): "
            f"nothing to resume in {cfg.out_dir}")


if __name__ == "__main__":
    script_main("train.py", main)
