"""plan.py: the memory model against the measured peak on CPU, its parameter counts against the built
model, and --plan on every training config."""
import contextlib
import glob
import io
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grow  # noqa: E402
import plan  # noqa: E402
import train  # noqa: E402
from configurator import read_config_file  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def _status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _measure(V, d, L, B, T, embedding):
    """Run in a fresh process (see _measured): the peak resident memory one steady-state training step
    adds on top of the weights and AdamW state, next to the planner's grads + activations + head."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conf = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, d_model=d, embedding=embedding)
    model = GPT(conf, None if embedding == "trainable" else torch.randn(V, d))
    opt = train.configure_optimizer(model, train.DEFAULTS, "cpu")
    X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step():
        _, loss = model(X, Y, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW's state exists from here on, as in every later step
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to now
    step()
    mem = plan.memory(model, B, T, "cpu", "float32")
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    print(json.dumps(dict(measured=_status("VmHWM") - before, predicted=mem["grads"] + mem["activations"] + mem["head"],
                          adamw=state, predicted_adamw=mem["adamw"],
                          weights=sum(p.numel() * 4 for p in model.parameters()),
                          predicted_weights=mem["weights"] + mem["table"])))


def _measured(*shape):
    # glibc serves allocations of 64 KiB and more with mmap and returns them at free, so the resident
    # set follows what is allocated, and the kernel's peak (VmHWM) is the step's peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, json.dumps(shape)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("shape", [(8192, 128, 2, 8, 128, "random"), (4096, 256, 4, 8, 256, "trainable")])
def test_memory_model_within_15_percent_of_measured_cpu_peak(shape):
    m = _measured(*shape)
    assert m["predicted_weights"] == m["weights"] and m["predicted_adamw"] == m["adamw"]
    assert abs(m["predicted"] - m["measured"]) <= 0.15 * m["measured"], m


def test_param_counts_match_the_built_model():
    cfg = {**train.DEFAULTS, "n_layer": 3, "d_model": 64, "n_head": 4, "block_size": 32}
    for embedding, tokenizer in (("trainable", "gpt2"), ("binary16", "bvv241-2-3")):
        c = {**cfg, "embedding": embedding, "tokenizer": tokenizer}
        from unicode_tokenizer import get_tokenizer
        tok = get_tokenizer(tokenizer)
        assert plan.vocab_size_of(tokenizer) == tok.vocab_size
        built = train.build_model(c, tok)
        meta = train.meta_model(c, tok.vocab_size)
        assert meta.param_counts() == built.param_counts()
        assert train.flops_per_token(meta, 32) == train.flops_per_token(built, 32)


def test_grow_stage_plans_count_what_prepare_stage_trains():
    cfg = {**grow.DEFAULTS, **read_config_file(os.path.join(ROOT, "config/grow_abs_4096.py"))}
    stages = grow.make_plan(cfg)
    counts = grow.planned_counts(cfg, stages, 131072)
    text = _printed(grow.print_plan, cfg, stages, 131072, None)
    for c in counts:
        assert f"{c['trainable']:,} trainable, {c['frozen']:,} frozen" in text


def _printed(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args)
    return out.getvalue()


def test_plan_runs_for_every_config():
    """train.py --plan on each training config, grow.py's per-stage plan on each growth config; merge.py's
    configs train nothing and have nothing to plan."""
    import merge
    planned = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "*.py"))):
        keys = read_config_file(path)
        if "growth" in keys:
            cfg = {**grow.DEFAULTS, **keys}
            text = _printed(grow.print_plan, cfg, grow.make_plan(cfg), plan.vocab_size_of(cfg["tokenizer"]), None)
        elif set(keys) <= set(train.DEFAULTS):
            text = _printed(train.main, [path, "--plan"])
        else:
            assert set(keys) <= set(merge.DEFAULTS), path
            continue
        assert "GPU-hours" in text and "largest micro-batch" in text, path
        planned += 1
    assert planned >= 10


def test_largest_batch_fits_and_one_more_does_not():
    cfg = {**train.DEFAULTS, **read_config_file(os.path.join(ROOT, "config/paper_expert_ru_470m.py"))}
    model = train.meta_model(cfg, plan.vocab_size_of(cfg["tokenizer"]))
    mem = plan.memory(model, cfg["batch_size"], cfg["block_size"])
    b = plan.largest_batch(mem, cfg["batch_size"], 80)
    at = lambda n: plan.memory(model, n, cfg["block_size"])["total"]
    assert b >= 1 and at(b) <= 80 * plan.GIB < at(b + 1)


def test_full_shape_step_bench_steps_a_small_config():
    """bench/full_shape_step.py runs the full-size configs (not in CI); here its code on a tiny one."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import full_shape_step
    line = full_shape_step.step_config(os.path.join(ROOT, "config/grow_shakespeare_tiny.py"), 16)
    assert "stage 3/3" in line and "NON-FINITE" not in line, line


def test_bad_plan_keys_are_one_line():
    with pytest.raises(ValueError, match="plan_mfu=1.5"):
        train.main(["--plan", "--plan_mfu=1.5"])


if __name__ == "__main__":
    _measure(*json.loads(sys.argv[1]))
