"""
Share glyphgpt models the way the field does: a Hugging Face folder out, and back in.

$ python export_hf.py out/ckpt.pt --to=hf-model                 # a single, grown or merged checkpoint
$ python export_hf.py out/merged.pt --to=hf-merge --eval=eval_merged_loglik.json --license=apache-2.0
$ python export_hf.py hf-model --to=imported.pt                  # a folder this script wrote -> checkpoint

Export writes a Hub-ready folder: config.json (the architecture of every expert, the merge mode and
weights, the frozen table's fingerprint and recipe, the tokenizer's name and fingerprint),
model.safetensors (float32, the frozen table included, once), tokenizer.json + tokenizer_config.json
(`tokenizers` format, special tokens <s> </s> <unk> <pad>), generation_config.json, the modeling files
hf/configuration_glyphgpt.py + hf/modeling_glyphgpt.py, and README.md (the model card, with the Hub's
metadata block). transformers then loads it like any remote-code model:

    model = AutoModelForCausalLM.from_pretrained("hf-model", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained("hf-model", trust_remote_code=True)
    lm_eval --model hf --model_args pretrained=hf-model,trust_remote_code=True --tasks arc_easy

Before the folder is put in place, the exported model is loaded back with transformers and its
logits compared with glyphgpt's on a probe text (max abs difference <= 1e-5): a folder that would
not compute what the checkpoint computes is never written. The folder appears atomically (built
under a temporary name, then renamed); an existing one is replaced only with --force.

Import reads such a folder back into a glyphgpt checkpoint (kind "gpt", or "merge" for a merge) that
grow.py, merge.py, eval.py and sample.py take: the weights bit-identical, the fingerprints verified.
Folders of other origins (e.g. the papers' released Bochkov/* models) are refused: their format could
not be checked offline.

Needs transformers and safetensors (requirements-test.txt); nothing else in glyphgpt does.
"""
import argparse
import json
import os
import shutil
import sys

import torch

from checkpoint import checkpoint_tokenizer, load_model, model_from_checkpoint, save_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
MODELING_FILES = ("configuration_glyphgpt.py", "modeling_glyphgpt.py")
FORMAT = 1  # version of the folder layout below, recorded in config.json
SPECIAL = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
CARRIED = ("iter_num", "best_val_loss", "metrics", "substrate")  # checkpoint entries kept in config.json
EXPERT_CARRIED = ("source", "iter_num", "datasets", "metrics")  # and those of a merge file's experts
PROBE = "Question: Which form of energy does a solar panel change into electricity?\nAnswer: light"
TOLERANCE = 1e-5  # max abs logit difference, float32


def need(*modules):
    """Import the optional packages this script needs, with a one-line error naming the fix."""
    import importlib
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        package = (e.name or "transformers").split(".")[0]
        raise SystemExit(f"export_hf.py needs {package}: pip install transformers==5.24.0 safetensors==0.8.0 "
                         f"(or pip install -r requirements-test.txt)") from None


# -----------------------------------------------------------------------------
# weight names: glyphgpt's state dict <-> the folder's (K experts, one shared frozen table)

def to_hf_names(experts, frozen):
    """experts: glyphgpt GPTs -> {folder name: tensor}. The frozen table is stored once as 'table'."""
    out = {}
    if frozen:
        out["table"] = experts[0].frozen_table
    for k, e in enumerate(experts):
        for name, t in e.state_dict().items():
            if name == "transformer.wte.weight":
                if frozen:
                    continue
                name = "wte.weight"
            out[f"experts.{k}.{name.removeprefix('transformer.')}"] = t
    return out


def from_hf_names(tensors, k, frozen):
    """{folder name: tensor} -> expert k's glyphgpt state dict."""
    prefix, sd = f"experts.{k}.", {}
    for name, t in tensors.items():
        if name.startswith(prefix):
            rest = name[len(prefix):]
            sd[rest if rest.startswith("lm_head.") else "transformer." + rest] = t
    if frozen:
        sd["transformer.wte.weight"] = tensors["table"]
    return sd


# -----------------------------------------------------------------------------
# export

def open_checkpoint(path):
    """-> (model, checkpoint dict, list of expert GPTs, merge weights, merge mode)."""
    try:
        model, ckpt = load_model(path)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise SystemExit(f"export_hf.py: {path}: cannot load as a glyphgpt checkpoint: {e}") from None
    if ckpt["kind"] == "merge":
        return model, ckpt, list(model.experts), list(model.weights), model.mode
    return model, ckpt, [model], [1.0], "logits"


def open_tokenizer(ckpt, path):
    """The checkpoint's tokenizer as a tokenizer.json dict, checked against its fingerprint."""
    try:
        tok = checkpoint_tokenizer(ckpt, path)
    except ValueError as e:
        raise SystemExit(f"export_hf.py: {path}: {e}") from None
    if getattr(tok, "lossless", False):
        raise SystemExit(f"export_hf.py: {path}: tokenizer {tok.name!r} is lossless: its escape ids for characters "
                         f"without an id have no tokenizer.json equivalent; export a model of the plain tokenizer")
    if hasattr(tok, "to_hf_json"):
        return tok, tok.to_hf_json()
    if hasattr(tok, "tok"):  # a general tokenizer.json run by the `tokenizers` library
        return tok, json.loads(tok.tok.to_str())
    raise SystemExit(f"export_hf.py: {path}: tokenizer {tok.name!r} (tiktoken) has no tokenizer.json form to ship")


def plain_json(value, where):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"export_hf.py: {where} cannot be written to config.json: {e}") from None


def special_ids(tok):
    """{'<s>': id or None, ...}: the special tokens this tokenizer has as single ids."""
    ids = {s: tok.encode(s) for s in SPECIAL.values()}
    return {s: v[0] if len(v) == 1 else None for s, v in ids.items()}


def hf_config(ckpt, experts, weights, mode, tok):
    frozen = experts[0].frozen_table is not None
    ids = special_ids(tok)
    glyphgpt = {k: plain_json(ckpt[k], f"checkpoint entry {k!r}") for k in CARRIED if ckpt.get(k) is not None}
    glyphgpt.update(format=FORMAT, kind=ckpt["kind"])
    if ckpt["kind"] == "merge":  # where each expert came from, as the merge file records it
        glyphgpt["experts"] = [plain_json({k: ent.get(k) for k in EXPERT_CARRIED}, f"expert {i}")
                               for i, ent in enumerate(ckpt["experts"])]
    return dict(
        architectures=["GlyphGPTForCausalLM"], model_type="glyphgpt",
        auto_map={"AutoConfig": "configuration_glyphgpt.GlyphGPTConfig",
                  "AutoModelForCausalLM": "modeling_glyphgpt.GlyphGPTForCausalLM"},
        vocab_size=experts[0].config.vocab_size, embedding=experts[0].config.embedding,
        table_width=experts[0].frozen_table.shape[1] if frozen else None,
        experts=[plain_json(vars(e.config), "model_args") for e in experts],
        merge_mode=mode, merge_weights=list(weights),
        table_info=plain_json(dict(getattr(experts[0], "table_info", {}) or ckpt.get("table_info") or {}), "table_info"),
        tokenizer_name=tok.name, tokenizer_fingerprint=tok.fingerprint,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        max_position_embeddings=min(e.config.block_size for e in experts),
        num_hidden_layers=sum(e.config.n_layer for e in experts),
        hidden_size=experts[0].config.d_model, num_attention_heads=experts[0].config.n_head,
        tie_word_embeddings=False, use_cache=True, torch_dtype="float32", glyphgpt=glyphgpt)


def eval_results(paths):
    """eval.py result files -> [(task, metric, value in %)] for the model card's model-index."""
    out = []
    for p in paths:
        try:
            with open(p) as f:
                res = json.load(f)
            for task, r in res["tasks"].items():
                if isinstance(r, dict) and isinstance(r.get("mean"), (int, float)):
                    out.append((task, r.get("metric", "acc"), r["mean"], res.get("protocol")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"export_hf.py: --eval {p}: not an eval.py result JSON ({type(e).__name__}: {e})") from None
    return out


def model_card(cfg, results, license_, name):
    g = cfg["glyphgpt"]
    experts = cfg["experts"]
    merge = len(experts) > 1
    tags = ["glyphgpt", "text-generation", "frozen-embeddings"] + (["merge"] if merge else [])
    lines = ["---", f"license: {license_}", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {t}" for t in tags]
    if results:
        lines += ["model-index:", f"- name: {name}", "  results:"]
        for task, metric, value, protocol in results:
            lines += ["  - task:", "      type: text-generation", "    dataset:", f"      name: {task}", f"      type: {task}",
                      "    metrics:", f"    - type: {metric}", f"      value: {value:.4g}",
                      f"      name: {metric} ({protocol or 'eval.py'} protocol, %)"]
    lines += ["---", "", f"# {name}", ""]
    shape = "; ".join(f"{e['n_layer']} layers x {e['d_model']} wide, {e['n_head']} heads, context {e['block_size']}"
                      for e in experts)
    lines.append(f"A glyphgpt language model ({'a merge of %d experts by %s averaging, weights %s: ' % (len(experts), cfg['merge_mode'], ', '.join(f'{w:.3g}' for w in cfg['merge_weights'])) if merge else ''}{shape}).")
    info = cfg["table_info"]
    if cfg["embedding"] == "trainable":
        lines.append("Input embedding: an ordinary trainable table.")
    else:
        lines.append(f"Input embedding: a frozen {cfg['vocab_size']:,} x {cfg['table_width']} table "
                     f"({cfg['embedding']}), fingerprint `{info.get('fingerprint')}`; it is stored in model.safetensors "
                     f"(`table`) and was never trained.")
    lines.append(f"Tokenizer: `{cfg['tokenizer_name']}` (fingerprint `{cfg['tokenizer_fingerprint']}`), in tokenizer.json.")
    lines += ["", "Use (PATH: this folder, or its Hub repository id; the modeling code ships with the weights):", "",
              "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
              "tok = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)",
              'out = model.generate(**tok("Question: What is 2+2?\\nAnswer:", return_tensors="pt"), max_new_tokens=20)',
              "print(tok.decode(out[0]))", "```", "",
              "Evaluate with lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True "
              "--tasks arc_easy`. Back into glyphgpt (to grow, merge or evaluate it): `python export_hf.py PATH --to=ckpt.pt`."]
    m = g.get("metrics") or {}
    if isinstance(m.get("val"), dict):
        lines += ["", "Validation at export (glyphgpt's train.py):", "", "| dataset | loss (nats/token) | bits per byte |",
                  "|---|---:|---:|"]
        lines += [f"| {d} | {v['loss']:.4f} | {v['bpb']:.4f} |" for d, v in m["val"].items()
                  if isinstance(v, dict) and "loss" in v and "bpb" in v]
    if g.get("iter_num") is not None:
        lines += ["", f"Trained for {g['iter_num']:,} iterations."]
    if info:
        lines += ["", "Frozen table record (table_info):", "", "```json", json.dumps(info, indent=1), "```"]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def check_logits(folder, model, tok):
    """Load the folder with transformers and compare its logits with glyphgpt's on PROBE."""
    transformers, = need("transformers")
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tok.encode(PROBE)[:model.config.block_size]
    x = torch.tensor([ids])
    ours, _ = model(x)
    theirs = hf(x).logits
    diff = float((ours.float() - theirs.float()).abs().max())
    if not diff <= TOLERANCE:
        raise SystemExit(f"export_hf.py: the exported model's logits differ from the checkpoint's by {diff:.3g} "
                         f"(> {TOLERANCE}): nothing written")
    return diff


def write_folder(dest, force, fill):
    """Build the folder under a temporary name with fill(tmp), then rename it into place, so a reader
    sees the old folder or the new one, never half of one."""
    dest = os.path.abspath(dest.rstrip("/"))
    if os.path.exists(dest) and not force:
        raise SystemExit(f"export_hf.py: {dest} exists: pass --force to replace it")
    tmp = f"{dest}.partial-{os.getpid()}"
    old = f"{dest}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        result = fill(tmp)
        if os.path.exists(dest):
            os.rename(dest, old)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return result


def export(ckpt_path, dest, force=False, evals=(), license_="other"):
    """-> max abs logit difference of the written folder vs the checkpoint (transformers, float32)."""
    _, st = need("transformers", "safetensors.torch")
    model, ckpt, experts, weights, mode = open_checkpoint(ckpt_path)
    tok, tok_json = open_tokenizer(ckpt, ckpt_path)
    frozen = experts[0].frozen_table is not None
    tensors = {n: t.detach().float().contiguous().cpu() for n, t in to_hf_names(experts, frozen).items()}
    bad = [n for n, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise SystemExit(f"export_hf.py: {ckpt_path}: tensor {bad[0]} has non-finite values: refusing to export it")
    cfg = hf_config(ckpt, experts, weights, mode, tok)
    card = model_card(cfg, eval_results(evals), license_, os.path.basename(os.path.abspath(dest.rstrip("/"))))
    block = cfg["max_position_embeddings"]
    ids = special_ids(tok)  # naming a token the vocabulary lacks would make transformers add one
    special = {k: s for k, s in SPECIAL.items() if ids[s] is not None}

    def fill(tmp):
        st.save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        dump(os.path.join(tmp, "config.json"), cfg)
        dump(os.path.join(tmp, "tokenizer.json"), tok_json)
        dump(os.path.join(tmp, "tokenizer_config.json"),
             dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=block, clean_up_tokenization_spaces=False,
                  add_bos_token=False, add_eos_token=False, **special))
        dump(os.path.join(tmp, "special_tokens_map.json"), special)
        dump(os.path.join(tmp, "generation_config.json"),  # sample.py's defaults
             dict(bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"],
                  do_sample=True, temperature=0.8, top_k=200))
        for f in MODELING_FILES:
            shutil.copyfile(os.path.join(HERE, "hf", f), os.path.join(tmp, f))
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        return check_logits(tmp, model, tok)

    return write_folder(dest, force, fill)


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


# -----------------------------------------------------------------------------
# import

def read_folder(folder):
    """-> (config dict, {name: tensor}) of a folder written by export()."""
    st, = need("safetensors.torch")
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"export_hf.py: {path}: cannot read it ({e})") from None
    fmt = (cfg.get("glyphgpt") or {}).get("format") if isinstance(cfg, dict) else None
    if cfg.get("model_type") != "glyphgpt" or fmt != FORMAT:
        raise SystemExit(f"export_hf.py: {path}: model_type {cfg.get('model_type')!r}, glyphgpt format {fmt!r}: "
                         f"only folders written by this export_hf.py (format {FORMAT}) can be imported")
    try:
        tensors = st.load_file(os.path.join(folder, "model.safetensors"))
    except Exception as e:  # missing, truncated or foreign file
        raise SystemExit(f"export_hf.py: {folder}/model.safetensors: cannot read it ({str(e)[:160]})") from None
    return cfg, tensors


def imported_tokenizer(folder, cfg, out):
    """-> tokenizer_name for the checkpoint: the recorded name when it resolves here to the same
    tokenizer, else a copy of the folder's tokenizer.json next to the checkpoint."""
    from unicode_tokenizer import get_tokenizer
    shipped = get_tokenizer(os.path.join(folder, "tokenizer.json"))
    want = cfg.get("tokenizer_fingerprint")
    if shipped.fingerprint != want:
        raise SystemExit(f"export_hf.py: {folder}/tokenizer.json has fingerprint {shipped.fingerprint}, config.json "
                         f"records {want}")
    try:
        if get_tokenizer(cfg["tokenizer_name"]).fingerprint == want:
            return cfg["tokenizer_name"]
    except (ValueError, OSError):
        pass
    copy = os.path.abspath(out) + ".tokenizer.json"
    shutil.copyfile(os.path.join(folder, "tokenizer.json"), copy)
    return copy


def import_folder(folder, out, force=False):
    """Folder written by export() -> glyphgpt checkpoint file `out`; -> the checkpoint dict."""
    if os.path.exists(out) and not force:
        raise SystemExit(f"export_hf.py: {out} exists: pass --force to replace it")
    cfg, tensors = read_folder(folder)
    frozen = cfg["embedding"] != "trainable"
    g = cfg["glyphgpt"]
    tok_name = imported_tokenizer(folder, cfg, out)
    common = dict(tokenizer_name=tok_name, tokenizer_fingerprint=cfg["tokenizer_fingerprint"],
                  table_info=dict(cfg.get("table_info") or {}))
    ckpts = [dict(kind="gpt", model_args=dict(args), model=from_hf_names(tensors, k, frozen), **common)
             for k, args in enumerate(cfg["experts"])]
    carried = {k: g[k] for k in CARRIED if k in g}
    for c, ent in zip(ckpts, g.get("experts") or []):  # read back by merge.merge_checkpoint
        c.update(iter_num=ent.get("iter_num"), metrics=ent.get("metrics"), config=dict(datasets=ent.get("datasets")))
    try:
        models = [model_from_checkpoint(c, "cpu", f"{folder} (expert {k})") for k, c in enumerate(ckpts)]
        if g["kind"] == "merge":
            import merge
            merged = merge.MergedGPT(models, cfg["merge_weights"], cfg["merge_mode"])
            ckpt = dict(merge.merge_checkpoint(merged, ckpts), **carried)
            for ent, src in zip(ckpt["experts"], g.get("experts") or []):
                ent["source"] = src.get("source")
        else:
            ckpt = dict(ckpts[0], **carried)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"export_hf.py: {folder}: {e}") from None
    save_checkpoint(ckpt, out)
    return ckpt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("source", help="a glyphgpt checkpoint (export) or a folder written by export (import)")
    ap.add_argument("--to", required=True, help="the folder to write (export) or the checkpoint file (import)")
    ap.add_argument("--force", action="store_true", help="replace an existing destination")
    ap.add_argument("--eval", action="append", default=[], metavar="RESULT.json",
                    help="export: eval.py result file(s) whose scores go into the model card's model-index")
    ap.add_argument("--license", default="other", help="export: the model card's license (a Hub license id)")
    a = ap.parse_args(argv)
    if os.path.isdir(a.source):
        ckpt = import_folder(a.source, a.to, a.force)
        print(f"imported {a.source} -> {a.to} (kind {ckpt['kind']}, tokenizer {ckpt['tokenizer_name']})")
    elif os.path.isfile(a.source):
        diff = export(a.source, a.to, a.force, a.eval, a.license)
        print(f"exported {a.source} -> {a.to}; transformers' logits match glyphgpt's to {diff:.2g} (max abs)")
    else:
        raise SystemExit(f"export_hf.py: {a.source}: no such checkpoint file or folder")


if __name__ == "__main__":
    main(sys.argv[1:])
