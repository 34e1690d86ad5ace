"""
Train a frozen-glyph (or trainable-embedding) GPT. nanoGPT-shaped: defaults below, then a config file
and --key=value overrides, then one training loop, readable top to bottom.

Single process (CPU or GPU):
$ python train.py config/train_shakespeare_glyph.py
DDP, N processes on one node (NCCL on GPUs, gloo on CPU):
$ torchrun --standalone --nproc_per_node=4 train.py config/paper_glyph_335m.py
Resume exactly where the last checkpoint (out_dir/ckpt.pt) left off:
$ python train.py config/train_shakespeare_glyph.py --init_from=resume

Other scripts (grow.py) reuse the loop: `from train import train, DEFAULTS; train({**DEFAULTS, ...},
model=my_model)`. Importing this file has no side effects.

Determinism: every batch is a function of (seed, iteration, global micro-step), and the torch RNG
(dropout) is reseeded from (seed, iteration, rank) every iteration. So the data position and RNG
state are fully determined by the iteration number: resume continues exactly, and 2 ranks x k
accumulation steps see the same micro-batches as 1 rank x 2k.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from configurator import ConfigError, configure, defaults_from
from model import GPT, GPTConfig, model_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint

# -----------------------------------------------------------------------------
# default config values: a small frozen-glyph model on the plays of Shakespeare
# I/O
out_dir = "out"
eval_interval = 250
log_interval = 10
eval_iters = 20  # validation batches per dataset (fixed: the same batches at every evaluation)
eval_only = False
always_save_checkpoint = True  # else only when the validation loss improves
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), or a checkpoint path (weights only)
progress = True  # tqdm progress bar on the console
wandb_log = False
wandb_project = "glyphgpt"
wandb_run_name = "run"
# data: a training mixture of prepared datasets (data_root/<name>/{train,val}.bin + meta.json)
data_root = ""  # "" = the data/ folder next to this file
datasets = {"shakespeare": 1.0}  # name -> sampling weight, e.g. {'shakespeare': 0.9, 'sft_qa': 0.1}
tokenizer = "bvv241-2-3"
gradient_accumulation_steps = 1  # in total: divided among the DDP ranks
batch_size = 12  # sequences per micro-step per rank
block_size = 256
# model
n_layer = 4
n_head = 4
d_model = 256
dropout = 0.0
bias = True
rope_base = 10000.0
embedding = "glyph"  # glyph | glyph_unique | binary16 | random (all frozen) | trainable
table_dim = 0  # columns of the frozen table (PCA components); 0 = d_model; narrower is repeat_interleave'd
table_path = ""  # use a table saved by `glyph_embed.py --out` instead of building one
# AdamW optimizer
learning_rate = 1e-3
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 100
lr_decay_iters = 0  # 0 = max_iters
min_lr = 1e-4
# system
device = "auto"  # auto | cpu | cuda | cuda:N
dtype = "auto"  # auto (bfloat16 on capable GPUs, float32 on CPU) | float32 | bfloat16 | float16
compile = False  # torch.compile the model
seed = 1337
peak_flops = 0.0  # accelerator peak for MFU in FLOP/s; 0 = look the GPU up in PEAK_FLOPS
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

REPO = os.path.dirname(os.path.abspath(__file__))

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
              ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165.2e12), ("RTX 3090", 71e12), ("V100", 125e12)]


def fail(msg):
    raise ValueError(msg)


# -----------------------------------------------------------------------------
# data: a deterministic sampler over one or more prepared datasets

class MixtureData:
    """Batches are pure functions of (seed, split, a, b): train micro-batch b of iteration a, or
    validation batch a of dataset b. Nothing to save for resume but the iteration number."""

    def __init__(self, cfg, tok, device):
        from data.common import open_split, read_meta
        weights = cfg["datasets"]
        if not isinstance(weights, dict) or not weights:
            fail(f"datasets={weights!r}: expected a dict name -> weight, e.g. {{'shakespeare': 1.0}}")
        if any(not isinstance(w, (int, float)) or w <= 0 for w in weights.values()):
            fail(f"datasets={weights!r}: weights must be positive numbers")
        root = cfg["data_root"] or os.path.join(REPO, "data")
        self.names = list(weights)
        total = sum(weights.values())
        self.weights = np.array([weights[n] / total for n in self.names])
        self.T, self.B, self.seed, self.device = cfg["block_size"], cfg["batch_size"], cfg["seed"], device
        self.train, self.val, self.meta = [], [], []
        for name in self.names:
            d = name if os.path.isdir(name) else os.path.join(root, name)
            if not os.path.isdir(d):
                fail(f"dataset {name!r}: data directory {d} not found (run python data/{name}/prepare.py)")
            meta = read_meta(d)
            splits = [open_split(d, s, tok) for s in ("train", "val")]
            for s, arr in zip(("train", "val"), splits):
                if len(arr) <= self.T + 1:
                    fail(f"dataset {name!r}: {s} split has {len(arr):,} tokens, not more than "
                         f"block_size={self.T}: use a smaller block_size or more data")
            self.train.append(splits[0])
            self.val.append(splits[1])
            self.meta.append(meta)

    def _rows(self, arr, rng, n):
        ix = rng.integers(0, len(arr) - self.T - 1, size=n)
        return np.stack([arr[i:i + self.T + 1] for i in ix]).astype(np.int64)

    def batch(self, split, a, b):
        if split == "train":  # rows drawn from the mixture by weight
            rng = np.random.default_rng([self.seed, 0, a, b])
            src = rng.choice(len(self.names), size=self.B, p=self.weights)
            rows = np.empty((self.B, self.T + 1), dtype=np.int64)
            for k in range(len(self.names)):
                sel = np.nonzero(src == k)[0]
                if len(sel):
                    rows[sel] = self._rows(self.train[k], rng, len(sel))
        else:  # validation batch a of dataset b
            rng = np.random.default_rng([self.seed, 1, a, b])
            rows = self._rows(self.val[b], rng, self.B)
        t = torch.from_numpy(rows)
        if self.device.startswith("cuda"):
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def bytes_per_token(self, k):
        m = self.meta[k]
        return m["val_bytes"] / m["val_tokens"]


# -----------------------------------------------------------------------------
# pieces of the loop

def get_lr(it, cfg):
    """Linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    lr, min_lr = cfg["learning_rate"], cfg["min_lr"]
    if not cfg["decay_lr"]:
        return lr
    decay_iters = cfg["lr_decay_iters"] or cfg["max_iters"]
    if it < cfg["warmup_iters"]:
        return lr * (it + 1) / (cfg["warmup_iters"] + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - cfg["warmup_iters"]) / max(1, decay_iters - cfg["warmup_iters"])
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def configure_optimizer(model, cfg, device_type):
    """AdamW over the parameters with requires_grad=True only (a frozen table, or layers frozen by
    grow.py, never enter it); weight decay on >=2-D weights, none on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    # fused AdamW: one kernel per step on CUDA, and a vectorised loop on CPU (torch >= 2.4)
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]),
                             fused=device_type in ("cuda", "cpu"))


@torch.no_grad()
def evaluate(model, data, cfg, ctx, rank=0, world=1):
    """Mean loss and bits per byte on the fixed validation batches of every dataset, averaged over
    ranks (each rank takes every world-th batch), plus the mixture-weighted average."""
    was_training = model.training
    model.eval()
    out = {}
    for k, name in enumerate(data.names):
        acc = torch.zeros(2, dtype=torch.float64, device=data.device)  # loss sum, batches
        for j in range(rank, cfg["eval_iters"], world):
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
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    lowest = 0 if model.transformer.wte.weight.requires_grad else (trainable.index(True) if any(trainable) else len(blocks))
    total = 0
    for i, b in enumerate(blocks):
        backward = i >= lowest
        total += sum(p.numel() * (2 + 2 * backward + 2 * p.requires_grad) for p in b.parameters() if p.dim() >= 2)
        total += (12 if backward else 4) * T * c.d_model
    head = model.lm_head.weight
    return total + head.numel() * (2 + 2 * (lowest < len(blocks)) + 2 * head.requires_grad)


def gpu_peak_flops(cfg, device):
    if cfg["peak_flops"]:
        return cfg["peak_flops"]
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_FLOPS if key in name), None)


def build_model(cfg, tok):
    """A fresh model for cfg, with its frozen table from glyph_embed (built once, cached on disk)."""
    table, info = None, {}
    if cfg["embedding"] != "trainable":
        import glyph_embed
        if cfg["table_path"]:
            table, info = glyph_embed.load_table(cfg["table_path"], tok)
        else:
            dim = cfg["table_dim"] or cfg["d_model"]
            table, info = glyph_embed.frozen_table(tok, kind=cfg["embedding"], dim=dim)
        if cfg["d_model"] % table.shape[1] != 0:
            fail(f"frozen table {cfg['table_path'] or cfg['embedding']} has width {table.shape[1]}, which does "
                 f"not divide d_model={cfg['d_model']}: use table_dim={cfg['d_model']} or a divisor of it")
    mconf = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                      n_head=cfg["n_head"], d_model=cfg["d_model"], dropout=cfg["dropout"], bias=cfg["bias"],
                      embedding=cfg["embedding"], rope_base=cfg["rope_base"])
    if mconf.d_model % mconf.n_head:
        fail(f"d_model={mconf.d_model} is not divisible by n_head={mconf.n_head}")
    torch.manual_seed(cfg["seed"])  # the same initial weights for the same seed
    model = GPT(mconf, table)
    model.table_info = info
    return model


def setup_distributed(cfg):
    """-> (ddp, rank, local_rank, world, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if not ddp:
        return False, 0, 0, 1, want
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if want.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    else:
        device = "cpu"
        # the CPU's cores are shared by the ranks on this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True, rank, local_rank, world, device


def write_log(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def truncate_log(path, iter_num):
    """On resume, drop log lines from iterations the resumed run is about to redo."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [l for l in f if l.strip() and json.loads(l).get("iter", 0) < iter_num]
    with open(path + ".partial", "w") as f:
        f.writelines(keep)
    os.replace(path + ".partial", path)


# -----------------------------------------------------------------------------
# the training loop

def train(cfg, model=None, ckpt_path=None, ckpt_extra=None):
    """Train per cfg (a dict with DEFAULTS' keys; extra keys are kept in the checkpoint's config).
    model: a pre-built GPT to train instead of a fresh one; only its parameters with
    requires_grad=True are optimised. ckpt_path: where checkpoints go and resume reads from
    (default out_dir/ckpt.pt). ckpt_extra: entries merged into every checkpoint.
    Returns dict(val_loss, val_bpb, val, iters)."""
    cfg = {**DEFAULTS, **cfg}
    ckpt_path = ckpt_path or os.path.join(cfg["out_dir"], "ckpt.pt")
    accum, world = cfg["gradient_accumulation_steps"], int(os.environ.get("WORLD_SIZE", 1))
    if accum < 1 or accum % world:
        fail(f"gradient_accumulation_steps={accum} is not divisible by the {world} DDP ranks: "
             f"use a multiple of {world}")
    ddp, rank, local_rank, world, device = setup_distributed(cfg)
    master = rank == 0
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    accum //= world  # micro-steps per rank per iteration

    # -- everything that can fail on bad input happens before anything is written to out_dir --
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer(cfg["tokenizer"])
    data = MixtureData(cfg, tok, device)
    ckpt = None
    if cfg["init_from"] == "resume":
        if not os.path.exists(ckpt_path):
            fail(f"init_from='resume' but there is no checkpoint at {ckpt_path}")
        ckpt = read_checkpoint(ckpt_path, "cpu")
    elif cfg["init_from"] != "scratch":  # weights of another checkpoint, fresh optimizer and count
        ckpt = read_checkpoint(cfg["init_from"], "cpu")
    if ckpt is not None and ckpt.get("tokenizer_fingerprint") != tok.fingerprint:
        fail(f"checkpoint {ckpt_path} was trained with tokenizer {ckpt.get('tokenizer_name')!r} "
             f"({ckpt.get('tokenizer_fingerprint')}), the config uses {tok.name!r} ({tok.fingerprint})")
    if model is None:
        model = model_from_checkpoint(ckpt, "cpu", ckpt_path) if ckpt is not None else build_model(cfg, tok)
    elif ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if model.config.vocab_size != tok.vocab_size:
        fail(f"model vocab_size {model.config.vocab_size} != tokenizer {tok.name!r} vocab_size {tok.vocab_size}")
    if cfg["block_size"] > model.config.block_size:
        fail(f"block_size={cfg['block_size']} exceeds the model's context {model.config.block_size}")
    model.to(device)

    ptdtype = cfg["dtype"]
    if ptdtype == "auto":
        ptdtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device_type == "cpu":
        ptdtype = "float32"  # CPU autocast is slow and inexact; the CPU path is float32 throughout
    ctx = nullcontext() if ptdtype == "float32" else \
        torch.autocast(device_type=device_type, dtype=getattr(torch, ptdtype))
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == "float16"))
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    optimizer = configure_optimizer(model, cfg, device_type)
    iter_num, best_val_loss = 0, float("inf")
    if ckpt is not None and cfg["init_from"] == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt.get("best_val_loss", float("inf"))
    resumed_at = iter_num if cfg["init_from"] == "resume" else None
    ckpt = None  # free memory

    raw_model = model
    if cfg["compile"]:
        print("compiling the model... (takes a minute)")
        model = torch.compile(model)
    eval_model = model  # validation runs without the DDP wrapper (no gradient hooks, no syncs)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    # -- from here on we write to out_dir --
    log_path = os.path.join(cfg["out_dir"], "log.jsonl")
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        if resumed_at is not None:
            truncate_log(log_path, iter_num)
        elif os.path.exists(log_path):
            os.remove(log_path)
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    fpt = flops_per_token(raw_model, cfg["block_size"])
    peak = gpu_peak_flops(cfg, device)
    if master:
        print(f"{raw_model.describe()}; {tokens_per_iter:,} tokens per iteration on {world} rank(s), {device}, "
              f"{ptdtype}; {fpt / 1e6:.1f} MFLOP per token")
    if cfg["wandb_log"] and master:
        import wandb
        wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)

    def save(it, metrics):
        extra = dict(optimizer=optimizer.state_dict(), iter_num=it, best_val_loss=best_val_loss,
                     config=cfg, data_state=dict(seed=cfg["seed"], iter_num=it, datasets=dict(cfg["datasets"])),
                     metrics=metrics, **(ckpt_extra or {}))
        save_checkpoint(model_checkpoint(raw_model, tok, **extra), ckpt_path)

    bar = tqdm(total=cfg["max_iters"], initial=iter_num, disable=not (master and cfg["progress"]),
               dynamic_ncols=True, leave=False)
    result = {}
    t_last, tokens_since = time.time(), 0
    while True:
        rec = {"iter": iter_num}
        # evaluate (deterministic: a resumed run re-logs the same numbers) and checkpoint
        if iter_num % cfg["eval_interval"] == 0 or iter_num >= cfg["max_iters"] or cfg["eval_only"]:
            ev = evaluate(eval_model, data, cfg, ctx, rank, world)
            rec.update(ev)
            result = dict(ev, iters=iter_num)
            if master:
                per = " ".join(f"{n} {v['loss']:.4f}/{v['bpb']:.3f}" for n, v in ev["val"].items()) \
                    if len(ev["val"]) > 1 else ""
                bar.write(f"step {iter_num}: val loss {ev['val_loss']:.4f}, {ev['val_bpb']:.4f} bits/byte {per}")
                if cfg["wandb_log"]:
                    wandb.log({"iter": iter_num, "val/loss": ev["val_loss"], "val/bpb": ev["val_bpb"]})
            improved = ev["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, ev["val_loss"])
            if master and iter_num not in (0, resumed_at) and not cfg["eval_only"] \
                    and (improved or cfg["always_save_checkpoint"]):
                save(iter_num, ev)
        if iter_num >= cfg["max_iters"] or cfg["eval_only"]:
            if master and len(rec) > 1:
                write_log(log_path, rec)
            break

        # one optimisation step: gradient accumulation over this rank's micro-batches
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(int(np.random.SeedSequence([cfg["seed"], iter_num, rank]).generate_state(1)[0]))
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            if ddp:  # only the last micro-step all-reduces the gradients (set before the forward)
                model.require_backward_grad_sync = micro == accum - 1
            X, Y = data.batch("train", iter_num, rank * accum + micro)
            with ctx:
                _, loss = model(X, Y, return_logits=False)
                loss = loss / accum
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
        if cfg["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if p.requires_grad], cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        tokens_since += tokens_per_iter

        if iter_num % cfg["log_interval"] == 0:
            if ddp:
                dist.all_reduce(loss_sum)
                loss_sum /= world
            lossf = loss_sum.item()  # also waits for the GPU, so the timing below is real
            now = time.time()
            tps = tokens_since / max(now - t_last, 1e-9)
            t_last, tokens_since = now, 0
            rec.update(loss=lossf, lr=lr, tokens_per_s=round(tps, 1))
            line = f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {tps:,.0f} tok/s"
            if peak:
                rec["mfu"] = fpt * tps / (world * peak)
                line += f", mfu {100 * rec['mfu']:.1f}%"
            if master:
                bar.write(line)
                bar.set_postfix(loss=f"{lossf:.3f}")
                if cfg["wandb_log"]:
                    wandb.log({"iter": iter_num, "train/loss": lossf, "lr": lr, "tokens_per_s": tps})
        if master and len(rec) > 1:
            write_log(log_path, rec)
        iter_num += 1
    bar.close()
    return result


def main(argv):
    cfg = configure(DEFAULTS, argv)
    try:
        result = train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result and int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {result['iters']} iterations, val loss {result['val_loss']:.4f}, "
              f"{result['val_bpb']:.4f} bits/byte; checkpoint {os.path.join(cfg['out_dir'], 'ckpt.pt')}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: error: {e}")
