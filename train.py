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

Nothing is lost: checkpoints are written atomically, never with non-finite weights (a non-finite loss
stops the run), and a fresh run does not start over in an out_dir holding a run unless asked to.
"""
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from configurator import Config, ConfigError, defaults_from, key_docs, parse
from data.download import atomic_write, remove_stale_partials
from model import (GPT, GPTConfig, check_tokenizer, missing_checkpoint_hint, model_checkpoint, model_from_checkpoint,
                   read_checkpoint, save_checkpoint)

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
progress = True  # tqdm progress bar on the console
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
embedding = "glyph"  # glyph | glyph_unique | binary16 | random (all frozen) | trainable
table_dim = 0  # columns of the frozen table (PCA components); 0 = d_model; narrower is repeat_interleave'd
table_path = ""  # use a table saved by `glyph_embed.py --out` instead of building one
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
peak_flops = 0.0  # accelerator peak for MFU in FLOP/s; 0 = look the GPU up in PEAK_FLOPS
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

# what a resumed run may change: its length and learning-rate schedule (e.g. a lower rate after a loss
# spike), how often it evaluates and logs, paths and hardware. The rest is the run's own (its checkpoint's).
MID_RUN_KEYS = ("max_iters", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "decay_lr", "grad_clip",
                "eval_interval", "log_interval", "eval_iters", "eval_only", "always_save_checkpoint", "init_from",
                "overwrite", "out_dir", "data_root", "progress", "wandb_log", "wandb_project", "wandb_run_name",
                "device", "dtype", "compile", "peak_flops")
DTYPES = ("auto", "float32", "bfloat16", "float16")
VAL_SEED = 1337  # draws the validation batches (the default seed's, so earlier figures stay comparable)

REPO = os.path.dirname(os.path.abspath(__file__))

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
              ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165.2e12), ("RTX 3090", 71e12), ("V100", 125e12)]


def fail(msg):
    raise ValueError(msg)


def check_config(cfg):
    """One line for the first bad value, before anything is read or written."""
    from model import EMBEDDINGS  # (imported here: a module-level tuple would become a config key)
    for key in ("n_layer", "n_head", "d_model", "block_size", "batch_size", "gradient_accumulation_steps",
                "eval_interval", "log_interval", "eval_iters"):
        if cfg[key] < 1:
            fail(f"{key}={cfg[key]}: expected a positive whole number")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if not cfg[key] >= 0:
            fail(f"{key}={cfg[key]}: expected a number >= 0")
    if not 0 <= cfg.dropout < 1:
        fail(f"dropout={cfg.dropout}: expected 0 <= dropout < 1")
    if cfg.dtype not in DTYPES:
        fail(f"dtype={cfg.dtype!r}: expected one of {', '.join(DTYPES)}")
    if cfg.embedding not in EMBEDDINGS:
        fail(f"embedding={cfg.embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
    if cfg.d_model % cfg.n_head:
        fail(f"d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        fail(f"out_dir={cfg.out_dir} is a file, not a folder")


def model_config(cfg, vocab_size, **changes):
    """The GPTConfig of a run's config (the model keys share GPTConfig's field names)."""
    args = {f.name: cfg[f.name] for f in fields(GPTConfig) if f.name != "vocab_size"}
    return GPTConfig(vocab_size=vocab_size, **{**args, **changes})


def check_resume_overrides(saved, cfg, path):
    """A resumed run keeps its own settings: refuse, in one line, every key outside MID_RUN_KEYS whose
    value differs from the checkpoint's (its config, and its model_args for the architecture)."""
    changed = [k for k in DEFAULTS if k in saved and k in cfg and k not in MID_RUN_KEYS and saved[k] != cfg[k]]
    if changed:
        fail(f"{path} is resumed with its own settings, but " +
             ", ".join(f"{k}={cfg[k]!r} (the run has {saved[k]!r})" for k in changed) +
             f": a resumed run may change only {', '.join(MID_RUN_KEYS)}; start a new run (another out_dir) "
             f"for the rest")


def no_checkpoint_message(path, eval_interval):
    d = os.path.dirname(path) or "."
    msg = f"init_from='resume' but there is no checkpoint at {path}"
    if os.path.exists(os.path.join(d, "log.jsonl")):
        return (f"{msg}: the run in {d} stopped before its first checkpoint (written at iteration "
                f"eval_interval={eval_interval}); start it again with --overwrite=True")
    return msg + missing_checkpoint_hint(path)


# -----------------------------------------------------------------------------
# data: a deterministic sampler over one or more prepared datasets

def check_meta(meta, d):
    """The meta.json entries the sampler needs, each of the right kind (one line naming the file)."""
    path = os.path.join(d, "meta.json")
    if not isinstance(meta, dict):
        fail(f"{path}: expected a JSON object")
    for key in ("tokenizer_name", "tokenizer_fingerprint", "dtype", "train_tokens", "val_tokens", "val_bytes"):
        if key not in meta:
            fail(f"{path} has no {key!r}: re-run the dataset's prepare script")
    if meta["dtype"] not in ("uint16", "uint32"):
        fail(f"{path}: dtype={meta['dtype']!r}, expected 'uint16' or 'uint32'")
    for key in ("train_tokens", "val_tokens", "val_bytes"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            fail(f"{path}: {key}={meta[key]!r}, expected a positive whole number")


class MixtureData:
    """Batches are pure functions of (seed, a, b): train micro-batch b of iteration a, or validation
    batch a of dataset b (those from VAL_SEED: the same for every seed). Nothing to save for resume
    but the iteration number."""

    def __init__(self, cfg, tok, device):
        from data.common import open_split, read_meta
        cfg = Config(cfg)
        weights = cfg.datasets
        if not isinstance(weights, dict) or not weights:
            fail(f"datasets={weights!r}: expected a dict name -> weight, e.g. {{'shakespeare': 1.0}}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf")
               for w in weights.values()):
            fail(f"datasets={weights!r}: weights must be positive numbers")
        root = cfg.data_root or os.path.join(REPO, "data")
        self.names = list(weights)
        total = sum(weights.values())
        self.weights = np.array([weights[n] / total for n in self.names])
        self.T, self.B, self.seed, self.device = cfg.block_size, cfg.batch_size, cfg.seed, device
        self.train, self.val, self.meta = [], [], []
        for name in self.names:
            d = name if os.path.isdir(str(name)) else os.path.join(root, str(name))
            if not os.path.isdir(d):
                fail(f"dataset {name!r}: data directory {d} not found (run python data/{name}/prepare.py)")
            meta = read_meta(d)
            check_meta(meta, d)
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
        else:  # validation batch a of dataset b: one fixed set for every seed, run and grow.py stage
            rng = np.random.default_rng([VAL_SEED, 1, a, b])
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
    if cfg.peak_flops:
        return cfg.peak_flops
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_FLOPS if key in name), None)


def build_model(cfg, tok):
    """A fresh model for cfg, with its frozen table from glyph_embed (built once, cached on disk)."""
    cfg = Config(cfg)
    table, info = None, {}
    if cfg.embedding != "trainable":
        import glyph_embed
        if cfg.table_path:
            table, info = glyph_embed.load_table(cfg.table_path, tok)
        else:
            table, info = glyph_embed.frozen_table(tok, kind=cfg.embedding, dim=cfg.table_dim or cfg.d_model)
        if cfg.d_model % table.shape[1] != 0:
            fail(f"frozen table {cfg.table_path or cfg.embedding} has width {table.shape[1]}, which does "
                 f"not divide d_model={cfg.d_model}: use table_dim={cfg.d_model} or a divisor of it")
    mconf = model_config(cfg, tok.vocab_size)
    if mconf.d_model % mconf.n_head:
        fail(f"d_model={mconf.d_model} is not divisible by n_head={mconf.n_head}")
    torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
    model = GPT(mconf, table)
    model.table_info = info
    return model


def setup_distributed(cfg):
    """-> (ddp, rank, local_rank, world, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    want = Config(cfg).device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want != "cpu" and not (want == "cuda" or want.startswith("cuda:") and want[5:].isdigit()):
        fail(f"device={want!r}: expected auto, cpu, cuda or cuda:N")
    if want.startswith("cuda") and not torch.cuda.is_available():
        fail(f"device={want!r}, but torch sees no CUDA GPU here (torch {torch.__version__}): use --device=cpu")
    if want.startswith("cuda:") and int(want[5:]) >= torch.cuda.device_count():
        fail(f"device={want!r}, but there are {torch.cuda.device_count()} CUDA GPUs")
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


def replace_log(path, lines):
    with atomic_write(path) as f:
        f.writelines(lines)


def truncate_log(path, iter_num):
    """On resume, drop log lines from iterations the resumed run is about to redo, and a torn last
    line (a kill while writing it)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict) and n == len(lines):
            print(f"{path}: dropped its torn last line {n} (the run was killed while writing it)")
            break
        if not isinstance(rec, dict):
            fail(f"{path}: line {n} is not a JSON object; fix or remove that line to resume")
        if rec and rec.get("iter", 0) < iter_num:
            keep.append(line)
    replace_log(path, keep)


def seed_of(*numbers):
    return int(np.random.SeedSequence(numbers).generate_state(1)[0])


# -----------------------------------------------------------------------------
# the training loop


@contextmanager
def ctrl_c_after_saving():
    """A Ctrl-C during a checkpoint write takes effect once the write is done: torch.save turns an
    interrupt inside its zip writer into another error, and a save is quick to finish anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def train(cfg, model=None, ckpt_path=None, ckpt_extra=None):
    """Train per cfg (a dict with DEFAULTS' keys; extra keys are kept in the checkpoint's config).
    model: a pre-built GPT to train instead of a fresh one; only its parameters with
    requires_grad=True are optimised. ckpt_path: where checkpoints go and resume reads from
    (default out_dir/ckpt.pt). ckpt_extra: entries merged into every checkpoint.
    Returns dict(val_loss, val_bpb, val, iters)."""
    cfg = Config({**DEFAULTS, **cfg})
    check_config(cfg)
    ckpt_path = ckpt_path or os.path.join(cfg.out_dir, "ckpt.pt")
    accum, world = cfg.gradient_accumulation_steps, int(os.environ.get("WORLD_SIZE", 1))
    if accum % world:
        fail(f"gradient_accumulation_steps={accum} is not divisible by the {world} DDP ranks: "
             f"use a multiple of {world}")
    ddp, rank, local_rank, world, device = setup_distributed(cfg)
    master = rank == 0
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    accum //= world  # micro-steps per rank per iteration

    # -- everything that can fail on bad input happens before anything is written to out_dir --
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer(cfg.tokenizer)
    ckpt, source = None, ckpt_path if cfg.init_from == "resume" else cfg.init_from
    if cfg.init_from == "resume":
        if not os.path.exists(ckpt_path):
            fail(no_checkpoint_message(ckpt_path, cfg.eval_interval))
        ckpt = read_checkpoint(ckpt_path, "cpu")
        arch = {k: v for k, v in (ckpt.get("model_args") or {}).items() if k != "block_size"}
        check_resume_overrides({**(ckpt.get("config") or {}), **arch}, cfg, ckpt_path)
    elif cfg.init_from != "scratch":  # weights of another checkpoint, fresh optimizer and count
        ckpt = read_checkpoint(cfg.init_from, "cpu")
    if ckpt is not None and model is None and ckpt["kind"] != "gpt":
        fail(f"{source} is a {ckpt['kind']!r} checkpoint: train.py continues only 'gpt' checkpoints "
             f"(of train.py, or a finished grow.py stage)")
    if ckpt is not None:
        check_tokenizer(ckpt, tok, f"checkpoint {source}")
    if model is None:
        model = model_from_checkpoint(ckpt, "cpu", source) if ckpt is not None else build_model(cfg, tok)
    elif ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if ckpt is not None and cfg.init_from != "resume":  # the weights decide the architecture
        cfg.update({k: getattr(model.config, k) for k in ("n_layer", "n_head", "d_model", "bias", "embedding", "rope_base")})
    data = MixtureData(cfg, tok, device)
    if model.config.vocab_size != tok.vocab_size:
        fail(f"model vocab_size {model.config.vocab_size} != tokenizer {tok.name!r} vocab_size {tok.vocab_size}")
    if cfg.block_size > model.config.block_size:
        fail(f"block_size={cfg.block_size} exceeds the model's context {model.config.block_size}")
    model.to(device)

    ptdtype = cfg.dtype
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
    if ckpt is not None and cfg.init_from == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler.is_enabled() and ckpt.get("scaler"):  # float16: the loss scale it had reached
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt.get("best_val_loss", float("inf"))
        if master:
            print(f"resuming from iteration {iter_num} of {ckpt_path}")
    resumed_at = iter_num if cfg.init_from == "resume" else None
    last_saved = iter_num if resumed_at is not None else None
    ckpt = None  # free memory

    raw_model = model
    if cfg.compile:
        print("compiling the model... (takes a minute)")
        model = torch.compile(model)
    eval_model = model  # validation runs without the DDP wrapper (no gradient hooks, no syncs)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    # -- from here on we write to out_dir --
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    held_log = None  # a fresh run over an old run's log holds its lines until its first checkpoint
    if master:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        except OSError as e:
            fail(f"out_dir={cfg.out_dir}: cannot create it ({e.strerror})")
        if not os.access(cfg.out_dir, os.W_OK):
            fail(f"out_dir={cfg.out_dir} is not writable")
        remove_stale_partials(ckpt_path)  # of a run killed while saving
        if resumed_at is not None:
            truncate_log(log_path, iter_num)
        elif os.path.exists(log_path):
            held_log = []
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    fpt = flops_per_token(raw_model, cfg.block_size)
    peak = gpu_peak_flops(cfg, device)
    if master:
        print(f"{raw_model.describe()}; {tokens_per_iter:,} tokens per iteration on {world} rank(s), {device}, "
              f"{ptdtype}; {fpt / 1e6:.1f} MFLOP per token")
    if cfg.wandb_log and master:
        import wandb
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg)

    def log(rec):
        if held_log is not None:
            held_log.append(json.dumps(rec) + "\n")
        else:
            write_log(log_path, rec)

    def kept():
        return f"{ckpt_path} (iteration {last_saved}) is kept" if last_saved is not None else "nothing was saved"

    def stop_if_diverged(first_bad):
        if first_bad >= 0:
            fail(f"the training loss became non-finite at iteration {first_bad}: stopped; {kept()} "
                 f"(a lower learning_rate, or a float32 run, may help)")

    def save(it, metrics):
        nonlocal held_log, last_saved
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            fail(f"iteration {it}: the weights are non-finite: stopped without saving; {kept()}")
        extra = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), iter_num=it,
                     best_val_loss=best_val_loss, config=dict(cfg),
                     data_state=dict(seed=cfg.seed, iter_num=it, datasets=dict(cfg.datasets)),
                     metrics=metrics, **(ckpt_extra or {}))
        with ctrl_c_after_saving():
            save_checkpoint(model_checkpoint(raw_model, tok, **extra), ckpt_path)
        last_saved = it
        if held_log is not None:  # the new run now replaces the old one
            replace_log(log_path, held_log)
            held_log = None
        bar.write(f"saved {ckpt_path} (iteration {it})")

    bar = tqdm(total=cfg.max_iters, initial=iter_num, disable=not (master and cfg.progress),
               dynamic_ncols=True, leave=False)
    result = {}
    first_nonfinite = torch.full((), -1, device=device)  # iteration of the first non-finite loss
    t_last, tokens_since = time.time(), 0
    while True:
        rec = {"iter": iter_num}
        # evaluate (deterministic: a resumed run re-logs the same numbers) and checkpoint
        if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only:
            stop_if_diverged(first_nonfinite.item())
            ev = evaluate(eval_model, data, cfg, ctx, rank, world)
            rec.update(ev)
            result = dict(ev, iters=iter_num)
            if master:
                per = " ".join(f"{n} {v['loss']:.4f}/{v['bpb']:.3f}" for n, v in ev["val"].items()) \
                    if len(ev["val"]) > 1 else ""
                bar.write(f"step {iter_num}: val loss {ev['val_loss']:.4f}, {ev['val_bpb']:.4f} bits/byte {per}")
                if cfg.wandb_log:
                    wandb.log({"iter": iter_num, "val/loss": ev["val_loss"], "val/bpb": ev["val_bpb"]})
            if not math.isfinite(ev["val_loss"]):
                fail(f"iteration {iter_num}: the validation loss is {ev['val_loss']}: stopped; {kept()}")
            improved = ev["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, ev["val_loss"])
            if master and iter_num not in (0, resumed_at) and not cfg.eval_only \
                    and (improved or cfg.always_save_checkpoint):
                save(iter_num, ev)
        if iter_num >= cfg.max_iters or cfg.eval_only:
            if master and len(rec) > 1:
                log(rec)
            break

        # one optimisation step: gradient accumulation over this rank's micro-batches
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            step = rank * accum + micro  # the global micro-step: the same batch and dropout on any number of ranks
            if ddp:  # only the last micro-step all-reduces the gradients (set before the forward)
                model.require_backward_grad_sync = micro == accum - 1
            X, Y = data.batch("train", iter_num, step)
            torch.manual_seed(seed_of(cfg.seed, iter_num, step))
            with ctx:
                _, loss = model(X, Y, return_logits=False)
                loss = loss / accum
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if p.requires_grad], cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        # noted on the device (no sync per step), checked at the next log line or evaluation
        first_nonfinite.masked_fill_((first_nonfinite < 0) & ~torch.isfinite(loss_sum), iter_num)
        bar.update(1)
        tokens_since += tokens_per_iter

        if iter_num % cfg.log_interval == 0:
            if ddp:
                dist.all_reduce(loss_sum)
                loss_sum /= world
            lossf = loss_sum.item()  # also waits for the GPU, so the timing below is real
            stop_if_diverged(first_nonfinite.item())
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
                if cfg.wandb_log:
                    wandb.log({"iter": iter_num, "train/loss": lossf, "lr": lr, "tokens_per_s": tps})
        if master and len(rec) > 1:
            log(rec)
        iter_num += 1
    bar.close()
    return result


# -----------------------------------------------------------------------------
# the command line

def resume_config(cfg, overrides):
    """--init_from=resume: the run's own settings from its checkpoint, then the command line's."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if not os.path.exists(path):
        fail(no_checkpoint_message(path, cfg.eval_interval))
    saved = read_checkpoint(path, "cpu").get("config") or {}
    return Config({**DEFAULTS, **{k: v for k, v in saved.items() if k in DEFAULTS}, **overrides})


def check_fresh_out_dir(cfg):
    held = [f for f in ("ckpt.pt", "log.jsonl") if os.path.exists(os.path.join(cfg.out_dir, f))]
    if held and not cfg.overwrite:
        fail(f"out_dir={cfg.out_dir} holds a run ({', '.join(held)}): continue it with --init_from=resume, "
             f"or start over with --overwrite=True (its files are replaced at the new run's first checkpoint)")


def main(argv):
    overrides = parse(DEFAULTS, argv, docs=key_docs(__file__), prog="train.py")
    cfg = Config({**DEFAULTS, **overrides})
    if cfg.init_from == "resume":
        cfg = resume_config(cfg, overrides)
    else:
        check_fresh_out_dir(cfg)
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    try:
        result = train(cfg)
    except KeyboardInterrupt:  # Ctrl-C: where things stand, in one line
        if os.path.exists(ckpt):
            print(f"interrupted; the last checkpoint is {ckpt}: resume with "
                  f"python train.py --out_dir={cfg.out_dir} --init_from=resume", file=sys.stderr)
        else:
            print(f"interrupted before the first checkpoint (written at iteration eval_interval={cfg.eval_interval}): "
                  f"nothing to resume in {cfg.out_dir}", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result and int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {result['iters']} iterations, val loss {result['val_loss']:.4f}, "
              f"{result['val_bpb']:.4f} bits/byte; checkpoint {ckpt}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError, OSError) as e:
        # under torchrun every rank fails the same way: say it once
        sys.exit(f"train.py: error: {e}" if int(os.environ.get("RANK", 0)) == 0 else 1)
