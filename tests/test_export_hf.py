"""Tests of export_hf.py: glyphgpt checkpoints -> Hugging Face folders -> transformers / lm-eval's hf
model -> back to checkpoints. Tiny models written here (2 layers x 32, a random 16-column frozen
table, the 65,536-id bvv241-2-3 tokenizer); nothing is downloaded."""
import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import transformers

from checkpoint import load_model, model_checkpoint, save_checkpoint, table_fingerprint
import eval as E
import export_hf
import grow
import merge
from model import GPT, GPTConfig
from unicode_tokenizer import get_tokenizer

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "data", "eval_items")
TOL = 1e-5


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("bvv241-2-3")


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
    grow.attach_lora(grown, [0], list(grow.LORA_TARGETS), rank=4, alpha=8.0)
    with torch.no_grad():
        for m in grown.modules():
            if isinstance(m, grow.LoRALinear):
                m.lora_B.normal_(0, 0.05)  # a trained adapter: merging it changes the weights
    grow.merge_lora(grown)
    assert not grow.has_lora(grown)
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


# ---------------------------------------------------------------------------- refusals

def test_existing_folder_is_kept_unless_forced_and_never_half_replaced(ckpts, exported, tmp_path, tok):
    folder = tmp_path / "out"
    export_hf.export(ckpts["plain"], str(folder))
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="exists: pass --force"):
        export_hf.export(ckpts["grown"], str(folder))
    m, _ = load_model(ckpts["grown"])
    ck = model_checkpoint(m, tok)  # (model_checkpoint refuses NaN weights: damage the dict afterwards)
    ck["model"]["lm_head.weight"][0, 0] = float("nan")
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(ck, bad)
    with pytest.raises(SystemExit, match="non-finite"):
        export_hf.export(bad, str(folder), force=True)
    assert (folder / "model.safetensors").read_bytes() == before
    export_hf.export(ckpts["grown"], str(folder), force=True)
    assert (folder / "model.safetensors").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "out"]


def test_import_refuses_foreign_or_tampered_folders(exported, tmp_path):
    foreign = tmp_path / "llama"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SystemExit, match="only folders written by this export_hf.py"):
        export_hf.import_folder(str(foreign), str(tmp_path / "x.pt"))
    import shutil
    import safetensors.torch as st
    tampered = tmp_path / "tampered"
    shutil.copytree(exported["plain"][0], tampered)
    t = st.load_file(str(tampered / "model.safetensors"))
    t["table"][0, 0] += 1.0
    st.save_file(t, str(tampered / "model.safetensors"))
    with pytest.raises(SystemExit, match="fingerprint"):
        export_hf.import_folder(str(tampered), str(tmp_path / "y.pt"))
    assert not os.path.exists(tmp_path / "x.pt") and not os.path.exists(tmp_path / "y.pt")


def test_clear_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="nope.pt: no such checkpoint file or folder"):
        export_hf.main([str(tmp_path / "nope.pt"), f"--to={tmp_path / 'x'}"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="junk.pt: cannot load as a glyphgpt checkpoint"):
        export_hf.main([str(tmp_path / "junk.pt"), f"--to={tmp_path / 'x'}"])
    # a missing optional package: one line saying what to install (the import really fails here)
    code = "import sys; sys.modules['safetensors'] = None; import export_hf; export_hf.need('safetensors.torch')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(HERE))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "export_hf.py needs safetensors: pip install transformers==5.24.0 safetensors==0.8.0 "
        "(or pip install -r requirements-test.txt)"]
