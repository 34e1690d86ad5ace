"""
test_reproduce.py: every experiment of reproduce.py runs end to end at toy size (real training,
growing, merging and benchmarks on the fixtures), writes its results, and a second invocation
resumes instead of retraining. Budget: ~45 s on 2 cores.
"""
import json
import math
import os
import time

import pytest

import reproduce as R
from model import load_model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repro"))
    t0 = time.time()
    results = R.main(["all", "--scale", "toy", "--out", out, "--assets", "none"])
    return dict(out=out, results=results, seconds=time.time() - t0)


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


def test_every_experiment_writes_results(toy):
    for exp in R.EXPERIMENTS:
        path = os.path.join(toy["out"], f"{exp}.json")
        with open(path) as f:
            on_disk = json.load(f)
        assert on_disk["experiment"] == exp and on_disk["scale"] == "toy"
        assert os.path.getsize(os.path.join(toy["out"], f"{exp}.md")) > 100
        try:
            import matplotlib  # noqa: F401
            assert os.path.getsize(os.path.join(toy["out"], f"{exp}.png")) > 5000
        except ImportError:
            pass


def test_frozen_vs_trainable_arms_differ_only_in_the_table(toy):
    res = toy["results"]["frozen_vs_trainable"]
    assert set(res["arms"]) == {"glyph", "trainable", "binary16"}
    runs = {arm: rs[0] for arm, rs in res["runs"].items()}
    # same data, tokens, seed; only the embedding (and so the trainable parameter count) differs
    assert len({(r["tokens"], r["seed"], json.dumps(r["datasets"], sort_keys=True)) for r in runs.values()}) == 1
    V, d = 65536, R.SCALES["toy"]["d_model"]
    assert runs["trainable"]["params"]["trainable"] - runs["glyph"]["params"]["trainable"] == V * d
    assert runs["glyph"]["params"]["frozen"] == V * d and runs["binary16"]["params"]["frozen"] == V * 16
    for r in runs.values():
        assert finite(r["final"]["val_bpb"]) and r["curve"][0]["tokens"] == 0
        assert set(r["benchmarks"]) == {"loglik", "paper"}
        assert 0.0 <= r["benchmarks"]["loglik"]["mmlu"]["mean"] <= 100.0
    assert "trainable" not in res["verdicts"] and "one seed" in res["verdicts"]["glyph"]["text"]


def test_grown_stages_and_monolith(toy):
    res = toy["results"]["grow_vs_mono"]
    stages, mono = res["grown"]["stages"], res["monolithic"]
    assert [s["stage"] for s in stages] == [1, 2, 3]
    assert sum(s["tokens"] for s in stages) == mono["tokens"]  # same total tokens
    # a stage trains its new block + head only: fewer trainable parameters than the monolith
    assert all(s["trainable"] < mono["trainable"] for s in stages)
    # deeper stages cost more per token (more frozen blocks to run forward), the whole growth less than the monolith
    fpt = [s["flops_per_token"] for s in stages]
    assert fpt[0] < fpt[1] < fpt[2] <= mono["flops_per_token"]
    assert res["grown"]["total_flops"] < mono["total_flops"]
    assert all(finite(p["val_bpb"]) and p["flops"] >= 0 for p in res["grown"]["curve"] + mono["curve"])


def test_merge_of_two_experts(toy):
    res = toy["results"]["merge"]
    merged, _ = load_model(os.path.join(toy["out"], "runs", "merged.pt"))
    assert merged.config.n_experts == 2
    labels = list(res["domains"])
    assert labels == ["ru expert", "zh expert", "merged (logit average)"]
    for label in labels:
        assert set(res["domains"][label]) == {"shakespeare", "russian_offline", "chinese_offline", "sft_qa"}
        assert all(finite(v["bpb"]) for v in res["domains"][label].values())
        assert "mmlu" in res["benchmarks"][label]["paper"]


def test_unique_reports_collisions(toy):
    res = toy["results"]["unique"]
    assert set(res["arms"]) == {"glyph_unique", "glyph"}
    assert res["faithful_collisions"]["groups"] > 0  # space/newline, look-alikes, squashed trigrams
    # the glyph runs are shared with experiment 1 (identical configuration): the same numbers
    g1 = toy["results"]["frozen_vs_trainable"]["runs"]["glyph"][0]["final"]
    assert res["runs"]["glyph"][0]["final"] == g1


def test_second_invocation_resumes_without_training(toy, capsys):
    t0 = time.time()
    again = R.main(["all", "--scale", "toy", "--out", toy["out"], "--assets", "none"])
    assert "skipped" in capsys.readouterr().out
    assert again["frozen_vs_trainable"]["arms"] == toy["results"]["frozen_vs_trainable"]["arms"]
    assert again["grow_vs_mono"]["grown"]["stages"] == toy["results"]["grow_vs_mono"]["grown"]["stages"]
    assert time.time() - t0 < toy["seconds"] / 2


def test_verdict_words():
    def arm(values):
        return {"val_bpb": R.spread(values)}
    same = R.verdict(arm([2.00, 2.02, 2.01]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert same["text"].startswith("no measurable difference")
    better = R.verdict(arm([1.80, 1.81, 1.79]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert better["text"].startswith("a better") and better["diff"] < 0
    worse = R.verdict(arm([2.30, 2.31, 2.29]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert worse["text"].startswith("a worse")


def test_bad_experiment_name_is_a_clean_error():
    with pytest.raises(SystemExit):
        R.main(["nonsense", "--scale", "toy"])


def test_a_stale_run_claim_is_taken_over(tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no longer running
    run = tmp_path / "glyph_s1"
    run.mkdir()
    (run / "running.pid").write_text(str(dead.pid))
    R.wait_for_other_invocation(str(run), str(run / "result.json"))  # returns at once, claimed by us
    assert (run / "running.pid").read_text() == str(os.getpid())
