"""
Training throughput of our GPT vs a plain nanoGPT-shaped reference GPT (defined below: learned
position embedding, trainable token embedding tied to the output head, exactly nanoGPT's model.py),
same width, depth, vocabulary and context, same optimizer, in ONE run. The models take turns in
short rounds, so a load change on the machine hits both alike. Also our trainable-embedding arm.

CPU, the quick-start shape (config/train_shakespeare_glyph.py):
$ python bench/bench_train.py
GPU, the paper's shape, bf16 autocast + flash attention + torch.compile, with MFU:
$ python bench/bench_train.py --shape=paper --device=cuda --compile=true --batch_size=16
"""
import os
import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
from configurator import configure, defaults_from
from model import GPT, GPTConfig
from common import gpu_peak_flops, precision_context, resolve_device, resolve_dtype
from train import configure_optimizer, flops_per_token

# -----------------------------------------------------------------------------
shape = "quickstart"  # quickstart (4 x 128, ctx 128) | paper (16 x 1024, 32 heads, ctx 1024)
vocab_size = 65536
batch_size = 8
device = "auto"
dtype = "auto"  # bfloat16 on GPU, float32 on CPU
compile = False
warmup = 2  # untimed steps per model (first-call allocation; compilation when compile=True)
rounds = 6  # each round times `steps` steps of every model in turn
steps = 2
arms = "glyph,reference,trainable"
peak_flops = 0.0  # 0 = look the GPU up (common.PEAK_FLOPS)
seed = 0
threads = 0  # torch CPU threads; 0 = torch's default (all cores)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())
SHAPES = dict(quickstart=dict(n_layer=4, n_head=4, d_model=128, block_size=128, table_dim=128),
              paper=dict(n_layer=16, n_head=32, d_model=1024, block_size=1024, table_dim=1024))


# ----------------------------------------------------------------------------- the reference:
# nanoGPT's model.py (Karpathy), trimmed to what training uses. Weight tying as in nanoGPT.

class RefAttention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(d, 3 * d), nn.Linear(d, d), n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), RefAttention(d, n_head), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, d_model):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                                d_model=d_model, embedding="trainable")
        self.wte, self.wpe = nn.Embedding(vocab_size, d_model), nn.Embedding(block_size, d_model)
        self.h = nn.ModuleList([RefBlock(d_model, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied, as in nanoGPT
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)


def nanogpt_flops_per_token(model, T):
    """nanoGPT's estimate_mfu: 6N + 12*L*T*d with N excluding the position table."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * T * c.d_model


# ----------------------------------------------------------------------------- the benchmark

def build(arm, cfg, dev):
    s = SHAPES[cfg["shape"]]
    torch.manual_seed(cfg["seed"])
    if arm == "reference":
        return RefGPT(cfg["vocab_size"], s["block_size"], s["n_layer"], s["n_head"], s["d_model"]).to(dev)
    mc = GPTConfig(vocab_size=cfg["vocab_size"], block_size=s["block_size"], n_layer=s["n_layer"],
                   n_head=s["n_head"], d_model=s["d_model"], embedding="glyph" if arm == "glyph" else "trainable")
    # a random unit-norm table has the glyph table's shape and cost (the values do not matter here)
    table = None
    if arm == "glyph":
        table = torch.randn(cfg["vocab_size"], s["table_dim"])
        table /= table.norm(dim=1, keepdim=True)
    return GPT(mc, table).to(dev)


def main(cfg):
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev = resolve_device(cfg["device"])
    dt = resolve_dtype(cfg["dtype"], dev)  # train.py's precision rule: float32 on the CPU
    ctx = precision_context(dt)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    s = SHAPES[cfg["shape"]]
    B, T = cfg["batch_size"], s["block_size"]
    train_cfg = dict(weight_decay=0.1, learning_rate=1e-4, beta1=0.9, beta2=0.95)
    g = torch.Generator().manual_seed(cfg["seed"])
    X = torch.randint(0, cfg["vocab_size"], (B, T), generator=g).to(dev)
    Y = torch.randint(0, cfg["vocab_size"], (B, T), generator=g).to(dev)
    arms = cfg["arms"].split(",")
    models, opts, fns = {}, {}, {}
    for arm in arms:
        m = build(arm, cfg, dev)
        models[arm] = m
        opts[arm] = configure_optimizer(m, train_cfg, "cuda" if dev.startswith("cuda") else "cpu")
        fwd = torch.compile(m) if cfg["compile"] else m
        if arm == "reference":
            fns[arm] = lambda fwd=fwd: fwd(X, Y)[1]
        else:
            fns[arm] = lambda fwd=fwd: fwd(X, Y, return_logits=False)[1]

    def step(arm):
        with ctx:
            loss = fns[arm]()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in models[arm].parameters() if p.requires_grad], 1.0)
        opts[arm].step()
        opts[arm].zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    print(f"shape {cfg['shape']} (L={s['n_layer']}, d={s['d_model']}, heads={s['n_head']}, ctx={T}, "
          f"V={cfg['vocab_size']}), batch {B}x{T} = {B * T:,} tokens/step, {dev}, {dt}, compile={cfg['compile']}, "
          f"{torch.get_num_threads()} threads")
    peak_mem = {}  # CUDA: the most memory one training step of the arm holds (all arms' weights resident)
    for arm in arms:
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(cfg["warmup"]):
            step(arm)
        if dev.startswith("cuda"):
            peak_mem[arm] = torch.cuda.max_memory_allocated(dev)
    sync()
    spent = {arm: [] for arm in arms}
    cpu = {arm: 0.0 for arm in arms}
    for r in range(cfg["rounds"]):
        order = arms if r % 2 == 0 else arms[::-1]  # take turns, so a slow phase of the machine hits every arm
        for arm in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(cfg["steps"]):
                loss = step(arm)
            loss.item()
            sync()
            spent[arm].append(time.perf_counter() - t0)
            cpu[arm] += time.process_time() - c0
    tokens = cfg["rounds"] * cfg["steps"] * B * T
    peak = cfg["peak_flops"] or gpu_peak_flops(dev)
    tps = {arm: tokens / sum(spent[arm]) for arm in arms}
    tpc = {arm: tokens / cpu[arm] for arm in arms}  # per CPU-second of this process: immune to other load
    # the ratio per round (neighbouring measurements) is robust to the load of a shared machine
    paired = {arm: sorted(r / a for r, a in zip(spent["reference"], spent[arm])) for arm in arms} \
        if "reference" in arms else {}
    median = {arm: v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
              for arm, v in paired.items()}
    print(f"{'model':<31}{'params':>8}{'trainable':>10}{'tokens/s':>10}{'vs ref':>8}{'median/rnd':>11}"
          f"{'tok/CPU-s':>11}{'vs ref':>8}" + ("    MFU" if peak else ""))
    for arm in arms:
        m = models[arm]
        n = sum(p.numel() for p in m.parameters())
        nt = sum(p.numel() for p in m.parameters() if p.requires_grad)
        name = {"glyph": "ours, frozen glyph table", "trainable": "ours, trainable embedding",
                "reference": "nanoGPT reference (tied, wpe)"}[arm]
        line = f"{name:<31}{n / 1e6:>7.1f}M{nt / 1e6:>9.1f}M{tps[arm]:>10,.0f}"
        line += f"{tps[arm] / tps['reference']:>7.2f}x{median[arm]:>10.2f}x" if median else " " * 19
        line += f"{tpc[arm]:>11,.0f}" + (f"{tpc[arm] / tpc['reference']:>7.2f}x" if median else "")
        if peak:
            fpt = nanogpt_flops_per_token(m, T) if arm == "reference" else flops_per_token(m, T)
            line += f"{100 * fpt * tps[arm] / peak:>6.1f}%"
        print(line)
    for arm in peak_mem:
        print(f"peak CUDA memory during a step of {arm}: {peak_mem[arm] / 2**30:.2f} GiB (every arm's weights and "
              f"optimizer state resident)")
    if peak:
        print(f"MFU = training matmul FLOPs per token x tokens/s / {peak / 1e12:.0f} TFLOP/s (dense bf16 peak of "
              f"{torch.cuda.get_device_name(dev)}); ours counts only what runs (the frozen table is a lookup, a "
              f"frozen weight skips its gradient), the reference nanoGPT's 6N + 12LTd")
    print("vs ref: ratio of tokens/s (wall clock); median/rnd: median over rounds of the per-round ratio; "
          "tok/CPU-s: tokens per CPU-second of this process (robust on a shared machine)")
    return tps, median


if __name__ == "__main__":
    main(configure(DEFAULTS, sys.argv[1:], verbose=False))
