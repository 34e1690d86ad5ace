"""
What results become: seed statistics, the plain-words verdicts, markdown tables and plots of
reproduce.py's result dicts, and grow.py's depth curve. Nothing here trains or loads a model, so the
experiments in reproduce.py and the growth in grow.py read top to bottom (run, collect, report) and
the way results are summarised can be read, and tested, on its own.
"""
import math
import os
import re

import numpy as np

from checkpoint import atomic_write, finished_stages, growth_reports
from common import fail


def plural(n, word):
    """'1 seed', '3 seeds', '1 layer': legends and titles in grammatical English."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def growth_text(growth):
    """[2, 2, 2] -> '3 stages of 2 layers'; [1] -> '1 stage of 1 layer'; [3, 2] -> '2 stages (3+2 layers)'."""
    if len(set(growth)) == 1:
        return f"{plural(len(growth), 'stage')} of {plural(growth[0], 'layer')}"
    return f"{plural(len(growth), 'stage')} ({'+'.join(map(str, growth))} layers)"


def loss_text(loss, bpb):
    """One labelled validation figure, e.g. 'loss 2.3104 nats, 1.872 bits/byte'."""
    return f"loss {loss:.4f} nats, {bpb:.3f} bits/byte"


# -----------------------------------------------------------------------------
# seed statistics and the plain-words comparison

def spread(values):
    """mean, sample std (ddof 1; 0 for one value), min, max."""
    v = np.asarray(values, dtype=float)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, min=float(v.min()),
                max=float(v.max()), n=len(v), values=[float(x) for x in v])


def summarise_arm(results):
    """Seed statistics of one arm: final bpb (mixture and per dataset) and every benchmark figure."""
    out = dict(val_bpb=spread([r["final"]["val_bpb"] for r in results]),
               val_loss=spread([r["final"]["val_loss"] for r in results]),
               val={n: spread([r["final"]["val"][n] for r in results]) for n in results[0]["final"]["val"]},
               benchmarks={}, params=results[0]["params"], train_seconds=spread([r["train_seconds"] for r in results]))
    for protocol, tasks in results[0]["benchmarks"].items():
        for t, r0 in tasks.items():
            out["benchmarks"][f"{protocol}/{t}"] = dict(spread([r["benchmarks"][protocol][t]["mean"] for r in results]),
                                                      metric=r0["metric"], items=r0["n"])
    return out


T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]  # Student t, 97.5%, df 1..10


def verdict(a, b, label_a, label_b):
    """Is arm a's final val bpb different from arm b's beyond the seed noise? The runs are paired by
    seed (same seed = same initial weights of the shared parts, same batches, same validation
    batches), so the test is on the per-seed differences: their mean against t(97.5%, n-1) x its
    standard error. With one seed there is no noise estimate and no verdict."""
    va, vb = a["val_bpb"]["values"], b["val_bpb"]["values"]
    diffs = np.array(va) - np.array(vb)
    diff = float(diffs.mean())
    per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
    if len(diffs) < 2 or len(va) != len(vb):
        return dict(diff=diff, se=None, diffs=diffs.tolist(),
                    text=f"{label_a} - {label_b} = {diff:+.4f} bits/byte (one seed: no spread, no verdict)")
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    t = T975[len(diffs) - 2] if len(diffs) - 1 <= len(T975) else 1.96
    if abs(diff) <= t * se:
        word = "no measurable difference"
    else:
        word = f"{label_a} {'better (lower bits/byte)' if diff < 0 else 'worse (higher bits/byte)'}"
    return dict(diff=diff, se=se, diffs=diffs.tolist(), t=t,
                text=f"{word}: {label_a} - {label_b} = {diff:+.4f} bits/byte (per seed {per_seed}; "
                     f"95% interval ±{t * se:.4f}, paired t over {len(diffs)} seeds)")


# -----------------------------------------------------------------------------
# markdown tables

def fmt_spread(s, digits=4):
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def arms_table(summaries, labels):
    """One row per arm with the seed mean ± std of the final validation figures; then the
    benchmarks (fixture items) with one column per arm. labels: arm -> its name in words."""
    first = next(iter(summaries.values()))
    names = list(first["val"])
    head = ["arm", "trainable params", "val loss (mix, nats)", "val bpb (mix)"] + [f"{n} bpb" for n in names] + \
        ["train s / seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in summaries.items():
        cells = [labels[arm], f"{s['params']['trainable'] / 1e6:.2f}M", fmt_spread(s["val_loss"]),
                 fmt_spread(s["val_bpb"])] + [fmt_spread(s["val"][n]) for n in names] + [f"{s['train_seconds']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    bench = {arm: s["benchmarks"] for arm, s in summaries.items()}
    return "\n".join(lines) + "\n\n" + bench_table(bench, [labels[a] for a in summaries])


def bench_table(bench, labels):
    """Rows = protocol/task (items), columns = models; cells = mean (± seed std) in %."""
    keys = list(next(iter(bench.values())))
    lines = ["| benchmark (fixture items) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in keys:
        b0 = next(iter(bench.values()))[k]
        cells = [fmt_spread(b[k], 1) if "std" in b[k] else f"{b[k]['mean']:.1f}" for b in bench.values()]
        lines.append(f"| {k} ({b0.get('items', b0.get('n'))}, {b0['metric']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# plots (matplotlib is optional: each returns None without it)
#
# The untrained model's point (step 0, ~log2(65,536) / bytes-per-token bits/byte) is left out of the
# curves: drawn, it would set the scale and flatten everything the comparison is about. The axes
# then fit what is drawn, with no offset notation, so a short (toy) run reads as well as a long one.

def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def trained(points):
    return [p for p in points if p["tokens"] > 0]


def finish_axes(ax, xlabel, ylabel):
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.margins(x=0.04, y=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_arms(path, runs_by_arm, labels, title):
    """Validation bits per byte against training tokens: seed mean, and the min-max band over seeds."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, runs in runs_by_arm.items():
        curves = [trained(r["curve"]) for r in runs]
        x = np.array([p["tokens"] for p in curves[0]])
        for ax, key in zip(axes, (None, "sft_qa")):
            ys = np.array([[p["val_bpb"] if key is None else p["val"][key] for p in c] for c in curves])
            line, = ax.plot(x, ys.mean(0), "-o", ms=3, label=f"{labels[arm]} ({plural(len(runs), 'seed')})")
            ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    axes[0].set_title("validation, training mixture")
    axes[1].set_title("validation, QA part (sft_qa)")
    for ax in axes:
        finish_axes(ax, "training tokens", "bits per byte")
    fig.suptitle(title, fontsize=10)
    return save(plt, fig, path)


def plot_grow(path, grown, mono, growth):
    """Validation bits per byte against training FLOPs; a faint line marks each stage's end."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    stages = sorted({p["stage"] for p in grown["curve"]})
    pts = [p for p in grown["curve"] if p["stage"] > 1 or p["tokens"] > 0]
    ax.plot([p["flops"] for p in pts], [p["val_bpb"] for p in pts], "-o", ms=3, color="C0",
            label=f"grown, {growth_text(growth)}")
    for s in stages[:-1]:
        ax.axvline(max(p["flops"] for p in grown["curve"] if p["stage"] == s), color="C0", alpha=0.15)
    mpts = trained(mono["curve"])
    ax.plot([p["flops"] for p in mpts], [p["val_bpb"] for p in mpts], "-o", ms=3, color="C1",
            label=f"monolithic, {plural(sum(growth), 'layer')}")
    finish_axes(ax, "training FLOPs (matmuls; frozen lower blocks: forward only)", "validation bits per byte")
    ax.set_title("Layer-wise growth vs monolithic training, same tokens", fontsize=10)
    return save(plt, fig, path)


def plot_merge(path, domain_bpb, domains):
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4))
    labels = list(domain_bpb)
    w = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = np.arange(len(domains)) + (k - (len(labels) - 1) / 2) * w
        ax.bar(xs, [domain_bpb[label][d]["bpb"] for d in domains], w, label=label)
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylim(0, 1.2 * max(domain_bpb[label][d]["bpb"] for label in labels for d in domains))  # room for the legend
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=len(labels))
    ax.set_title("Experts and their logit-average merge, per domain", fontsize=10)
    return save(plt, fig, path)


# -----------------------------------------------------------------------------
# grow.py's depth curve: the metrics of every stage

EVAL_FILE = re.compile(r"eval_stage_(\d+)_(\w+)\.json$")  # eval.py's default name for out_dir/stage_{i}.pt


def stage_scores(out_dir):
    """{stage: {'task metric (protocol)': mean}} from the eval.py result files of the stages in out_dir."""
    from eval import read_result  # eval.py's check of a result file (one line naming a malformed one)
    scores = {}
    for name in sorted(os.listdir(out_dir)):
        m = EVAL_FILE.match(name)
        if m:
            for task, t in read_result(os.path.join(out_dir, name))["tasks"].items():
                if t["metric"] != "bpb" and t.get("mean") is not None:
                    unit = {"acc": " %", "bleu": " BLEU"}.get(t["metric"], "")
                    scores.setdefault(int(m.group(1)), {})[f"{task} {t['metric']}{unit} ({m.group(2)})"] = t["mean"]
    return scores


def growth_table(reports):
    """grow.py's summary at the end: one line per stage."""
    lines = ["stage | layers | trainable | frozen | iters | tokens | val loss | bits/byte"]
    for r in reports:
        lines.append(f"{r['stage']} | {r['layers']}{' +LoRA' if r['lora'] else ''} | {r['trainable'] / 1e6:.1f}M | "
                     f"{r['frozen'] / 1e6:.1f}M | {r['iters']} | {r['tokens']:,} | {r['val_loss']:.4f} | {r['val_bpb']:.4f}")
    return "\n".join(lines)


def redraw_depth_curve(out_dir, n_stages):
    """grow.py --curve_only: the depth curve of the finished stages in out_dir (after evaluating them)."""
    reports = growth_reports(out_dir, finished_stages(out_dir, n_stages))
    if not reports:
        fail(f"{out_dir}: no finished stage (stage_1.pt and its line in grow_log.jsonl): nothing to draw")
    for path in depth_curve(out_dir, reports):
        print(f"depth curve: {path}")
    return reports


def depth_curve(out_dir, reports):
    """grow.py's depth curve: out_dir/depth_curve.md (one row per stage: depth, LoRA, tokens, val loss, bits per byte, and the
    eval.py scores of the stage's checkpoint) and depth_curve.png (the same by stage; needs matplotlib).
    -> the paths written."""
    if not reports:
        return []
    scores = stage_scores(out_dir)
    cols = list(dict.fromkeys(k for v in scores.values() for k in v))
    lines = ["| stage | new layers | depth | LoRA | tokens | val loss (nats/token) | val bits/byte | "
             + "".join(f"{c} | " for c in cols), "|" + "---|" * (7 + len(cols))]
    for r in reports:
        got = scores.get(r["stage"], {})
        lines.append(f"| {r['stage']} | {r['layers']} | {r['depth']} | {'yes' if r['lora'] else 'no'} | {r['tokens']:,} | "
                     f"{r['val_loss']:.4f} | {r['val_bpb']:.4f} | " + "".join(
                         f"{got[c]:.2f} | " if c in got else "- | " for c in cols))
    lines += ["", "val loss and bits/byte: train.py's last evaluation of each stage (the same validation batches "
                  "for every stage); scores: eval.py result files eval_stage_<i>_<protocol>.json in this folder."]
    md = os.path.join(out_dir, "depth_curve.md")
    with atomic_write(md) as f:
        f.write("\n".join(line.rstrip() for line in lines) + "\n")
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: depth_curve.png not drawn (pip install matplotlib)")
        return [md]
    x = [r["stage"] for r in reports]
    ticks = [f"{r['stage']}\n{r['depth']} layers" + ("\n+LoRA" if r["lora"] else "") for r in reports]
    panels = [("val loss (nats/token)", [r["val_loss"] for r in reports]),
              ("val bits per byte", [r["val_bpb"] for r in reports])]
    fig, axes = plt.subplots(1, len(panels) + bool(cols), figsize=(4.5 * (len(panels) + bool(cols)), 4), squeeze=False)
    for ax, (label, y) in zip(axes[0], panels):
        ax.plot(x, y, marker="o", label=label)
    if cols:
        for c in cols:
            pts = [(r["stage"], scores[r["stage"]][c]) for r in reports if c in scores.get(r["stage"], {})]
            axes[0][-1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
    for ax, label in zip(axes[0], [p[0] for p in panels] + ["benchmark score (units in the legend)"] * bool(cols)):
        ax.set_xticks(x, ticks)
        ax.set_xlabel("stage (depth after it)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"depth curve: {out_dir}")
    png = os.path.join(out_dir, "depth_curve.png")
    with atomic_write(png, "wb") as f:
        save(plt, fig, f)
    return [md, png]


USAGE = """usage: python reproduce.py EXPERIMENT ... (python reproduce.py --help lists them)
reproduce_report.py has no command line of its own: reproduce.py calls it after each experiment, and
its tables and plots land in out/reproduce/<scale>/<experiment>.md and .png (docs/results.md)."""

if __name__ == "__main__":  # run by hand: say where the reports come from (exit 2 for any other argument)
    import sys
    asked = set(sys.argv[1:]) <= {"-h", "--help"}
    print(USAGE, file=sys.stdout if asked else sys.stderr)
    sys.exit(0 if asked else 2)
