"""
Grow a deep model layer by layer on the frozen substrate (docs/design.md §5, "Growing
Transformers"): train k blocks, freeze them, stack k new blocks ON TOP, train only the new blocks,
the (reused, never re-initialised) output head and the final LayerNorm, repeat. Optionally, from a
given stage on, the earlier blocks get LoRA adapters that train with the new blocks and are merged
into the base weights at the end of the stage (the abs-bvv-5/6 recipe); or `stage_lora` names the
LoRA stages one by one. A LoRA stage may add no block (growth entry 0): it adapts the whole stack
with LoRA only, training the adapters, the final LayerNorm and the head, and merges them; placed
between growth stages, these are the interleaved LoRA stages of the growth paper's v3
(config/grow_v3_binary16_16x1024.py).

Every stage is trained by train.py's own loop (train.train(cfg, model=...)): same data sampler,
optimizer, schedule, logging, checkpointing and exact resume. This file only builds the stage's
model (what is new, what is frozen, which adapters) and keeps the books between stages.

$ python grow.py config/grow_shakespeare_tiny.py             # the whole schedule, one command
$ python grow.py config/grow_shakespeare_tiny.py             # again: resumes (stage, iteration) or reports
$ python grow.py config/grow_9x1024_3stages.py --plan_only   # per-stage parameter counts, no data needed

Writes out_dir/stage_{i}.pt (a plain 'gpt' checkpoint after stage i: sample.py / eval.py load it),
out_dir/grow_log.jsonl (one line per stage: parameter counts, val loss, bits per byte, time),
out_dir/stage_{i}/log.jsonl (train.py's log of that stage), out_dir/grow_schedule.json, and the
depth curve: out_dir/depth_curve.md (a table) and depth_curve.png (a plot) of val loss and bits per
byte by stage, plus the score of every eval.py result file of a stage found in out_dir
(python eval.py --ckpt=out_dir/stage_2.pt writes out_dir/eval_stage_2_paper.json);
`--curve_only` redraws them after such evaluations, training nothing.
While stage i runs, its resumable checkpoint (with optimizer) is out_dir/stage_{i}/ckpt.pt; it is
deleted once stage_{i}.pt is written.

Why the frozen prefix is cheap: every parameter below the first new block has requires_grad=False
and the input (a frozen table lookup) needs no gradient, so autograd records nothing for those
blocks: no graph, no stored activations, no backward, exactly as if they ran under torch.no_grad().
tests/test_grow.py checks that zero saved tensors come from frozen blocks; bench/bench_grow.py measures it.
"""
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

import lora
import reproduce_report
import train
from checkpoint import (append_line, atomic_write, check_tokenizer, growth_reports, growth_stages_done, hold_out_dir,
                        make_out_dir, model_checkpoint, model_from_checkpoint, read_checkpoint, run_checkpoint,
                        save_checkpoint)
from common import fail, script_main, setup_runtime
from configurator import configure, defaults_from, key_docs
from glyph_embed import check_same_substrate

# -----------------------------------------------------------------------------
# grow.py's own config keys; train.py's keys apply as well (data, batch, optimizer, model width)
growth = [2, 2]  # new blocks per stage, bottom to top: [3, 3, 3] = the 9-layer study; 0 = a LoRA-only stage
grow_from = ""  # a checkpoint with N layers to grow on top of; "" = stage 1 trains the first blocks from scratch
stage_iters = []  # iterations per stage; [] = max_iters for every stage
stage_tokens = []  # or tokens per stage (rounded up to whole iterations); set one of the two
stage_lr = []  # peak learning rate per stage; [] = learning_rate; min_lr scales with it
new_block_init = "zero_proj"  # zero_proj: new blocks start as identity (grown model = smaller model) | random
lora_from_stage = 0  # 1-based stage from which earlier blocks get LoRA adapters; 0 = never
stage_lora = []  # or per stage, 1 = a LoRA stage, 0 = not ([0, 0, 1, 0, 1]: interleaved LoRA stages); [] = lora_from_stage
lora_rank = 8  # rank of each adapter (its update B @ A is out x rank times rank x in)
lora_alpha = 16.0  # the adapter's update is scaled by lora_alpha / lora_rank
lora_targets = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]  # the linears of each earlier block that get adapters
plan_only = False  # print the stages and their parameter counts (built on the meta device) and exit
curve_only = False  # rewrite out_dir/depth_curve.{md,png} from its finished stages and their eval.py results, and exit
# -----------------------------------------------------------------------------
_OWN = defaults_from(globals())
# init_from / lr_decay_iters / eval_only are set per stage by grow.py; n_layer = the final depth
# (0 = whatever the schedule adds up to; if set, the schedule must add up to it)
DEFAULTS = {**{k: v for k, v in train.DEFAULTS.items() if k not in ("init_from", "lr_decay_iters", "eval_only", "plan")},
            "out_dir": "out-grow", "n_layer": 0, **_OWN}

# what a stage's result depends on: a re-run with any of these changed is refused, not resumed
SCHEDULE_KEYS = ("growth", "grow_from", "new_block_init", "lora_from_stage", "lora_rank", "lora_alpha",
                 "lora_targets", "tokenizer", "embedding", "table_dim", "table_path", "d_model", "n_head",
                 "bias", "rope_base", "dropout", "datasets", "batch_size", "block_size",
                 "gradient_accumulation_steps", "seed", "warmup_iters", "min_lr", "weight_decay",
                 "beta1", "beta2", "grad_clip", "decay_lr")


# -----------------------------------------------------------------------------
# the schedule

def _per_stage(cfg, key, n, default):
    """A per-stage list from the config: [] -> [default] * n; otherwise exactly n positive numbers."""
    v = cfg[key]
    if not v:
        return [default] * n
    if len(v) != n or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in v):
        fail(f"{key}={v!r}: expected {n} positive numbers, one per stage of growth={cfg['growth']}")
    return list(v)


def below(st):
    """Layers under a stage's new blocks: the ones it freezes (and adapts with LoRA in a LoRA stage)."""
    return st["depth"] - len(st["new"])


def make_plan(cfg, n_base=0):
    """-> list of stages: dict(stage (1-based), new (block indices, [] in a LoRA-only stage), depth,
    iters, layers, tokens, lr, min_lr, lora). n_base: layers of the grow_from checkpoint (0 = grow from nothing)."""
    g = cfg["growth"]
    if not g or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in g):
        fail(f"growth={g!r}: expected a non-empty list of whole numbers (new blocks per stage; 0 = a LoRA-only "
             f"stage), e.g. [3, 3, 3]")
    depth = n_base + sum(g)
    if cfg["n_layer"] and cfg["n_layer"] != depth:
        fail(f"growth={g} adds {sum(g)} layers to the {n_base} of "
             f"{cfg['grow_from'] or 'nothing'} = {depth}, but n_layer={cfg['n_layer']}")
    n = len(g)
    if cfg["stage_iters"] and cfg["stage_tokens"]:
        fail("stage_iters and stage_tokens are both set: give the length of each stage one way")
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    if cfg["stage_tokens"]:
        iters = [math.ceil(t / tokens_per_iter) for t in _per_stage(cfg, "stage_tokens", n, 0)]
    else:
        iters = _per_stage(cfg, "stage_iters", n, cfg["max_iters"])
        if any(int(i) != i for i in iters):
            fail(f"stage_iters={cfg['stage_iters']!r}: expected whole numbers of iterations")
        iters = [int(i) for i in iters]
    if min(iters) < 1:
        fail(f"max_iters={cfg['max_iters']}: every stage needs at least one iteration")
    lrs = [float(x) for x in _per_stage(cfg, "stage_lr", n, cfg["learning_rate"])]
    lf, sl = cfg["lora_from_stage"], cfg["stage_lora"]
    if lf < 0 or lf > n:
        fail(f"lora_from_stage={lf}: expected 0 (no LoRA) or a stage number 1..{n}")
    if lf and sl:
        fail(f"lora_from_stage={lf} and stage_lora={sl!r} are both set: say which stages have LoRA one way")
    if sl and (len(sl) != n or any(x not in (0, 1) for x in sl)):
        fail(f"stage_lora={sl!r}: expected {n} flags (1 = a LoRA stage, 0 = not), one per stage of growth={g}")
    with_lora = [bool(x) for x in sl] if sl else [bool(lf) and i + 1 >= lf for i in range(n)]
    if with_lora[0] and n_base == 0:
        fail(f"{'lora_from_stage=1' if lf else 'stage_lora[0]=1'} but stage 1 grows from nothing: there are no "
             f"earlier blocks to adapt")
    if any(with_lora):
        bad = [t for t in cfg["lora_targets"] if t not in lora.TARGETS]
        if bad or not cfg["lora_targets"]:
            fail(f"lora_targets={cfg['lora_targets']!r}: {bad[0] if bad else 'empty'} is not a linear layer "
                 f"of a block; expected some of {', '.join(lora.TARGETS)}")
        if cfg["lora_rank"] < 1 or cfg["lora_alpha"] <= 0:
            fail(f"lora_rank={cfg['lora_rank']}, lora_alpha={cfg['lora_alpha']}: expected rank >= 1 and alpha > 0")
    for i, k in enumerate(g):
        if k == 0 and not with_lora[i]:
            fail(f"growth={g}: stage {i + 1} adds no block and is not a LoRA stage, so it would train only the head; "
                 f"a stage with 0 new blocks needs LoRA (lora_from_stage <= {i + 1}, or stage_lora[{i}] = 1)")
    if cfg["new_block_init"] not in ("zero_proj", "random"):
        fail(f"new_block_init={cfg['new_block_init']!r}: expected 'zero_proj' or 'random'")
    stages, top = [], n_base
    for i, k in enumerate(g):
        stages.append(dict(stage=i + 1, new=list(range(top, top + k)), depth=top + k, iters=iters[i],
                           layers=f"{top + 1}-{top + k}" if k else "none",  # the new layers, 1-based
                           tokens=iters[i] * tokens_per_iter, lr=lrs[i],
                           min_lr=cfg["min_lr"] * lrs[i] / cfg["learning_rate"],
                           lora=with_lora[i]))
        top += k
    return stages


def schedule_of(cfg, stages, base_fp):
    """Everything a stage's result depends on, as plain JSON (compared on re-runs)."""
    s = {k: cfg[k] for k in SCHEDULE_KEYS}
    s["datasets"] = dict(s["datasets"])
    s["stages"] = [{k: st[k] for k in ("depth", "iters", "lr", "min_lr", "lora")} for st in stages]
    s["grow_from_table"] = base_fp
    return json.loads(json.dumps(s))  # tuples -> lists, so it compares equal to what was read back


def stage_config(cfg, st, out_dir, resume):
    """train.py's config for one stage: its depth, length, learning rate, own data seed and folder.
    The seed differs per stage so each stage trains on fresh batches (train.py's batches are a
    function of (seed, iteration)); validation batches do not depend on the seed (data.common.VAL_SEED),
    so every stage and every evaluation of the growth scores the same batches."""
    return {**cfg, "n_layer": st["depth"], "max_iters": st["iters"], "lr_decay_iters": st["iters"],
            "learning_rate": st["lr"], "min_lr": st["min_lr"], "seed": cfg["seed"] + st["stage"] - 1,
            "out_dir": os.path.join(out_dir, f"stage_{st['stage']}"),
            "init_from": "resume" if resume else "scratch", "overwrite": True, "eval_only": False}


# -----------------------------------------------------------------------------
# building a stage's model

def stack_blocks(model, st, cfg):
    """Append the stage's new blocks on top of model (in place) and return it. new_block_init 'random':
    GPT's own init; 'zero_proj': the same with zero residual output projections."""
    if len(model.transformer.h) != below(st):
        raise RuntimeError(f"stage {st['stage']} expects {below(st)} layers below it, the model has "
                           f"{len(model.transformer.h)}")
    model.config = dataclasses.replace(model.config, n_layer=st["depth"], dropout=cfg["dropout"])
    torch.manual_seed(cfg["seed"] + 1000 * st["stage"])  # new-block init is reproducible per stage
    for _ in st["new"]:
        block = model.new_block()  # GPT's own init at the new depth
        if cfg["new_block_init"] == "zero_proj":
            # both residual output projections zero: the block adds nothing at first, so the grown model
            # computes exactly what the smaller one did (LLaMA-Pro style), and gradients still flow
            # (c_proj gets them at once, the rest from the next step on)
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.zeros_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        model.transformer.h.append(block)
    for m in model.modules():  # the stage's dropout (config key) applies to old blocks too
        if isinstance(m, nn.Dropout):
            m.p = cfg["dropout"]
        elif isinstance(getattr(m, "dropout", None), float):  # attention's own dropout probability
            m.dropout = cfg["dropout"]
    return model


def prepare_stage(model, st, cfg, first_from_scratch=False):
    """Freeze everything, then unfreeze the new blocks, the final norm and the head (and a
    trainable embedding in a stage 1 grown from nothing: it has nothing to be frozen from);
    attach LoRA adapters to all earlier blocks in a LoRA stage."""
    model.requires_grad_(False)
    for i in st["new"]:
        model.transformer.h[i].requires_grad_(True)
    model.transformer.ln_f.requires_grad_(True)
    model.lm_head.requires_grad_(True)
    if first_from_scratch and cfg["embedding"] == "trainable":
        model.transformer.wte.requires_grad_(True)
    if st["lora"]:
        lora.attach(model, range(below(st)), cfg["lora_targets"], cfg["lora_rank"], cfg["lora_alpha"])
    return model


def planned_models(cfg, stages, vocab_size, from_nothing=True):
    """Every stage's model on the meta device (train.meta_model), prepared as the real run prepares it.
    from_nothing: stage 1 trains the first blocks (no grow_from)."""
    out = []
    for st in stages:
        m = train.meta_model(cfg, vocab_size, st["depth"])
        with torch.device("meta"):
            prepare_stage(m, st, cfg, first_from_scratch=st["stage"] == 1 and from_nothing)
        out.append(m)
    return out


def planned_counts(cfg, stages, vocab_size, from_nothing=True):
    """-> every stage's param_counts(), from planned_models."""
    return [m.param_counts() for m in planned_models(cfg, stages, vocab_size, from_nothing)]


# -----------------------------------------------------------------------------
# checks and bookkeeping

def tensor_digest(t):
    return hashlib.sha256(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def frozen_digests(model):
    """sha256 of every frozen parameter (LoRA-wrapped bases included): compared after the stage."""
    return {n: tensor_digest(p) for n, p in model.named_parameters() if not p.requires_grad}


def check_lower_untouched(model, before, st):
    after = frozen_digests(model)
    changed = [n for n in before if after.get(n) != before[n]]
    if changed:
        raise RuntimeError(f"stage {st['stage']}: frozen parameters changed during training: {changed[:3]}")


def probe_tokens(model, cfg):
    """One fixed row of token ids for lora.merge_and_check (any input shows a change in the logits)."""
    g = torch.Generator().manual_seed(cfg["seed"])
    ids = torch.randint(0, model.config.vocab_size, (1, cfg["block_size"]), generator=g)
    return ids.to(model.lm_head.weight.device)


def load_base(cfg, tok):
    """grow_from checkpoint -> model, after checking it fits the config (one-line errors)."""
    path = cfg["grow_from"]
    ckpt = read_checkpoint(path, "cpu")
    if ckpt["kind"] != "gpt":
        fail(f"grow_from={path}: a {ckpt['kind']!r} checkpoint; only single models (kind 'gpt') can grow")
    check_tokenizer(ckpt, tok, f"grow_from={path}")
    model = model_from_checkpoint(ckpt, "cpu", path)  # verifies the stored table against its fingerprint
    c = model.config
    for key in ("embedding", "d_model", "n_head", "bias", "rope_base"):
        if getattr(c, key) != cfg[key]:
            fail(f"grow_from={path}: {key}={getattr(c, key)!r}, the config says {key}={cfg[key]!r}")
    if c.embedding != "trainable":  # the config's frozen table (built or loaded as train.py does)
        want = train.build_model({**cfg, "n_layer": 1}, tok)
        # one substrate: same key, equal within glyph_embed.SUBSTRATE_TOL (else a one-line ValueError)
        check_same_substrate(model.table_info, model.frozen_table, want.table_info, want.frozen_table,
                             f"grow_from={path}: its frozen table differs from the config's table "
                             f"(embedding={cfg['embedding']}, table_dim={cfg['table_dim']})")
    return model


# -----------------------------------------------------------------------------
# the schedule, stage by stage

def grow(cfg):
    """Run (or resume) the whole schedule. -> list of per-stage report dicts."""
    cfg = {**DEFAULTS, **cfg}
    from unicode_tokenizer import get_tokenizer
    tok = get_tokenizer(cfg["tokenizer"])
    base = load_base(cfg, tok) if cfg["grow_from"] else None
    n_base = base.config.n_layer if base is not None else 0
    stages = make_plan(cfg, n_base)
    if cfg["plan_only"]:
        return print_plan(cfg, stages, tok.vocab_size, base)
    if cfg["curve_only"]:
        return reproduce_report.redraw_depth_curve(cfg["out_dir"], len(stages))
    schedule = schedule_of(cfg, stages, base.table_info.get("fingerprint") if base is not None else None)
    out_dir = cfg["out_dir"]
    n_done = growth_stages_done(out_dir, schedule, len(stages))
    master = setup_runtime(cfg["device"], cfg["dtype"]).master

    # -- checked; from here on we write to out_dir (never over an existing stage_{i}.pt) --
    if master:
        make_out_dir(out_dir)
        sched_path = os.path.join(out_dir, "grow_schedule.json")
        if not n_done:  # (re)written until a stage is done; compared from then on
            with atomic_write(sched_path) as f:
                json.dump(schedule, f, indent=1)
    reports = growth_reports(out_dir, range(1, n_done + 1))
    model = base
    if 0 < n_done < len(stages):
        model = model_from_checkpoint(read_checkpoint(os.path.join(out_dir, f"stage_{n_done}.pt")), "cpu")
        print(f"stages 1..{n_done} of {len(stages)} already done in {out_dir}")
    for st in stages[n_done:]:
        i = st["stage"]
        work = run_checkpoint(os.path.join(out_dir, f"stage_{i}"))
        resume = os.path.exists(work)
        if model is None:  # stage 1 from nothing: train.py's own fresh model (table, init, seed)
            model = train.build_model({**cfg, "n_layer": st["depth"]}, tok)
        else:
            stack_blocks(model, st, cfg)
        prepare_stage(model, st, cfg, first_from_scratch=(i == 1 and base is None))
        counts = model.param_counts()
        if master:
            print(f"== stage {i}/{len(stages)}: " + (f"layers {st['layers']} new" if st["new"] else "no new layer")
                  + (f" + LoRA on layers 1-{below(st)}" if st["lora"] else "") + "; trainable "
                  f"{counts['trainable'] / 1e6:.1f}M, frozen {counts['frozen'] / 1e6:.1f}M; {st['iters']} iters, "
                  f"lr {st['lr']:g}{'; resuming' if resume else ''}")
        digests = frozen_digests(model)
        t0 = time.time()
        stage_info = dict(stage=i, stages=len(stages), growth=cfg["growth"], depth=st["depth"],
                          new_blocks=st["new"], lora=st["lora"], schedule=schedule)
        # a LoRA stage's working checkpoint holds adapter weights: mark it so nothing loads it as a plain GPT
        extra = dict(grow=stage_info, **(dict(kind="grow_lora_stage") if st["lora"] else {}))
        # ev: train.py's last evaluation of the stage's model (printed as its "step N: val loss"), the
        # stage's one validation figure; merging LoRA adapters afterwards changes no logit beyond 1e-4
        scfg = stage_config(cfg, st, out_dir, resume)
        ev = train.train(scfg, model=model, ckpt_path=work, ckpt_extra=extra)
        seconds = time.time() - t0
        check_lower_untouched(model, digests, st)  # before merging: the adapters' bases too
        merge_diff = lora.merge_and_check(model, probe_tokens(model, cfg)) if st["lora"] else None
        rep = dict(stage=i, layers=st["layers"], depth=st["depth"], lora=st["lora"],
                   trainable=counts["trainable"], frozen=counts["frozen"], iters=st["iters"], tokens=st["tokens"],
                   val_loss=ev["val_loss"], val_bpb=ev["val_bpb"], seconds=round(seconds, 1),
                   lower_blocks_bit_identical=True, lora_merge_max_logit_diff=merge_diff, resumed=resume)
        if master:
            save_checkpoint(model_checkpoint(model, tok, iter_num=st["iters"], config=stage_config(cfg, st, out_dir, False),
                                             grow=dict(stage_info, report=rep)),
                            os.path.join(out_dir, f"stage_{i}.pt"))
            append_line(os.path.join(out_dir, "grow_log.jsonl"), json.dumps(rep) + "\n")
            if os.path.exists(work):
                os.remove(work)  # the optimizer state is not needed any more
            print(f"== stage {i} done: {seconds:.0f}s -> {os.path.join(out_dir, f'stage_{i}.pt')}")
        reports.append(rep)
    if master:
        print(reproduce_report.growth_table(reports))
        for path in reproduce_report.depth_curve(out_dir, reports):
            print(f"depth curve: {path}")
        print(f"the grown model: {os.path.join(out_dir, f'stage_{len(stages)}.pt')} (sample.py / eval.py --ckpt)")
    return reports


def print_plan(cfg, stages, vocab_size, base):
    """--plan_only: each stage's parameters, memory and GPU-hours (plan.py), from its model built on the
    meta device and prepared as the real run prepares it."""
    import plan
    models = planned_models(cfg, stages, vocab_size, from_nothing=base is None)
    plan.plan_stages(cfg, stages, models, [train.flops_per_token(m, cfg["block_size"]) for m in models])
    return [dict(st, **m.param_counts()) for st, m in zip(stages, models)]


def main(argv):
    cfg = configure(DEFAULTS, argv, docs=key_docs(train.__file__, __file__), prog="grow.py")
    try:
        with hold_out_dir(cfg["out_dir"]):  # one growth at a time in an out_dir
            grow(cfg)
    except KeyboardInterrupt:  # Ctrl-C: where things stand, in one line (as train.py says it)
        print(f"interrupted; finished stages and the running stage's last checkpoint are kept in {cfg['out_dir']}: "
              f"resume with the same command, python grow.py {' '.join(argv)}", file=sys.stderr)
        raise


if __name__ == "__main__":
    script_main("grow.py", main)
