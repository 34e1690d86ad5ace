"""
The GPT of the papers (docs/design.md §3), nanoGPT-shaped: pre-LayerNorm blocks, causal
self-attention through F.scaled_dot_product_attention, rotary positions (base 10000, rotate-half),
GELU MLP of width 4*d, biases, final LayerNorm and an untied, trainable output head.

The only thing that differs between the arms of the experiment is the input embedding:
  "trainable"                        an ordinary nn.Embedding, random init std 0.02 (the baseline)
  "glyph", "glyph_unique",           a frozen [V, w] table from glyph_embed.frozen_table(); it is
  "binary16", "random"               an nn.Parameter with requires_grad=False, so it is saved with
                                     the model but never trained; w < d_model is expanded with
                                     repeat_interleave(d_model // w).

Design choice: the frozen table is STORED in the checkpoint (not rebuilt from the font on load).
Checkpoints travel between people to be merged; a rebuild depends on the local Unifont version and
Pillow, and one changed pixel changes the table. Storing it makes a checkpoint self-contained.
table_info carries two identities: "fingerprint", the sha256 of the stored float32 bytes (re-computed
and verified on every load: the checkpoint is intact), and "key", the substrate key (what the table
was built from: tokenizer, recipe, font, cell, dim, a digest of the integer bitmaps). Two tables are
the same substrate when their keys agree and their values agree within glyph_embed.SUBSTRATE_TOL
(glyph_embed.check_same_substrate): their bytes may differ in the last bit from one LAPACK to another.
"""
import math
import os
import warnings
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from data.download import atomic_write
from glyph_embed import check_same_substrate, table_fingerprint  # table_fingerprint: integrity of a stored table

HEAD_CHUNK_ELEMS = 1 << 26  # logits per chunk of the chunked head+loss (see GPT.forward)
EMBEDDINGS = ("glyph", "glyph_unique", "binary16", "random", "trainable")


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
            raise ValueError(f"frozen table width {w} does not divide d_model {d_model}: "
                             f"use a table of width d_model or a divisor of it")
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


def _head_loss(x, weight, bias, targets, chunk, want_x=False, want_w=False, want_b=False):
    """Output head + mean cross-entropy (targets == -1 ignored) over row chunks of x [N, d].
    With want_*, also the gradients of that loss w.r.t. x / weight / bias, computed in the same pass.

    Per chunk the [c, V] block is touched only 4 times besides the matmuls (max, subtract, exp, sum):
    the gradient w * (softmax - onehot) is never formed. Its row scale w / sum is applied to the small
    [c, d] side of each matmul instead, and the one-hot part is a gather / index_add of c rows."""
    n_valid = (targets != -1).sum().clamp(min=1)
    gx = torch.empty_like(x) if want_x else None
    gw = torch.empty_like(weight) if want_w else None  # written by the first chunk, then accumulated
    gb = torch.empty_like(bias) if (bias is not None and want_b) else None
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xc, tc = x[s:s + chunk], targets[s:s + chunk]
        logits = (torch.addmm(bias, xc, weight.t()) if bias is not None else xc @ weight.t()).float()
        mask = tc != -1
        tgt = tc.clamp(min=0)
        target_logit = logits.gather(1, tgt.unsqueeze(1))
        mx = logits.amax(dim=-1, keepdim=True)
        e = logits.sub_(mx).exp_()  # unnormalised softmax, in place
        total = e.sum(dim=-1, keepdim=True)
        loss += ((mx + total.log() - target_logit).squeeze(1) * mask).sum()
        if gx is None and gw is None and gb is None:
            continue
        w = (mask.to(x.dtype) / n_valid).unsqueeze(1)  # [c, 1]: d loss / d logits = w * (softmax - onehot)
        scale = w / total.to(x.dtype)  # softmax * w == e * scale
        e = e.to(x.dtype)
        if gx is not None:
            g = gx[s:s + chunk]
            torch.mm(e, weight, out=g)
            g.mul_(scale).sub_(w * weight.index_select(0, tgt))
        if gw is not None:
            torch.mm(e.t(), xc * scale, out=gw) if s == 0 else gw.addmm_(e.t(), xc * scale)
            gw.index_add_(0, tgt, xc * -w)
        if gb is not None:
            torch.mv(e.t(), scale.squeeze(1), out=gb) if s == 0 else gb.add_(torch.mv(e.t(), scale.squeeze(1)))
            gb.index_add_(0, tgt, -w.squeeze(1))
    return loss / n_valid, gx, gw, gb


class _HeadLoss(torch.autograd.Function):
    """Output head + cross-entropy with the gradients computed in the forward pass (_head_loss).

    The plain route materialises [N, V] logits, then [N, V] log-probabilities, and in backward an
    [N, V] gradient: three full passes over a tensor that, with a 65,536-id vocabulary, dwarfs the
    rest of a small model. Here each chunk of rows is multiplied by the head, turned into
    softmax - onehot in place and multiplied back while it is still in cache; backward only scales
    the stored gradients. Same loss and gradients as F.cross_entropy (mean over targets != -1)."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk):
        loss, gx, gw, gb = _head_loss(x, weight, bias, targets, chunk, *ctx.needs_input_grad[:3])
        ctx.save_for_backward(gx, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, g):
        gx, gw, gb = ctx.saved_tensors
        scale = lambda t: None if t is None else t * g.to(t.dtype)
        return scale(gx), scale(gw), scale(gb), None, None


class GPT(nn.Module):

    def __init__(self, config, table=None):
        super().__init__()
        if config.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding={config.embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
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

        # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # the table's identity, computed once (not possible for a shape-only model on 'meta')
        self.table_fingerprint = None
        if self.frozen_table is not None and not self.frozen_table.is_meta:
            self.table_fingerprint = table_fingerprint(self.frozen_table)
        self.table_info = {}  # glyph_embed's info dict (kind, dim, recipe, ...), set by whoever builds the model

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def frozen_table(self):
        wte = self.transformer.wte
        return wte.weight if isinstance(wte, FrozenEmbedding) else None

    def param_counts(self):
        return count_params(self)

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
        # rows per chunk: 256 MB of float32 logits (1,024 rows at 65,536 ids). Smaller chunks fit the
        # cache better but make more, thinner matmuls and re-read the head's gradient once per chunk:
        # measured slower on CPU.
        chunk = max(1, HEAD_CHUNK_ELEMS // self.config.vocab_size)
        x, w, b, t = x.reshape(-1, x.size(-1)), self.lm_head.weight, self.lm_head.bias, targets.reshape(-1)
        if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (x, w, b)):
            return None, _HeadLoss.apply(x, w, b, t, chunk)
        return None, _head_loss(x, w, b, t, chunk)[0]

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
# checkpoints

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


def _check_plain(obj, where="checkpoint"):
    """Only containers, scalars and tensors: what torch.load(weights_only=True) accepts. Checked
    before writing, so a bad object fails at save time, not when someone else loads the file."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where} is a {type(obj).__name__}: checkpoints hold only dicts, lists, "
                        f"scalars and tensors (weights_only loading)")


def save_checkpoint(obj, path):
    """Atomic save (atomic_write: the old file or the new one, never a torn one, flushed to disk); a
    failed write (a full disk) leaves the old one and says so in one line."""
    _check_plain(obj)
    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:160]
        kept = f"the previous {path} is intact" if os.path.exists(path) else f"nothing was written to {path}"
        raise OSError(f"could not save {path}: {reason} (disk full?); {kept}") from None


def model_checkpoint(model, tokenizer=None, table_info=None, **extra):
    """The model part of a checkpoint dict (kind 'gpt'); train.py adds optimizer/iter/RNG/data state."""
    info = dict(table_info if table_info is not None else getattr(model, "table_info", {}))
    if model.frozen_table is not None:
        if not torch.isfinite(model.frozen_table).all():
            raise ValueError("the model's frozen table has non-finite values: not saved")
        fp = table_fingerprint(model.frozen_table)
        if info.get("fingerprint") not in (None, fp):
            raise ValueError(f"table_info says fingerprint {info['fingerprint']}, the model's table is {fp}")
        info["fingerprint"] = fp
    ckpt = dict(kind="gpt", model_args=asdict(model.config),
                model={k: v for k, v in model.state_dict().items()},
                tokenizer_name=getattr(tokenizer, "name", None),
                tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
                table_info=info)
    ckpt.update(extra)
    return ckpt


def missing_checkpoint_hint(path):
    """What the folder of a missing checkpoint holds instead, e.g. a grow.py run's stage_3.pt."""
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        return f" ({d} does not exist)"
    pts = sorted((f for f in os.listdir(d) if f.endswith(".pt")), key=lambda f: (len(f), f))
    if not pts:
        return f" ({d} holds no .pt file)"
    return f"; {d} holds {', '.join(pts[:6])}{' ...' if len(pts) > 6 else ''}: name one of them, e.g. {os.path.join(d, pts[-1])}"


def read_checkpoint(path, device="cpu"):
    """torch.load(weights_only=True) with one-line errors for a missing/truncated/foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file{missing_checkpoint_hint(path)}")
    try:
        with warnings.catch_warnings():  # torch warns before failing on non-zip files: the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # zip reader / unpickler errors of a truncated or non-checkpoint file
        msg = str(e)
        if "WeightsUnpickler error:" in msg:  # keep the reason, not torch's paragraph of advice around it
            msg = msg.split("WeightsUnpickler error:", 1)[1]
        first = (msg.strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable checkpoint (truncated, corrupt or not written by "
                         f"torch.save of plain data): {first}") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"{path}: not a glyphgpt checkpoint (no 'kind' entry)")
    return ckpt


def check_tokenizer(ckpt, tok, where):
    """A checkpoint is used only with the tokenizer it was trained with: ValueError (one line) else."""
    if not ckpt.get("tokenizer_fingerprint"):
        raise ValueError(f"{where} records no tokenizer fingerprint (saved without its tokenizer), so it "
                         f"cannot be checked against {tok.name!r}")
    if ckpt.get("tokenizer_fingerprint") != tok.fingerprint:
        raise ValueError(f"{where} was trained with tokenizer {ckpt.get('tokenizer_name')!r} "
                         f"({ckpt.get('tokenizer_fingerprint')}), this run uses {tok.name!r} ({tok.fingerprint})")


def checkpoint_tokenizer(ckpt, where, name=None):
    """The tokenizer a checkpoint was trained with (`name` overrides the recorded name; either way it
    must pass check_tokenizer)."""
    from unicode_tokenizer import get_tokenizer  # (imported here: loading a model needs no tokenizer)
    name = name or ckpt.get("tokenizer_name")
    if not name:
        raise ValueError(f"{where} records no tokenizer_name: pass --tokenizer")
    tok = get_tokenizer(name)
    check_tokenizer(ckpt, tok, where)
    return tok


def model_from_checkpoint(ckpt, device="cpu", path="checkpoint"):
    """Rebuild a GPT from a checkpoint dict, verifying the stored table against its fingerprint."""
    known = {f.name for f in fields(GPTConfig)}
    args = ckpt.get("model_args")
    if not isinstance(args, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path}: checkpoint has no model_args/model entries")
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"{path}: unknown model_args {sorted(unknown)} (written by a newer model.py?)")
    config = GPTConfig(**args)
    for f in fields(GPTConfig):  # each of its default's type, sizes positive: no odd exception further on
        v, want = getattr(config, f.name), type(f.default)
        if isinstance(v, bool) != (want is bool) or not isinstance(v, (int, float) if want is float else want) \
                or (want is int and v < 1):
            raise ValueError(f"{path}: model_args {f.name}={v!r} is not a valid {want.__name__}")
    if config.d_model % config.n_head:
        raise ValueError(f"{path}: model_args d_model={config.d_model} is not divisible by n_head={config.n_head}")
    sd = ckpt["model"]
    table = None
    if config.embedding != "trainable":
        table = sd.get("transformer.wte.weight")
        if table is None:
            raise ValueError(f"{path}: embedding {config.embedding!r} but no frozen table in the checkpoint")
        expected = (ckpt.get("table_info") or {}).get("fingerprint")
        got = table_fingerprint(table)
        if expected is None or got != expected:
            raise ValueError(f"{path}: frozen table fingerprint {got} does not match the recorded "
                             f"{expected} (the table was altered or the checkpoint is damaged)")
    try:
        model = GPT(config, table=None if table is None else table.cpu())
        model.load_state_dict(sd)
    except ValueError as e:  # a table that does not fit model_args
        raise ValueError(f"{path}: {e}") from None
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the recorded model_args: "
                         f"{str(e).splitlines()[0][:200]}") from None
    model.table_info = dict(ckpt.get("table_info") or {})
    return model.to(device)


def merged_from_checkpoint(ckpt, device="cpu", path="merge file"):
    """Rebuild a MergedGPT from a merge file's dict (kind 'merge', written by merge.py)."""
    if ckpt.get("format") != MergedGPT.FORMAT:
        raise ValueError(f"{path}: merge file format {ckpt.get('format')!r}, this model.py reads format {MergedGPT.FORMAT}")
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


def load_model(path, device="cpu"):
    """-> (model in eval mode, checkpoint dict). Accepts single models (kind 'gpt') and merged
    models (kind 'merge', written by merge.py)."""
    ckpt = read_checkpoint(path, device)
    kind = ckpt["kind"]
    if kind == "gpt":
        model = model_from_checkpoint(ckpt, device, path)
    elif kind == "merge":
        model = merged_from_checkpoint(ckpt, device, path)
    else:
        raise ValueError(f"{path}: unknown checkpoint kind {kind!r} (expected 'gpt' or 'merge')")
    model.eval()
    return model, ckpt
