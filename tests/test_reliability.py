"""The same guarantees in every script (docs/reliability.md): one run per out_dir, non-finite weights
refused on every load path, every failed write one line naming the path, values checked before any
work, and the growth log describing the stages on disk. train/grow/merge/sample here; eval and
export_hf in their own test files."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import grow
import merge
import sample
import train
from checkpoint import hold_out_dir, load_model, model_checkpoint, read_checkpoint, save_checkpoint
from common import script_main
from configurator import configure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=1, n_head=2, d_model=32, block_size=32, batch_size=4, table_dim=16, learning_rate=1e-2,
            warmup_iters=1, min_lr=1e-3, eval_iters=1, log_interval=1, progress=False, datasets={"tiny": 1.0})


def cfg_for(data_root, out_dir, **kw):
    return {**train.DEFAULTS, **TINY, "data_root": data_root, "out_dir": str(out_dir), **kw}


def flags(cfg):
    return [f"--{k}={v}" for k, v in cfg.items() if k in TINY or k in ("data_root", "out_dir", "max_iters", "eval_interval")]


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    """A finished tiny run: its checkpoint, and a copy of it with one NaN weight."""
    out = tmp_path_factory.mktemp("run")
    train.train(cfg_for(data_root, out, max_iters=2, eval_interval=2))
    ck = read_checkpoint(str(out / "ckpt.pt"))
    ck["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    nan = str(out / "nan.pt")
    save_checkpoint(ck, nan)
    return str(out / "ckpt.pt"), nan


def one_line(e):
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------- one run per out_dir

def test_a_held_out_dir_is_refused_naming_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(holder.pid))
        with pytest.raises(ValueError, match=f"out_dir={out} is in use by process {holder.pid}") as e:
            with hold_out_dir(str(out)):
                pass
        one_line(e)
    finally:
        holder.kill()
        holder.wait()
    with hold_out_dir(str(out)):  # its owner is dead now: taken over
        assert (out / ".lock").read_text() == str(os.getpid())
    assert not (out / ".lock").exists()
    with hold_out_dir(str(tmp_path / "fresh")):  # created for the run and left empty: removed again
        pass
    assert not (tmp_path / "fresh").exists()


def test_two_runs_started_together_on_one_out_dir_one_is_refused(data_root, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "train.py"] + flags(cfg_for(data_root, out, max_iters=150, eval_interval=150))
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".lock").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd + ["--init_from=resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == \
        f"train.py: error: out_dir={out} is in use by process {first.pid} (its {out / '.lock'}): wait for that run " \
        f"to end, or use another out_dir"
    iters = [json.loads(line)["iter"] for line in open(out / "log.jsonl")]
    assert iters == list(range(151)) and not (out / ".lock").exists()  # one run's log, lock released


# ---------------------------------------------------------------------------- non-finite weights, every load path

def test_every_load_path_refuses_a_checkpoint_with_a_nan_weight(run, data_root, tmp_path):
    good, nan = run
    msg = "non-finite weights in transformer.h.0.mlp.c_fc.weight"
    with pytest.raises(ValueError, match=msg) as e:
        load_model(nan)  # sample.py, eval.py and export_hf.py load through it
    one_line(e)
    with pytest.raises(ValueError, match=msg):
        sample.sample(configure(sample.DEFAULTS, [f"--ckpt={nan}", "--device=cpu"], verbose=False))
    with pytest.raises(ValueError, match=msg):
        merge.main([good, nan, f"--out={tmp_path / 'm.pt'}"])
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match=msg):
        train.train(cfg_for(data_root, tmp_path / "t", max_iters=2, init_from=nan))
    with pytest.raises(ValueError, match=msg):
        grow.grow({**grow.DEFAULTS, **cfg_for(data_root, tmp_path / "g", grow_from=nan, growth=[1], stage_iters=[2])})
    assert not (tmp_path / "t").exists() and not (tmp_path / "g").exists()


def test_a_merge_file_of_an_unexpected_shape_is_one_line_naming_it(run, tmp_path):
    """Plain data in the wrong shape (an expert that is no model entry) is refused by load_model itself,
    which every script loads through, in one line naming the file."""
    ck = read_checkpoint(run[0])
    for experts in ([42], [{"model_args": ck["model_args"]}], [{"model": 3, "model_args": ck["model_args"]}]):
        bad = str(tmp_path / "bad_merge.pt")
        save_checkpoint(dict(kind="merge", format=1, mode="logits", weights=[1.0], experts=experts,
                             tokenizer_fingerprint=None, table=None), bad)
        with pytest.raises(ValueError) as e:
            load_model(bad)
        assert str(e.value).startswith(bad) and "\n" not in str(e.value), str(e.value)


def test_a_model_with_a_nan_weight_is_never_saved(run):
    model, _ = load_model(run[0])
    with torch.no_grad():
        model.lm_head.bias[3] = float("inf")
    with pytest.raises(ValueError, match="the model is not saved: non-finite weights in lm_head.bias"):
        model_checkpoint(model)


# ---------------------------------------------------------------------------- failed writes, one line each

def test_failed_writes_name_the_path_and_keep_what_was_there(run, data_root, tmp_path):
    good, _ = run
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match=f"out={blocker / 'm.pt'}: {blocker} is a file, not a folder") as e:
        merge.main([good, good, f"--out={blocker / 'm.pt'}"])  # found before the experts are read
    one_line(e)
    with pytest.raises(OSError, match=f"could not write {blocker / 'm.pt'}: a folder on its path is a file; "
                                      f"nothing was written") as e:
        save_checkpoint({"kind": "gpt"}, str(blocker / "m.pt"))  # what every other writer meets
    one_line(e)
    with pytest.raises(OSError, match="could not write .*: File name too long"):
        merge.main([good, good, f"--out={tmp_path / ('x' * 300)}.pt"])
    r = subprocess.run([sys.executable, "grow.py", f"--out_dir={blocker}", f"--data_root={data_root}",
                        "--datasets={'tiny': 1.0}", "--growth=[1]"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"grow.py: error: out_dir={blocker} is a file, not a folder"]
    assert blocker.read_text() == "keep me"


def test_a_full_disk_during_a_merge_keeps_the_previous_merge(run, tmp_path, monkeypatch):
    good, _ = run
    out = tmp_path / "m.pt"
    merge.main([good, good, f"--out={out}"])
    before = out.read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=f"could not write {out}: No space left on device \\(disk full\\); the previous "
                                      f"{out} is intact"):
        merge.main([good, good, f"--out={out}", "--overwrite"])
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_stale_partial_files_of_a_killed_merge_are_removed_and_a_live_writers_kept(run, tmp_path):
    good, _ = run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / f".m.pt.{int(dead.stdout)}.partial", tmp_path / f".m.pt.{os.getppid()}.partial"
    stale.write_bytes(b"half a merge")
    live.write_bytes(b"being written")
    merge.main([good, good, f"--out={tmp_path / 'm.pt'}"])
    assert not stale.exists() and live.exists()


def test_merge_checks_its_datasets_before_writing_the_merge(run, tmp_path):
    good, _ = run
    with pytest.raises(ValueError, match="dataset 'nope': data directory .* not found"):
        merge.main([good, good, f"--out={tmp_path / 'm.pt'}", "--datasets=nope"])
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------------- values checked before any work

@pytest.mark.parametrize("arg,message", [("--temperature=-1", "temperature=-1.0: expected 0 (greedy) or a finite number "
                                                              ">= 1e-06 (smaller ones overflow the scaled logits)"),
                                         ("--temperature=1e-9", "temperature=1e-09: expected 0 (greedy) or a finite "
                                                                "number >= 1e-06 (smaller ones overflow the scaled logits)"),
                                         ("--top_k=-1", "top_k=-1: expected a whole number >= 0 (0 = none)"),
                                         ("--num_samples=-1", "num_samples=-1: expected a positive whole number"),
                                         ("--max_new_tokens=0", "max_new_tokens=0: expected a positive whole number"),
                                         ("--seed=-5", "seed=-5: expected a number >= 0")])
def test_sample_values_are_checked_before_the_model_is_loaded(arg, message, tmp_path):
    missing = str(tmp_path / "none.pt")  # never read: the values fail first
    r = subprocess.run([sys.executable, "sample.py", f"--ckpt={missing}", arg], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"sample.py: error: {message}"]


def test_seed_and_ids_beyond_the_vocabulary_fail_before_out_dir_is_made(data_root, tmp_path):
    with pytest.raises(ValueError, match="seed=-1: expected a number >= 0"):
        train.train(cfg_for(data_root, tmp_path / "a", seed=-1))
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("meta.json", "val.bin"):
        (bad / f).write_bytes(open(os.path.join(data_root, "tiny", f), "rb").read())
    meta = json.load(open(bad / "meta.json"))
    meta["dtype"] = "uint32"  # a dtype that can hold ids beyond the vocabulary
    wide = np.fromfile(os.path.join(data_root, "tiny", "train.bin"), dtype=np.uint16).astype(np.uint32)
    wide[7] = 70000
    wide.tofile(bad / "train.bin")
    np.fromfile(os.path.join(data_root, "tiny", "val.bin"), dtype=np.uint16).astype(np.uint32).tofile(bad / "val.bin")
    (bad / "meta.json").write_text(json.dumps(meta))
    r = subprocess.run([sys.executable, "train.py"] + flags(cfg_for(data_root, tmp_path / "o", max_iters=2)) +
                       [f"--datasets={{'{bad}': 1.0}}"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"train.py: error: {bad / 'train.bin'} holds token id 70000, beyond the 65,536 ids of tokenizer 'bvv241-2-3': "
        f"the file is damaged or was not made by this tokenizer"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()


def test_mixture_weights_with_an_infinite_sum_and_huge_batches_are_one_line(data_root, tmp_path):
    with pytest.raises(ValueError, match="weights must be positive numbers with a finite sum"):
        train.train(cfg_for(data_root, tmp_path / "a", datasets={"tiny": 1e308, "zzz": 1e308}))
    with pytest.raises(ValueError, match=r"batch_size=1000000000000 x block_size=32: one batch of token ids needs "
                                         r"[\d,]+ GB, more than this machine's"):
        train.train(cfg_for(data_root, tmp_path / "a", batch_size=10 ** 12))  # at once, not after minutes of swapping
    assert not (tmp_path / "a").exists()

    def oom(argv):
        raise MemoryError()
    with pytest.raises(SystemExit, match="x.py: error: out of memory: use a smaller batch_size"):
        script_main("x.py", oom, [])


# ---------------------------------------------------------------------------- growth: the log is the stages on disk

GROW = dict(growth=[1, 1], stage_iters=[2, 2], eval_interval=2, n_layer=0)


def test_growth_reports_the_stages_on_disk_after_a_stage_was_deleted_and_retrained(data_root, tmp_path):
    cfg = {**grow.DEFAULTS, **cfg_for(data_root, tmp_path / "g"), **GROW}
    first = grow.grow(cfg)
    os.remove(tmp_path / "g" / "stage_2.pt")
    os.remove(tmp_path / "g" / "stage_1.pt")
    again = grow.grow(cfg)
    assert [r["stage"] for r in again] == [1, 2]
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in first]  # deterministic: the same figures
    os.remove(tmp_path / "g" / "stage_2.pt")
    assert [r["stage"] for r in grow.grow(cfg)] == [1, 2]  # stage 1 from the log, stage 2 trained again


def test_ctrl_c_during_a_stage_prints_where_things_stand(data_root, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "train", interrupted)
    argv = [f"--out_dir={tmp_path / 'g'}", f"--data_root={data_root}", "--datasets={'tiny': 1.0}", "--growth=[1]"]
    with pytest.raises(SystemExit) as e:
        script_main("grow.py", grow.main, argv)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted; finished stages and the running stage's last checkpoint are kept in {tmp_path / 'g'}: "
                   f"resume with the same command, python grow.py {' '.join(argv)}"]


# ---------------------------------------------------------------------------- argument fuzzing

words = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["-1e9", "0.5", "nan", "inf", "", "x", "[1]", "True"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["temperature", "top_k", "num_samples", "max_new_tokens", "seed", "device", "start"]),
       value=words)
def test_sample_any_argument_gives_samples_or_one_line(run, key, value):
    try:
        cfg = configure(sample.DEFAULTS, [f"--ckpt={run[0]}", "--max_new_tokens=2", f"--{key}={value}"], verbose=False)
        cfg["max_new_tokens"], cfg["num_samples"] = min(cfg["max_new_tokens"], 3), min(cfg["num_samples"], 2)
        texts = sample.sample(cfg)
        assert len(texts) == cfg["num_samples"]
    except (ValueError, OSError) as e:
        assert "\n" not in str(e) and str(e)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["weights", "mode", "eval_iters", "batch_size", "block_size", "progress", "datasets"]),
       value=words)
def test_merge_any_argument_gives_a_merge_or_one_line(run, tmp_path, key, value):
    out = tmp_path / f"m{abs(hash((key, value)))}.pt"
    try:
        merge.main([run[0], run[0], f"--out={out}", f"--{key}={value}"])
        assert load_model(str(out))[0] is not None
    except (ValueError, OSError) as e:
        assert "\n" not in str(e) and str(e)
