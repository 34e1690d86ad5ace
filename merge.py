"""
Merge independently trained experts by averaging their logits (docs/design.md §6).

Two or more complete models that share the tokenizer and the frozen embedding table run on the same
input; at every position the merged model's logits are the weighted average of the experts' logits
(equal weights by default). No training. Experts may differ in depth and width.

$ python merge.py out-merge-en/ckpt.pt out-merge-ru/ckpt.pt --out=out-merge/merged.pt
$ python merge.py a.pt b.pt --weights=0.3,0.7 --datasets=shakespeare,russian_offline
$ python merge.py config/merge_demo_merge.py    # the CPU demonstration (config/merge_demo_*.py)
$ python sample.py --ckpt=out-merge/merged.pt   # a merge file loads like any checkpoint
$ python eval.py --ckpt out-merge/merged.pt --tasks bpb --val_data data/russian_offline

--mode=logits    the paper's merge: softmax(sum_k w_k * logits_k)
--mode=logprobs  NOT the paper's wording: sum_k w_k * log_softmax(logits_k). Since log_softmax only
                 subtracts one number per position (the logsumexp), this is the paper's merge shifted
                 by a per-position constant: the SAME distribution, loss and samples as "logits"
                 (a weighted geometric mean of the experts' distributions, renormalised). Kept
                 because it is the form in which the equivalence is easy to check.
--mode=probs     NOT the paper's: log(sum_k w_k * softmax(logits_k)), the classic mixture (ensemble)
                 of the experts' distributions. Each expert keeps its own mass where the others are
                 wrong: on a domain only one expert knows, it costs at most -log(w) nats per token
                 over that expert, where a logit average can cost much more.

The merge file (kind "merge") EMBEDS the experts' weights rather than referencing their paths:
train.py rewrites out_dir/ckpt.pt at every evaluation, so a referenced path would silently change
(or vanish) under a saved merge; one file also travels and loads with torch.load(weights_only=True)
like any checkpoint. The shared frozen table is stored once (not once per expert), optimizer states
are dropped, and in memory the experts share that one table tensor.
"""
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError, configure, defaults_from
from glyph_embed import check_same_substrate
from model import GPT, check_tokenizer, count_params, model_from_checkpoint, read_checkpoint, save_checkpoint

# -----------------------------------------------------------------------------
# command-line defaults (positional arguments: config files end in .py, anything else is an expert)
experts = []  # expert checkpoint paths (train.py / grow.py checkpoints, kind "gpt")
weights = ""  # comma-separated, one per expert, e.g. "0.3,0.7"; normalised to sum 1; "" = equal
mode = "logits"  # logits (the paper's) | logprobs (same distribution as logits) | probs (a mixture; not the paper's)
out = "merged.pt"  # the merge file to write (never one of the experts)
overwrite = False  # replace --out if it exists (refused otherwise)
# validation: per-domain loss / bits per byte of every expert and of the merge, on the same batches
datasets = ""  # comma-separated prepared datasets (data/<name> or paths), "" = skip
data_root = ""  # "" = the data/ folder next to this file
eval_iters = 20  # validation batches per dataset
batch_size = 8
block_size = 0  # evaluation context; 0 = the merge's (the smallest expert context)
eval_experts = True  # also evaluate each expert alone (the comparison table)
seed = 1337
device = "auto"
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

MODES = ("logits", "logprobs", "probs")
FORMAT = 1  # version of the merge file layout


@dataclass
class MergedConfig:
    """What callers read from model.config: vocab_size, block_size (the smallest expert context)."""
    vocab_size: int
    block_size: int
    n_experts: int
    mode: str
    weights: tuple


def normalise_weights(ws, k):
    """-> list of k floats summing to 1. None/empty = equal weights."""
    if ws is None or (isinstance(ws, (str, list, tuple)) and len(ws) == 0):
        return [1.0 / k] * k
    if isinstance(ws, str):
        try:
            ws = [float(w) for w in ws.split(",")]
        except ValueError:
            raise ValueError(f"weights={ws!r}: expected comma-separated numbers, e.g. '0.5,0.5'") from None
    ws = [float(w) for w in ws]
    if len(ws) != k:
        raise ValueError(f"weights={ws}: {len(ws)} weight(s) for {k} expert(s); give one weight per expert")
    if not all(math.isfinite(w) and w >= 0 for w in ws):
        raise ValueError(f"weights={ws}: every weight must be a finite number >= 0")
    total = sum(ws)
    if not total > 0:
        raise ValueError(f"weights={ws}: the weights must sum to a positive value")
    return [w / total for w in ws]


# -----------------------------------------------------------------------------
# the merged model

class MergedGPT(nn.Module):
    """K GPT experts behind the single-model interface: forward(idx, targets) -> (logits, loss),
    generate() with one key-value cache per expert, config.block_size / vocab_size, param_counts().

    In "logits" mode the average is folded into the output heads: the merged logits
    sum_k w_k (x_k W_k^T + b_k) are computed as (sum_k w_k b_k) + w_1 x_1 W_1^T + ... with each
    head's matmul accumulating into the previous result (addmm's alpha/beta), so averaging costs no
    extra pass over the [tokens, vocab] logits: the merge costs what its experts cost. Nothing reads
    a value back to the host, so on a GPU all experts' kernels queue in one stream without syncs."""

    def __init__(self, experts, weights=None, mode="logits"):
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("a merge needs at least one expert")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        vocab = {e.config.vocab_size for e in experts}
        if len(vocab) != 1:
            raise ValueError(f"experts have different vocabulary sizes {sorted(vocab)}: they must share one tokenizer")
        for i, e in enumerate(experts[1:], 1):  # one substrate: same key, equal within SUBSTRATE_TOL
            check_same_substrate(experts[0].table_info, experts[0].frozen_table, e.table_info, e.frozen_table,
                                 f"experts 0 and {i}: logit averaging needs one shared frozen table")
        fps = [e.table_fingerprint for e in experts]
        self.experts = nn.ModuleList(experts)
        self.weights = normalise_weights(weights, len(experts))  # python floats: no host syncs, no tensors
        self.mode = mode
        self.table_fingerprint = fps[0]
        self.table_info = dict(getattr(experts[0], "table_info", {}) or {})
        self._share_table()
        self.config = MergedConfig(vocab_size=vocab.pop(), block_size=min(e.config.block_size for e in experts),
                                   n_experts=len(experts), mode=mode, weights=tuple(self.weights))

    def _share_table(self):
        """Identical frozen tables (same fingerprint) become one tensor: K copies of a 65,536-row
        table would cost K x 256 MB at d=1024 for nothing."""
        first = self.experts[0].frozen_table
        if first is None:
            return
        for e in self.experts[1:]:
            if e.frozen_table.shape == first.shape and e.frozen_table.device == first.device:
                e.transformer.wte.weight = first

    @property
    def frozen_table(self):
        return self.experts[0].frozen_table

    def param_counts(self):
        return count_params(self)  # the shared table counted once

    def describe(self):
        c = self.param_counts()
        parts = ", ".join(f"{w:.3g} x {e.config.n_layer}L/{e.config.d_model}d" for w, e in zip(self.weights, self.experts))
        return (f"merge of {len(self.experts)} experts by {self.mode} average ({parts}); "
                f"parameters: {c['total'] / 1e6:.1f}M total, {c['frozen'] / 1e6:.1f}M frozen (shared table)")

    # -------------------------------------------------------------------------

    def combine(self, xs):
        """Final hidden states of every expert, xs[k] [N, d_k] -> merged logits [N, V]."""
        if self.mode == "logprobs":  # sum_k w_k log p_k
            out = None
            for w, e, x in zip(self.weights, self.experts, xs):
                lp = F.log_softmax(e.lm_head(x).float(), dim=-1)
                out = lp.mul_(w) if out is None else out.add_(lp, alpha=w)
            return out
        if self.mode == "probs":  # log sum_k w_k p_k, accumulated in log space (no underflow)
            out = None
            for w, e, x in zip(self.weights, self.experts, xs):
                lp = F.log_softmax(e.lm_head(x).float(), dim=-1).add_(math.log(w) if w > 0 else -math.inf)
                out = lp if out is None else torch.logaddexp(out, lp, out=out)
            return out
        heads = [e.lm_head for e in self.experts]
        bias = None  # sum_k w_k b_k: the experts' biases averaged once, [V]
        for w, h in zip(self.weights, heads):
            if h.bias is not None:
                bias = w * h.bias if bias is None else bias + w * h.bias
        if bias is not None:
            out = torch.addmm(bias, xs[0], heads[0].weight.t(), alpha=self.weights[0])
        else:
            out = torch.mm(xs[0], heads[0].weight.t()).mul_(self.weights[0])
        for w, h, x in zip(self.weights[1:], heads[1:], xs[1:]):
            out = torch.addmm(out, x, h.weight.t(), alpha=w)  # out + w * x W^T, one GEMM, no extra pass
        return out

    def hidden_states(self, idx, kv_caches=None):
        """Every expert's final hidden states on the same input: a list of [B, T, d_k]."""
        if kv_caches is None:
            return [e.hidden_states(idx) for e in self.experts]
        return [e.hidden_states(idx, c) for e, c in zip(self.experts, kv_caches)]

    def forward(self, idx, targets=None, return_logits=True):
        """Same contract as GPT.forward: (logits [B, T, V] for every position, mean cross-entropy
        over targets != -1 or None). return_logits=False on CPU scores row chunks so that
        [B*T, V] logits are never held in memory at once."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the merge's block_size {self.config.block_size} "
                             f"(the smallest expert context)")
        xs = [x.reshape(B * T, -1) for x in self.hidden_states(idx)]
        if targets is None:
            return self.combine(xs).view(B, T, -1), None
        t = targets.reshape(-1)
        if return_logits or idx.device.type != "cpu":
            logits = self.combine(xs)
            loss = F.cross_entropy(logits.float(), t, ignore_index=-1)
            return (logits.view(B, T, -1) if return_logits else None), loss
        chunk = max(16, (1 << 22) // self.config.vocab_size)  # ~16 MB of float32 logits per chunk
        total = torch.zeros((), dtype=torch.float32, device=idx.device)
        for s in range(0, B * T, chunk):
            logits = self.combine([x[s:s + chunk] for x in xs])
            total = total + F.cross_entropy(logits.float(), t[s:s + chunk], ignore_index=-1, reduction="sum")
        return None, total / (t != -1).sum().clamp(min=1)

    # -------------------------------------------------------------------------
    # generation: GPT.generate's loop, with one key-value cache per expert, all advanced by the same tokens

    def new_kv_cache(self, batch_size):
        return [e.new_kv_cache(batch_size) for e in self.experts]

    def next_logits(self, idx, kv_caches):
        return self.combine([x[:, -1] for x in self.hidden_states(idx, kv_caches)])

    generate = GPT.generate  # the context that fills up is the smallest expert's (config.block_size)


# -----------------------------------------------------------------------------
# reading experts, checking they can be merged, the merge file

def read_expert(path):
    """-> (GPT in eval mode, its checkpoint dict without the optimizer state)."""
    ckpt = read_checkpoint(path, "cpu")
    if ckpt["kind"] == "merge":
        raise ValueError(f"{path} is already a merge file: pass its experts' checkpoints instead")
    if ckpt["kind"] != "gpt":
        raise ValueError(f"{path}: checkpoint kind {ckpt['kind']!r}, expected a model checkpoint ('gpt')")
    ckpt.pop("optimizer", None)  # 2x the model's size, useless here
    model = model_from_checkpoint(ckpt, "cpu", path)  # verifies the stored table against its fingerprint
    return model.eval(), ckpt


def check_compatible(paths, ckpts):
    """Same tokenizer (fingerprint) and same frozen table (substrate key, values within
    glyph_embed.SUBSTRATE_TOL); one-line errors naming both sides."""
    def tok(c):
        return c.get("tokenizer_fingerprint")

    def table(c):
        return (c.get("table_info") or {}).get("fingerprint")

    def weights(c):
        trainable = (c.get("model_args") or {}).get("embedding") == "trainable"
        return None if trainable else c["model"].get("transformer.wte.weight")

    for p, c in zip(paths, ckpts):
        if not tok(c):
            raise ValueError(f"{p}: records no tokenizer fingerprint, so it cannot be checked against the other experts")
    p0, c0 = paths[0], ckpts[0]
    for p, c in zip(paths[1:], ckpts[1:]):
        if tok(c) != tok(c0):
            raise ValueError(f"tokenizer mismatch: {p0} uses {c0.get('tokenizer_name')!r} (fingerprint {tok(c0)}), "
                             f"{p} uses {c.get('tokenizer_name')!r} (fingerprint {tok(c)}); "
                             f"experts must share one tokenizer")
        check_same_substrate(c0.get("table_info"), weights(c0), c.get("table_info"), weights(c),
                             f"frozen table mismatch: {p0} (table {table(c0)}) vs {p} (table {table(c)}, "
                             f"None = trainable embedding); experts must share one frozen table")
        if c["model_args"]["vocab_size"] != c0["model_args"]["vocab_size"]:
            raise ValueError(f"vocab_size mismatch: {p0} has {c0['model_args']['vocab_size']}, "
                             f"{p} has {c['model_args']['vocab_size']}")


def merge_checkpoint(merged, ckpts, paths=None):
    """The merge file's content (kind 'merge'): every expert's model_args and weights, the shared
    frozen table once, the weights and mode, and where each expert came from. Plain data only, so
    torch.load(weights_only=True) reads it."""
    table = merged.frozen_table
    entries = []
    for i, (e, c) in enumerate(zip(merged.experts, ckpts)):
        sd = {k: v for k, v in e.state_dict().items() if not (table is not None and k == "transformer.wte.weight")}
        entries.append(dict(model_args=asdict(e.config), model=sd, table_info=dict(c.get("table_info") or {}),
                            tokenizer_name=c.get("tokenizer_name"), tokenizer_fingerprint=c.get("tokenizer_fingerprint"),
                            source=os.path.abspath(paths[i]) if paths else None, iter_num=c.get("iter_num"),
                            datasets=(c.get("config") or {}).get("datasets"), metrics=c.get("metrics")))
    c0 = ckpts[0]
    return dict(kind="merge", format=FORMAT, mode=merged.mode, weights=list(merged.weights),
                tokenizer_name=c0.get("tokenizer_name"), tokenizer_fingerprint=c0.get("tokenizer_fingerprint"),
                table_info=dict(c0.get("table_info") or {}), table=None if table is None else table.detach().cpu(),
                experts=entries)


def from_checkpoint(ckpt, device="cpu", path="merge file"):
    """Rebuild a MergedGPT from a merge file's dict (model.load_model calls this for kind 'merge')."""
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: merge file format {ckpt.get('format')!r}, this merge.py reads format {FORMAT}")
    entries = ckpt.get("experts")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: merge file has no experts")
    table = ckpt.get("table")
    experts = []
    for i, ent in enumerate(entries):
        if ent.get("tokenizer_fingerprint") != ckpt.get("tokenizer_fingerprint"):
            raise ValueError(f"{path}: expert {i} has tokenizer fingerprint {ent.get('tokenizer_fingerprint')}, "
                             f"the merge records {ckpt.get('tokenizer_fingerprint')}")
        sd = dict(ent["model"])
        if table is not None:
            sd["transformer.wte.weight"] = table
        sub = dict(kind="gpt", model_args=ent["model_args"], model=sd, table_info=ent.get("table_info"))
        experts.append(model_from_checkpoint(sub, "cpu", f"{path} (expert {i})"))  # verifies the table fingerprint
    model = MergedGPT(experts, ckpt.get("weights"), ckpt.get("mode", "logits"))
    return model.to(device)


def build_merge(paths, weights=None, mode="logits"):
    """-> (MergedGPT, merge file dict) from expert checkpoint paths; every check runs first."""
    if len(paths) < 2:
        raise ValueError(f"a merge needs at least 2 expert checkpoints, got {len(paths)} ({', '.join(paths) or 'none'})")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    ws = normalise_weights(weights, len(paths))
    models, ckpts = zip(*[read_expert(p) for p in paths])
    check_compatible(paths, ckpts)
    merged = MergedGPT(models, ws, mode).eval()
    return merged, merge_checkpoint(merged, ckpts, paths)


# -----------------------------------------------------------------------------
# per-domain validation: train.py's own validation (the same fixed batches for every model)

def check_out(out, paths, overwrite):
    """The merge file never replaces an expert (whatever path, symlink or hard link names it), nor
    any other file unless overwrite is set."""
    for p in paths:
        if os.path.exists(p) and os.path.exists(out) and \
                (os.path.realpath(out) == os.path.realpath(p) or os.path.samefile(out, p)):
            raise ValueError(f"out={out} is the expert {p}: the merge would replace it; choose another --out")
    if os.path.isdir(out):
        raise ValueError(f"out={out} is a directory: give the merge file's path, e.g. --out={os.path.join(out, 'merged.pt')}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"out={out} exists: pass --overwrite=True to replace it, or choose another --out")


def evaluate_domains(models, names, cfg, tok, device):
    """-> {model label: {dataset: {"loss", "bpb"}}} on train.py's fixed validation batches; a line
    per model as it goes (a model takes seconds to minutes)."""
    import train
    tcfg = {**train.DEFAULTS, "datasets": {n: 1.0 for n in names}, "data_root": cfg["data_root"],
            "batch_size": cfg["batch_size"], "block_size": cfg["block_size"], "eval_iters": cfg["eval_iters"],
            "seed": cfg["seed"]}
    data = train.MixtureData(tcfg, tok, device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    print(f"validation: {cfg['eval_iters']} batches x {cfg['batch_size']} x {cfg['block_size']} tokens per dataset, "
          f"{len(names)} dataset(s), {len(models)} models", flush=True)
    results = {}
    for i, (label, m) in enumerate(models.items(), 1):
        t0 = time.time()
        results[label] = train.evaluate(m, data, tcfg, ctx)["val"]
        print(f"  {i}/{len(models)} {label}: {time.time() - t0:.1f} s", flush=True)
    return results


def format_table(results, names):
    head = "| model | " + " | ".join(f"{n} loss | {n} bpb" for n in names) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(names)]
    for label, per in results.items():
        rows.append(f"| {label} | " + " | ".join(f"{per[n]['loss']:.4f} | {per[n]['bpb']:.4f}" for n in names) + " |")
    return "\n".join(rows)


def split_argv(argv):
    """Positional arguments ending in .py are config files, other positional ones expert paths."""
    conf, paths = [], []
    for a in argv:
        (conf if a.startswith("--") or a.endswith(".py") else paths).append(a)
    return conf, paths


def main(argv):
    conf, paths = split_argv(argv)
    cfg = configure(DEFAULTS, conf)
    paths = list(cfg["experts"]) + paths
    dev = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in cfg["datasets"].split(",") if n]
    # -- everything that can fail on bad input happens before the merge file is written --
    check_out(cfg["out"], paths, cfg["overwrite"])
    merged, ck = build_merge(paths, cfg["weights"] or None, cfg["mode"])
    tok = None
    if names:
        from unicode_tokenizer import get_tokenizer
        tok = get_tokenizer(ck["tokenizer_name"])
        check_tokenizer(ck, tok, "the experts")
        cfg["block_size"] = cfg["block_size"] or merged.config.block_size
        if cfg["block_size"] > merged.config.block_size:
            raise ValueError(f"block_size={cfg['block_size']} exceeds the merge's context {merged.config.block_size}")
    save_checkpoint(ck, cfg["out"])
    print(f"{merged.describe()}\nwrote {cfg['out']} ({os.path.getsize(cfg['out']) / 1e6:.1f} MB)")
    if not names:
        return None
    merged.to(dev)
    models = {}
    if cfg["eval_experts"]:
        for p, e in zip(paths, merged.experts):
            models[f"expert {p}"] = e
    models[f"merge ({cfg['mode']}, weights {','.join(f'{w:.3g}' for w in merged.weights)})"] = merged
    results = evaluate_domains(models, names, cfg, tok, dev)
    print(format_table(results, names))
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"merge.py: error: {e}")
