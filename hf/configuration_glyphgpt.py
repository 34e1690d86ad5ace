"""
Configuration of a glyphgpt model in Hugging Face format (written by glyphgpt's export_hf.py).

A glyphgpt model is K >= 1 "experts", each a complete GPT (pre-LN blocks, rotary positions, GELU MLP,
untied head) that share one tokenizer and one input table; K == 1 is a plain model, K > 1 a merge whose
logits are combined the way glyphgpt's merge.py does it (merge_mode, merge_weights). The input table is
either a frozen [vocab_size, table_width] picture table shared by all experts (embedding != "trainable")
or an ordinary trainable embedding per expert.
"""
from transformers import PretrainedConfig


class GlyphGPTConfig(PretrainedConfig):
    model_type = "glyphgpt"

    def __init__(self, vocab_size=65536, embedding="glyph", table_width=None, experts=None,
                 merge_mode="logits", merge_weights=None, table_info=None, tokenizer_name=None,
                 tokenizer_fingerprint=None, **kwargs):
        # per expert: n_layer, n_head, d_model, block_size, bias, rope_base (glyphgpt's GPTConfig fields)
        self.experts = list(experts or [dict(n_layer=1, n_head=1, d_model=64, block_size=64, bias=True,
                                             rope_base=10000.0)])
        self.vocab_size = vocab_size
        self.embedding = embedding
        self.table_width = table_width
        self.merge_mode = merge_mode
        self.merge_weights = list(merge_weights or [1.0 / len(self.experts)] * len(self.experts))
        self.table_info = dict(table_info or {})
        self.tokenizer_name = tokenizer_name
        self.tokenizer_fingerprint = tokenizer_fingerprint
        # the names transformers and lm-evaluation-harness read: context length, the number of attention
        # layers the key-value cache holds (all experts' layers, one cache), the first expert's shape
        self.max_position_embeddings = min(e["block_size"] for e in self.experts)
        self.num_hidden_layers = sum(e["n_layer"] for e in self.experts)
        self.hidden_size = self.experts[0]["d_model"]
        self.num_attention_heads = self.experts[0]["n_head"]
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
