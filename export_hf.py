"""
Share glyphgpt models the way the field does: a Hugging Face folder out, and back in.

$ python export_hf.py out/ckpt.pt --to=hf-model                 # a single, grown or merged checkpoint
$ python export_hf.py out/merged.pt --to=hf-merge --eval=eval_merged_loglik.json --license=apache-2.0
$ python export_hf.py out/ckpt.pt --to=hf-model --overwrite     # replace an earlier export
$ python export_hf.py hf-model --to=imported.pt                  # a folder this script wrote -> checkpoint
$ python export_hf.py --help                                     # every option

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
under DEST.partial-PID, then renamed); an existing one is replaced only with --overwrite, and only
when it holds nothing but an export's files (a checkpoint, a log or a .git in it are never deleted).

Import reads such a folder back into a glyphgpt checkpoint (kind "gpt", or "merge" for a merge) that
grow.py, merge.py, eval.py and sample.py take: the weights bit-identical, the fingerprints verified.
config.json carries, under glyphgpt.recorded, a copy made at export of every field the import reads
(the weights do not reveal e.g. a context length): a folder whose fields differ from it was edited
after export and is refused, naming the field. Folders of other origins (e.g. the papers' released
Bochkov/* models) are refused: their format could not be checked offline.

Nothing is lost on a failure: --to is never one of the inputs (the checkpoint, the result JSONs, the
source folder) nor a folder holding one, nor (import) a file inside the source folder; a failed write
(a full disk) is one line naming the file, with the earlier --to intact; the leftovers of a killed
export (DEST.partial-PID, DEST.old-PID) or import are cleared by the next run once their process is
gone (a DEST.old-PID without its DEST is put back as DEST).

Needs transformers and safetensors (requirements-test.txt); nothing else in glyphgpt does.
"""
import ast
import json
import os
import re
import shutil
from dataclasses import fields

import torch

from checkpoint import (atomic_write, check_finite, check_output, load_model, model_from_checkpoint, pid_alive,
                        read_json, remove_stale_partials, save_checkpoint, write_error)
from common import fail, first_line, script_main, shown
from configurator import configure, defaults_from, key_docs
from model import GPTConfig, MergedGPT
from unicode_tokenizer import checkpoint_tokenizer

# -----------------------------------------------------------------------------
# command-line defaults: python export_hf.py SOURCE --to=DEST [--overwrite] [--eval=RESULT.json ...] [--license=ID]
source = []  # what to read, given positionally: a glyphgpt checkpoint (export) or a folder written by export (import)
to = ""  # what to write: the folder (export) or the checkpoint file (import); never an input or a folder holding one
overwrite = False  # replace an existing --to (a folder only if it holds nothing but an export's files)
eval = []  # export: eval.py result JSONs whose scores go into the model card; --eval=a.json (repeatable) or a list
license = "other"  # export: the model card's license, a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

HERE = os.path.dirname(os.path.abspath(__file__))
MODELING_FILES = ("configuration_glyphgpt.py", "modeling_glyphgpt.py")
FOLDER_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json", *MODELING_FILES, "README.md")  # what export writes
FORMAT = 2  # version of the folder layout below, recorded in config.json (2: glyphgpt.recorded)
RECORDED = ("vocab_size", "embedding", "table_width", "experts", "merge_mode", "merge_weights", "table_info",
            "tokenizer_name", "tokenizer_fingerprint")  # the top-level config.json fields import reads
SPECIAL = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
CARRIED = ("iter_num", "best_val_loss", "metrics", "substrate")  # checkpoint entries kept in config.json
EXPERT_CARRIED = ("source", "iter_num", "datasets", "metrics")  # and those of a merge file's experts
PROBE = "Question: Which form of energy does a solar panel change into electricity?\nAnswer: light"
TOLERANCE = 1e-5  # max abs logit difference, float32
MAX_CONTEXT = 2 ** 20  # the largest block_size import builds (rotary tables of 10^9 positions would fill memory)
LICENSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")  # the Hub's license ids: apache-2.0, cc-by-nc-4.0, ...


def need(*modules):
    """Import the optional packages this script needs, with a one-line error naming the fix."""
    import importlib
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        package = (e.name or "transformers").split(".")[0]
        fail(f"{package} is not installed: pip install transformers==5.24.0 safetensors==0.8.0 "
             f"(or pip install -r requirements-test.txt)")


# -----------------------------------------------------------------------------
# where the output goes: never onto an input, never over files an export did not write

def remove_stale_folders(dest):
    """The leftovers of an export of dest killed while writing (their process is gone; a live
    writer's are kept): dest.partial-PID (a half-built folder) is removed, and dest.old-PID (the
    folder being replaced) is removed too, or put back as dest when the kill came between the two
    renames and dest is missing."""
    d, base = os.path.split(dest)
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        tag = next((t for t in (".old-", ".partial-") if name.startswith(base + t)), None)
        pid = name[len(base) + len(tag):] if tag else ""
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        path = os.path.join(d, name)
        if tag == ".old-" and not os.path.lexists(dest):
            os.rename(path, dest)
            print(f"{shown(dest)}: put back from {name}, left by an export killed while replacing it")
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def check_replaceable(dest, overwrite):
    """An existing dest is replaced only with overwrite, and only when it is a folder holding nothing
    but what an export writes (anything else in it would be lost)."""
    if not os.path.lexists(dest):
        return
    if os.path.islink(dest) or not os.path.isdir(dest):
        fail(f"to={shown(dest)} is a {'symbolic link' if os.path.islink(dest) else 'file'}, not a folder: "
             f"choose another --to")
    if not overwrite:
        fail(f"to={shown(dest)} exists: pass --overwrite to replace it")
    foreign = sorted(set(os.listdir(dest)) - set(FOLDER_FILES))
    if foreign:
        fail(f"to={shown(dest)} holds {', '.join(map(shown, foreign[:3]))}{' ...' if len(foreign) > 3 else ''}, "
             f"which an export does not write: not replacing it (that would delete them); choose another --to")


def write_folder(dest, fill):
    """Build the folder under dest.partial-PID with fill(tmp), then rename it into place, so a reader
    sees the old folder or the new one, never half of one; a failure or a Ctrl-C leaves the old one."""
    tmp, old = f"{dest}.partial-{os.getpid()}", f"{dest}.old-{os.getpid()}"
    kept = f"the existing {shown(dest)} is intact" if os.path.exists(dest) else f"nothing was written to {shown(dest)}"
    shutil.rmtree(tmp, ignore_errors=True)
    moved = done = False
    try:
        try:
            os.makedirs(tmp)
        except OSError as e:
            raise write_error(tmp, e, kept="") from None
        result = fill(tmp)
        try:
            if os.path.lexists(dest):
                os.rename(dest, old)
                moved = True
            os.rename(tmp, dest)
            done = True
        except OSError as e:
            raise write_error(dest, e, kept="") from None
    except OSError as e:
        raise OSError(f"{e}; {kept}") from None
    finally:
        if moved and not done:
            os.rename(old, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    return result


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
    """-> (model, checkpoint dict, list of expert GPTs, merge weights, merge mode). load_model refuses
    non-finite weights (checkpoint.check_finite)."""
    try:
        model, ckpt = load_model(path)
    except (ValueError, OSError) as e:  # checkpoint.load_model's one line, said as an export's input
        fail(f"{shown(path)}: cannot load as a glyphgpt checkpoint: {first_line(e)}")
    if ckpt["kind"] == "merge":
        return model, ckpt, list(model.experts), list(model.weights), model.mode
    return model, ckpt, [model], [1.0], "logits"


def open_tokenizer(ckpt, path):
    """The checkpoint's tokenizer as a tokenizer.json dict, checked against its fingerprint."""
    try:
        tok = checkpoint_tokenizer(ckpt, path)
    except (ValueError, OSError) as e:
        fail(f"{shown(path)}: {first_line(e)}")
    if getattr(tok, "lossless", False):
        fail(f"{shown(path)}: tokenizer {tok.name!r} is lossless: its escape ids for characters without an id have "
             f"no tokenizer.json equivalent; export a model of the plain tokenizer")
    if hasattr(tok, "to_hf_json"):
        return tok, tok.to_hf_json()
    if hasattr(tok, "tok"):  # a general tokenizer.json run by the `tokenizers` library
        return tok, json.loads(tok.tok.to_str())
    fail(f"{shown(path)}: tokenizer {tok.name!r} (tiktoken) has no tokenizer.json form to ship")


def plain_json(value, where):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError, RecursionError) as e:
        fail(f"{where} cannot be written to config.json: {first_line(e)}")


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
    cfg = dict(
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
    # the weights do not reveal every field (a context length, the merge weights): import compares these
    glyphgpt["recorded"] = plain_json({k: cfg[k] for k in RECORDED}, "the recorded fields")
    return cfg


def eval_results(paths):
    """eval.py result files -> [(task, metric, value in %)] for the model card's model-index."""
    out = []
    for p in paths:
        res = read_json(p, "an eval.py result JSON")
        if not isinstance(res, dict) or not isinstance(res.get("tasks"), dict):
            fail(f"--eval={shown(p)}: not an eval.py result JSON (no 'tasks' object)")
        out += [(str(task), str(r.get("metric", "acc")), r["mean"], res.get("protocol"))
                for task, r in res["tasks"].items() if isinstance(r, dict) and isinstance(r.get("mean"), (int, float))]
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
def check_logits(folder, model, tok, dest):
    """Load the folder with transformers and compare its logits with glyphgpt's on PROBE."""
    transformers, = need("transformers")
    transformers.utils.logging.disable_progress_bar()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    except Exception as e:  # whatever transformers raises: the folder is not written
        fail(f"{shown(dest)}: transformers cannot load the exported folder ({type(e).__name__}: {first_line(e)}); "
             f"nothing written")
    ids = tok.encode(PROBE)[:model.config.block_size]
    x = torch.tensor([ids])
    ours, _ = model(x)
    theirs = hf(x).logits
    diff = float((ours.float() - theirs.float()).abs().max())
    if not diff <= TOLERANCE:
        fail(f"{shown(dest)}: the exported model's logits differ from the checkpoint's by {diff:.3g} "
             f"(> {TOLERANCE}): nothing written")
    return diff


def export(ckpt_path, dest, overwrite=False, evals=(), license_="other"):
    """-> max abs logit difference of the written folder vs the checkpoint (transformers, float32).
    Every check runs before anything is written; bad input is a ValueError, a failed write an
    OSError, each one line."""
    _, st = need("transformers", "safetensors.torch")
    evals = list(evals)
    if not isinstance(license_, str) or not LICENSE_ID.fullmatch(license_):
        fail(f"--license={license_!r}: expected a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...)")
    if not dest:
        fail("--to is empty: give the folder to write")
    dest = os.path.abspath(dest)
    inputs = [ckpt_path, *evals, *(os.path.join(HERE, "hf", f) for f in MODELING_FILES)]
    check_output(dest, [("input", p) for p in inputs], "to")
    remove_stale_folders(dest)
    check_replaceable(dest, overwrite)
    model, ckpt, experts, weights, mode = open_checkpoint(ckpt_path)
    tok, tok_json = open_tokenizer(ckpt, ckpt_path)
    frozen = experts[0].frozen_table is not None
    tensors = {n: t.detach().float().contiguous().cpu() for n, t in to_hf_names(experts, frozen).items()}
    cfg = hf_config(ckpt, experts, weights, mode, tok)
    card = model_card(cfg, eval_results(evals), license_, os.path.basename(dest))
    block = cfg["max_position_embeddings"]
    ids = special_ids(tok)  # naming a token the vocabulary lacks would make transformers add one
    special = {k: s for k, s in SPECIAL.items() if ids[s] is not None}
    files = {  # name -> write(path)
        "model.safetensors": lambda p: st.save_file(tensors, p, metadata={"format": "pt"}),
        "config.json": lambda p: dump(p, cfg),
        "tokenizer.json": lambda p: dump(p, tok_json),
        "tokenizer_config.json": lambda p: dump(p, dict(
            tokenizer_class="PreTrainedTokenizerFast", model_max_length=block, clean_up_tokenization_spaces=False,
            add_bos_token=False, add_eos_token=False, **special)),
        "special_tokens_map.json": lambda p: dump(p, special),
        "generation_config.json": lambda p: dump(p, dict(  # sample.py's defaults
            bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"],
            do_sample=True, temperature=0.8, top_k=200)),
        **{f: (lambda p, f=f: shutil.copyfile(os.path.join(HERE, "hf", f), p)) for f in MODELING_FILES},
        "README.md": lambda p: write_text(p, card),
    }
    assert set(files) == set(FOLDER_FILES)

    def fill(tmp):
        for name, write in files.items():
            try:
                write(os.path.join(tmp, name))
            except Exception as e:  # OSError, or a library's own error type (safetensors) for a failed write
                raise write_error(os.path.join(dest, name), e, kept="") from None
        return check_logits(tmp, model, tok, dest)

    return write_folder(dest, fill)


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# -----------------------------------------------------------------------------
# import

def difference(a, b, where):
    """The first place where two JSON values differ, as 'experts[0].block_size=4096 (recorded 32)';
    None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(b) + [k for k in a if k not in b]:
            if k not in a or k not in b:
                return f"{where}.{k} is {'missing' if k not in a else 'not recorded'}"
            d = difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := difference(x, y, f"{where}[{i}]"))), None)
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN here
    return None if same else f"{where}={json.dumps(a)[:60]} (recorded {json.dumps(b)[:60]})"


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_config(folder):
    """-> config.json of a folder written by export(), every field import reads checked: its type,
    and that it equals the copy the export recorded (glyphgpt.recorded)."""
    path = os.path.join(folder, "config.json")
    where = shown(path)
    if not os.path.exists(path):
        fail(f"{shown(folder)} has no config.json: not a folder written by export_hf.py")
    cfg = read_json(path, "the config.json of an export_hf.py folder")
    if not isinstance(cfg, dict):
        fail(f"{where} holds a JSON {type(cfg).__name__}, expected an object")
    g = cfg.get("glyphgpt")
    fmt = g.get("format") if isinstance(g, dict) else None
    if cfg.get("model_type") != "glyphgpt" or fmt != FORMAT:
        if cfg.get("model_type") == "glyphgpt" and fmt == 1:
            fail(f"{where}: glyphgpt format 1 (an older export_hf.py) does not record its fields, so an edit "
                 f"could not be detected: export the checkpoint again with this export_hf.py (format {FORMAT})")
        fail(f"{where}: model_type {str(cfg.get('model_type'))[:40]!r}, glyphgpt format {str(fmt)[:20]}: "
             f"only folders written by this export_hf.py (format {FORMAT}) can be imported")
    rec = g.get("recorded")
    if not isinstance(rec, dict) or sorted(rec) != sorted(RECORDED):
        fail(f"{where}: glyphgpt.recorded must hold {', '.join(RECORDED)} (the fields recorded at export)")
    for k in RECORDED:
        if k not in cfg:
            fail(f"{where} has no {k!r}")
        d = difference(cfg[k], rec[k], k)
        if d:
            fail(f"{where}: {d}: config.json was edited after export (the weights cannot tell which is right); "
                 f"restore it or export again")
    experts, kind = cfg["experts"], g.get("kind")
    if not isinstance(experts, list) or not experts or not all(isinstance(e, dict) for e in experts):
        fail(f"{where}: 'experts' must be a non-empty list of model_args objects")
    if kind not in ("gpt", "merge") or kind == "gpt" and len(experts) != 1:
        fail(f"{where}: glyphgpt.kind={str(kind)[:20]!r} with {len(experts)} expert(s): expected 'gpt' with 1 or 'merge'")
    names = {f.name for f in fields(GPTConfig)}
    for k, e in enumerate(experts):
        if set(e) != names:
            odd = sorted(names - set(e)) or sorted(set(e) - names)
            fail(f"{where}: experts[{k}] {'lacks' if names - set(e) else 'has unknown'} "
                 f"{', '.join(map(str, odd))[:80]}: expected glyphgpt's model_args ({', '.join(sorted(names))})")
        b = e["block_size"]  # the one shape the weights do not bound: its rotary tables are built in full
        if type(b) is int and b > MAX_CONTEXT:
            fail(f"{where}: experts[{k}].block_size={b} exceeds {MAX_CONTEXT:,} tokens: not a glyphgpt model")
        for key in ("embedding", "vocab_size"):
            if e.get(key) != cfg[key]:
                fail(f"{where}: experts[{k}].{key}={str(e.get(key))[:40]!r}, the folder's {key} is {str(cfg[key])[:40]!r}")
    checks = dict(embedding=lambda v: isinstance(v, str), vocab_size=lambda v: type(v) is int and v > 0,
                  table_width=lambda v: v is None if cfg["embedding"] == "trainable" else type(v) is int and v > 0,
                  merge_mode=lambda v: isinstance(v, str),
                  merge_weights=lambda v: isinstance(v, list) and len(v) == len(experts) and all(map(number, v)),
                  table_info=lambda v: isinstance(v, dict), tokenizer_name=lambda v: isinstance(v, str) and v,
                  tokenizer_fingerprint=lambda v: isinstance(v, str) and v)
    for key, ok in checks.items():
        if not ok(cfg[key]):
            fail(f"{where}: {key}={json.dumps(cfg[key])[:60]} is not valid")
    prov = g.get("experts")
    if prov is not None and not (isinstance(prov, list) and len(prov) == len(experts)
                                 and all(isinstance(e, dict) for e in prov)):
        fail(f"{where}: glyphgpt.experts must be one object per expert")
    return cfg


def read_tensors(folder, cfg):
    """-> {name: tensor} of model.safetensors: every tensor float32, finite, and belonging to an expert
    (or the shared table)."""
    st, = need("safetensors.torch")
    path = os.path.join(folder, "model.safetensors")
    try:
        tensors = st.load_file(path)
    except Exception as e:  # missing, truncated or foreign file (safetensors raises its own error type)
        fail(f"{shown(path)}: cannot read it ({type(e).__name__}: {first_line(e)})")
    frozen = cfg["embedding"] != "trainable"
    known = re.compile(r"experts\.(\d+)\..+")
    for name, t in tensors.items():
        m = known.fullmatch(name)
        if not (frozen and name == "table" or m and int(m[1]) < len(cfg["experts"])):
            fail(f"{shown(path)}: tensor {name[:60]!r} belongs to no expert of config.json")
        if t.dtype != torch.float32:
            fail(f"{shown(path)}: tensor {name[:60]!r} is {t.dtype}, an export writes float32")
    if frozen and "table" not in tensors:
        fail(f"{shown(path)}: embedding {cfg['embedding']!r} but no frozen 'table' tensor")
    # the shapes config.json gives, checked before a model of that shape is built
    if frozen and tuple(tensors["table"].shape) != (cfg["vocab_size"], cfg["table_width"]):
        fail(f"{shown(path)}: table is {list(tensors['table'].shape)}, config.json gives "
             f"[vocab_size, table_width] = {[cfg['vocab_size'], cfg['table_width']]}")
    for k, e in enumerate(cfg["experts"]):
        head = tensors.get(f"experts.{k}.lm_head.weight")
        if head is None or tuple(head.shape) != (cfg["vocab_size"], e["d_model"]):
            fail(f"{shown(path)}: experts.{k}.lm_head.weight is {None if head is None else list(head.shape)}, "
                 f"config.json gives [vocab_size, d_model] = {[cfg['vocab_size'], e['d_model']]}")
        layers = {n.split(".")[3] for n in tensors if n.startswith(f"experts.{k}.h.") and n.count(".") > 3}
        n = e["n_layer"]
        if type(n) is not int or len(layers) != n or layers != {str(i) for i in range(n)}:
            fail(f"{shown(path)}: expert {k} has {len(layers)} blocks, config.json gives n_layer={str(n)[:20]}")
    check_finite(tensors, f"{shown(path)}: not imported")
    return tensors


def imported_tokenizer(folder, cfg):
    """-> (tokenizer_name for the checkpoint, None) when the recorded name resolves here to the same
    tokenizer, else (None, the folder's tokenizer.json bytes) to copy next to the checkpoint."""
    from unicode_tokenizer import RELEASED, get_tokenizer
    path = os.path.join(folder, "tokenizer.json")
    try:
        shipped = get_tokenizer(path)
    except Exception as e:  # our ValueError, or the `tokenizers` library's own error for a general file
        fail(f"{shown(path)}: not a usable tokenizer.json ({first_line(e)})")
    want = cfg["tokenizer_fingerprint"]
    if shipped.fingerprint != want:
        fail(f"{shown(path)} has fingerprint {shipped.fingerprint}, config.json records {str(want)[:40]}")
    name = cfg["tokenizer_name"]
    local = name.removesuffix("-lossless") in (*RELEASED, "bvv241-2-3-local") or os.path.isfile(name)
    if local:  # (never a name that downloads: hf:..., tiktoken)
        try:
            if get_tokenizer(name).fingerprint == want:
                return name, None
        except Exception:  # a path on the exporter's machine that holds something else here: copy it
            pass
    with open(path, "rb") as f:
        return None, f.read()


def import_folder(folder, out, overwrite=False):
    """Folder written by export() -> glyphgpt checkpoint file `out`; -> the checkpoint dict. Every
    check runs before anything is written; bad input is a ValueError, a failed write an OSError,
    each one line."""
    need("safetensors.torch")
    if not out:
        fail("--to is empty: give the checkpoint file to write")
    folder_real = os.path.realpath(folder)
    inputs = [folder] + [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    check_output(out, [("source", p) for p in inputs], "to", overwrite, file_name="imported.pt")
    if os.path.realpath(out).startswith(folder_real.rstrip(os.sep) + os.sep):
        fail(f"to={shown(out)} is inside the source folder {shown(folder)}: write the checkpoint elsewhere")
    copy = os.path.abspath(out) + ".tokenizer.json"
    for p in (out, copy):
        remove_stale_partials(p)
    cfg = read_config(folder)
    tensors = read_tensors(folder, cfg)
    tok_name, tok_bytes = imported_tokenizer(folder, cfg)
    old_copy = None
    if tok_bytes is not None:
        tok_name = copy
        if os.path.isdir(copy):
            fail(f"{shown(copy)} (the tokenizer next to --to) is a folder: choose another --to")
        if os.path.exists(copy):
            with open(copy, "rb") as f:
                old_copy = f.read()
            if old_copy != tok_bytes and not overwrite:
                fail(f"{shown(copy)} exists and holds another tokenizer: pass --overwrite to replace it")
    frozen = cfg["embedding"] != "trainable"
    g = cfg["glyphgpt"]
    common = dict(tokenizer_name=tok_name, tokenizer_fingerprint=cfg["tokenizer_fingerprint"],
                  table_info=dict(cfg["table_info"]))
    ckpts = [dict(kind="gpt", model_args=dict(args), model=from_hf_names(tensors, k, frozen), **common)
             for k, args in enumerate(cfg["experts"])]
    carried = {k: g[k] for k in CARRIED if k in g}
    for c, ent in zip(ckpts, g.get("experts") or []):  # read back by merge.merge_checkpoint
        c.update(iter_num=ent.get("iter_num"), metrics=ent.get("metrics"), config=dict(datasets=ent.get("datasets")))
    try:
        models = [model_from_checkpoint(c, "cpu", f"{shown(folder)} (expert {k})") for k, c in enumerate(ckpts)]
        if g["kind"] == "merge":
            import merge
            merged = MergedGPT(models, cfg["merge_weights"], cfg["merge_mode"])
            ckpt = dict(merge.merge_checkpoint(merged, ckpts), **carried)
            for ent, src in zip(ckpt["experts"], g.get("experts") or []):
                ent["source"] = src.get("source")
        else:
            ckpt = dict(ckpts[0], **carried)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        fail(f"{shown(folder)}: {first_line(e)}")
    if tok_bytes is not None and tok_bytes != old_copy:
        try:
            with atomic_write(copy, "wb") as f:
                f.write(tok_bytes)
        except OSError as e:
            raise write_error(copy, e, kept="") from None
    try:
        save_checkpoint(ckpt, out)
    except BaseException:  # the tokenizer copy goes with the checkpoint: put the old one back
        if tok_bytes is not None and tok_bytes != old_copy:
            if old_copy is None:
                os.remove(copy)
            else:
                with atomic_write(copy, "wb") as f:
                    f.write(old_copy)
        raise
    return ckpt


# -----------------------------------------------------------------------------
# command line

def gather(argv, key):
    """configurator sets a key once; --KEY may be given several times, each a path or a Python list
    of paths: -> argv with one --KEY=[...] in place of the first."""
    items, out, first, args = [], [], None, list(argv)
    while args:
        arg = args.pop(0)
        if arg == f"--{key}" and args and not args[0].startswith("--"):
            value = args.pop(0)
        elif arg.startswith(f"--{key}="):
            value = arg[len(key) + 3:]
        else:
            out.append(arg)
            continue
        first = len(out) if first is None else first
        if value.lstrip().startswith("["):
            try:
                paths = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                paths = None
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                fail(f"command line: --{key}={shown(value)[:80]}: expected a path or a Python list of paths")
            items += paths
        else:
            items.append(value)
    if first is not None:
        out.insert(first, f"--{key}={items!r}")
    return out


def main(argv):
    if any(a == "--force" or a.startswith("--force=") for a in argv):
        fail("command line: --force is now --overwrite (the flag train.py and merge.py use)")
    cfg = configure(DEFAULTS, gather(argv, "eval"), docs=key_docs(__file__), prog="export_hf.py",
                    positional="source")
    if len(cfg.source) != 1:
        fail(f"expected one SOURCE (a checkpoint to export or a folder to import), got {len(cfg.source)}: "
             f"python export_hf.py SOURCE --to=DEST")
    src = cfg.source[0]
    if not cfg.to:
        fail("--to is required: the folder to write (export) or the checkpoint file to write (import)")
    if os.path.isdir(src):
        if cfg.eval or cfg.license != DEFAULTS["license"]:
            fail(f"{shown(src)} is a folder, so this is an import: --eval and --license are for an export")
        ckpt = import_folder(src, cfg.to, cfg.overwrite)
        print(f"imported {src} -> {cfg.to} (kind {ckpt['kind']}, tokenizer {ckpt['tokenizer_name']})")
    elif os.path.isfile(src):
        diff = export(src, cfg.to, cfg.overwrite, cfg.eval, cfg.license)
        print(f"exported {src} -> {cfg.to}; transformers' logits match glyphgpt's to {diff:.2g} (max abs)")
    else:
        fail(f"{shown(src)}: no such checkpoint file or folder")


if __name__ == "__main__":
    script_main("export_hf.py", main)
