"""train.py end to end on tiny configs: learning, frozen table, exact resume, DDP (2 gloo ranks) vs
gradient accumulation, and the bad inputs (one-line errors, nothing in out_dir damaged)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoint import ctrl_c_after_saving, read_checkpoint, table_fingerprint
import train as T
from configurator import Config
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    assert ck["table_info"]["fingerprint"] == table_fingerprint(model.frozen_table)
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
    # dropout on: the masks are seeded per global micro-step, so they agree too
    common = [f"--{k}={v}" for k, v in {**TINY, "data_root": data_root, "max_iters": 3, "eval_interval": 3,
                                          "gradient_accumulation_steps": 2, "dropout": 0.1}.items()]
    T.train(cfg_for(data_root, tmp_path / "one", max_iters=3, eval_interval=3, gradient_accumulation_steps=2,
                    dropout=0.1))
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
    # a batch the ranks cannot share: one line, from rank 0 only
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "train.py"), *common, "--gradient_accumulation_steps=3",
                        f"--out_dir={tmp_path / 'three'}"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and not (tmp_path / "three").exists()
    assert r.stderr.count("is not divisible by the 2 DDP ranks") == 1, r.stderr[-2000:]
    assert "train.py: error: gradient_accumulation_steps=3 is not divisible by the 2 DDP ranks: use a multiple " \
           "of 2\n" in r.stderr  # (then torchrun's own report that a worker failed)


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
    """overwrite=True: even a run allowed to replace out_dir's files leaves them alone when it fails."""
    with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
        T.train(cfg_for(data_root, out, max_iters=2, **{"overwrite": True, **kw}))
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


# ----------------------------------------------------------------------------- the command line

def cli(data_root, *args, timeout=120, **popen):
    """train.py as a user runs it, on the tiny config; -> CompletedProcess (text)."""
    tiny = [f"--{k}={v}" for k, v in TINY.items()] + [f"--data_root={data_root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *tiny, *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **popen)


def error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def digest(out):
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out))}


@pytest.fixture(scope="module")
def run4(data_root, tmp_path_factory):
    """A finished 4-iteration run (checkpoint at 2 and 4), made once; tests copy it."""
    out = tmp_path_factory.mktemp("run4") / "out"
    r = cli(data_root, f"--out_dir={out}", "--max_iters=4", "--eval_interval=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"saved {out / 'ckpt.pt'} (iteration 2)" in r.stdout and f"saved {out / 'ckpt.pt'} (iteration 4)" in r.stdout
    return out


@pytest.fixture()
def run_copy(run4, tmp_path):
    import shutil
    return shutil.copytree(run4, tmp_path / "out")


def test_help_lists_every_key_with_default_and_meaning(capsys):
    from configurator import key_docs
    r = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: train.py")
    for key, default in T.DEFAULTS.items():
        assert f"--{key}=" in r.stdout, key
    assert "--max_iters=2000" in r.stdout and "total training iterations" in r.stdout
    assert "--lr_decay_iters=0" in r.stdout and "0 = max_iters" in r.stdout
    import importlib
    for script in ("train", "sample", "grow", "merge", "eval", "export_hf", "glyph_tools", "probe", "reproduce",
                   "unicode_tokenizer"):  # every key has one line of meaning (and nothing imported became a key)
        defaults = importlib.import_module(script).DEFAULTS
        docs = key_docs(*[os.path.join(REPO, f"{s}.py") for s in (["train", script] if script == "grow" else [script])])
        assert all(docs.get(k) for k in defaults), (script, [k for k in defaults if not docs.get(k)])
    with pytest.raises(SystemExit) as e:  # -h, the same parser as sample.py's command line
        T.main(["-h"])
    assert e.value.code == 0 and capsys.readouterr().out == r.stdout


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(data_root, run_copy):
    before = (run_copy / "ckpt.pt").read_bytes()
    r = cli(data_root, f"--out_dir={run_copy}", "--init_from=resume", "--learning_rate=1e8", "--min_lr=1e8",
            "--warmup_iters=0", "--decay_lr=False", "--max_iters=12", "--eval_interval=6")
    line = error_line(r)
    assert "resuming from iteration 4 of" in r.stdout
    assert "non-finite at iteration" in line and f"{run_copy / 'ckpt.pt'} (iteration 4) is kept" in line
    assert (run_copy / "ckpt.pt").read_bytes() == before


def test_fresh_run_into_a_run_is_refused_unless_overwrite(data_root, run_copy):
    before = digest(run_copy)
    line = error_line(cli(data_root, f"--out_dir={run_copy}", "--max_iters=2"))
    assert "holds a run" in line and "--init_from=resume" in line and "--overwrite=True" in line
    assert digest(run_copy) == before
    # asked to start over, but killed (here: diverged) before its first save: the old run is whole
    tiny = [f"--{k}={v}" for k, v in TINY.items()] + [f"--data_root={data_root}", f"--out_dir={run_copy}"]
    with pytest.raises(ValueError, match="non-finite at iteration .*nothing was saved"):
        T.main([*tiny, "--overwrite=True", "--max_iters=6", "--eval_interval=3", "--learning_rate=1e8",
                "--warmup_iters=0", "--decay_lr=False"])
    assert digest(run_copy) == before
    # its first checkpoint replaces checkpoint and log
    T.main([*tiny, "--overwrite=True", "--max_iters=1", "--eval_interval=1"])
    assert read_checkpoint(str(run_copy / "ckpt.pt"))["iter_num"] == 1
    assert [rec["iter"] for rec in read_log(run_copy)] == [0, 1]


def test_resume_remembers_the_run_and_refuses_other_settings(data_root, run_copy):
    before = digest(run_copy)
    with pytest.raises(ValueError) as e:
        T.main([f"--out_dir={run_copy}", "--init_from=resume", "--n_layer=2", "--d_model=64",
                "--embedding=trainable", "--batch_size=8", "--max_iters=6"])
    line = str(e.value)
    for given, had in (("n_layer=2", "1"), ("d_model=64", "32"), ("embedding='trainable'", "'glyph'"),
                       ("batch_size=8", "4")):
        assert f"{given} (the run has {had})" in line
    assert "max_iters" in line and digest(run_copy) == before
    # a kill left a partial checkpoint and a torn log line behind; resume with nothing but the out_dir
    (run_copy / ".ckpt.pt.999999.partial").write_bytes(b"x" * 1000)
    with open(run_copy / "log.jsonl", "a") as f:
        f.write('{"iter": 5, "lo')
    r = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--out_dir={run_copy}", "--init_from",
                        "resume", "--max_iters", "6", "--eval_interval=6"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from iteration 4 of" in r.stdout and "dropped its torn last line 6" in r.stdout
    assert not (run_copy / ".ckpt.pt.999999.partial").exists()
    assert [rec["iter"] for rec in read_log(run_copy)] == list(range(7))
    ck = read_checkpoint(str(run_copy / "ckpt.pt"))
    assert ck["iter_num"] == 6 and ck["config"]["batch_size"] == 4 and ck["config"]["max_iters"] == 6
    assert ck["model_args"]["n_layer"] == ck["config"]["n_layer"] == 1


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(data_root, run_copy):
    import resource
    import signal
    before = (run_copy / "ckpt.pt").read_bytes()

    def small_files():  # writes past 1 MB fail with EFBIG, as on a full disk (a smaller checkpoint fits)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    line = error_line(cli(data_root, f"--out_dir={run_copy}", "--init_from=resume", "--max_iters=5",
                          "--eval_interval=5", preexec_fn=small_files))
    assert f"could not write {run_copy / 'ckpt.pt'}" in line and "previous" in line and "intact" in line
    assert (run_copy / "ckpt.pt").read_bytes() == before
    assert not [f for f in os.listdir(run_copy) if f.endswith(".partial")]


def test_ctrl_c_says_where_the_last_checkpoint_is(data_root, tmp_path):
    import signal
    import time
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *[f"--{k}={v}" for k, v in TINY.items()],
                          f"--data_root={data_root}", f"--out_dir={out}", "--max_iters=100000", "--eval_interval=2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and len(err.strip().splitlines()) == 1, err[-2000:]
    assert f"the last checkpoint is {out / 'ckpt.pt'}: resume with python train.py --out_dir={out} " \
           f"--init_from=resume" in err


def test_bad_values_give_one_line_before_out_dir_is_created(data_root, tmp_path):
    out = tmp_path / "new"
    for arg, match in [("--eval_interval=0", "eval_interval=0: expected a positive whole number"),
                       ("--log_interval=0", "log_interval=0: expected a positive"),
                       ("--n_layer=0", "n_layer=0: expected a positive"),
                       ("--batch_size=0", "batch_size=0: expected a positive"),
                       ("--dtype=foo", "dtype='foo': expected one of auto, float32, bfloat16, float16"),
                       ("--device=cuda", "device='cuda', but torch sees no CUDA GPU here"),
                       ("--device=tpu", "device='tpu': expected auto, cpu, cuda or cuda:N")]:
        if "cuda" in arg and torch.cuda.is_available():
            continue
        with pytest.raises(ValueError, match=match):
            T.main([f"--data_root={data_root}", "--datasets={'tiny': 1.0}", f"--out_dir={out}", arg])
        assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="out_dir=.*afile is a file, not a folder"):
        T.main([f"--out_dir={afile}", "--max_iters=1"])
    with pytest.raises(ValueError, match="out_dir=.*afile/sub: cannot create it"):
        T.main([f"--out_dir={afile / 'sub'}", f"--data_root={data_root}", "--datasets={'tiny': 1.0}",
                *[f"--{k}={v}" for k, v in TINY.items() if k != "datasets"], "--max_iters=1"])
    # the same through the command line: one line, no traceback
    assert error_line(cli(data_root, f"--out_dir={out}", "--eval_interval=0")) == \
        "train.py: error: eval_interval=0: expected a positive whole number"


def test_meta_json_without_val_bytes_is_named(data_root, tmp_path):
    import shutil
    d = shutil.copytree(os.path.join(data_root, "tiny"), tmp_path / "nobytes")
    meta = json.loads((d / "meta.json").read_text())
    del meta["val_bytes"]
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"nobytes/meta.json has no 'val_bytes': re-run"):
        T.train(cfg_for(data_root, tmp_path / "o", datasets={str(d): 1.0}))


def test_resume_hints_when_out_dir_holds_no_ckpt(data_root, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "log.jsonl").write_text('{"iter": 0}\n')  # killed before the first save
    with pytest.raises(ValueError, match=r"stopped before its first checkpoint \(nothing to resume\); start over with --overwrite=True"):
        T.main([f"--out_dir={out}", "--init_from=resume"])
    grown = tmp_path / "grown"
    grown.mkdir()
    for i in (1, 2, 3):
        (grown / f"stage_{i}.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds stage_1.pt, stage_2.pt, stage_3.pt: name one of them, e.g. .*stage_3.pt"):
        T.main([f"--out_dir={grown}", "--init_from=resume"])
    import sample as S
    with pytest.raises(FileNotFoundError, match=r"ckpt.pt: no such checkpoint file; .* e.g. .*stage_3.pt"):
        S.sample({**S.DEFAULTS, "out_dir": str(grown)})


def test_checkpoint_messages(data_root, run4, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(3000))
    r = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--ckpt={junk}"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "not a readable checkpoint" in r.stderr
    ck = read_checkpoint(str(run4 / "ckpt.pt"))
    assert ck["scaler"] == {}  # float32: no loss scale; a float16 run saves and resumes its GradScaler
    odd = tmp_path / "odd.pt"
    torch.save({**ck, "kind": "foo"}, str(odd))
    with pytest.raises(ValueError, match="odd.pt is a 'foo' checkpoint: train.py continues only 'gpt'"):
        T.train(cfg_for(data_root, tmp_path / "o", init_from=str(odd)))
    # one tokenizer check (model.check_tokenizer) for train and sample alike
    import sample as S
    for fp, expected in (("0" * 16, r"was trained with tokenizer .*\(0{16}\), this run uses"),
                         (None, "records no tokenizer fingerprint")):
        torch.save({**ck, "tokenizer_fingerprint": fp}, str(odd))
        with pytest.raises(ValueError, match=expected):
            T.train(cfg_for(data_root, tmp_path / "o", init_from=str(odd)))
        with pytest.raises(ValueError, match=expected):
            S.sample({**S.DEFAULTS, "ckpt": str(odd), "device": "cpu"})


def test_schedule_follows_max_iters_unless_set():
    cfg = Config({**T.DEFAULTS, "max_iters": 100, "warmup_iters": 10, "learning_rate": 1e-3, "min_lr": 1e-4})
    assert T.get_lr(100, cfg) == pytest.approx(1e-4) and T.get_lr(55, cfg) == pytest.approx(5.5e-4)
    assert T.get_lr(100, Config({**cfg, "lr_decay_iters": 200})) > 5e-4
    for name in ("train_shakespeare_glyph.py", "train_shakespeare_trainable.py", "merge_demo_en.py", "merge_demo_ru.py"):
        assert "lr_decay_iters" not in open(os.path.join(REPO, "config", name)).read()


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

anything = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 6), st.floats(), st.text(max_size=6),
                     st.sampled_from(["uint16", "uint32", "float64", "int8", "foo"]), st.lists(st.integers(), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_data_loader_any_dataset_folder_gives_batches_or_one_line(data, data_root, tmp_path_factory):
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer("bvv241-2-3")
    d = tmp_path_factory.mktemp("ds")
    meta = json.load(open(os.path.join(data_root, "tiny", "meta.json")))
    meta.update(data.draw(st.dictionaries(st.sampled_from(sorted(meta) + ["x"]), anything, max_size=3)))
    for key in data.draw(st.lists(st.sampled_from(sorted(meta)), max_size=2)):
        meta.pop(key, None)
    text = data.draw(st.sampled_from([json.dumps(meta), "[1, 2]", "{", ""]))
    (d / "meta.json").write_text(text)
    for split in ("train", "val"):
        (d / f"{split}.bin").write_bytes(os.urandom(2 * data.draw(st.integers(0, 200))))
    weight = data.draw(st.one_of(st.just(1.0), anything))
    cfg = cfg_for(data_root, "unused", datasets={str(d): weight}, block_size=8)
    try:
        X, Y = T.MixtureData(cfg, tok, "cpu").batch(data.draw(st.sampled_from(["train", "val"])), 0, 0)
    except (ValueError, FileNotFoundError) as e:
        assert "\n" not in str(e)
    else:
        assert X.shape == Y.shape == (4, 8)


def test_ctrl_c_during_a_save_lands_after_it(tmp_path):
    """An interrupt inside torch.save's writer would surface as a RuntimeError ('could not save ...
    disk full?'); train.py defers it until the checkpoint is written, then stops cleanly."""
    import signal
    from checkpoint import save_checkpoint
    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_after_saving():
            os.kill(os.getpid(), signal.SIGINT)
            save_checkpoint({"w": torch.zeros(3)}, str(path))
    assert torch.load(path)["w"].shape == (3,)  # the save finished before the interrupt took effect
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
