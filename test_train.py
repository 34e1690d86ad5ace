"""train.py end to end on tiny configs: learning, frozen table, exact resume, DDP (2 gloo ranks) vs
gradient accumulation, and the bad inputs (one-line errors, nothing in out_dir damaged)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train as T
from model import GPT, GPTConfig, read_checkpoint

REPO = os.path.dirname(os.path.abspath(__file__))
TINY = dict(n_layer=1, n_head=2, d_model=32, block_size=32, batch_size=4, table_dim=16,
            learning_rate=1e-2, warmup_iters=2, min_lr=1e-3, eval_iters=2, log_interval=1,
            progress=False, datasets={"tiny": 1.0})


def cfg_for(data_root, out_dir, **kw):
    return {**T.DEFAULTS, **TINY, "data_root": data_root, "out_dir": str(out_dir), **kw}


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_training_lowers_loss_and_never_touches_the_frozen_table(data_root, tmp_path):
    from unicode_tokenizer import get_tokenizer
    cfg = cfg_for(data_root, tmp_path, max_iters=20, eval_interval=20)
    model = T.build_model(cfg, get_tokenizer(cfg["tokenizer"]))
    table_before = model.frozen_table.detach().clone()
    opt = T.configure_optimizer(model, cfg, "cpu")
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.frozen_table) not in in_opt
    assert len(in_opt) == sum(1 for p in model.parameters() if p.requires_grad)
    res = T.train(cfg, model=model)
    log = read_log(tmp_path)
    assert res["iters"] == 20 and res["val_loss"] < log[0]["val_loss"] - 2.0  # from ~11.1 nats
    assert torch.equal(model.frozen_table.detach(), table_before)  # bit-identical
    ck = read_checkpoint(str(tmp_path / "ckpt.pt"))
    assert torch.equal(ck["model"]["transformer.wte.weight"], table_before)
    assert ck["iter_num"] == 20 and ck["tokenizer_name"] == "bvv241-2-3"
    assert ck["table_info"]["fingerprint"] == model.table_fingerprint
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.numel() for s in ck["optimizer"]["state"].values() for v in s.values() if v.dim()) == 2 * n_trainable
    assert 0 < res["val_bpb"] < res["val_loss"] * 2  # bits per byte is reported
    assert {"iter", "loss", "lr", "tokens_per_s"} <= set(log[1])
    import sample as S  # sample.py reads the checkpoint back
    texts = S.sample({**S.DEFAULTS, "ckpt": str(tmp_path / "ckpt.pt"), "start": "the king", "num_samples": 1,
                      "max_new_tokens": 8})
    assert texts[0].startswith("the king") and len(texts[0]) > len("the king")


def test_mixture_batches_are_deterministic_and_weighted(data_root):
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer("bvv241-2-3")
    cfg = cfg_for(data_root, "unused", datasets={"tiny": 0.75, "zzz": 0.25}, batch_size=400)
    data = T.MixtureData(cfg, tok, "cpu")
    X, Y = data.batch("train", 7, 1)
    assert torch.equal(X, data.batch("train", 7, 1)[0])  # a function of (seed, iteration, micro-step)
    assert not torch.equal(X, data.batch("train", 7, 2)[0])
    assert torch.equal(X[:, 1:], Y[:, :-1])
    zset = torch.tensor(sorted(set(tok.encode("z" * 3000)) | {tok.eos_id}))
    from_z = lambda rows: torch.isin(rows, zset).all(dim=1)
    assert 0.18 < from_z(X).float().mean().item() < 0.32  # ~25% of the rows from the second dataset
    assert from_z(data.batch("val", 0, 1)[0]).all()  # validation batches per dataset
    data.B = 4
    ev = T.evaluate(T.build_model(cfg, tok), data, {**cfg, "eval_iters": 1}, torch.no_grad())
    assert set(ev["val"]) == {"tiny", "zzz"}
    assert abs(ev["val_loss"] - (0.75 * ev["val"]["tiny"]["loss"] + 0.25 * ev["val"]["zzz"]["loss"])) < 1e-6


def test_uint32_token_files_read_like_uint16(data_root, tmp_path):
    from unicode_tokenizer import get_tokenizer
    wide = tmp_path / "wide"
    wide.mkdir()
    for split in ("train", "val"):
        ids = np.fromfile(os.path.join(data_root, "tiny", f"{split}.bin"), dtype=np.uint16)
        ids.astype(np.uint32).tofile(str(wide / f"{split}.bin"))
    meta = json.load(open(os.path.join(data_root, "tiny", "meta.json")))
    (wide / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    tok = get_tokenizer("bvv241-2-3")
    a = T.MixtureData(cfg_for(data_root, "unused"), tok, "cpu").batch("train", 3, 0)
    b = T.MixtureData(cfg_for(data_root, "unused", datasets={str(wide): 1.0}), tok, "cpu").batch("train", 3, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_resume_is_exact(data_root, tmp_path):
    # dropout on, so the RNG state matters too; the schedule is fixed by lr_decay_iters
    kw = dict(max_iters=8, lr_decay_iters=8, eval_interval=4, dropout=0.1)
    T.train(cfg_for(data_root, tmp_path / "straight", **kw))
    T.train(cfg_for(data_root, tmp_path / "split", **{**kw, "max_iters": 4}))  # stops (as if killed) at 4
    T.train(cfg_for(data_root, tmp_path / "split", **kw, init_from="resume"))
    a, b = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [r["iter"] for r in a] == [r["iter"] for r in b] == list(range(9))
    for ra, rb in zip(a, b):
        assert ra.get("loss") == rb.get("loss") and ra.get("val_loss") == rb.get("val_loss"), ra["iter"]
    sa = read_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))["model"]
    sb = read_checkpoint(str(tmp_path / "split" / "ckpt.pt"))["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ddp_two_gloo_ranks_equal_one_process_with_double_accumulation(data_root, tmp_path):
    common = [f"--{k}={v}" for k, v in {**TINY, "data_root": data_root, "max_iters": 3, "eval_interval": 3,
                                          "gradient_accumulation_steps": 2}.items()]
    T.train(cfg_for(data_root, tmp_path / "one", max_iters=3, eval_interval=3, gradient_accumulation_steps=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "train.py"), *common, f"--out_dir={tmp_path / 'two'}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    for ra, rb in zip(a, b):
        assert ra["iter"] == rb["iter"]
        for key in ("loss", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-4, (key, ra, rb)
    sa = read_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    sb = read_checkpoint(str(tmp_path / "two" / "ckpt.pt"))["model"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture()
def precious_out(tmp_path):
    """An out_dir holding an earlier run's files, which a failing run must leave alone."""
    out = tmp_path / "out"
    out.mkdir()
    files = {"ckpt.pt": b"earlier checkpoint", "log.jsonl": b'{"iter": 0}\n'}
    for name, blob in files.items():
        (out / name).write_bytes(blob)
    yield out
    for name, blob in files.items():
        assert (out / name).read_bytes() == blob, f"{name} was modified"
    assert sorted(os.listdir(out)) == sorted(files)


def bad_run(data_root, out, match, **kw):
    with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
        T.train(cfg_for(data_root, out, max_iters=2, **kw))
    assert "\n" not in str(e.value)


def test_bad_inputs_fail_with_one_line_and_leave_out_dir_alone(data_root, tmp_path, precious_out):
    bad_run(data_root, precious_out, "data directory .*nope.* not found", datasets={"nope": 1.0})
    bad_run(data_root, precious_out, "not more than block_size=32", datasets={"short": 1.0})
    bad_run(data_root, precious_out, "width 24, which does not divide d_model=32", table_dim=24)
    bad_run(data_root, precious_out, "not a readable checkpoint", init_from="resume")  # the junk ckpt.pt
    # a dataset made by another tokenizer
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    for f in ("train.bin", "val.bin"):
        (mismatch / f).write_bytes(open(os.path.join(data_root, "tiny", f), "rb").read())
    meta = json.load(open(os.path.join(data_root, "tiny", "meta.json")))
    meta.update(tokenizer_name="gpt2", tokenizer_fingerprint="0123456789abcdef")
    (mismatch / "meta.json").write_text(json.dumps(meta))
    bad_run(data_root, precious_out, "made with tokenizer 'gpt2'", datasets={str(mismatch): 1.0})


def test_cli_bad_input_exits_nonzero_with_one_line(data_root, tmp_path, precious_out):
    env = {**os.environ, "WORLD_SIZE": "2"}  # as torchrun would set it: checked before any process group
    r = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--data_root={data_root}",
                        "--datasets={'tiny': 1.0}", f"--out_dir={precious_out}", "--gradient_accumulation_steps=3"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["train.py: error: gradient_accumulation_steps=3 is not divisible "
                                             "by the 2 DDP ranks: use a multiple of 2"]
    r = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--max_iter=3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "did you mean max_iters" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_flops_count_of_a_frozen_prefix():
    conf = GPTConfig(vocab_size=512, block_size=16, n_layer=3, n_head=2, d_model=32, embedding="glyph")
    model = GPT(conf, torch.randn(512, 32))

    def nanogpt_count():  # 6N + 12*L*T*d over the matmul weights, every block backpropagated
        mats = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("transformer.wte")]
        return (4 * sum(p.numel() for p in mats) + 2 * sum(p.numel() for p in mats if p.requires_grad)
                + 12 * conf.n_layer * 16 * conf.d_model)
    # everything but the frozen table trainable: the nanoGPT/PaLM count
    assert T.flops_per_token(model, 16) == nanogpt_count()
    for p in model.transformer.h[:2].parameters():  # a grown stage: the two lower blocks frozen
        p.requires_grad_(False)
    per_block = sum(p.numel() for p in model.transformer.h[0].parameters() if p.dim() >= 2)
    # each frozen lower block: forward only (2/weight, 4*T*d attention) instead of 4/weight and 12*T*d
    assert nanogpt_count() - T.flops_per_token(model, 16) == 2 * (2 * per_block + 8 * 16 * 32)
