"""Tests of export_hf.py: glyphgpt checkpoints -> Hugging Face folders -> transformers / lm-eval's hf
model -> back to checkpoints. Tiny models written here (2 layers x 32, a random 16-column frozen
table, the 65,536-id bvv241-2-3 tokenizer); nothing is downloaded. Then the refusals: every bad
input is one ValueError line, every failed write one OSError line naming the file, and no input or
earlier output is ever lost."""
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import transformers

from checkpoint import load_model, model_checkpoint, pid_alive, save_checkpoint, table_fingerprint
import eval as E
import export_hf
import lora
import merge
from model import GPT, GPTConfig

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "data", "eval_items")
TOL = 1e-5


def tiny_gpt(table, seed, n_layer=2, d_model=32, n_head=2, block_size=128):
    """A random GPT whose every weight (biases and LayerNorms too) is non-trivial."""
    torch.manual_seed(seed)
    embedding = "trainable" if table is None else "random"
    m = GPT(GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, d_model=d_model, embedding=embedding), table)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    if table is not None:
        m.table_info = {"kind": "random", "dim": table.shape[1], "recipe": "test: normalised N(0, 1)"}
    return m.eval()


def save(m, tok, path, **extra):
    save_checkpoint(model_checkpoint(m, tok, **extra), str(path))
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok):
    """plain, grown (LoRA merged into the lower block), merged (two experts of different shapes, in
    two modes) and trainable (an ordinary trainable embedding instead of the frozen table)."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(65536, 16), dim=1)
    plain = tiny_gpt(table, 1)
    metrics = {"val_loss": 9.5, "val_bpb": 8.1, "val": {"shakespeare": {"loss": 9.5, "bpb": 8.1}}}
    out = {"plain": save(plain, tok, d / "plain.pt", iter_num=7, metrics=metrics)}
    grown = tiny_gpt(table, 2)
    lora.attach(grown, [0], list(lora.TARGETS), rank=4, alpha=8.0)
    with torch.no_grad():
        for m in grown.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.normal_(0, 0.05)  # a trained adapter: merging it changes the weights
    lora.merge(grown)
    assert not any(isinstance(m, lora.LoRALinear) for m in grown.modules())
    out["grown"] = save(grown, tok, d / "grown.pt")
    out["trainable"] = save(tiny_gpt(None, 4), tok, d / "trainable.pt")
    other = tiny_gpt(table, 3, n_layer=1, d_model=16, n_head=1, block_size=96)
    expert_b = save(other, tok, d / "b.pt")
    for mode in ("logits", "probs"):
        _, ck = merge.build_merge([out["plain"], expert_b], weights=[0.3, 0.7], mode=mode)
        save_checkpoint(ck, str(d / f"merged_{mode}.pt"))
        out[f"merged_{mode}"] = str(d / f"merged_{mode}.pt")
    return out


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return {k: (str(d / k), export_hf.export(p, str(d / k))) for k, p in ckpts.items()}


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


# ---------------------------------------------------------------------------- logits and generation

@pytest.mark.parametrize("kind", ["plain", "grown", "merged_logits", "merged_probs", "trainable"])
def test_transformers_logits_equal_ours(kind, ckpts, exported):
    folder, checked = exported[kind]
    assert checked <= TOL  # the exporter's own check on its probe text
    ours, _ = load_model(ckpts[kind])
    theirs = hf_model(folder)
    torch.manual_seed(5)
    x = torch.randint(0, 65536, (3, ours.config.block_size))  # a batch, the whole context
    with torch.no_grad():
        diff = float((ours(x)[0] - theirs(x).logits).abs().max())
    print(f"{kind}: max abs logit difference {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize("kind", ["plain", "merged_logits"])
def test_generate_greedy_and_sampled_with_kv_cache(kind, ckpts, exported, tok):
    ours, _ = load_model(ckpts[kind])
    theirs = hf_model(exported[kind][0])
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported[kind][0], trust_remote_code=True)
    prompt = "Question: Which form of energy does a solar panel change into electricity?\nAnswer:"
    x = hf_tok(prompt, return_tensors="pt")
    assert x["input_ids"][0].tolist() == tok.encode(prompt)
    cached = theirs.generate(**x, max_new_tokens=24, do_sample=False)
    uncached = theirs.generate(**x, max_new_tokens=24, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    assert cached.tolist() == ours.generate(x["input_ids"], 24, temperature=0).tolist()
    assert hf_tok.decode(cached[0]) == tok.decode(cached[0].tolist())
    torch.manual_seed(0)
    s1 = theirs.generate(**x, max_new_tokens=24, do_sample=True, top_k=50)
    torch.manual_seed(0)
    s2 = theirs.generate(**x, max_new_tokens=24, do_sample=True, top_k=50, use_cache=False)
    assert s1.shape == (1, x["input_ids"].shape[1] + 24) and s1.tolist() == s2.tolist()
    # a left-padded batch generates what each prompt generates alone (attention mask and positions)
    hf_tok.padding_side = "left"
    batch = hf_tok([prompt, "Hello"], return_tensors="pt", padding=True)
    both = theirs.generate(**batch, max_new_tokens=8, do_sample=False)
    alone = theirs.generate(**hf_tok("Hello", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert both[1, -8:].tolist() == alone[0, -8:].tolist()
    assert both[0, -8:].tolist() == cached[0, x["input_ids"].shape[1]:][:8].tolist()


# ---------------------------------------------------------------------------- lm-evaluation-harness

def test_lm_eval_hf_model_matches_eval_py_on_arc_easy(ckpts, exported, tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    reqs = E.choice_requests(E.load_task("arc_easy", FIX))
    model, _ = load_model(ckpts["merged_logits"])
    ours, _ = E.loglikelihoods(model, E.encode_requests(tok, reqs))
    lm = HFLM(pretrained=exported["merged_logits"][0], trust_remote_code=True, device="cpu", batch_size=4)
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    print(f"ARC-Easy fixture, {len(reqs)} requests: max abs log-likelihood difference {diff:.3g}")
    assert len(reqs) >= 12 and diff <= 1e-4
    assert [a[1] for a in ours] == [b[1] for b in theirs]


# ---------------------------------------------------------------------------- import, round trip

@pytest.mark.parametrize("kind", ["plain", "merged_logits", "trainable"])
def test_round_trip_is_bit_identical(kind, ckpts, exported, tmp_path):
    back = str(tmp_path / "back.pt")
    export_hf.main([exported[kind][0], f"--to={back}"])
    a, ca = load_model(ckpts[kind])
    b, cb = load_model(back)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert cb["kind"] == ca["kind"] and cb["tokenizer_fingerprint"] == ca["tokenizer_fingerprint"]
    assert cb["table_info"] == ca["table_info"]
    if kind != "trainable":
        assert cb["table_info"]["fingerprint"] == ca["table_info"]["fingerprint"] == table_fingerprint(b.frozen_table)
    if kind == "merged_logits":
        assert (b.mode, b.weights) == (a.mode, a.weights)
        for ea, eb in zip(ca["experts"], cb["experts"]):
            assert all(ea[k] == eb[k] for k in ("model_args", "source", "iter_num", "datasets", "metrics"))
    if kind == "plain":
        assert cb["iter_num"] == 7 and cb["metrics"] == ca["metrics"]
        # the imported checkpoint is an ordinary one: it can be merged again
        merged, _ = merge.build_merge([back, ckpts["plain"]])
        assert merged.config.n_experts == 2


def test_model_card_and_folder_contents(ckpts, tmp_path, tok):
    res = tmp_path / "eval.json"
    res.write_text(json.dumps({"protocol": "loglik", "tasks": {"arc_easy": {"metric": "acc", "mean": 50.0, "n": 4}}}))
    folder = tmp_path / "card"
    export_hf.main([ckpts["plain"], f"--to={folder}", f"--eval={res}", "--license=apache-2.0"])
    card = (folder / "README.md").read_text()
    head = card.split("---")[1]
    assert "license: apache-2.0" in head and "- glyphgpt" in head and "library_name: transformers" in head
    assert "name: arc_easy" in head and "value: 50" in head
    assert "| shakespeare | 9.5000 | 8.1000 |" in card
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_glyphgpt.GlyphGPTForCausalLM"
    assert cfg["table_info"]["recipe"] == "test: normalised N(0, 1)" and len(cfg["table_info"]["fingerprint"]) == 16
    assert cfg["tokenizer_fingerprint"] == tok.fingerprint
    assert cfg["eos_token_id"] == tok.eos_id and cfg["pad_token_id"] == tok.pad_id and cfg["bos_token_id"] == tok.bos_id
    special = json.loads((folder / "tokenizer_config.json").read_text())
    assert (special["bos_token"], special["eos_token"], special["unk_token"], special["pad_token"]) == \
        ("<s>", "</s>", "<unk>", "<pad>")
    assert sorted(os.listdir(tmp_path)) == ["card", "eval.json"]  # no temporary folder left behind


# ---------------------------------------------------------------------------- helpers for the refusals

REPO = os.path.dirname(HERE)


def snapshot(*paths):
    """{file: sha256} of every file under the paths: what must survive a refused or failed run."""
    out = {}
    for p in map(str, paths):
        files = [p] if os.path.isfile(p) else [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    return msg


def edited(src, dst, edit, record=True):
    """A copy of the exported folder src at dst, its config.json changed by edit(cfg), and by the same
    edit of the copy the export recorded when record is set (a consistent edit)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    if record:
        edit(cfg["glyphgpt"]["recorded"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


# ---------------------------------------------------------------------------- the command line

def test_command_line_overwrite_eval_license_and_help(ckpts, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"protocol": "loglik", "tasks": {"arc_easy": {"metric": "acc", "mean": 50.0}}}))
    b.write_text(json.dumps({"protocol": "gen", "tasks": {"squad": {"metric": "f1", "mean": 12.5}}}))
    folder = tmp_path / "out"
    export_hf.main([ckpts["plain"], "--to", str(folder), f"--eval={a}", "--eval", str(b), "--license=mit"])
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and "name: arc_easy" in card and "name: squad" in card
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        export_hf.main([ckpts["plain"], f"--to={folder}"])
    export_hf.main([ckpts["grown"], f"--to={folder}", "--overwrite", f"--eval={[str(a)]!r}"])  # bare flag, a list
    assert "license: other" in (folder / "README.md").read_text()
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "out"]
    with pytest.raises(ValueError, match="--force is now --overwrite"):
        export_hf.main([ckpts["plain"], f"--to={folder}", "--force"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: cannot load as a glyphgpt checkpoint") as e:
        export_hf.main([str(tmp_path / "junk.pt"), f"--to={tmp_path / 'x'}"])
    one_line(e)
    with pytest.raises(ValueError, match="expected one SOURCE"):
        export_hf.main([ckpts["plain"], ckpts["grown"], f"--to={folder}"])
    with pytest.raises(ValueError, match="--to is required"):
        export_hf.main([ckpts["plain"]])
    with pytest.raises(ValueError, match="--license='a b': expected a Hub license id"):
        export_hf.main([ckpts["plain"], f"--to={tmp_path / 'x'}", "--license=a b"])
    with pytest.raises(ValueError, match="--eval and --license are for an export"):
        export_hf.main([str(folder), f"--to={tmp_path / 'x.pt'}", f"--eval={a}"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        export_hf.main(["--help"])
    out = capsys.readouterr().out
    assert all(f"--{k}=" in out for k in ("source", "to", "overwrite", "eval", "license"))


def test_script_exit_status_and_one_line(tmp_path):
    """Through script_main: a bad input is one line `export_hf.py: error: ...` and exit status 1; so is a
    missing optional package (the import really fails here)."""
    r = subprocess.run([sys.executable, "export_hf.py", str(tmp_path / "nope.pt"), f"--to={tmp_path / 'x'}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"export_hf.py: error: {tmp_path / 'nope.pt'}: no such checkpoint file or folder"]
    code = ("import runpy, sys; sys.modules['safetensors'] = None; "
            f"sys.argv = ['export_hf.py', {str(tmp_path)!r}, '--to={tmp_path / 'x.pt'}']; "
            "runpy.run_path('export_hf.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "export_hf.py: error: safetensors is not installed: pip install transformers==5.24.0 safetensors==0.8.0 "
        "(or pip install -r requirements-test.txt)"]


# ---------------------------------------------------------------------------- refusals

def test_existing_folder_is_kept_unless_overwritten_and_never_half_replaced(ckpts, exported, tmp_path, tok):
    folder = tmp_path / "out"
    export_hf.export(ckpts["plain"], str(folder))
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        export_hf.export(ckpts["grown"], str(folder))
    m, _ = load_model(ckpts["grown"])
    ck = model_checkpoint(m, tok)  # (model_checkpoint refuses NaN weights: damage the dict afterwards)
    ck["model"]["lm_head.weight"][0, 0] = float("nan")
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(ck, bad)
    with pytest.raises(ValueError, match="non-finite") as e:
        export_hf.export(bad, str(folder), overwrite=True)
    one_line(e, "bad.pt")
    assert (folder / "model.safetensors").read_bytes() == before
    export_hf.export(ckpts["grown"], str(folder), overwrite=True)
    assert (folder / "model.safetensors").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "out"]


def test_output_is_never_an_input_nor_the_folder_holding_one(ckpts, exported, tmp_path):
    """The data loss this guards against: `export_hf.py run/ckpt.pt --to=run --force` deleted the run."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ckpts["plain"], run / "ckpt.pt")
    (run / "log.jsonl").write_text('{"iter": 0}\n')
    res = tmp_path / "eval.json"
    res.write_text(json.dumps({"tasks": {}}))
    os.symlink(run, tmp_path / "link")
    os.link(run / "ckpt.pt", tmp_path / "hard.pt")
    folder = tmp_path / "hf"
    shutil.copytree(exported["plain"][0], folder)
    (tmp_path / "clone").mkdir()  # a Hub clone: its .git is not the export's to delete
    (tmp_path / "clone" / ".git").mkdir()
    (tmp_path / "clone" / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    ck = str(run / "ckpt.pt")
    for to, why in [(run, "holds the input"), (tmp_path / "link", "holds the input"), (tmp_path, "holds the input"),
                    (run / "ckpt.pt", "is the input"), (tmp_path / "hard.pt", "is the input"), (res, "is the input"),
                    (os.path.join(REPO, "hf"), "holds the input"), (tmp_path / "clone", "holds .git"),
                    (run / "ckpt.pt" / "sub", "is a file, not a folder")]:
        with pytest.raises(ValueError, match=why) as e:
            export_hf.main([ck, f"--to={to}", "--overwrite", f"--eval={res}"])
        one_line(e, f"to={to}")
    # import: never the source folder, a file in it, nor a folder holding it
    for to, why in [(folder, "is the source"), (folder / "model.safetensors", "is the source"),
                    (folder / "new.pt", "inside the source folder"), (tmp_path, "holds the source"),
                    (run, "is a folder"), (run / "ckpt.pt" / "x.pt", "is a file, not a folder")]:
        with pytest.raises(ValueError, match=why) as e:
            export_hf.main([str(folder), f"--to={to}", "--overwrite"])
        one_line(e, f"to={to}")
    assert snapshot(tmp_path) == before


def enospc(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failed_writes_are_one_line_and_keep_every_earlier_file(ckpts, exported, tmp_path, monkeypatch):
    import safetensors.torch
    folder = tmp_path / "hf"
    shutil.copytree(exported["plain"][0], folder)
    before = snapshot(tmp_path)
    real_dump = export_hf.dump
    monkeypatch.setattr(export_hf, "dump", lambda p, o: enospc() if p.endswith("config.json") else real_dump(p, o))
    with pytest.raises(OSError) as e:
        export_hf.export(ckpts["grown"], str(folder), overwrite=True)
    one_line(e, f"could not write {folder / 'config.json'}: No space left on device (disk full)",
             f"the existing {folder} is intact")
    with pytest.raises(OSError) as e:  # a new folder: nothing at all is left
        export_hf.export(ckpts["grown"], str(tmp_path / "new"))
    one_line(e, f"nothing was written to {tmp_path / 'new'}")
    monkeypatch.undo()
    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    with pytest.raises(OSError) as e:
        export_hf.export(ckpts["grown"], str(folder), overwrite=True)
    one_line(e, f"could not write {folder / 'model.safetensors'}", "intact")
    monkeypatch.undo()
    # the rename that puts the new folder in place fails: the old one is put back
    real_rename = os.rename
    monkeypatch.setattr(export_hf.os, "rename",
                        lambda a, b: enospc() if ".partial-" in str(a) else real_rename(a, b))
    with pytest.raises(OSError) as e:
        export_hf.export(ckpts["grown"], str(folder), overwrite=True)
    one_line(e, f"could not write {folder}", "intact")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # nothing changed, no DEST.partial-PID / DEST.old-PID left
    # import on a full disk: the earlier checkpoint is intact, no temporary file is left
    out = tmp_path / "back.pt"
    export_hf.import_folder(str(folder), str(out))
    before = snapshot(tmp_path)
    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError) as e:
        export_hf.import_folder(str(folder), str(out), overwrite=True)
    one_line(e, str(out), "intact")
    # a tokenizer that must travel as a copy next to the checkpoint goes away with the failed checkpoint
    moved = edited(folder, tmp_path / "moved", lambda c: c.update(tokenizer_name="/elsewhere/tokenizer.json"))
    before = snapshot(tmp_path)
    with pytest.raises(OSError) as e:
        export_hf.import_folder(str(moved), str(tmp_path / "new.pt"))
    one_line(e, str(tmp_path / "new.pt"), "nothing was written")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    ck = export_hf.import_folder(str(moved), str(tmp_path / "new.pt"))  # and with room on the disk it works
    assert ck["tokenizer_name"] == str(tmp_path / "new.pt.tokenizer.json")
    model, ckpt = load_model(str(tmp_path / "new.pt"))
    from unicode_tokenizer import checkpoint_tokenizer
    assert checkpoint_tokenizer(ckpt, "new.pt").fingerprint == ckpt["tokenizer_fingerprint"]


def test_import_refuses_foreign_or_tampered_folders(exported, tmp_path):
    foreign = tmp_path / "llama"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="only folders written by this export_hf.py"):
        export_hf.import_folder(str(foreign), str(tmp_path / "x.pt"))
    import safetensors.torch as st
    tampered = tmp_path / "tampered"
    shutil.copytree(exported["plain"][0], tampered)
    t = st.load_file(str(tampered / "model.safetensors"))
    t["table"][0, 0] += 1.0
    st.save_file(t, str(tampered / "model.safetensors"))
    with pytest.raises(ValueError, match="fingerprint"):
        export_hf.import_folder(str(tampered), str(tmp_path / "y.pt"))
    t["table"][0, 0] = float("inf")
    st.save_file(t, str(tampered / "model.safetensors"))
    with pytest.raises(ValueError, match="non-finite weights in table") as e:  # checkpoint.check_finite
        export_hf.import_folder(str(tampered), str(tmp_path / "y.pt"))
    one_line(e, "model.safetensors")
    assert not os.path.exists(tmp_path / "x.pt") and not os.path.exists(tmp_path / "y.pt")


def _set_block_size(c):
    c["experts"][0]["block_size"] = 4096


MALFORMED = {  # name -> (edit of config.json, applied to the recorded copy too?, tokenizer.json bytes, message)
    "tokenizer.json not JSON": (None, False, b"{", "tokenizer.json: not a usable tokenizer.json"),
    "tokenizer.json a list": (None, False, b"[1, 2]", "tokenizer.json: not a usable tokenizer.json"),
    "tokenizer.json another one": (None, False, json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}).encode(),
                                   "tokenizer.json has fingerprint"),
    "config.json a list": ("list", False, None, "config.json holds a JSON list, expected an object"),
    "config.json not UTF-8": ("bytes", False, None, "config.json: not UTF-8 text"),
    "no embedding": (lambda c: c.pop("embedding"), False, None, "config.json has no 'embedding'"),
    "no embedding anywhere": (lambda c: c.pop("embedding"), True, None, "glyphgpt.recorded must hold"),
    "empty experts": (lambda c: c.update(experts=[]), True, None, "'experts' must be a non-empty list"),
    "empty experts at the top": (lambda c: c.update(experts=[]), False, None, "experts=[] (recorded"),
    "block_size 128 -> 4096": (_set_block_size, False, None,
                               "experts[0].block_size=4096 (recorded 128): config.json was edited after export"),
    "an expert too many": (lambda c: c["experts"].append(dict(c["experts"][0])), True, None,
                           "glyphgpt.kind='gpt' with 2 expert(s)"),
    "a shape the weights do not have": (lambda c: c["experts"][0].update(d_model=10 ** 9), True, None,
                                        "lm_head.weight is [65536, 32], config.json gives [vocab_size, d_model]"),
    "an unknown model_arg": (lambda c: c["experts"][0].update(wings=2), True, None, "experts[0] has unknown wings"),
    "merge weights": (lambda c: c.update(merge_weights=["a"]), True, None, "merge_weights=[\"a\"] is not valid"),
    "format 1": (lambda c: c["glyphgpt"].update(format=1), False, None, "format 1 (an older export_hf.py)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_import_refuses_malformed_folders_in_one_line(case, exported, tmp_path):
    edit, record, tok_bytes, message = MALFORMED[case]
    folder = tmp_path / "f"
    shutil.copytree(exported["plain"][0], folder)
    if edit == "list":
        (folder / "config.json").write_text("[1, 2]")
    elif edit == "bytes":
        (folder / "config.json").write_bytes(b"\xff\xfe{")
    elif edit is not None:
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        if record:
            edit(cfg["glyphgpt"]["recorded"])
        (folder / "config.json").write_text(json.dumps(cfg))
    if tok_bytes is not None:
        (folder / "tokenizer.json").write_bytes(tok_bytes)
    with pytest.raises(ValueError) as e:
        export_hf.main([str(folder), f"--to={tmp_path / 'x.pt'}"])
    one_line(e, message)
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_leftovers_of_killed_writers_are_cleared_once_their_process_is_gone(ckpts, exported, tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dest = tmp_path / "hf"
        shutil.copytree(exported["plain"][0], dest)
        for name in (f"hf.partial-{dead}", f"hf.old-{dead}", f"hf.partial-{live.pid}", f"hf.old-{live.pid}"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"half")
        (tmp_path / f"hf.partial-{dead}x").mkdir()  # not a writer's name: not ours to delete
        export_hf.main([ckpts["plain"], f"--to={dest}", "--overwrite"])
        assert sorted(os.listdir(tmp_path)) == sorted(["hf", f"hf.old-{live.pid}", f"hf.partial-{dead}x",
                                                       f"hf.partial-{live.pid}"])
        # killed between its two renames: DEST is missing, DEST.old-PID holds the previous folder: put back
        shutil.rmtree(tmp_path / f"hf.partial-{dead}x")
        previous = {os.path.basename(f): h for f, h in snapshot(dest).items()}
        os.rename(dest, tmp_path / f"hf.old-{dead}")
        shutil.copytree(exported["grown"][0], tmp_path / f"hf.partial-{dead}")
        with pytest.raises(ValueError, match="exists: pass --overwrite"):
            export_hf.main([ckpts["plain"], f"--to={dest}"])
        assert {os.path.basename(f): h for f, h in snapshot(dest).items()} == previous
        assert sorted(os.listdir(tmp_path)) == sorted(["hf", f"hf.old-{live.pid}", f"hf.partial-{live.pid}"])
        # import: the temporary file of a killed checkpoint write (checkpoint.atomic_write's name)
        out = tmp_path / "back.pt"
        (tmp_path / f".back.pt.{dead}.partial").write_bytes(b"half")
        (tmp_path / f".back.pt.{live.pid}.partial").write_bytes(b"half")
        export_hf.main([str(dest), f"--to={out}"])
        assert os.path.exists(out) and not os.path.exists(tmp_path / f".back.pt.{dead}.partial")
        assert os.path.exists(tmp_path / f".back.pt.{live.pid}.partial")
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------- property tests: any arguments,
# any folder -> an export / import, or one ValueError line; the inputs never change

from hypothesis import HealthCheck, event, given, settings, strategies as hs  # noqa: E402

PROPERTY = settings(max_examples=20, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
json_values = hs.recursive(hs.none() | hs.booleans() | hs.integers(-3, 10 ** 12) | hs.floats() | hs.text(max_size=6),
                           lambda v: hs.lists(v, max_size=3) | hs.dictionaries(hs.text(max_size=6), v, max_size=3),
                           max_leaves=6)
names = hs.text(alphabet="abcxyz._-/ ", min_size=1, max_size=10)


@PROPERTY
@given(data=hs.data())
def test_any_arguments_give_a_result_or_one_line(data, ckpts, exported, tmp_path_factory):
    d = tmp_path_factory.mktemp("args")
    run = d / "run"
    run.mkdir()
    shutil.copyfile(ckpts["plain"], run / "ckpt.pt")
    (run / "log.jsonl").write_text("{}\n")
    (d / "junk.pt").write_bytes(data.draw(hs.binary(max_size=64)))
    (d / "res.json").write_text(data.draw(hs.sampled_from(
        ['{"tasks": {"arc_easy": {"mean": 1.5}}}', "[]", "{", '{"tasks": 3}'])))
    (d / "taken").mkdir()
    (d / "taken" / "notes.txt").write_text("mine")
    shutil.copytree(exported["plain"][0], d / "hfcopy")
    places = [str(run / "ckpt.pt"), str(run), str(d / "junk.pt"), str(d / "res.json"),
              str(d / "new"), str(d / "new.pt"), str(d / "taken"), str(d), str(d / "nope"), ""]
    place = hs.sampled_from(places) | names.map(lambda n: str(d / n))
    options = data.draw(hs.lists(hs.one_of(
        place.map(lambda p: f"--to={p}"), place.map(lambda p: f"--eval={p}"),
        hs.sampled_from(["--overwrite", "--overwrite=false", "--force", "--to", "--eval", "--license=mit",
                         "--license=bad id", "--eval=[1]", "--eval=['x'", "--nope=1"]),
        names.map(lambda n: f"--license={n}")), max_size=4))
    argv = [data.draw(hs.sampled_from([f"--to={d / 'new'}", f"--to={d / 'new.pt'}"]) | place.map(lambda p: f"--to={p}"))]
    for _ in range(data.draw(hs.sampled_from([1, 1, 1, 1, 0, 2]))):  # SOURCE, usually once
        argv.insert(data.draw(hs.integers(0, len(argv))), data.draw(place | hs.just(str(d / "hfcopy"))))
    argv += options
    inputs = [run, d / "hfcopy", d / "junk.pt", d / "res.json", d / "taken"]
    before = snapshot(*inputs)
    try:
        export_hf.main(argv)
    except ValueError as e:
        assert "\n" not in str(e) and str(e)
        event("refused: " + re.sub(r"/tmp\S*|'[^']*'|\d+", "_", str(e))[:50])
    else:
        event("done")
    assert snapshot(*inputs) == before
    assert not [n for n in os.listdir(d) if ".partial" in n or ".old-" in n]


def valid_config(folder):
    return json.loads(open(os.path.join(folder, "config.json")).read())


@PROPERTY
@given(data=hs.data())
def test_any_folder_imports_or_is_refused_in_one_line(data, exported, tmp_path_factory):
    src = exported[data.draw(hs.sampled_from(["plain", "merged_logits"]))][0]
    d = tmp_path_factory.mktemp("fold")
    folder = d / "f"
    folder.mkdir()
    for f in os.listdir(src):
        if f not in ("config.json", "tokenizer.json"):
            os.symlink(os.path.join(src, f), folder / f)  # read-only use: the big files are shared
    cfg = valid_config(src)
    kind = data.draw(hs.sampled_from(["bytes", "json", "edit", "consistent edit", "drop"]))
    if kind == "bytes":
        text = data.draw(hs.binary(max_size=200))
    elif kind == "json":
        text = json.dumps(data.draw(json_values)).encode()
    else:  # a valid config.json changed in 1-3 places, in the recorded copy too for a consistent edit
        rec = cfg["glyphgpt"]["recorded"]
        pairs = {"top": (cfg, rec), "expert": (cfg["experts"][0], rec["experts"][0]), "glyphgpt": (cfg["glyphgpt"], None)}
        for _ in range(data.draw(hs.integers(1, 3))):
            where = data.draw(hs.sampled_from(sorted(pairs)))
            target, twin = pairs[where]
            key = data.draw(hs.sampled_from(sorted(target) + ["other"]))
            value = data.draw(json_values | hs.integers(1, 200))
            both = kind != "edit" and twin is not None and (where == "expert" or key in rec)
            for t in [target, twin] if both else [target]:
                if kind == "drop":
                    t.pop(key, None)
                else:
                    t[key] = value
        text = json.dumps(cfg).encode()
    (folder / "config.json").write_bytes(text)
    tok_kind = data.draw(hs.sampled_from(["same", "same", "bytes", "json"]))
    if tok_kind == "same":
        os.symlink(os.path.join(src, "tokenizer.json"), folder / "tokenizer.json")
    else:
        blob = data.draw(hs.binary(max_size=100)) if tok_kind == "bytes" else json.dumps(data.draw(json_values)).encode()
        (folder / "tokenizer.json").write_bytes(blob)
    out = d / "out.pt"
    try:
        ck = export_hf.import_folder(str(folder), str(out))
    except ValueError as e:
        assert "\n" not in str(e) and str(e)
        assert not os.path.exists(out)
        event("refused: " + re.sub(r"/tmp\S*|'[^']*'|\d+", "_", str(e))[:50])
    else:
        event("imported")
        model, back = load_model(str(out))
        assert back["kind"] == ck["kind"]
