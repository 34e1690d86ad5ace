"""
test_reproduce.py: every experiment of reproduce.py runs end to end at toy size (real training,
growing, merging and benchmarks on the fixtures), writes its results, and a second invocation
resumes instead of retraining. Budget: ~80 s on the shared 2-core machine (~22 s of CPU time).
"""
import json
import math
import os
import time

import pytest

from checkpoint import load_model, table_fingerprint
import reproduce
import reproduce_report


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repro"))
    t0 = time.time()
    results = reproduce.main(["all", "--scale", "toy", "--out", out, "--assets", "none"])
    return dict(out=out, results=results, seconds=time.time() - t0)


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


PLOT_SIZES = {"frozen_vs_trainable": (1210, 440), "unique": (1210, 440), "grow_vs_mono": (770, 462),
              "merge": (825, 440)}  # figsize x dpi 110


def test_every_experiment_writes_results(toy):
    for exp in reproduce.EXPERIMENTS:
        with open(os.path.join(toy["out"], f"{exp}.json")) as f:
            on_disk = json.load(f)
        assert on_disk["experiment"] == exp and on_disk["scale"] == "toy"
        assert on_disk == json.loads(json.dumps(toy["results"][exp]))  # the file holds what main() returned
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            continue
        from PIL import Image
        with Image.open(os.path.join(toy["out"], f"{exp}.png")) as im:
            assert im.format == "PNG" and im.size == PLOT_SIZES[exp]


def test_markdown_tables_show_the_json_numbers(toy):
    md = open(os.path.join(toy["out"], "frozen_vs_trainable.md")).read()
    res = toy["results"]["frozen_vs_trainable"]
    for arm, s in res["arms"].items():
        row = next(l for l in md.splitlines() if l.startswith(f"| {reproduce.ARM_LABELS[arm]} |"))
        assert f"{s['val_bpb']['mean']:.4f}" in row and f"{s['val_loss']['mean']:.4f}" in row
    assert "val loss (mix, nats)" in md and res["verdicts"]["glyph"]["text"] in md
    md = open(os.path.join(toy["out"], "grow_vs_mono.md")).read()
    assert "### Grown (3 stages of 1 layer) vs monolithic 3-layer model" in md


def test_logs_label_every_number(toy, capsys):
    reproduce.main(["frozen_vs_trainable", "--scale", "toy", "--out", toy["out"], "--assets", "none"])
    final = toy["results"]["frozen_vs_trainable"]["runs"]["glyph"][0]["final"]
    want = f"glyph_s1: done before, skipped"
    line = next(l for l in capsys.readouterr().out.splitlines() if want in l)
    assert line.endswith(f": loss {final['val_loss']:.4f} nats, {final['val_bpb']:.3f} bits/byte")
    assert reproduce_report.loss_text(11.09961, 11.1131) == "loss 11.0996 nats, 11.113 bits/byte"
    assert reproduce_report.growth_text([1, 1, 1]) == "3 stages of 1 layer"
    assert reproduce_report.growth_text([2]) == "1 stage of 2 layers"
    assert reproduce_report.growth_text([3, 2]) == "2 stages (3+2 layers)"
    assert reproduce_report.plural(1, "seed") == "1 seed" and reproduce_report.plural(3, "seed") == "3 seeds"


def test_results_name_the_frozen_table_and_record_the_real_benchmark(toy):
    """The stored benchmark is what eval.py gives for the stored model; the table is identified."""
    import eval
    run = toy["results"]["frozen_vs_trainable"]["runs"]["glyph"][0]
    model, _ = load_model(os.path.join(toy["out"], "runs", "glyph_s1", "ckpt.pt"))
    assert run["table_fingerprint"] == table_fingerprint(model.frozen_table)
    assert run["substrate_key"] == model.table_info.get("key")  # None only for a table cached before keys existed
    assert toy["results"]["frozen_vs_trainable"]["runs"]["trainable"][0]["table_fingerprint"] is None
    again = eval.evaluate(model, reproduce.get_tokenizer("bvv241-2-3"), ["mmlu"], "loglik", reproduce.EVAL_DIR,
                          limit=reproduce.SCALES["toy"]["eval_limit"], runs=1)["mmlu"]
    assert run["benchmarks"]["loglik"]["mmlu"]["mean"] == again["mean"] and run["benchmarks"]["loglik"]["mmlu"]["n"] == again["n"]


def test_frozen_vs_trainable_arms_differ_only_in_the_table(toy):
    res = toy["results"]["frozen_vs_trainable"]
    assert set(res["arms"]) == {"glyph", "trainable", "binary16"}
    runs = {arm: rs[0] for arm, rs in res["runs"].items()}
    # same data, tokens, seed; only the embedding (and so the trainable parameter count) differs
    assert len({(r["tokens"], r["seed"], json.dumps(r["datasets"], sort_keys=True)) for r in runs.values()}) == 1
    V, d = 65536, reproduce.SCALES["toy"]["d_model"]
    assert runs["trainable"]["params"]["trainable"] - runs["glyph"]["params"]["trainable"] == V * d
    assert runs["glyph"]["params"]["frozen"] == V * d and runs["binary16"]["params"]["frozen"] == V * 16
    for r in runs.values():
        assert finite(r["final"]["val_bpb"]) and r["curve"][0]["tokens"] == 0
        assert set(r["benchmarks"]) == {"loglik", "paper"}
        assert set(r["benchmarks"]["paper"]) == set(reproduce.SCALES["toy"]["eval_tasks"])
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
    # the four named one by one (several positional names run in the order given) = `all`
    again = reproduce.main(["frozen_vs_trainable", "grow_vs_mono", "merge", "unique", "--scale=toy",
                            f"--out={toy['out']}", "--assets=none"])
    assert "skipped" in capsys.readouterr().out and list(again) == list(reproduce.EXPERIMENTS)
    assert again["frozen_vs_trainable"]["arms"] == toy["results"]["frozen_vs_trainable"]["arms"]
    assert again["grow_vs_mono"]["grown"]["stages"] == toy["results"]["grow_vs_mono"]["grown"]["stages"]
    assert time.time() - t0 < toy["seconds"] / 2


def test_verdict_words():
    def arm(values):
        return {"val_bpb": reproduce_report.spread(values)}
    same = reproduce_report.verdict(arm([2.00, 2.02, 2.01]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert same["text"].startswith("no measurable difference")
    better = reproduce_report.verdict(arm([1.80, 1.81, 1.79]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert better["text"].startswith("a better") and better["diff"] < 0
    worse = reproduce_report.verdict(arm([2.30, 2.31, 2.29]), arm([2.01, 1.99, 2.02]), "a", "b")
    assert worse["text"].startswith("a worse")


def test_bad_experiment_name_is_one_line_on_the_command_line(tmp_path):
    """Through the real command line: one stderr line naming the value and what was expected, exit
    status 1, and nothing created."""
    import subprocess
    import sys
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(reproduce.REPO, "reproduce.py"), "nonsense", "--scale=toy",
                        f"--out={out}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.splitlines() == ["reproduce.py: error: experiment 'nonsense': expected one or more of "
                                     "frozen_vs_trainable, grow_vs_mono, merge, unique, all, scaling, semantics, ablation"]
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    ([], "no experiment given: expected one or more of frozen_vs_trainable"),
    (["all", "--scale=huge"], "scale='huge': expected one of toy, small, cpu"),
    (["merge", "--seeds=-1"], "seeds=-1: expected 0 (all the scale's seeds) or N >= 1"),
    (["merge", "--threads", "-1"], "threads=-1: expected 0 (torch's default) or N >= 1"),
    (["merge", "--seeds=two"], "seeds expects int (default 0), got 'two'"),
    (["merge", "--sead=1"], "unknown config key 'sead'; did you mean seeds"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, argv, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        reproduce.main(argv + [f"--out={out}"])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    assert all(f"--{key}=" in text for key in ("experiments", "scale", "out", "assets", "threads", "seeds"))


def test_a_stale_run_claim_is_taken_over(tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no longer running
    run = tmp_path / "glyph_s1"
    run.mkdir()
    (run / "running.pid").write_text(str(dead.pid))
    reproduce.wait_for_other_invocation(str(run), str(run / "result.json"))  # returns at once, claimed by us
    assert (run / "running.pid").read_text() == str(os.getpid())


def test_cost_estimates_follow_the_configs_vocabulary():
    """The expert configs use 131,072 ids: 16 blocks of 12d^2+13d, final norm, head and table at d=1024."""
    d, V = 1024, 131072
    e = reproduce.scaling_estimate("config/paper_expert_ru_470m.py", [], "train")
    assert e["params"] == 16 * (12 * d * d + 13 * d) + 2 * d + (V * d + V) + V * d  # 470.1M
    b16 = reproduce.scaling_estimate("config/paper_glyph_335m.py", ["--embedding=binary16", "--table_dim=16"], "train")
    assert b16["params"] == 16 * (12 * d * d + 13 * d) + 2 * d + (65536 * d + 65536) + 65536 * 16


def test_ablation_runs_the_model_cards_arms_reusing_the_shared_runs(toy):
    """reproduce.py ablation: the cards' N_BIT / N_FLOAT codes as arms beside glyph, binary16 and the
    trainable baseline; the three runs frozen_vs_trainable made are reused, not retrained."""
    before = {d: os.path.getmtime(os.path.join(toy["out"], "runs", d)) for d in ("glyph_s1", "trainable_s1")}
    res = reproduce.main(["ablation", "--scale=toy", f"--out={toy['out']}", "--assets=none"])["ablation"]
    assert set(res["arms"]) == {"glyph", "binary16", "random_bits", "random_float", "trainable"}
    assert all(finite(s["val_bpb"]["mean"]) for s in res["arms"].values())
    runs = {arm: json.load(open(os.path.join(toy["out"], "runs", f"{arm}_s1", "result.json")))
            for arm in ("random_bits", "random_float")}
    assert [r["embedding"] for r in runs.values()] == ["random_bits", "random_float"]
    assert runs["random_bits"]["substrate_key"] != runs["random_float"]["substrate_key"]
    assert before == {d: os.path.getmtime(os.path.join(toy["out"], "runs", d)) for d in before}


def test_depth_curve_redraw_reports_the_stage_files_on_disk(tmp_path):
    """--curve_only draws the stages whose stage_{i}.pt exists: with stage 2's file gone, stages 1 and 3."""
    rows = [dict(stage=i, layers=f"{2 * i - 1}-{2 * i}", depth=2 * i, lora=False, trainable=1, frozen=1, iters=1,
                 tokens=1024, val_loss=5.0 - i, val_bpb=4.0 - i) for i in (1, 2, 3)]
    (tmp_path / "grow_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in (1, 3):
        (tmp_path / f"stage_{i}.pt").write_bytes(b"")
    reports = reproduce_report.redraw_depth_curve(str(tmp_path), 3)
    assert [r["stage"] for r in reports] == [1, 3]
    assert "| 2 | 3-4 |" not in (tmp_path / "depth_curve.md").read_text()
