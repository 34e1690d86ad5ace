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

The merged model itself (MergedGPT) lives in model.py next to GPT, so that model.load_model reads a
merge file without importing this script; this file checks, builds, writes and validates merges.
"""
import os
from dataclasses import asdict

from checkpoint import (check_output, check_tokenizer, model_from_checkpoint, read_checkpoint, remove_stale_partials,
                        save_checkpoint)
from common import fail, resolve_device, script_main
from configurator import configure, defaults_from, key_docs
from eval import domain_data, domain_table, evaluate_domains
from glyph_embed import check_same_substrate
from model import MergedGPT

# -----------------------------------------------------------------------------
# command-line defaults (positional arguments: config files end in .py, anything else is an expert)
experts = []  # expert checkpoint paths (train.py / grow.py checkpoints, kind "gpt"); also given positionally
weights = ""  # comma-separated, one per expert, e.g. "0.3,0.7"; normalised to sum 1; "" = equal
mode = "logits"  # logits (the paper's) | logprobs (same distribution as logits) | probs (a mixture; not the paper's)
out = "merged.pt"  # the merge file to write (never one of the experts)
overwrite = False  # replace --out if it exists (refused otherwise)
# validation: per-domain loss / bits per byte of every expert and of the merge, on the same batches
datasets = ""  # comma-separated prepared datasets (data/<name> or paths), "" = skip
data_root = ""  # "" = the data/ folder next to this file
eval_iters = 20  # validation batches per dataset
batch_size = 8  # sequences per validation batch
block_size = 0  # evaluation context; 0 = the merge's (the smallest expert context)
eval_experts = True  # also evaluate each expert alone (the comparison table)
progress = "auto"  # bar over the validation batches: auto (on a terminal only) | always | never; lines either way
device = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

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
    return dict(kind="merge", format=MergedGPT.FORMAT, mode=merged.mode, weights=list(merged.weights),
                tokenizer_name=c0.get("tokenizer_name"), tokenizer_fingerprint=c0.get("tokenizer_fingerprint"),
                table_info=dict(c0.get("table_info") or {}), table=None if table is None else table.detach().cpu(),
                experts=entries)


def build_merge(paths, weights=None, mode="logits"):
    """-> (MergedGPT, merge file dict) from expert checkpoint paths; every check runs first."""
    if len(paths) < 2:
        raise ValueError(f"a merge needs at least 2 expert checkpoints, got {len(paths)} ({', '.join(paths) or 'none'})")
    models, ckpts = zip(*[read_expert(p) for p in paths])
    check_compatible(paths, ckpts)
    merged = MergedGPT(models, weights, mode).eval()  # checks the mode, the weights and the vocabularies
    return merged, merge_checkpoint(merged, ckpts, paths)


# -----------------------------------------------------------------------------
# the command line: check, merge, write, and score on each domain (eval.py's per-domain validation)

def main(argv):
    cfg = configure(DEFAULTS, argv, docs=key_docs(__file__), prog="merge.py", positional="experts")
    paths = list(cfg["experts"])
    dev = resolve_device(cfg["device"])
    names = [n for n in cfg["datasets"].split(",") if n]
    # -- everything that can fail on bad input happens before the merge file is written --
    # the merge file is a file, never an expert (by any path, symlink or hard link) nor replaces one unasked
    check_output(cfg["out"], [("expert", p) for p in paths], "out", cfg["overwrite"], file_name="merged.pt")
    merged, ck = build_merge(paths, cfg["weights"] or None, cfg["mode"])
    if names:
        from unicode_tokenizer import get_tokenizer
        tok = get_tokenizer(ck["tokenizer_name"])
        check_tokenizer(ck, tok, "the experts")
        cfg["block_size"] = cfg["block_size"] or merged.config.block_size
        if cfg["block_size"] > merged.config.block_size:
            fail(f"block_size={cfg['block_size']} exceeds the merge's context {merged.config.block_size}")
        tcfg, data = domain_data(names, cfg, tok, dev)
    remove_stale_partials(cfg["out"])  # of a merge killed while writing
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
    results = evaluate_domains(models, tcfg, data, dev, cfg["progress"])
    print(domain_table(results, names))
    return results


if __name__ == "__main__":
    script_main("merge.py", main)
