"""
A glyphgpt model (the GPT of glyphgpt's model.py, or a merge of them as in its merge.py) for Hugging Face
`transformers`, loaded with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).

It computes exactly what glyphgpt computes: the same operations in the same order (glyphgpt's
export_hf.py checks logits equal to 1e-5), so a model trained, grown or merged with glyphgpt gives
the same numbers under `transformers`' generate and lm-evaluation-harness's `hf` model.
Self-contained on purpose: this file travels with the weights and imports nothing from glyphgpt.

K experts (configuration_glyphgpt.py): K == 1 is a plain model; K > 1 a merge, whose logits at every
position are combined from the experts' logits (merge_mode "logits": sum_k w_k logits_k, the paper's;
"logprobs": sum_k w_k log_softmax(logits_k); "probs": log sum_k w_k softmax(logits_k)).
One key-value cache holds every expert's layers (expert k's layer i is cache layer offset_k + i).
Inference only: dropout is left out.
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_glyphgpt import GlyphGPTConfig

# the output's cache field: "cache" in recent transformers, "past_key_values" before
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def rope_cos_sin(positions, head_dim, base):
    """positions [B, T] -> cos and a signed sin [B, T, head_dim] ("rotate-half" layout), computed with
    the very float32 operations of glyphgpt's rope_tables, so every value is bit-identical."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x, cos, signed_sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), signed_sin)


class Attention(nn.Module):

    def __init__(self, e, layer_idx):
        super().__init__()
        self.c_attn = nn.Linear(e["d_model"], 3 * e["d_model"], bias=e["bias"])
        self.c_proj = nn.Linear(e["d_model"], e["d_model"], bias=e["bias"])
        self.n_head = e["n_head"]
        self.layer_idx = layer_idx  # in the cache shared by all experts

    def forward(self, x, cos, sin, mask, cache):
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        qk = apply_rope(qkv[:, :, :2], cos[:, :, None, None], sin[:, :, None, None])
        q, k = qk.unbind(dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B, nh, T, hd)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if mask is None:  # no padding, and a whole prompt or one new token: glyphgpt's own kernel call
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):

    def __init__(self, e):
        super().__init__()
        self.c_fc = nn.Linear(e["d_model"], 4 * e["d_model"], bias=e["bias"])
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * e["d_model"], e["d_model"], bias=e["bias"])

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, e, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(e["d_model"], bias=e["bias"])
        self.attn = Attention(e, layer_idx)
        self.ln_2 = nn.LayerNorm(e["d_model"], bias=e["bias"])
        self.mlp = MLP(e)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attn(self.ln_1(x), cos, sin, mask, cache)
        return x + self.mlp(self.ln_2(x))


class Expert(nn.Module):
    """One glyphgpt GPT without the shared frozen table: blocks, final LayerNorm, output head."""

    def __init__(self, e, config, first_layer):
        super().__init__()
        self.e = e
        self.wte = nn.Embedding(config.vocab_size, e["d_model"]) if config.embedding == "trainable" else None
        self.repeat = e["d_model"] // (config.table_width or e["d_model"])
        self.h = nn.ModuleList([Block(e, first_layer + i) for i in range(e["n_layer"])])
        self.ln_f = nn.LayerNorm(e["d_model"], bias=e["bias"])
        self.lm_head = nn.Linear(e["d_model"], config.vocab_size, bias=e["bias"])

    def hidden_states(self, input_ids, table_rows, positions, mask, cache):
        if self.wte is not None:
            x = self.wte(input_ids)
        else:  # the frozen table's rows, widened to d_model as glyphgpt's FrozenEmbedding does
            x = table_rows.repeat_interleave(self.repeat, dim=-1) if self.repeat > 1 else table_rows
        cos, sin = rope_cos_sin(positions, self.e["d_model"] // self.e["n_head"], self.e["rope_base"])
        for block in self.h:
            x = block(x, cos, sin, mask, cache)
        return self.ln_f(x)


class GlyphGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GlyphGPTConfig
    base_model_prefix = "glyphgpt"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        frozen = config.embedding != "trainable"
        # the frozen input table: one tensor for all experts, never trained
        self.table = nn.Parameter(torch.zeros(config.vocab_size, config.table_width), requires_grad=False) \
            if frozen else None
        offsets = [sum(e["n_layer"] for e in config.experts[:k]) for k in range(len(config.experts))]
        self.experts = nn.ModuleList([Expert(e, config, o) for e, o in zip(config.experts, offsets)])
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from model.safetensors

    def combine(self, xs):
        """Final hidden states of every expert, xs[k] [N, d_k] -> logits [N, V], as glyphgpt's merge.py."""
        heads, ws, mode = [e.lm_head for e in self.experts], self.config.merge_weights, self.config.merge_mode
        if len(heads) == 1:
            return heads[0](xs[0])
        if mode == "logprobs":
            out = None
            for w, h, x in zip(ws, heads, xs):
                lp = F.log_softmax(h(x).float(), dim=-1)
                out = lp.mul_(w) if out is None else out.add_(lp, alpha=w)
            return out
        if mode == "probs":
            out = None
            for w, h, x in zip(ws, heads, xs):
                lp = F.log_softmax(h(x).float(), dim=-1).add_(math.log(w) if w > 0 else -math.inf)
                out = lp if out is None else torch.logaddexp(out, lp, out=out)
            return out
        bias = None  # "logits": sum_k w_k (x_k W_k^T + b_k), the average folded into the heads' matmuls
        for w, h in zip(ws, heads):
            if h.bias is not None:
                bias = w * h.bias if bias is None else bias + w * h.bias
        if bias is not None:
            out = torch.addmm(bias, xs[0], heads[0].weight.t(), alpha=ws[0])
        else:
            out = torch.mm(xs[0], heads[0].weight.t()).mul_(ws[0])
        for w, h, x in zip(ws[1:], heads[1:], xs[1:]):
            out = torch.addmm(out, x, h.weight.t(), alpha=w)
        return out

    def attention_mask_4d(self, attention_mask, past, T, device):
        """None when glyphgpt's plain causal attention is exact (no padding; a prompt into an empty
        cache or one token at a time); else a boolean [B, 1, T, past + T] mask: causal and no padding."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or T == 1):
            return None
        S = past + T
        mask = torch.arange(S, device=device)[None, :] <= torch.arange(past, S, device=device)[:, None]  # [T, S]
        mask = mask[None, None]
        if padded:
            mask = mask & attention_mask[:, None, None, -S:].bool()
        return mask

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, labels=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None and not bool(attention_mask.all()):  # left padding: count real tokens
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        if past + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's context "
                             f"{self.config.max_position_embeddings} (max_position_embeddings)")
        mask = self.attention_mask_4d(attention_mask, past, T, input_ids.device)
        rows = F.embedding(input_ids, self.table) if self.table is not None else None
        xs = [e.hidden_states(input_ids, rows, position_ids, mask, cache if use_cache else None).reshape(B * T, -1)
              for e in self.experts]
        logits = self.combine(xs).view(B, T, -1)
        loss = None
        if labels is not None:  # labels aligned with input_ids; position t predicts labels[t + 1]
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})
