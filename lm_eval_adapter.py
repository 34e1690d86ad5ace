"""
lm-evaluation-harness adapter: lets `lm_eval` evaluate glyphgpt checkpoints and merged models.

    pip install lm_eval==0.4.13          # optional dependency, only this file imports it
    from lm_eval_adapter import GlyphLM
    lm = GlyphLM(ckpt="out/ckpt.pt")     # or GlyphLM(model=model, tokenizer=tok)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])   # harness tasks (their data: HF hub)
    python lm_eval_adapter.py --ckpt=out/ckpt.pt --tasks=arc_easy,hellaswag --limit=100

It implements the harness's LM interface (loglikelihood, loglikelihood_rolling, generate_until) with
nothing but the model interface every glyphgpt model has: model(idx) -> (logits [B, T, V], _),
model.generate and config.block_size. Each log-likelihood request is scored on its own, the way
the harness's own HFLM does it without its caches: (context + continuation)[-(block_size + 1):][:-1],
longest first, `batch_size` rows per forward. It is deliberately the plain reference: eval.py's
grouped scorer must return the same numbers (tests/test_eval.py) and bench/bench_eval.py measures the difference.
"""
import json

import torch
from torch.nn import functional as F
from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from checkpoint import atomic_write, check_output
from common import fail, resolve_device, script_main
from configurator import configure, defaults_from, key_docs
from unicode_tokenizer import checkpoint_tokenizer


@register_model("glyphgpt")
class GlyphLM(TemplateLM):
    backend = "causal"

    def __init__(self, model=None, tokenizer=None, ckpt=None, batch_size=8, max_gen_toks=256, device=None):
        super().__init__()
        if model is None:
            if ckpt is None:
                raise ValueError("GlyphLM needs model= and tokenizer=, or ckpt=PATH")
            import eval as E
            device = resolve_device(device or "auto")
            model, info = E.open_model(ckpt, device)
            tokenizer = tokenizer or checkpoint_tokenizer(info, ckpt)
        elif tokenizer is None:
            raise ValueError("GlyphLM(model=...) also needs tokenizer=")
        self.model, self.tok = model, tokenizer
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._device = next(model.parameters()).device

    # -- what TemplateLM needs --------------------------------------------------------------------

    @property
    def eot_token_id(self):
        return self.tok.eos_id

    @property
    def max_length(self):
        return self.model.config.block_size

    @property
    def device(self):
        return self._device

    def tok_encode(self, string, **kwargs):
        return self.tok.encode(string)

    def tok_decode(self, tokens, **kwargs):
        return self.tok.decode(tokens)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm=False):
        """requests: [((context, continuation), context_ids, continuation_ids)] -> [(logprob, is_greedy)]."""
        L = self.max_length
        inputs = [((ctx + cont)[-(L + 1):][:-1], cont) for _, ctx, cont in requests]
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
        out = [None] * len(inputs)
        for s in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="lm_eval loglikelihood"):
            ids = order[s:s + self.batch_size]
            width = max(len(inputs[i][0]) for i in ids)
            x = torch.zeros((len(ids), width), dtype=torch.long)
            for b, i in enumerate(ids):
                x[b, :len(inputs[i][0])] = torch.tensor(inputs[i][0])
            logits, _ = self.model(x.to(self.device))
            for b, i in enumerate(ids):
                inp, cont = inputs[i]
                lp = F.log_softmax(logits[b, len(inp) - len(cont):len(inp)].float(), dim=-1).cpu()
                target = torch.tensor(cont)
                out[i] = (float(lp[torch.arange(len(cont)), target].sum()), bool((lp.argmax(-1) == target).all()))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Whole-string log-likelihood (perplexity tasks): disjoint windows of block_size tokens, the
        first conditioned on the eos token, as the harness's own models do."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        results = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="lm_eval rolling"):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(string), self.eot_token_id, self.max_length, 1)]
            pieces = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            results.append(sum(lp for lp, _ in pieces))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm=False):
        """Greedy by default (do_sample=False); stops at the first `until` string."""
        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="lm_eval generate"):
            kw = dict(gen_kwargs or {})
            until = kw.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(kw.get("max_gen_toks", self.max_gen_toks))
            sample = kw.get("do_sample", False) and float(kw.get("temperature", 1.0)) > 0
            ids = self.tok_encode(context)[-max(1, self.max_length - n_new):]
            y = self.model.generate(torch.tensor([ids], device=self.device), n_new,
                                    temperature=float(kw.get("temperature", 1.0)) if sample else 0.0,
                                    top_k=kw.get("top_k"))
            text = self.tok_decode(y[0, len(ids):].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out


# -----------------------------------------------------------------------------
# the command line (configurator.py's style, as every script)
ckpt = ""  # the checkpoint (single or merged) to evaluate
tasks = ""  # comma list of harness task names, e.g. arc_easy,hellaswag
limit = 0  # first N items per task; 0 = all
batch_size = 8  # rows per forward pass
out = ""  # write the harness's results dict here (JSON); "" = print only
DEFAULTS = defaults_from(globals())


def main(argv):
    import lm_eval
    from lm_eval.utils import make_table
    cfg = configure(DEFAULTS, argv, verbose=False, docs=key_docs(__file__), prog="lm_eval_adapter.py")
    if not cfg.ckpt or not cfg.tasks:
        fail("--ckpt and --tasks are required, e.g. --ckpt=out/ckpt.pt --tasks=arc_easy")
    for key, least in (("limit", 0), ("batch_size", 1)):
        if cfg[key] < least:
            fail(f"{key}={cfg[key]}: expected a whole number >= {least}")
    if cfg.out:
        check_output(cfg.out, [("checkpoint", cfg.ckpt)], "out")
    lm = GlyphLM(ckpt=cfg.ckpt, batch_size=cfg.batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=cfg.tasks.split(","), limit=cfg.limit or None, log_samples=False)
    if cfg.out:
        with atomic_write(cfg.out) as f:
            json.dump(res["results"], f, indent=1, default=str)
    print(make_table(res))


if __name__ == "__main__":
    script_main("lm_eval_adapter.py", main)
