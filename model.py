"""
The GPT of the papers (docs/design.md §3), nanoGPT-shaped: pre-LayerNorm blocks, causal
self-attention through F.scaled_dot_product_attention, rotary positions (base 10000, rotate-half),
GELU MLP of width 4*d, biases, final LayerNorm and an untied, trainable output head.

The only thing that differs between the arms of the experiment is the input embedding:
  "trainable"                        an ordinary nn.Embedding, random init std 0.02 (the baseline)
  "glyph", "glyph_unique",           a frozen [V, w] table from glyph_embed.frozen_table(); it is
  "binary16", "random",              an nn.Parameter with requires_grad=False, so it is saved with
  "random_bits", "random_float"      the model but never trained; w < d_model is expanded with
                                     repeat_interleave(d_model // w).

The frozen table is stored in the checkpoint, not rebuilt from the font on load: checkpoints travel
between people to be merged, and a rebuild depends on the local font and Pillow (one changed pixel
changes the table). model.table_info says what the table is (glyph_embed's info: its substrate key and
fingerprint); checkpoint.py saves, verifies and loads models. This file is the model alone.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

import fused_head

EMBEDDINGS = ("glyph", "glyph_unique", "binary16", "random", "random_bits", "random_float", "trainable")


@dataclass
class GPTConfig:
    vocab_size: int = 65536
    block_size: int = 1024
    n_layer: int = 16
    n_head: int = 32
    d_model: int = 1024
    dropout: float = 0.0
    bias: bool = True
    embedding: str = "glyph"  # one of EMBEDDINGS
    rope_base: float = 10000.0

    def __post_init__(self):
        """The one place the architecture's values are checked (ValueError, one line)."""
        for f in fields(self):
            v, want = getattr(self, f.name), type(f.default)
            if isinstance(v, bool) != (want is bool) or not isinstance(v, (int, float) if want is float else want):
                raise ValueError(f"{f.name}={v!r}: expected a {want.__name__}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "rope_base"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive number")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding={self.embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: expected 0 <= dropout < 1")


def count_params(module):
    """total / trainable / frozen parameters, plus 'matrices' (>=2-D weights only: the way the
    papers count, e.g. 335.5M for the 16x1024 shape, which excludes biases and LayerNorms).
    parameters() yields a shared tensor once, so a table shared by merged experts counts once."""
    ps = list(module.parameters())
    total = sum(p.numel() for p in ps)
    trainable = sum(p.numel() for p in ps if p.requires_grad)
    return dict(total=total, trainable=trainable, frozen=total - trainable,
                matrices=sum(p.numel() for p in ps if p.dim() >= 2))

# -----------------------------------------------------------------------------
# embeddings

class FrozenEmbedding(nn.Module):
    """A fixed [V, w] table; rows are looked up and widened to d_model by repeat_interleave."""

    def __init__(self, table, d_model):
        super().__init__()
        V, w = table.shape
        if d_model % w != 0:
            raise ValueError(f"the frozen table has width {w}, which does not divide d_model={d_model}: "
                             f"use table_dim={d_model} or a divisor of it")
        self.repeat = d_model // w
        # a Parameter (not a buffer) so param_counts() sees it as the frozen part of the model, and
        # merge/grow code treats all weights alike; requires_grad=False keeps it out of autograd.
        self.weight = nn.Parameter(table.detach().clone().float(), requires_grad=False)

    def forward(self, idx):
        x = F.embedding(idx, self.weight)
        return x.repeat_interleave(self.repeat, dim=-1) if self.repeat > 1 else x


# -----------------------------------------------------------------------------
# rotary position embedding, "rotate-half" layout (GPT-NeoX / Llama)

def rope_tables(block_size, head_dim, base):
    """cos and a signed sin, [T, hd] each: rotate-half(x) * sin == cat(x2, x1) * signed_sin, which
    saves a negation per call."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # [T, hd/2]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x, cos, signed_sin):
    """Rotate-half rotary embedding: x * cos + cat(-x2, x1) * sin, for x [..., T, (any dims), hd]
    with cos/signed_sin broadcastable to it."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), signed_sin)


# -----------------------------------------------------------------------------
# the transformer

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.d_model % config.n_head == 0, "d_model must be a multiple of n_head"
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.d_model = config.d_model
        self.dropout = config.dropout

    def forward(self, x, cos, sin, kv=None):
        B, T, C = x.size()
        hd = C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, hd)
        # rotate q and k together: one set of elementwise ops instead of two
        qk = apply_rope(qkv[:, :, :2], cos[:, None, None], sin[:, None, None])
        q, k = qk.unbind(dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B, nh, T, hd)
        is_causal = True
        if kv is not None:  # key-value cache for generation: (k_buf, v_buf, pos)
            k_buf, v_buf, pos = kv
            k_buf[:, :, pos:pos + T] = k
            v_buf[:, :, pos:pos + T] = v
            k, v = k_buf[:, :, :pos + T], v_buf[:, :, :pos + T]
            # a prompt fed into an empty cache is causal; one new token attends to the whole cache
            assert pos == 0 or T == 1, "the cache is fed either a whole prompt or one token at a time"
            is_causal = T > 1
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv=None):
        x = x + self.attn(self.ln_1(x), cos, sin, kv)
        x = x + self.mlp(self.ln_2(x))
        return x


def _init_normal(m):
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class GPT(nn.Module):

    def __init__(self, config, table=None):
        super().__init__()
        self.config = config
        if config.embedding == "trainable":
            if table is not None:
                raise ValueError("embedding='trainable' takes no frozen table")
            wte = nn.Embedding(config.vocab_size, config.d_model)
        else:
            if table is None:
                raise ValueError(f"embedding={config.embedding!r} needs its frozen table (glyph_embed.frozen_table)")
            if table.dim() != 2 or table.shape[0] != config.vocab_size:
                raise ValueError(f"frozen table has shape {tuple(table.shape)}, expected [{config.vocab_size}, w] "
                                 f"(one row per token id)")
            wte = FrozenEmbedding(table, config.d_model)
        self.transformer = nn.ModuleDict(dict(
            wte=wte,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.d_model, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.bias)  # untied
        cos, sin = rope_tables(config.block_size, config.d_model // config.n_head, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived: not in the state dict
        self.register_buffer("rope_sin", sin, persistent=False)

        self.init_weights(self)
        self.table_info = {}  # what the frozen table is (glyph_embed's info: kind, dim, key, fingerprint), set by its builder

    def init_weights(self, module):
        """nanoGPT's init of module (the model, or one new block): N(0, 0.02), zero biases, then the
        residual projections again with std 0.02/sqrt(2 * n_layer)."""
        module.apply(_init_normal)
        for name, p in module.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def new_block(self):
        """A freshly initialised block for this model (grow.py stacks them on top)."""
        block = Block(self.config).to(self.lm_head.weight.device)
        self.init_weights(block)
        return block

    @property
    def frozen_table(self):
        wte = self.transformer.wte
        return wte.weight if isinstance(wte, FrozenEmbedding) else None

    def param_counts(self):
        return count_params(self)

    def first_backward_block(self):
        """The first block backward runs through: 0 when the embedding trains, else the lowest block with
        a trainable parameter (n_layer when none has one): autograd records nothing below it."""
        if self.transformer.wte.weight.requires_grad:
            return 0
        return next((i for i, b in enumerate(self.transformer.h) if any(p.requires_grad for p in b.parameters())),
                    len(self.transformer.h))

    def describe(self):
        c = self.param_counts()
        return (f"parameters: {c['total'] / 1e6:.1f}M total ({c['matrices'] / 1e6:.1f}M in weight matrices), "
                f"{c['trainable'] / 1e6:.1f}M trainable, {c['frozen'] / 1e6:.1f}M frozen")

    def hidden_states(self, idx, kv_cache=None):
        """Final (post-ln_f) hidden states [B, T, d]."""
        B, T = idx.size()
        pos = 0 if kv_cache is None else kv_cache.pos
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of {pos + T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T]
        x = self.transformer.drop(self.transformer.wte(idx))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cos, sin, None if kv_cache is None else kv_cache.layer(i))
        if kv_cache is not None:
            kv_cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, return_logits=True):
        """-> (logits [B, T, V] for every position, mean cross-entropy over targets != -1, or None).
        With return_logits=False (training, validation loss) logits is None and on CPU the loss
        comes from the chunked head+loss, which never holds [B*T, V] logits in memory. On GPU the
        plain route is kept: under bf16 autocast and torch.compile it is already fused and fast."""
        x = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(x), None
        if return_logits or x.device.type != "cpu":
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return (logits if return_logits else None), loss
        return None, fused_head.head_loss(x.reshape(-1, x.size(-1)), self.lm_head.weight, self.lm_head.bias,
                                          targets.reshape(-1))

    # -------------------------------------------------------------------------
    # generation with a key-value cache

    def new_kv_cache(self, batch_size):
        return KVCache(self, batch_size)

    def next_logits(self, idx, kv_cache):
        """Logits [B, V] of the token after idx [B, T], advancing kv_cache by idx's T tokens."""
        return self.lm_head(self.hidden_states(idx, kv_cache)[:, -1])

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample max_new_tokens after idx [B, T]. temperature 0 means greedy. When the context
        fills up, the cache is rebuilt from the most recent block_size // 2 tokens (rotary
        positions are relative, so the model sees an ordinary shorter context).
        The loop needs only config.block_size, new_kv_cache() and next_logits(): MergedGPT (below)
        has them too and generates with this same method."""
        block = self.config.block_size
        cache = self.new_kv_cache(idx.size(0))
        context = idx[:, -block:]
        logits, in_cache = self.next_logits(context, cache), context.size(1)
        for i in range(max_new_tokens):
            idx_next = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            if in_cache >= block:
                cache = self.new_kv_cache(idx.size(0))
                context = idx[:, -(block // 2):]
                logits, in_cache = self.next_logits(context, cache), context.size(1)
            else:
                logits, in_cache = self.next_logits(idx_next, cache), in_cache + 1
        return idx


class KVCache:
    """Preallocated keys/values for every layer: [B, n_head, block_size, head_dim] each."""

    def __init__(self, model, batch_size):
        c = model.config
        p = model.lm_head.weight
        shape = (batch_size, c.n_head, c.block_size, c.d_model // c.n_head)
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in range(c.n_layer)]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in range(c.n_layer)]
        self.pos = 0

    def layer(self, i):
        return self.k[i], self.v[i], self.pos


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """logits [B, V] -> next ids [B, 1]."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# -----------------------------------------------------------------------------
# the merged model (merge.py builds it): K GPT experts whose logits are averaged, behind GPT's interface.
# It lives here, next to GPT, so that load_model reads merge files without importing merge.py.

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


class MergedGPT(nn.Module):
    """K GPT experts behind the single-model interface: forward(idx, targets) -> (logits, loss),
    generate() with one key-value cache per expert, config.block_size / vocab_size, param_counts().

    In "logits" mode the average is folded into the output heads: the merged logits
    sum_k w_k (x_k W_k^T + b_k) are computed as (sum_k w_k b_k) + w_1 x_1 W_1^T + ... with each
    head's matmul accumulating into the previous result (addmm's alpha/beta), so averaging costs no
    extra pass over the [tokens, vocab] logits: the merge costs what its experts cost. Nothing reads
    a value back to the host, so on a GPU all experts' kernels queue in one stream without syncs."""

    MODES = ("logits", "logprobs", "probs")  # merge.py's docstring says what each computes
    FORMAT = 1  # version of the merge file layout (merge.merge_checkpoint writes it)

    def __init__(self, experts, weights=None, mode="logits"):
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("a merge needs at least one expert")
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(self.MODES)}")
        vocab = {e.config.vocab_size for e in experts}
        if len(vocab) != 1:
            raise ValueError(f"experts have different vocabulary sizes {sorted(vocab)}: they must share one tokenizer")
        self.experts = nn.ModuleList(experts)
        self.weights = normalise_weights(weights, len(experts))  # python floats: no host syncs, no tensors
        self.mode = mode
        self.table_info = dict(getattr(experts[0], "table_info", {}) or {})
        self._share_table()
        self.config = MergedConfig(vocab_size=vocab.pop(), block_size=min(e.config.block_size for e in experts),
                                   n_experts=len(experts), mode=mode, weights=tuple(self.weights))

    def _share_table(self):
        """The experts' frozen tables (one substrate: merge.check_compatible checks it before a merge
        is built) become one tensor: K copies of a 65,536-row table would cost K x 256 MB at d=1024."""
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
