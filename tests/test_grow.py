"""grow.py on tiny configs: a 3-stage growth lowers val loss stage by stage, lower blocks and the
table stay bit-identical, parameter counts (incl. the 9x1024 study's 105.0M on the meta device),
LoRA merge preserves logits, a run killed mid-stage resumes exactly, frozen blocks store no
activations, and the bad inputs (one-line errors, no stage checkpoint overwritten)."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from checkpoint import load_model, read_checkpoint
import grow as G
import lora
import train as T
from configurator import configure
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(d_model=32, n_head=2, block_size=32, batch_size=4, table_dim=16, learning_rate=1e-2,
            min_lr=1e-3, warmup_iters=1, eval_iters=1, eval_interval=2, log_interval=2, progress=False,
            datasets={"tiny": 1.0}, growth=[1, 1, 1], stage_iters=[4, 4, 4])


def cfg_for(data_root, out_dir, **kw):
    return {**G.DEFAULTS, **TINY, "data_root": data_root, "out_dir": str(out_dir), **kw}


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, G.grow(cfg_for(data_root, out))


def sd(path):
    return read_checkpoint(str(path))["model"]


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def block_numel(d):
    return 12 * d * d + 13 * d  # 4 linears with biases + 2 LayerNorms


def test_growth_lowers_val_loss_and_keeps_lower_blocks_bit_identical(straight):
    out, reports = straight
    losses = [r["val_loss"] for r in reports]
    assert len(reports) == 3 and losses[0] < math.log(65536) - 0.5  # from ~11.1 nats at init
    print("val losses per stage", losses)
    assert losses[0] > losses[1] > losses[2], losses
    assert all(r["val_bpb"] > 0 and r["lower_blocks_bit_identical"] for r in reports)
    s1, s2, s3 = (sd(out / f"stage_{i}.pt") for i in (1, 2, 3))
    for k, v in s1.items():  # block 0 and the table: identical in every later stage
        if k.startswith(("transformer.h.0.", "transformer.wte")):
            assert torch.equal(v, s2[k]) and torch.equal(v, s3[k]), k
    for k, v in s2.items():
        if k.startswith("transformer.h.1."):
            assert torch.equal(v, s3[k]), k
    assert not torch.equal(s1["lm_head.weight"], s3["lm_head.weight"])  # the head kept training
    # trainable: the new block + final norm + head; frozen: table + earlier blocks
    d, V = 32, 65536
    head = d * V + V + 2 * d
    for i, r in enumerate(reports):
        assert r["trainable"] == block_numel(d) + head
        assert r["frozen"] == V * 16 + i * block_numel(d)
    # outputs: plain checkpoints, logs, no working checkpoints left
    model, ck = load_model(str(out / "stage_3.pt"))
    assert model.config.n_layer == 3 and ck["grow"]["stage"] == 3 and ck["kind"] == "gpt"
    assert [json.loads(l)["stage"] for l in open(out / "grow_log.jsonl")] == [1, 2, 3]
    assert os.path.exists(out / "stage_2" / "log.jsonl") and not os.path.exists(out / "stage_2" / "ckpt.pt")


def test_each_stage_reports_the_validation_its_training_printed(straight):
    """One validation figure per model: the stage report is train.py's last evaluation of it."""
    out, reports = straight
    for r in reports:
        with open(out / f"stage_{r['stage']}" / "log.jsonl") as f:
            last = [json.loads(l) for l in f if l.strip()][-1]
        assert last["iter"] == r["iters"]
        assert (last["val_loss"], last["val_bpb"]) == (r["val_loss"], r["val_bpb"])


def test_one_validation_set_through_the_growth_no_jump_at_stage_boundaries(straight):
    """zero_proj: a stage starts as the model the previous one ended with, and every evaluation
    scores the same batches, so a stage's step-0 loss is the previous stage's last one."""
    out, reports = straight
    for prev, nxt in zip(reports, reports[1:]):
        with open(out / f"stage_{nxt['stage']}" / "log.jsonl") as f:
            first = json.loads(f.readline())
        assert first["iter"] == 0
        assert first["val_loss"] == pytest.approx(prev["val_loss"], abs=1e-5)


def test_zero_proj_init_starts_where_the_smaller_model_ended(straight, data_root):
    out, _ = straight
    cfg = cfg_for(data_root, out)
    small, _ = load_model(str(out / "stage_1.pt"))
    X = torch.randint(0, 65536, (2, 16))
    ref = small(X)[0]
    st = G.make_plan(cfg)[1]
    big = G.prepare_stage(G.stack_blocks(small, st, cfg), st, cfg)
    assert big.config.n_layer == 2
    assert torch.equal(big(X)[0], ref)  # the new block adds exactly zero


class Killed(Exception):
    pass


def test_resume_mid_schedule_is_exact(straight, data_root, tmp_path, monkeypatch):
    out, reports = straight
    # the state of a run that had finished stage 1 (saves re-training it here) ...
    for name in ("stage_1.pt", "grow_schedule.json"):
        shutil.copy(out / name, tmp_path / name)
    with open(out / "grow_log.jsonl") as f, open(tmp_path / "grow_log.jsonl", "w") as g:
        g.write(f.readline())
    calls = {"n": 0}
    batch = T.MixtureData.batch

    def dying_batch(self, split, a, b):  # ... and is killed in stage 2, iteration 3 (checkpoint at 2)
        if split == "train":
            calls["n"] += 1
            if calls["n"] == 4:
                raise Killed()
        return batch(self, split, a, b)

    monkeypatch.setattr(T.MixtureData, "batch", dying_batch)
    cfg = cfg_for(data_root, tmp_path)
    with pytest.raises(Killed):
        G.grow(cfg)
    monkeypatch.setattr(T.MixtureData, "batch", batch)
    assert not os.path.exists(tmp_path / "stage_2.pt")
    assert read_checkpoint(str(tmp_path / "stage_2" / "ckpt.pt"))["iter_num"] == 2
    sha1 = file_sha(tmp_path / "stage_1.pt")
    again = G.grow(cfg)
    assert file_sha(tmp_path / "stage_1.pt") == sha1  # a finished stage is never rewritten
    assert [r["resumed"] for r in again] == [False, True, False]
    for name in ("stage_2.pt", "stage_3.pt"):
        a, b = sd(out / name), sd(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in reports]
    # a third run finds everything done: reports, trains nothing, writes nothing
    sha3 = file_sha(tmp_path / "stage_3.pt")
    assert [r["val_loss"] for r in G.grow(cfg)] == [r["val_loss"] for r in reports]
    assert file_sha(tmp_path / "stage_3.pt") == sha3


def test_lora_stage_from_a_checkpoint_merges_into_a_plain_model(straight, data_root, tmp_path):
    out, _ = straight
    base = out / "stage_1.pt"
    cfg = cfg_for(data_root, tmp_path, grow_from=str(base), growth=[1], stage_iters=[4], lora_from_stage=1,
                  lora_rank=4, lora_alpha=8.0)
    (rep,) = G.grow(cfg)
    d, V = 32, 65536
    assert rep["lora"] and rep["trainable"] == block_numel(d) + d * V + V + 2 * d + 16 * 4 * d  # + adapters
    assert rep["lora_merge_max_logit_diff"] < 1e-4
    model, ck = load_model(str(tmp_path / "stage_1.pt"))  # a plain GPT again: no adapter keys
    assert model.config.n_layer == 2 and not any("lora" in k or ".base." in k for k in ck["model"])
    s0 = sd(base)
    assert torch.equal(s0["transformer.wte.weight"], ck["model"]["transformer.wte.weight"])
    assert not torch.equal(s0["transformer.h.0.attn.c_attn.weight"], ck["model"]["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(s0["transformer.h.0.ln_1.weight"], ck["model"]["transformer.h.0.ln_1.weight"])  # not a target


def test_lora_only_stage_adapts_the_stack_and_merges_a_low_rank_delta(straight, data_root, tmp_path):
    """growth entry 0 in a LoRA stage: no new block; the adapters of every block, the final norm and the
    head train; the merged model is a plain GPT whose block weights moved by a rank <= lora_rank update."""
    out, _ = straight
    base = out / "stage_2.pt"
    cfg = cfg_for(data_root, tmp_path, grow_from=str(base), growth=[0], stage_iters=[4], lora_from_stage=1,
                  lora_rank=4, lora_alpha=8.0)
    (st,) = G.make_plan(cfg, n_base=2)
    assert st["new"] == [] and st["depth"] == 2 and st["lora"] and st["layers"] == "none"
    model, _ = load_model(str(base))
    G.prepare_stage(G.stack_blocks(model, st, cfg), st, cfg)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {f"transformer.h.{b}.{t}.lora_{m}" for b in (0, 1) for t in lora.TARGETS for m in "AB"}
    assert trains == adapters | {"transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight", "lm_head.bias"}
    (rep,) = G.grow(cfg)
    d, V = 32, 65536
    assert rep["layers"] == "none" and rep["trainable"] == d * V + V + 2 * d + 2 * 16 * 4 * d  # head + ln_f + adapters
    assert rep["lora_merge_max_logit_diff"] < 1e-4
    model, ck = load_model(str(tmp_path / "stage_1.pt"))
    assert model.config.n_layer == 2 and not any("lora" in k or ".base." in k for k in ck["model"])
    s0, s1 = sd(base), ck["model"]
    for k, v in s0.items():
        if any(f".{t}.weight" in k for t in lora.TARGETS):  # moved, by a low-rank update only
            delta = (s1[k].double() - v.double())
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-5) <= 4, k
        elif not k.startswith(("lm_head", "transformer.ln_f")):  # table, block norms, biases: untouched
            assert torch.equal(v, s1[k]), k


def test_a_stage_without_blocks_must_be_a_lora_stage(data_root, tmp_path):
    plan = G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 0, 1], stage_iters=[], lora_from_stage=2))
    assert [(st["new"], st["depth"], st["lora"]) for st in plan] == [([0], 1, False), ([], 1, True), ([1], 2, True)]
    # interleaved: LoRA-only stages between growth stages, growth stages without LoRA in between
    plan = G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 1, 0, 1, 0], stage_iters=[], stage_lora=[0, 0, 1, 0, 1]))
    assert [(st["layers"], st["depth"], st["lora"]) for st in plan] == [
        ("1-1", 1, False), ("2-2", 2, False), ("none", 2, True), ("3-3", 3, False), ("none", 3, True)]
    with pytest.raises(ValueError, match=r"growth=\[1, 0\]: stage 2 adds no block and is not a LoRA stage"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 0], stage_iters=[]))
    with pytest.raises(ValueError, match=r"stage 2 adds no block .* or stage_lora\[1\] = 1"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 0, 0], stage_iters=[], stage_lora=[0, 0, 1]))
    with pytest.raises(ValueError, match="lora_from_stage=1 but stage 1 grows from nothing"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[0, 1], stage_iters=[], lora_from_stage=1))
    with pytest.raises(ValueError, match=r"stage_lora\[0\]=1 but stage 1 grows from nothing"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 1], stage_iters=[], stage_lora=[1, 0]))
    with pytest.raises(ValueError, match=r"stage_lora=\[0, 1\]: expected 3 flags"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 1, 1], stage_iters=[], stage_lora=[0, 1]))
    with pytest.raises(ValueError, match="are both set: say which stages have LoRA one way"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, 1], stage_iters=[], stage_lora=[0, 1], lora_from_stage=2))
    with pytest.raises(ValueError, match=r"growth=\[1, -1\]: expected a non-empty list of whole numbers"):
        G.make_plan(cfg_for(data_root, tmp_path, growth=[1, -1], stage_iters=[]))


def test_growth_writes_the_depth_curve_with_the_stages_evaluations(straight, data_root, tmp_path, capsys):
    out, reports = straight
    rows = [l for l in open(out / "depth_curve.md").read().splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [r.rstrip(" |").split(" | ")[5:7] for r in rows] == [[f"{r['val_loss']:.4f}", f"{r['val_bpb']:.4f}"] for r in reports]
    assert open(out / "depth_curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # after evaluating stage 2 (eval.py's default file name), --curve_only adds its score, training nothing
    for name in ("stage_1.pt", "stage_2.pt", "stage_3.pt", "grow_log.jsonl", "grow_schedule.json"):
        shutil.copy(out / name, tmp_path / name)
    (tmp_path / "eval_stage_2_loglik.json").write_text(json.dumps(dict(protocol="loglik", tasks=dict(
        mmlu=dict(metric="acc", n=7, mean=30.0, ci95=1.0)))))
    assert G.grow(cfg_for(data_root, tmp_path, curve_only=True)) == reports
    md = open(tmp_path / "depth_curve.md").read().splitlines()
    assert md[0].endswith("| val loss (nats/token) | val bits/byte | mmlu acc % (loglik) |")
    assert [l.rstrip(" |").split(" | ")[-1] for l in md[2:5]] == ["-", "30.00", "-"]
    assert not os.path.exists(tmp_path / "stage_4") and "depth curve: " in capsys.readouterr().out


def tiny_model(n_layer=3):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, block_size=16, n_layer=n_layer, n_head=2, d_model=32, embedding="random"),
               table=torch.randn(512, 32))


def test_lora_merge_preserves_logits():
    model = tiny_model()
    lora.attach(model, [0, 1], lora.TARGETS, rank=4, alpha=8.0)
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.05)  # as if trained: a real low-rank update
    X = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        unmerged = model(X)[0]
        lora.merge(model)
        merged = model(X)[0]
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    assert (merged - unmerged).abs().max() < 1e-5 and not torch.equal(merged, tiny_model()(X)[0])
    # the adapter's gradients are those of base(x) + (alpha / r) x A^T B^T
    lin = torch.nn.Linear(8, 12).requires_grad_(False)
    m = lora.LoRALinear(lin, 3, 6.0)
    torch.nn.init.normal_(m.lora_B)
    x = torch.randn(2, 5, 8, requires_grad=True)
    got = torch.autograd.grad(m(x).pow(2).sum(), [x, m.lora_A, m.lora_B])
    want = torch.autograd.grad((lin(x) + x @ m.lora_A.t() @ m.lora_B.t() * 2.0).pow(2).sum(), [x, m.lora_A, m.lora_B])
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def saved_bytes_by_block(model, X):
    """Bytes autograd saves for backward, attributed to the block whose forward saved them."""
    where, acc = [None], {}
    hooks = []
    for i, b in enumerate(model.transformer.h):
        hooks.append(b.register_forward_pre_hook(lambda m, a, i=i: where.__setitem__(0, i)))
        hooks.append(b.register_forward_hook(lambda m, a, o: where.__setitem__(0, None)))

    def pack(t):
        acc[where[0]] = acc.get(where[0], 0) + t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(X, X)
    for h in hooks:
        h.remove()
    return acc, loss


def test_frozen_blocks_store_no_activations_and_get_no_gradients():
    model = tiny_model(3)
    st = dict(stage=2, new=[2], depth=3, lora=False)
    G.prepare_stage(model, st, G.DEFAULTS)
    X = torch.randint(0, 512, (2, 16))
    acc, loss = saved_bytes_by_block(model, X)
    assert acc.get(0, 0) == 0 and acc.get(1, 0) == 0 and acc[2] > 0
    loss.backward()
    assert all(p.grad is None for p in model.transformer.h[:2].parameters())
    assert all(p.grad is not None for p in model.transformer.h[2].parameters())
    # with LoRA on the lower blocks they must keep activations: the measurement can tell
    G.prepare_stage(model, dict(st, lora=True), {**G.DEFAULTS, "lora_rank": 2, "lora_alpha": 2.0})
    acc, _ = saved_bytes_by_block(model, X)
    assert acc[0] > 0 and acc[1] > 0


def test_9x1024_study_counts_105M_trainable_per_stage_on_meta():
    cfg = configure(G.DEFAULTS, [os.path.join(REPO, "config", "grow_9x1024_3stages.py")], verbose=False)
    stages = G.make_plan(cfg)
    counts = G.planned_counts(cfg, stages, 65536)
    assert [s["depth"] for s in stages] == [3, 6, 9]
    assert [f"{c['trainable'] / 1e6:.1f}" for c in counts] == ["105.0"] * 3
    assert [f"{c['frozen'] / 1e6:.1f}" for c in counts] == ["67.1", "104.9", "142.7"]
    mono = T.meta_model(cfg, 65536, 9)  # the monolithic frozen-embedding baseline: 180.5M trainable
    assert f"{mono.param_counts()['trainable'] / 1e6:.1f}" == "180.5"
    # the 16-bit code is 16 columns wide whatever table_dim says (as train.py's real table is)
    b16 = G.planned_counts({**cfg, "embedding": "binary16", "table_dim": 1024}, stages, 65536)
    assert b16[0]["frozen"] == 65536 * 16 and b16[0]["trainable"] == counts[0]["trainable"]
    # identical total tokens in the monolithic config
    mcfg = configure(T.DEFAULTS, [os.path.join(REPO, "config", "grow_monolithic_9x1024.py")], verbose=False)
    tpi = lambda c: c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    assert mcfg["max_iters"] * tpi(mcfg) == sum(s["tokens"] for s in stages) and mcfg["n_layer"] == 9


def test_v3_binary16_run_is_the_papers_16_layer_269_7M_model_on_68_9B_tokens():
    cfg = configure(G.DEFAULTS, [os.path.join(REPO, "config", "grow_v3_binary16_16x1024.py")], verbose=False)
    stages = G.make_plan(cfg)
    last = G.planned_counts(cfg, stages, 65536)[-1]
    assert stages[-1]["depth"] == 16 and stages[-1]["new"] == [] and stages[-1]["lora"]  # ends on a LoRA stage
    assert [st["lora"] for st in stages if not st["new"]] == [True] * 3 and not any(st["lora"] for st in stages if st["new"])
    adapters = 16 * cfg["lora_rank"] * sum((3 + 1) * 1024 if t == "attn.c_attn" else 2 * 1024 if t == "attn.c_proj"
                                           else 5 * 1024 for t in cfg["lora_targets"])
    merged = last["trainable"] + last["frozen"] - adapters  # the model after its adapters are merged
    # the paper's 269.7M is this without our output head's 65,536 biases (269,699,072)
    assert merged - 65536 == 269_699_072 and last["frozen"] == 65536 * 16 + 16 * block_numel(1024)
    assert sum(st["tokens"] for st in stages) == pytest.approx(68.9e9, rel=1e-3)
    assert set(cfg["datasets"]) == {"fineweb_edu", "cosmopedia"} and cfg["embedding"] == "binary16"


def test_bad_input_one_line_errors_and_nothing_overwritten(straight, data_root, tmp_path):
    out, _ = straight
    shas = {p: file_sha(out / p) for p in ("stage_1.pt", "stage_2.pt", "stage_3.pt")}
    with pytest.raises(ValueError, match=r"growth=\[1, 1\] adds 2 layers .* but n_layer=5"):
        G.grow(cfg_for(data_root, tmp_path / "a", growth=[1, 1], n_layer=5))
    with pytest.raises(ValueError, match="stage_iters=.*expected 2 positive numbers"):
        G.grow(cfg_for(data_root, tmp_path / "a", growth=[1, 1], stage_iters=[5]))
    with pytest.raises(ValueError, match="'attn.q_proj' is not|attn.q_proj is not a linear layer"):
        G.grow(cfg_for(data_root, tmp_path / "a", lora_from_stage=2, lora_targets=["attn.q_proj"]))
    with pytest.raises(ValueError, match="resuming with a changed schedule: stages"):
        G.grow(cfg_for(data_root, out, stage_iters=[4, 5, 4]))
    with pytest.raises(ValueError, match="resuming with a changed schedule: lora_from_stage"):
        G.grow(cfg_for(data_root, out, lora_from_stage=3))
    # a checkpoint of another tokenizer / another table
    ck = read_checkpoint(str(out / "stage_1.pt"))
    ck["tokenizer_fingerprint"] = "0123456789abcdef"
    torch.save(ck, tmp_path / "other_tok.pt")
    with pytest.raises(ValueError, match="other_tok.pt was trained with tokenizer"):
        G.grow(cfg_for(data_root, tmp_path / "b", grow_from=str(tmp_path / "other_tok.pt"), growth=[1]))
    with pytest.raises(ValueError, match="its frozen table differs from the config's table .*substrate key"):
        G.grow(cfg_for(data_root, tmp_path / "b", grow_from=str(out / "stage_1.pt"), growth=[1], table_dim=32))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    assert shas == {p: file_sha(out / p) for p in shas}
    # the command line: one line on stderr, exit status 1
    r = subprocess.run([sys.executable, os.path.join(REPO, "grow.py"), "--growth=[2, 0]"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "grow.py: error: growth=[2, 0]: stage 2 adds no block and is not a LoRA stage, so it would train only the "
        "head; a stage with 0 new blocks needs LoRA (lora_from_stage <= 2, or stage_lora[1] = 1)"]


def test_help_lists_grow_and_train_keys_with_their_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        G.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"--{k}=" in out for k in G.DEFAULTS)
    assert "new blocks per stage, bottom to top" in out and "total training iterations" in out
