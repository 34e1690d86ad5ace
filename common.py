"""
The runtime every script shares (as nanochat keeps common.py apart from gpt.py): which device and
precision a run uses, DDP setup and teardown under torchrun, independent pieces of work spread over
the cores (threaded), and one way for every script to turn a
bad input into one line naming what was wrong (script_main).
"""
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

DTYPES = ("auto", "float32", "bfloat16", "float16")
# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
              ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165.2e12), ("RTX 3090", 71e12), ("V100", 125e12)]


def fail(msg):
    """Refuse a bad input: a ValueError with a one-line message; script_main prints it and exits 1."""
    raise ValueError(msg)


MIN_TEMPERATURE = 1e-6  # 0 < temperature below this: float32 logits / temperature overflow to inf (NaN samples)


def check_sampling(temperature, top_k):
    """The values model.sample_next takes, for sample.py and eval.py alike: temperature 0 (greedy) or a
    finite number >= MIN_TEMPERATURE; top_k a whole number >= 0 (0 or None = none)."""
    t = temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or 0 < t < MIN_TEMPERATURE \
            or t < 0:
        fail(f"temperature={t!r}: expected 0 (greedy) or a finite number >= {MIN_TEMPERATURE} (smaller ones overflow "
             f"the scaled logits)")
    k = 0 if top_k is None else top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        fail(f"top_k={k!r}: expected a whole number >= 0 (0 = none)")


def shown(path):
    """A path (or any string value) as a one-line message shows it: as is, or its repr when it is empty
    or holds a newline or odd spaces."""
    path = str(path)
    return path if path and path.isprintable() and path.strip() == path else repr(path)


def first_line(e):
    """An exception's message cut to one line, for a one-line error of our own around it."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def script_main(prog, main, argv=None):
    """Run main(argv) the way every script ends: a bad input (ValueError, a ConfigError among them) or a
    failed read/write (OSError) is one line `prog: error: ...` and exit status 1 (said once under
    torchrun: every rank fails the same way), Ctrl-C is exit status 130, and DDP is torn down."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as e:
        sys.exit(f"{prog}: error: {e}" if int(os.environ.get("RANK", 0)) == 0 else 1)
    except MemoryError:  # e.g. a batch_size far beyond the machine: numpy/torch say only "MemoryError"
        sys.exit(f"{prog}: error: out of memory: use a smaller batch_size, block_size or model")
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(want):
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' / 'cuda:N' only where they exist."""
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want != "cpu" and not (want == "cuda" or want.startswith("cuda:") and want[5:].isdigit()):
        fail(f"device={want!r}: expected auto, cpu, cuda or cuda:N")
    if want.startswith("cuda") and not torch.cuda.is_available():
        fail(f"device={want!r}, but torch sees no CUDA GPU here (torch {torch.__version__}): use --device=cpu")
    if want.startswith("cuda:") and int(want[5:]) >= torch.cuda.device_count():
        fail(f"device={want!r}, but there are {torch.cuda.device_count()} CUDA GPUs")
    return want


def resolve_dtype(dtype, device):
    """The compute precision: 'auto' is bfloat16 on a GPU that has it, float32 otherwise; the CPU path is
    float32 throughout (CPU autocast is slow and inexact)."""
    if dtype not in DTYPES:
        fail(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if not device.startswith("cuda"):
        return "float32"
    if dtype == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        fail(f"dtype=bfloat16, but {torch.cuda.get_device_name(device)} has no bfloat16: use float16 or float32")
    return dtype


def autocast(device, dtype="auto"):
    """The context a forward pass runs in: autocast to resolve_dtype's precision on a GPU, nothing in
    float32 (and on the CPU)."""
    return precision_context(resolve_dtype(dtype, str(device)))


def precision_context(dtype):
    """The context of an already resolved dtype (asks nothing of the GPU: cheap in the training loop)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))


def threaded(fn, items):
    """[fn(item) for item in items] on torch's number of threads (Python threads, each running torch
    on one thread). The heavy work of the glyph build (int8 matmuls, numpy indexing, Pillow's blur)
    runs without the GIL, so independent pieces use every core; and one thread per piece never waits at
    a barrier for an OpenMP team whose other thread another process holds up (small ops on two
    OpenMP threads ran ~8x slower here while other jobs shared the 2 cores)."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def gpu_peak_flops(device):
    """The GPU's dense bf16 peak (PEAK_FLOPS), for MFU; None on a CPU or an unlisted GPU."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_FLOPS if key in name), None)


@dataclass
class Runtime:
    device: str  # where this process computes: 'cpu', 'cuda', or this rank's 'cuda:N'
    dtype: str  # float32 | bfloat16 | float16
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def master(self):
        return self.rank == 0

    @property
    def device_type(self):
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def autocast(self):
        return precision_context(self.dtype)  # resolved once by setup_runtime


def setup_runtime(device="auto", dtype="auto"):
    """-> Runtime. Under torchrun (RANK/LOCAL_RANK/WORLD_SIZE set) joins the process group: NCCL with
    one GPU per rank, gloo on CPU with the cores shared by the node's ranks."""
    device = resolve_device(device)
    rt = Runtime(device, resolve_dtype(dtype, device))
    if rt.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if int(os.environ.get("RANK", -1)) == -1:
        return rt
    rt.ddp, rt.rank, rt.local_rank, rt.world = True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), \
        int(os.environ["WORLD_SIZE"])
    if rt.device_type == "cuda":
        rt.device = f"cuda:{rt.local_rank}"
        torch.cuda.set_device(rt.device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", rt.world))))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if rt.device_type == "cuda" else "gloo")
    return rt


def bar_on(setting):
    """Whether a tqdm bar is drawn, for every script's `progress` key: auto (or True) on a terminal
    only, since into a file or a pipe a bar is a stream of carriage-return frames; always (also
    there); never (or False). Either spelling, any case. The printed lines come either way."""
    setting = str(setting).lower()
    if setting not in ("auto", "true", "always", "never", "false"):
        fail(f"progress={setting!r}: expected auto, always or never (or True / False)")
    return setting == "always" or setting in ("auto", "true") and sys.stderr.isatty()


class Progress:
    """What a training run shows while it runs: a tqdm bar with the printed lines above it, throughput
    and MFU, and Weights & Biases when wandb_log is set. Only the master process shows anything."""

    def __init__(self, cfg, rt, start, flops_per_token, tokens_per_iter):
        self.show, self.world, self.fpt, self.tokens_per_iter = rt.master, rt.world, flops_per_token, tokens_per_iter
        self.peak = cfg["peak_flops"] or gpu_peak_flops(rt.device)
        self.bar = tqdm(total=cfg["max_iters"], initial=start, dynamic_ncols=True, leave=False,
                        disable=not (rt.master and bar_on(cfg["progress"])))
        self.wandb = None
        if cfg["wandb_log"] and rt.master:
            import wandb
            wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=dict(cfg))
            self.wandb = wandb
        self.t_last, self.tokens = time.time(), 0

    def write(self, line):
        if self.show:
            self.bar.write(line)
            sys.stdout.flush()  # into a file, a line shows when it is written, not a buffer later

    def evaluated(self, it, ev):
        per = " ".join(f"{n} {v['loss']:.4f}/{v['bpb']:.3f}" for n, v in ev["val"].items()) if len(ev["val"]) > 1 else ""
        self.write(f"step {it}: val loss {ev['val_loss']:.4f}, {ev['val_bpb']:.4f} bits/byte {per}")
        if self.wandb:  # set on the master process only
            self.wandb.log({"iter": it, "val/loss": ev["val_loss"], "val/bpb": ev["val_bpb"]})

    def stepped(self):
        self.bar.update(1)
        self.tokens += self.tokens_per_iter

    def logged(self, it, loss, lr):
        """-> the log record's fields for a training-loss line: loss, lr, tokens/s (since the last line), MFU."""
        now = time.time()
        tps = self.tokens / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens = now, 0
        rec = dict(loss=loss, lr=lr, tokens_per_s=round(tps, 1))
        line = f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {tps:,.0f} tok/s"
        if self.peak:
            rec["mfu"] = self.fpt * tps / (self.world * self.peak)
            line += f", mfu {100 * rec['mfu']:.1f}%"
        self.write(line)
        if self.show:
            self.bar.set_postfix(loss=f"{loss:.3f}")
            if self.wandb:
                self.wandb.log({"iter": it, "train/loss": loss, "lr": lr, "tokens_per_s": tps})
        return rec

    def close(self):
        self.bar.close()
