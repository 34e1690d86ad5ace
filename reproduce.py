"""
Reproduce the papers' experiments end to end, at the scale of a 2-core CPU (docs/design.md).
Name one experiment or several (run in the order given); every run is seeded, and a re-run skips
what is already done. --help lists the options.

$ python reproduce.py frozen_vs_trainable   # 1. paper 1: frozen glyph table vs trainable vs 16-bit code, 3 seeds (--seeds N: the first N)
$ python reproduce.py grow_vs_mono          # 2. paper 2: 3 stages of 2 layers vs a 6-layer monolith, same tokens
$ python reproduce.py merge                 # 3. paper 2: en+ru and en+zh experts, merged by logit average
$ python reproduce.py unique                # 4. ours: the injective glyph table vs the faithful one, 3 seeds
$ python reproduce.py all                   # the four, in this order (42 min side by side on an idle 2-core machine, 2026-11-27)
$ python reproduce.py all --scale toy       # the same pipeline in seconds (tests/test_reproduce.py runs it)
$ python reproduce.py frozen_vs_trainable merge --scale=toy --out=/tmp/repro   # several, in this order
$ python reproduce.py scaling               # GPU-hour estimates of the papers' full-size runs
Two invocations may run side by side (a run being trained by one is waited for by the other), e.g. on
2 cores, one thread each (how docs/results.md's numbers were made):
$ python reproduce.py frozen_vs_trainable --threads 1 &
$ python reproduce.py grow_vs_mono --threads 1 && python reproduce.py merge --threads 1 && python reproduce.py unique --threads 1

Everything goes to out/reproduce/<scale>/:
  data/<name>/          the corpora, prepared with the current tokenizer (re-prepared if it changed)
  runs/<run>/           one training run: train.py's log.jsonl + ckpt.pt, and result.json when done
                        (a run with result.json is skipped; one with only ckpt.pt resumes exactly)
  <experiment>.json     the experiment's results (every run's numbers, seed means and spreads)
  <experiment>.md       the same as markdown tables
  <experiment>.png      the plot (needs matplotlib; skipped with a note if it is not installed)
At --scale cpu the PNGs are also copied to assets/ (committed, shown in the README).

Training is train.train (and grow.grow / merge.build_merge); benchmarks are eval.evaluate under both
protocols on the benchmark samples in data/eval_items: only those few items exist offline, so the
accuracies are a pipeline check on a handful of items, not a measurement (docs/results.md says so).
This file runs the experiments and writes their JSON; reproduce_report.py turns those numbers into
seed statistics, verdicts, markdown tables and plots.
"""
import importlib.util
import os
import shutil
import time

import numpy as np
import torch

import eval
import grow
import merge
import reproduce_report
import train
from checkpoint import (LOG_NAME, load_model, pid_alive, read_json, read_jsonl, read_pid, run_checkpoint, save_checkpoint,
                        write_json)
from common import PEAK_FLOPS, fail, script_main
from configurator import configure, defaults_from, key_docs
from unicode_tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
# command-line defaults (positional arguments: config files end in .py, anything else is an experiment)
experiments = []  # frozen_vs_trainable grow_vs_mono merge unique, all (the four), scaling, semantics (probe.py on their runs), ablation (the model cards' arms); run in order; positional
scale = "cpu"  # cpu (the four experiments in about an hour on 2 CPU cores, 3 seeds) | small (two seeds, fewer items: a quarter of an hour) | toy (seconds: a check of the pipeline)
out = ""  # output folder; "" = out/reproduce/<scale>
assets = ""  # copy the plots here; "" = assets/ at scale cpu, nowhere at scale toy; "none" = nowhere
threads = 0  # torch threads (0 = torch's default)
seeds = 0  # use only the first N seeds of the scale (0, or more than it has = all of them)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())

REPO = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# the scales. "cpu" was sized from measured throughput so that the four experiments fit in
# about an hour on a shared 2-core CPU (docs/results.md); "small" is cpu with two seeds and fewer
# benchmark items; "toy" only checks that the pipeline runs.
# data_max_bytes: the prepare scripts take whole documents and need two (train, val): 300 kB holds
# the first two works of Shakespeare.
SCALES = {
    "toy": dict(d_model=32, n_layer=1, n_head=2, block_size=32, batch_size=4, max_iters=3, eval_interval=1,
                eval_iters=1, learning_rate=2e-3, min_lr=2e-4, warmup_iters=1, seeds=[1],
                expert_iters=3, grow_layers=[1, 1, 1], eval_limit=1, eval_runs=1, data_max_bytes=300_000,
                eval_tasks=["mmlu", "squad_v2"], translation_tasks=[]),
    # small: the cpu shapes and training, two seeds (the fewest that give a verdict), 40 items per task,
    # 3 sampled runs, no translation: a real comparison in about a quarter of an hour
    "small": dict(d_model=128, n_layer=4, n_head=4, block_size=128, batch_size=8, max_iters=180, eval_interval=30,
                  eval_iters=8, learning_rate=2e-3, min_lr=2e-4, warmup_iters=18, seeds=[1, 2],
                  expert_iters=180, grow_layers=[2, 2, 2], eval_limit=40, eval_runs=3, data_max_bytes=None,
                  eval_tasks=["mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "boolq", "hellaswag", "squad_v2"],
                  translation_tasks=[]),
    "cpu": dict(d_model=128, n_layer=4, n_head=4, block_size=128, batch_size=8, max_iters=180, eval_interval=30,
                eval_iters=8, learning_rate=2e-3, min_lr=2e-4, warmup_iters=18, seeds=[1, 2, 3],
                expert_iters=180, grow_layers=[2, 2, 2], eval_limit=None, eval_runs=10, data_max_bytes=None,
                eval_tasks=["mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "boolq", "hellaswag", "squad_v2"],
                translation_tasks=["opus_en_ru", "opus_ru_en", "opus_en_zh", "opus_zh_en"]),
}

# the training mixture of paper 1 (docs/design.md §4): English text + ~10% instruction-format QA. Wikipedia is
# not reachable offline, so the English corpus is Shakespeare (the repo's default corpus).
EN_MIX = {"shakespeare": 0.9, "sft_qa": 0.1}
# the two experts of paper 2 (docs/design.md §6): English + Russian and English + Chinese, each with the QA part
EXPERT_MIX = {"ru": {"shakespeare": 0.45, "russian_offline": 0.45, "sft_qa": 0.1},
              "zh": {"shakespeare": 0.45, "chinese_offline": 0.45, "sft_qa": 0.1}}
PREPARE_ARGS = {"shakespeare": [], "sft_qa": ["--sources", "synthetic"], "russian_offline": [], "chinese_offline": []}

# the input tables compared (all else identical): name -> (embedding, table width; 0 = d_model)
ARMS = {"glyph": ("glyph", 0), "trainable": ("trainable", 0), "binary16": ("binary16", 16),
        "glyph_unique": ("glyph_unique", 0), "random_bits": ("random_bits", 0), "random_float": ("random_float", 0)}
ARM_LABELS = {"glyph": "frozen glyph (faithful)", "trainable": "trainable", "binary16": "frozen 16-bit code",
              "glyph_unique": "frozen glyph (unique)",
              # the model cards' arms at d_model columns (their N_BIT / N_FLOAT with N = d_model; docs/design.md §2)
              "random_bits": "frozen random 0/1 code (N_BIT)", "random_float": "frozen PCA of random codes (N_FLOAT)"}

# the benchmark files: data/eval_items holds the samples (a few items per task, in the originals' formats);
# the tasks used are the scale's eval_tasks (+ translation_tasks for the merge)
EVAL_DIR = os.path.join(REPO, "data", "eval_items")


def has_sacrebleu():
    """Translation tasks are scored by BLEU (sacrebleu, optional): without it they are left out, with a note."""
    try:
        import sacrebleu  # noqa: F401
        return True
    except ImportError:
        log("sacrebleu is not installed: translation tasks left out (pip install sacrebleu)")
        return False


def log(msg):
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -----------------------------------------------------------------------------
# data: the prepare scripts' own command lines, into our folder, with the current tokenizer

def prepare_data(root, names, tok, max_bytes):
    """data/<name>/prepare.py --out_dir root/<name>, unless a preparation with this tokenizer exists.
    (The tokenizer's fingerprint is checked because data prepared by an older tokenizer is refused by
    train.py; preparing into our own folder leaves data/ to whoever else uses it.) The scripts'
    main(argv) runs in this process: the same as their command line, without a new interpreter each."""
    for name in names:
        dataset_dir = os.path.join(root, name)
        meta = os.path.join(dataset_dir, "meta.json")
        if os.path.exists(meta) and read_json(meta, "a dataset's meta.json").get("tokenizer_fingerprint") == tok.fingerprint:
            continue
        script = os.path.join(REPO, "data", name, "prepare.py")
        argv = ["--out_dir", dataset_dir, "--tokenizer", tok.name] + PREPARE_ARGS[name] + \
            (["--max_bytes", str(max_bytes)] if max_bytes else [])
        log(f"preparing {name}: python {os.path.relpath(script, REPO)} {' '.join(argv)}")
        spec = importlib.util.spec_from_file_location(f"prepare_{name}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(argv)


# -----------------------------------------------------------------------------
# one training run (train.train), then its benchmarks (eval.evaluate); skipped once result.json exists

def base_config(S, ctx, datasets):
    return {**train.DEFAULTS, "data_root": ctx["data"], "datasets": dict(datasets), "tokenizer": ctx["tok"].name,
            "d_model": S["d_model"], "n_layer": S["n_layer"], "n_head": S["n_head"], "block_size": S["block_size"],
            "batch_size": S["batch_size"], "gradient_accumulation_steps": 1, "max_iters": S["max_iters"],
            "eval_interval": S["eval_interval"], "eval_iters": S["eval_iters"], "log_interval": S["eval_interval"],
            "learning_rate": S["learning_rate"], "min_lr": S["min_lr"], "warmup_iters": S["warmup_iters"],
            "lr_decay_iters": 0, "dropout": 0.0, "weight_decay": 0.1, "grad_clip": 1.0, "device": "cpu",
            "progress": False, "always_save_checkpoint": True}


def arm_config(S, ctx, arm, seed, datasets=EN_MIX):
    embedding, width = ARMS[arm]
    return {**base_config(S, ctx, datasets), "embedding": embedding, "table_dim": width or S["d_model"], "seed": seed}


def curve(log_rows, tokens_per_iter):
    """The validation points of a train.py log: iteration, tokens seen, loss and bpb (mixture and per dataset)."""
    return [dict(iter=r["iter"], tokens=r["iter"] * tokens_per_iter, val_loss=r["val_loss"], val_bpb=r["val_bpb"],
                 val={n: v["bpb"] for n, v in r["val"].items()}) for r in log_rows if "val_bpb" in r]


def benchmark(model, tok, S, tasks):
    """eval.py under both protocols on the fixture files -> {protocol: {task: summary}}."""
    scores = {}
    for protocol in ("loglik", "paper"):
        res = eval.evaluate(model, tok, tasks, protocol, EVAL_DIR, limit=S["eval_limit"], runs=S["eval_runs"])
        scores[protocol] = {t: dict(metric=r["metric"], n=r["n"], mean=r["mean"], ci95=r.get("ci95"),
                                    acc_norm=(r.get("acc_norm") or {}).get("mean")) for t, r in res.items()}
    return scores


def wait_for_other_invocation(out_dir, done):
    """Claim out_dir with a pid file, so that two invocations running side by side (e.g. `unique` and
    `frozen_vs_trainable` share the glyph runs) never train the same run at once: the second waits
    for the first's result.json. A pid file left by a dead process is taken over."""
    os.makedirs(out_dir, exist_ok=True)
    lock = os.path.join(out_dir, "running.pid")
    while not os.path.exists(done):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = read_pid(lock)
            if pid == os.getpid() or not pid_alive(pid):
                os.remove(lock)
            else:
                log(f"{os.path.basename(out_dir)}: being trained by process {pid}, waiting for it")
                time.sleep(15)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return


def claimed_by_other(ctx, name):
    """True while another live invocation trains runs/<name>."""
    out_dir = os.path.join(ctx["runs"], name)
    lock = os.path.join(out_dir, "running.pid")
    if os.path.exists(os.path.join(out_dir, "result.json")) or not os.path.exists(lock):
        return False
    try:
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and pid_alive(pid)


def run_jobs(ctx, jobs):
    """run_train every (name, cfg), in order, but first the ones no other invocation is training;
    then wait for those. -> {name: result}."""
    results, pending = {}, list(jobs)
    while pending:
        busy = [(n, c) for n, c in pending if claimed_by_other(ctx, n)]
        for name, cfg in pending:
            if (name, cfg) not in busy:
                results[name] = run_train(ctx, name, cfg)
        if len(busy) == len(pending):
            time.sleep(15)
        pending = busy
    return results


def run_train(ctx, name, cfg, tasks=None):
    """Train cfg in runs/<name> (resuming its checkpoint if a previous invocation was cut short),
    benchmark the final model, write runs/<name>/result.json. -> that result."""
    out_dir = os.path.join(ctx["runs"], name)
    done = os.path.join(out_dir, "result.json")
    if not os.path.exists(done):
        wait_for_other_invocation(out_dir, done)
    if os.path.exists(done):
        res = read_json(done, "a reproduce.py result")
        log(f"{name}: done before, skipped ({done}): "
            f"{reproduce_report.loss_text(res['final']['val_loss'], res['final']['val_bpb'])}")
        return res
    ckpt_path = run_checkpoint(out_dir)
    resume = os.path.exists(ckpt_path)
    log(f"{name}: training ({'resuming' if resume else 'from scratch'}), embedding={cfg['embedding']}, "
        f"seed={cfg['seed']}, {cfg['max_iters']} iterations")
    t0 = time.time()
    train.train({**cfg, "out_dir": out_dir, "init_from": "resume" if resume else "scratch"})
    train_s = time.time() - t0
    model, _ = load_model(ckpt_path)
    t0 = time.time()
    bench = benchmark(model, ctx["tok"], ctx["S"], tasks or ctx["S"]["eval_tasks"])
    tpi = cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"]
    rows = read_jsonl(os.path.join(out_dir, LOG_NAME))
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # the first includes start-up
    res = dict(name=name, embedding=cfg["embedding"], table_dim=cfg["table_dim"], seed=cfg["seed"],
               **table_identity(model), torch_threads=torch.get_num_threads(),
               datasets=cfg["datasets"], iters=cfg["max_iters"], tokens=cfg["max_iters"] * tpi,
               params=model.param_counts(), flops_per_token=train.flops_per_token(model, cfg["block_size"]),
               curve=curve(rows, tpi), final=curve(rows, tpi)[-1], benchmarks=bench,
               train_seconds=round(train_s, 1), eval_seconds=round(time.time() - t0, 1), resumed=resume,
               tokens_per_s=round(float(np.median(speeds)), 1) if speeds else None)
    write_json(done, res)
    os.remove(os.path.join(out_dir, "running.pid"))
    log(f"{name}: {reproduce_report.loss_text(res['final']['val_loss'], res['final']['val_bpb'])} "
        f"(validation, training mixture) after {res['tokens']:,} tokens, {train_s:.0f} s")
    return res


def table_identity(model):
    """Which frozen table a result was measured with: its substrate key (glyph_embed.substrate_key:
    what the table was built from; None for a trainable embedding or a table saved before keys
    existed) and the fingerprint of its bytes."""
    info = getattr(model, "table_info", None) or {}
    return dict(substrate_key=info.get("key"), table_fingerprint=info.get("fingerprint"))


# -----------------------------------------------------------------------------
# an experiment's outputs: JSON, markdown, plots (reproduce_report.py turns numbers into tables and plots)

def publish(ctx, paths):
    """Copy the final plots to assets/ (committed; the README shows them), at the cpu scale only."""
    if not ctx["assets"]:
        return
    os.makedirs(ctx["assets"], exist_ok=True)
    for p in paths:
        if p:
            shutil.copy(p, os.path.join(ctx["assets"], "repro_" + os.path.basename(p)))


def finish(ctx, exp, result, md, plots):
    base = os.path.join(ctx["out"], exp)
    result["wall_seconds_this_invocation"] = round(time.time() - ctx["t0"][exp], 1)
    write_json(base + ".json", result)
    with open(base + ".md", "w") as f:
        f.write(md + "\n")
    publish(ctx, plots)
    if plots and not any(plots):
        log("matplotlib is not installed: no plots (pip install matplotlib)")
    print(md)
    log(f"{exp}: wrote {base}.json, {base}.md" + "".join(f", {p}" for p in plots if p))
    return result


# -----------------------------------------------------------------------------
# experiment 1 (and 4): identical models that differ only in the input table

def compare_arms(ctx, exp, arms, reference, title):
    S = ctx["S"]
    prepare_data(ctx["data"], EN_MIX, ctx["tok"], S["data_max_bytes"])
    # seed-major order: if the hour runs out, every arm has the same seeds done
    jobs = [(f"{arm}_s{seed}", arm_config(S, ctx, arm, seed)) for seed in S["seeds"] for arm in arms]
    done = run_jobs(ctx, jobs)
    runs = {arm: [done[f"{arm}_s{seed}"] for seed in S["seeds"]] for arm in arms}
    summaries = {arm: reproduce_report.summarise_arm(rs) for arm, rs in runs.items()}
    verdicts = {arm: reproduce_report.verdict(summaries[arm], summaries[reference], ARM_LABELS[arm],
                                              ARM_LABELS[reference]) for arm in arms if arm != reference}
    result = dict(experiment=exp, scale=ctx["scale"], settings=S, datasets=EN_MIX, arms=summaries,
                  verdicts=verdicts, runs={arm: rs for arm, rs in runs.items()},
                  eval_data=f"fixtures in {os.path.relpath(EVAL_DIR, REPO)} (a few items per task)")
    md = f"### {title}\n\n{reproduce_report.arms_table(summaries, ARM_LABELS)}\n\n" + \
        "\n".join(f"- {v['text']}" for v in verdicts.values())
    plot = reproduce_report.plot_arms(os.path.join(ctx["out"], f"{exp}.png"), runs, ARM_LABELS, title)
    return finish(ctx, exp, result, md, [plot])


def frozen_vs_trainable(ctx):
    return compare_arms(ctx, "frozen_vs_trainable", ["glyph", "trainable", "binary16"], "trainable",
                        "Frozen glyph table vs trainable embedding vs frozen 16-bit code")


def unique(ctx):
    import glyph_embed
    table, _ = glyph_embed.frozen_table(ctx["tok"], kind="glyph", table_dim=ctx["S"]["d_model"])
    groups = glyph_embed.collision_groups(table)
    res = compare_arms(ctx, "unique", ["glyph_unique", "glyph"], "glyph",
                       "Injective (unique) glyph table vs the faithful one")
    # how much there is to remove: ids that share their row with another id in the faithful table
    res["faithful_collisions"] = dict(groups=len(groups), ids=int(sum(len(g) for g in groups)),
                                      largest=len(groups[0]) if groups else 0, table_dim=ctx["S"]["d_model"])
    write_json(os.path.join(ctx["out"], "unique.json"), res)
    log(f"faithful table at {ctx['S']['d_model']} dims: {len(groups):,} groups of identical rows, "
        f"{res['faithful_collisions']['ids']:,} ids involved")
    return res


def ablation(ctx):
    """The model cards' ablation arms against the trainable baseline: UNI_GLYPH (glyph), 16_BIT
    (binary16), N_BIT (random_bits) and N_FLOAT (random_float), N = d_model. Not part of `all`."""
    return compare_arms(ctx, "ablation", ["glyph", "binary16", "random_bits", "random_float", "trainable"], "trainable",
                        "The model cards' frozen codes vs a trainable embedding")


# -----------------------------------------------------------------------------
# experiment 2: grown layer by layer vs trained in one go, same total tokens

def stage_models(cfg, out_dir):
    """Each grown stage's model with requires_grad set as grow.py trained it: (stage, model, flops/token)."""
    rows = []
    for st in grow.make_plan(cfg):
        model, _ = load_model(os.path.join(out_dir, f"stage_{st['stage']}.pt"))
        grow.prepare_stage(model, {**st, "lora": False}, cfg, first_from_scratch=st["stage"] == 1)
        rows.append((st, model, train.flops_per_token(model, cfg["block_size"])))
    return rows


def grow_vs_mono(ctx):
    S = ctx["S"]
    exp = "grow_vs_mono"
    prepare_data(ctx["data"], EN_MIX, ctx["tok"], S["data_max_bytes"])
    growth = S["grow_layers"]
    n_stages, depth = len(growth), sum(growth)
    stage_iters = [S["max_iters"] // n_stages] * n_stages  # the grown model's tokens = one arm run's
    total_iters = sum(stage_iters)  # the monolith trains on exactly as many tokens
    seed = S["seeds"][0]
    tpi = S["batch_size"] * S["block_size"]

    # the grown model: grow.grow runs (or resumes) the whole schedule in runs/grown
    grow_dir = os.path.join(ctx["runs"], "grown")
    gcfg = {**grow.DEFAULTS, **arm_config(S, ctx, "glyph", seed), "out_dir": grow_dir, "n_layer": depth,
            "growth": growth, "stage_iters": stage_iters, "stage_lr": [S["learning_rate"]] * n_stages,
            "new_block_init": "zero_proj", "warmup_iters": max(1, S["warmup_iters"] // n_stages)}
    for k in ("init_from", "lr_decay_iters", "eval_only"):
        gcfg.pop(k, None)
    done = os.path.join(grow_dir, "result.json")
    if os.path.exists(done):
        grown = read_json(done, "a reproduce.py result")
        log(f"grown: done before, skipped ({done})")
    else:
        t0 = time.time()
        reports = grow.grow(gcfg)
        seconds = time.time() - t0
        stage_rows, points, flops = [], [], 0.0
        for (st, model, fpt), rep in zip(stage_models(gcfg, grow_dir), reports):
            for p in curve(read_jsonl(os.path.join(grow_dir, f"stage_{st['stage']}", LOG_NAME)), tpi):
                points.append(dict(p, flops=flops + p["tokens"] * fpt, stage=st["stage"]))
            flops += st["iters"] * tpi * fpt
            stage_rows.append(dict(stage=st["stage"], layers=rep["layers"], trainable=rep["trainable"],
                                   frozen=rep["frozen"], tokens=rep["tokens"], flops_per_token=fpt,
                                   cumulative_flops=flops, val_bpb=rep["val_bpb"], val_loss=rep["val_loss"],
                                   seconds=rep["seconds"]))
        final_model = stage_models(gcfg, grow_dir)[-1][1]
        grown = dict(stages=stage_rows, curve=points, total_flops=flops, wall_seconds=round(seconds, 1),
                     **table_identity(final_model),
                     tokens=total_iters * tpi, benchmarks=benchmark(final_model, ctx["tok"], S, S["eval_tasks"]),
                     val_bpb=reports[-1]["val_bpb"])
        write_json(done, grown)

    # the monolith: the same depth, all layers trained together, the same total tokens and seed
    mcfg = {**arm_config(S, ctx, "glyph", seed), "n_layer": depth, "max_iters": total_iters}
    mono = run_train(ctx, "monolithic", mcfg)
    mono_fpt = mono["flops_per_token"]
    for p in mono["curve"]:
        p["flops"] = p["tokens"] * mono_fpt

    result = dict(experiment=exp, scale=ctx["scale"], settings=S, datasets=EN_MIX, growth=growth, grown=grown,
                  monolithic=dict(trainable=mono["params"]["trainable"], frozen=mono["params"]["frozen"],
                                  flops_per_token=mono_fpt, total_flops=mono["curve"][-1]["flops"],
                                  tokens=mono["tokens"], wall_seconds=mono["train_seconds"],
                                  val_bpb=mono["final"]["val_bpb"], curve=mono["curve"],
                                  benchmarks=mono["benchmarks"]))
    lines = ["| model | stage | layers trained | trainable params | frozen params | tokens | training FLOPs "
             "(cumulative) | val bpb (mix) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in grown["stages"]:
        lines.append(f"| grown | {r['stage']} | {r['layers']} | {r['trainable'] / 1e6:.2f}M | {r['frozen'] / 1e6:.2f}M | "
                     f"{r['tokens']:,} | {r['cumulative_flops']:.3e} | {r['val_bpb']:.4f} | {r['seconds']:.0f} |")
    m = result["monolithic"]
    lines.append(f"| monolithic | - | 1-{depth} | {m['trainable'] / 1e6:.2f}M | {m['frozen'] / 1e6:.2f}M | {m['tokens']:,} | "
                 f"{m['total_flops']:.3e} | {m['val_bpb']:.4f} | {m['wall_seconds']:.0f} |")
    md = f"### Grown ({reproduce_report.growth_text(growth)}) vs monolithic {depth}-layer model\n\n" + \
        "\n".join(lines)
    plot = reproduce_report.plot_grow(os.path.join(ctx["out"], f"{exp}.png"), grown, result["monolithic"], growth)
    return finish(ctx, exp, result, md, [plot])


# -----------------------------------------------------------------------------
# experiment 3: two experts on different data, merged by averaging their logits

def merge_experts(ctx):
    S = ctx["S"]
    exp = "merge"
    domains = ["shakespeare", "russian_offline", "chinese_offline", "sft_qa"]
    prepare_data(ctx["data"], domains, ctx["tok"], S["data_max_bytes"])
    tasks = S["eval_tasks"] + (S["translation_tasks"] if S["translation_tasks"] and has_sacrebleu() else [])
    seed = S["seeds"][0]
    experts = {}
    for name, mix in EXPERT_MIX.items():
        cfg = {**arm_config(S, ctx, "glyph", seed, mix), "max_iters": S["expert_iters"]}
        experts[name] = run_train(ctx, f"expert_{name}", cfg, tasks)
    paths = [run_checkpoint(os.path.join(ctx["runs"], f"expert_{n}")) for n in EXPERT_MIX]
    merged_path = os.path.join(ctx["runs"], "merged.pt")
    done = os.path.join(ctx["runs"], "merged_result.json")
    labels = [f"{n} expert" for n in EXPERT_MIX] + ["merged (logit average)"]
    if os.path.exists(done):
        log(f"merged: done before, skipped ({done})")
        result = read_json(done, "a reproduce.py result")
    else:
        _, ck = merge.build_merge(paths)  # checks: same tokenizer, same frozen table
        save_checkpoint(ck, merged_path)
        merged, _ = load_model(merged_path)  # the merge file loads like any checkpoint
        models = dict(zip(labels, [load_model(p)[0] for p in paths] + [merged]))
        t0 = time.time()
        vcfg = dict(data_root=ctx["data"], batch_size=S["batch_size"], block_size=S["block_size"],
                    eval_iters=S["eval_iters"])
        vcfg, vdata = eval.domain_data(domains, vcfg, ctx["tok"], "cpu")
        domain_bpb = eval.evaluate_domains(models, vcfg, vdata, "cpu")  # the same batches for all
        bench = {label: (experts[label.split()[0]]["benchmarks"] if label.endswith("expert") else
                         benchmark(m, ctx["tok"], S, tasks)) for label, m in models.items()}
        result = dict(experiment=exp, scale=ctx["scale"], settings=S, expert_datasets=EXPERT_MIX,
                      **table_identity(merged),
                      domains=domain_bpb, benchmarks=bench, merged_params=merged.param_counts(),
                      experts={n: dict(params=e["params"], tokens=e["tokens"], train_seconds=e["train_seconds"],
                                       val=e["final"]["val"]) for n, e in experts.items()},
                      eval_seconds=round(time.time() - t0, 1))
        write_json(done, result)
    domain_bpb, bench = result["domains"], result["benchmarks"]
    head = ["model"] + [f"{d} bpb" for d in domains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        lines.append("| " + " | ".join([label] + [f"{domain_bpb[label][d]['bpb']:.4f}" for d in domains]) + " |")
    flat = {label: {f"{p}/{t}": r for p, tasks_ in bench[label].items() for t, r in tasks_.items()} for label in labels}
    md = ("### Merge: en+ru and en+zh experts vs their logit average\n\n" + "\n".join(lines) + "\n\n" +
          reproduce_report.bench_table(flat, labels))
    plot = reproduce_report.plot_merge(os.path.join(ctx["out"], f"{exp}.png"), domain_bpb, domains)
    return finish(ctx, exp, result, md, [plot])


# -----------------------------------------------------------------------------
# scaling up: GPU-hours of the papers' shapes, from FLOPs per token x tokens / (peak x MFU)

PEAK_H100 = dict(PEAK_FLOPS)["H100"]  # H100 SXM dense bf16 FLOP/s
# MFU is an assumption (no GPU was available to measure it): 30% for the 1024-wide models (head dim
# 32 and a 65,536-wide output head keep kernels small), 40% for the 4096-wide one (large GEMMs).
# GPU-hours scale as 1 / MFU: at 20% they are 1.5x the 30% figure.
SCALING = [  # (what, command, config file, extra overrides, script)
    ("335M frozen glyph (paper 1)", "torchrun --standalone --nproc_per_node=8 train.py config/paper_glyph_335m.py",
     "config/paper_glyph_335m.py", [], "train"),
    ("335M trainable embedding (paper 1)", "torchrun --standalone --nproc_per_node=8 train.py config/paper_trainable_335m.py",
     "config/paper_trainable_335m.py", [], "train"),
    ("335M frozen 16-bit code", "torchrun --standalone --nproc_per_node=8 train.py config/paper_glyph_335m.py "
     "--embedding=binary16 --table_dim=16 --out_dir=out-paper-binary16-335m",
     "config/paper_glyph_335m.py", ["--embedding=binary16", "--table_dim=16"], "train"),
    ("335M frozen glyph, unique table (ours)", "torchrun --standalone --nproc_per_node=8 train.py config/paper_glyph_335m.py "
     "--embedding=glyph_unique --out_dir=out-paper-unique-335m",
     "config/paper_glyph_335m.py", ["--embedding=glyph_unique"], "train"),
    ("9x1024 grown, 3 stages of 3 (paper 2)", "torchrun --standalone --nproc_per_node=8 grow.py config/grow_9x1024_3stages.py",
     "config/grow_9x1024_3stages.py", [], "grow"),
    ("9x1024 monolithic (paper 2)", "torchrun --standalone --nproc_per_node=8 train.py config/grow_monolithic_9x1024.py",
     "config/grow_monolithic_9x1024.py", [], "train"),
    ("6x4096 abs-bvv-style growth, LoRA 5-6 (paper 2)", "torchrun --standalone --nproc_per_node=8 grow.py config/grow_abs_4096.py",
     "config/grow_abs_4096.py", [], "grow"),
    ("16x1024 en+ru expert, 131,072 ids (paper 2)", "torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_ru_470m.py",
     "config/paper_expert_ru_470m.py", [], "train"),
    ("16x1024 en+zh expert, 131,072 ids (paper 2)", "torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_zh_470m.py",
     "config/paper_expert_zh_470m.py", [], "train"),
]


def scaling_estimate(path, overrides, script):
    """-> dict(params, trainable, tokens, flops, gpu_hours at the assumed MFU) of one full-scale run."""
    defaults = grow.DEFAULTS if script == "grow" else train.DEFAULTS
    cfg = configure(defaults, [os.path.join(REPO, path)] + overrides, verbose=False)
    mfu = 0.40 if cfg["d_model"] >= 4096 else 0.30
    vocab = get_tokenizer(cfg["tokenizer"]).vocab_size  # 65,536 or 131,072 ids: the head is a large part
    tpi = cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"]
    if script == "grow":
        stages, flops, tokens = grow.make_plan(cfg), 0.0, 0
        for st, m in zip(stages, grow.planned_models(cfg, stages, vocab)):
            flops += st["tokens"] * train.flops_per_token(m, cfg["block_size"])
            tokens += st["tokens"]
        counts = train.meta_model(cfg, vocab, stages[-1]["depth"]).param_counts()  # the final model, adapters merged
    else:
        m = train.meta_model(cfg, vocab, cfg["n_layer"])
        tokens = cfg["max_iters"] * tpi
        flops = tokens * train.flops_per_token(m, cfg["block_size"])
        counts = m.param_counts()
    return dict(params=counts["total"], trainable_last=counts["trainable"], tokens=tokens, flops=flops, mfu=mfu,
                gpu_hours=flops / (PEAK_H100 * mfu) / 3600)


def scaling(ctx):
    rows, lines = [], ["| run | command | parameters | tokens | training FLOPs | H100-hours (MFU) |",
                       "|---|---|---|---|---|---|"]
    for what, cmd, path, overrides, script in SCALING:
        e = scaling_estimate(path, overrides, script)
        rows.append(dict(run=what, command=cmd, config=path, **e))
        lines.append(f"| {what} | `{cmd}` | {e['params'] / 1e6:.1f}M | {e['tokens'] / 1e9:.1f}B | {e['flops']:.2e} | "
                     f"{e['gpu_hours']:,.0f} ({e['mfu']:.0%}) |")
    lines.append("| ru + zh merge (paper 2) | `python merge.py config/paper_merge_ru_zh.py` | 2 experts | 0 | "
                 "0 (no training) | evaluation only |")
    md = "\n".join(lines)
    result = dict(experiment="scaling", peak_flops=PEAK_H100, runs=rows)
    write_json(os.path.join(ctx["out"], "scaling.json"), result)
    print(md)
    return result


# -----------------------------------------------------------------------------

def semantics(ctx):
    """Where the semantics live (probe.py): neighbours, part of speech, en-ru/en-zh translation retrieval
    and CKA on the first seed's glyph and trainable runs and the merge experiment's two experts (the
    CPU-scale models that saw Russian and Chinese). Run after frozen_vs_trainable and merge."""
    import probe
    seed = ctx["S"]["seeds"][0]
    runs = {"glyph": f"glyph_s{seed}", "trainable": f"trainable_s{seed}", "expert ru": "expert_ru", "expert zh": "expert_zh"}
    ckpts = {label: run_checkpoint(os.path.join(ctx["runs"], name)) for label, name in runs.items()}
    missing = [p for p in ckpts.values() if not os.path.exists(p)]
    if missing:
        fail(f"semantics probes the runs of frozen_vs_trainable and merge: run those first ({missing[0]} is missing)")
    base = os.path.join(ctx["out"], "semantics")
    results = probe.semantics_report(ckpts, os.path.join(ctx["data"], "shakespeare"), base + ".md", base + ".png",
                                     out_json_=base + ".json")
    publish(ctx, [base + ".png"])
    log(f"semantics: wrote {base}.md, {base}.json, {base}.png")
    return results


# the four experiments, in the order `all` runs them: the name on the command line -> what runs it
EXPERIMENTS = {"frozen_vs_trainable": frozen_vs_trainable, "grow_vs_mono": grow_vs_mono, "merge": merge_experts,
               "unique": unique}
OTHER_COMMANDS = {"scaling": scaling, "semantics": semantics, "ablation": ablation}  # named on their own, not in `all`


def chosen_experiments(cfg):
    """Check every value before any work starts; -> the experiments to run, in order, each once."""
    names = list(EXPERIMENTS) + ["all"] + list(OTHER_COMMANDS)
    if not cfg.experiments:
        fail(f"no experiment given: expected one or more of {', '.join(names)} (e.g. python reproduce.py all)")
    for name in cfg.experiments:
        if name not in names:
            fail(f"experiment {name!r}: expected one or more of {', '.join(names)}")
    if cfg.scale not in SCALES:
        fail(f"scale={cfg.scale!r}: expected one of {', '.join(SCALES)}")
    if cfg.seeds < 0:
        fail(f"seeds={cfg.seeds}: expected 0 (all the scale's seeds) or N >= 1 (its first N)")
    if cfg.threads < 0:
        fail(f"threads={cfg.threads}: expected 0 (torch's default) or N >= 1")
    return list(dict.fromkeys(e for name in cfg.experiments for e in (EXPERIMENTS if name == "all" else [name])))


def main(argv):
    cfg = configure(DEFAULTS, argv, verbose=False, docs=key_docs(__file__), prog="reproduce.py",
                    positional="experiments")
    todo = chosen_experiments(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = cfg.out or os.path.join(REPO, "out", "reproduce", cfg.scale)
    assets_dir = cfg.assets or (os.path.join(REPO, "assets") if cfg.scale == "cpu" else "none")
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    S = dict(SCALES[cfg.scale])
    if cfg.seeds:
        S["seeds"] = S["seeds"][:cfg.seeds]
    ctx = dict(scale=cfg.scale, S=S, out=out_dir, runs=os.path.join(out_dir, "runs"),
               data=os.path.join(out_dir, "data"), tok=get_tokenizer("bvv241-2-3"),
               assets=None if assets_dir == "none" else assets_dir, t0={})
    torch.manual_seed(0)
    runners = {**EXPERIMENTS, **OTHER_COMMANDS}
    results = {}
    for exp in todo:
        ctx["t0"][exp] = time.time()
        log(f"== {exp} (scale {cfg.scale}) -> {out_dir}")
        results[exp] = runners[exp](ctx)
    return results


if __name__ == "__main__":
    script_main("reproduce.py", main)
