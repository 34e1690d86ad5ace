"""Fast checks of model.py, configurator.py and checkpoints (no training loop: see test_train.py)."""
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from configurator import ConfigError, configure
from checkpoint import load_model, model_checkpoint, model_from_checkpoint, save_checkpoint, table_fingerprint
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.abspath(__file__))


def tiny(embedding="glyph", w=16, V=512, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, d_model=32, embedding=embedding, **kw)
    table = None if embedding == "trainable" else torch.randn(V, w) / w ** 0.5
    return GPT(cfg, table)


# ----------------------------------------------------------------------------- model

def test_paper_shape_counts_335_5m_on_meta_device():
    # the paper's shape, counted without allocating 1.3 GB: parameters on the meta device
    with torch.device("meta"):
        m = GPT(GPTConfig(), table=torch.empty(65536, 1024))
        m9 = GPT(GPTConfig(n_layer=9), table=torch.empty(65536, 1024))
    c = m.param_counts()
    assert c["matrices"] == 335_544_320  # the paper's 335.5M: 67.1M table + 67.1M head + 201.3M blocks
    assert f"{c['matrices'] / 1e6:.1f}M" == "335.5M"
    assert c["frozen"] == 65536 * 1024
    assert c["total"] == 335_824_896  # plus 0.28M biases and LayerNorms
    assert "335.5M in weight matrices" in m.describe()
    # docs/design.md §5 checks of the same counting: a 9-layer frozen model trains 180.5M parameters
    assert f"{m9.param_counts()['trainable'] / 1e6:.1f}M" == "180.5M"


def test_frozen_table_is_not_trainable_and_narrow_table_is_expanded():
    m = tiny(w=16)
    assert m.frozen_table.requires_grad is False
    assert m.transformer.wte(torch.tensor([[3]])).shape == (1, 1, 32)
    row = m.transformer.wte(torch.tensor([[3]]))[0, 0]
    assert torch.equal(row, m.frozen_table[3].repeat_interleave(2))
    with pytest.raises(ValueError, match="width 24, which does not divide d_model=32"):
        tiny(w=24)
    with pytest.raises(ValueError, match="needs its frozen table"):
        GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, d_model=8))


@pytest.mark.parametrize("bias,chunk_rows", [(True, 16), (False, 10), (True, 4096)])
def test_chunked_head_loss_matches_cross_entropy(bias, chunk_rows, monkeypatch):
    import fused_head
    monkeypatch.setattr(fused_head, "CHUNK_ELEMS", 1000 * chunk_rows)  # several chunks, a ragged last one
    m = tiny(bias=bias, V=1000)
    x = torch.randint(0, 1000, (3, 32))
    y = torch.randint(0, 1000, (3, 32))
    y[0, :7] = -1  # ignored positions
    logits, ref = m(x, y)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad()
    none, loss = m(x, y, return_logits=False)
    loss.backward()
    assert none is None and logits.shape == (3, 32, 1000)
    assert torch.allclose(loss, ref, atol=1e-5)
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[n], atol=1e-6, rtol=1e-4), n
    assert m.frozen_table.grad is None
    with torch.no_grad():
        assert torch.allclose(m(x, y, return_logits=False)[1], ref, atol=1e-5)


def test_generate_with_kv_cache_equals_full_recompute():
    m = tiny().eval()
    prompt = torch.randint(0, 512, (2, 5))
    out = m.generate(prompt, 20, temperature=0)
    idx = prompt
    for _ in range(20):  # greedy decoding without a cache, one full forward per token
        logits, _ = m(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)
    # past the context window, and sampling with top-k, still works
    g = torch.Generator().manual_seed(0)
    assert m.generate(prompt, 40, temperature=0.8, top_k=5, generator=g).shape == (2, 45)


def test_rotary_attention_is_causal():
    m = tiny().eval()
    x = torch.randint(0, 512, (1, 16))
    x2 = x.clone()
    x2[0, 10:] = 7  # changing the future must not change the past
    a, _ = m(x)
    b, _ = m(x2)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_weights_only(tmp_path):
    m = tiny(w=32).eval()
    m.table_info = {"kind": "glyph", "dim": 32}
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(model_checkpoint(m, iter_num=3), path)
    ck = torch.load(path, weights_only=True)  # no pickled code inside
    assert ck["kind"] == "gpt" and ck["table_info"]["fingerprint"] == table_fingerprint(m.frozen_table)
    assert "transformer.wte.weight" in ck["model"]  # the frozen table travels with the model
    m2, ck2 = load_model(path)
    x = torch.randint(0, 512, (2, 16))
    assert torch.equal(m(x)[0], m2(x)[0])
    assert m2.table_info["dim"] == 32 and ck2["iter_num"] == 3


def test_checkpoint_refuses_objects_and_tampered_tables(tmp_path):
    m = tiny()
    path = str(tmp_path / "ckpt.pt")
    with pytest.raises(TypeError, match=r"checkpoint\['bad'\] is a object"):
        save_checkpoint(model_checkpoint(m, bad=object()), path)
    assert not os.path.exists(path)
    ck = model_checkpoint(m)
    ck["model"]["transformer.wte.weight"] = ck["model"]["transformer.wte.weight"] + 1e-3
    save_checkpoint(ck, path)
    with pytest.raises(ValueError, match="fingerprint .* does not match"):
        load_model(path)


def test_bad_checkpoint_files_give_one_line_errors(tmp_path):
    good = str(tmp_path / "good.pt")
    save_checkpoint(model_checkpoint(tiny()), good)
    data = open(good, "rb").read()
    cases = {"truncated.pt": data[: len(data) // 2], "text.pt": b"hello, not a checkpoint\n"}
    for name, blob in cases.items():
        p = str(tmp_path / name)
        with open(p, "wb") as f:
            f.write(blob)
        with pytest.raises(ValueError) as e:
            load_model(p)
        assert p in str(e.value) and "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(2)}, str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="not a glyphgpt checkpoint"):
        load_model(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.pt"))


KILL_MID_SAVE = r"""
import os, sys, torch
sys.path.insert(0, {repo!r})
import checkpoint
path = sys.argv[1]
checkpoint.save_checkpoint({{"kind": "gpt", "v": torch.ones(1000)}}, path)  # the previous, good checkpoint
real_save = torch.save
def dying_save(obj, f):  # write half a checkpoint, then die like a SIGKILL (no cleanup runs)
    real_save(obj, f)
    f.truncate(f.tell() // 2)
    f.flush()
    os._exit(9)
torch.save = dying_save
checkpoint.save_checkpoint({{"kind": "gpt", "v": torch.zeros(1000)}}, path)
"""


def test_checkpoint_killed_mid_write_leaves_previous_intact(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    r = subprocess.run([sys.executable, "-c", KILL_MID_SAVE.format(repo=REPO), path])
    assert r.returncode == 9
    ck = torch.load(path, weights_only=True)
    assert torch.equal(ck["v"], torch.ones(1000))


# ----------------------------------------------------------------------------- configurator

DEFAULTS = dict(weight_decay=0.1, max_iters=5000, compile=True, out_dir="out", learning_rate=6e-4,
                datasets={"shakespeare": 1.0}, wandb_run_name=None, betas=(0.9, 0.95))


def test_configurator_parses_by_type_of_default(tmp_path):
    cfg = configure(DEFAULTS, ["--weight_decay=0", "--max_iters=1e4", "--compile=false", "--out_dir=a=b",
                               "--datasets={'shakespeare': 0.9, 'sft_qa': 0.1}", "--learning_rate=3e-4",
                               "--betas=[0.9, 0.99]", "--wandb_run_name=x1"], verbose=False)
    assert cfg["weight_decay"] == 0.0 and type(cfg["weight_decay"]) is float
    assert cfg["max_iters"] == 10000 and type(cfg["max_iters"]) is int
    assert cfg["compile"] is False and cfg["out_dir"] == "a=b" and cfg["learning_rate"] == 3e-4
    assert cfg["datasets"] == {"shakespeare": 0.9, "sft_qa": 0.1} and cfg["betas"] == (0.9, 0.99)
    assert cfg["wandb_run_name"] == "x1"
    assert configure(DEFAULTS, ["--compile"], verbose=False)["compile"] is True
    f = tmp_path / "c.py"
    f.write_text("import math\nmax_iters = 2e3\nweight_decay = 0\nout_dir = 'o' + 'ut2'\n")
    cfg = configure(DEFAULTS, [str(f), "--max_iters=7"], verbose=False)  # later arguments win
    assert cfg["max_iters"] == 7 and cfg["weight_decay"] == 0.0 and cfg["out_dir"] == "out2"
    assert DEFAULTS["max_iters"] == 5000  # defaults untouched


def test_configurator_errors_name_the_key(tmp_path):
    def err(argv):
        with pytest.raises(ConfigError) as e:
            configure(DEFAULTS, argv, verbose=False)
        assert "\n" not in str(e.value)
        return str(e.value)
    assert "unknown config key 'max_iter'; did you mean max_iters" in err(["--max_iter=3"])
    assert "max_iters expects int" in err(["--max_iters=1.5"]) and "'1.5'" in err(["--max_iters=1.5"])
    assert "compile expects bool" in err(["--compile=maybe"])
    assert "weight_decay expects float" in err(["--weight_decay=abc"])
    assert "datasets expects dict" in err(["--datasets=[1]"])
    assert "needs a value" in err(["--max_iters"])
    f = tmp_path / "bad.py"
    f.write_text("learning_rat = 1e-3\n")
    msg = err([str(f)])
    assert str(f) in msg and "'learning_rat'" in msg and "learning_rate" in msg
    f.write_text("compile = 'yes please'\n")
    assert "compile expects bool" in err([str(f)])
    assert "config file not found" in err([str(tmp_path / "nope.py")])


def test_apply_rope_is_rotate_half_and_relative():
    from model import apply_rope, rope_tables
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(3, 16, 8)
    # the textbook rotate-half form (GPT-NeoX / Llama)
    inv = 1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8)
    ang = torch.outer(torch.arange(16).float(), inv)
    ang = torch.cat([ang, ang], -1)
    x1, x2 = x[..., :4], x[..., 4:]
    ref = x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()
    assert torch.allclose(apply_rope(x, cos, sin), ref, atol=1e-6)
    # q.k after rotation depends only on the distance between positions
    q, k = torch.randn(8), torch.randn(8)
    rq = apply_rope(q.expand(16, 8), cos, sin)
    rk = apply_rope(k.expand(16, 8), cos, sin)
    assert torch.allclose(rq[5] @ rk[2], rq[12] @ rk[9], atol=1e-5)


@pytest.mark.parametrize("path", ["train_shakespeare_glyph.py", "train_shakespeare_trainable.py",
                                  "paper_glyph_335m.py", "paper_trainable_335m.py"])
def test_core_config_files_parse(path):
    import train
    cfg = configure(train.DEFAULTS, [os.path.join(REPO, "config", path)], verbose=False)
    if path.startswith("paper_"):  # the paper shape, counted on the meta device
        emb = cfg["embedding"]
        with torch.device("meta"):
            m = GPT(GPTConfig(n_layer=cfg["n_layer"], n_head=cfg["n_head"], d_model=cfg["d_model"],
                              block_size=cfg["block_size"], embedding=emb),
                    None if emb == "trainable" else torch.empty(65536, cfg["table_dim"]))
        assert f"{m.param_counts()['matrices'] / 1e6:.1f}M" == "335.5M"


def test_configurator_takes_key_space_value_and_prints_help(capsys):
    from configurator import key_docs, parse
    cfg = configure(DEFAULTS, ["--max_iters", "7", "--compile", "--out_dir", "o", "--weight_decay=0.5",
                               "--compile", "false"], verbose=False)
    assert cfg["max_iters"] == 7 and cfg["out_dir"] == "o" and cfg["weight_decay"] == 0.5 and cfg["compile"] is False
    assert cfg.max_iters == 7  # attribute access, the way nanoGPT reads plain names
    assert parse(DEFAULTS, ["--max_iters", "7"], verbose=False) == {"max_iters": 7}  # only what was set
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            configure(DEFAULTS, ["--max_iters=3", flag], docs={"max_iters": "total iterations"}, prog="x.py")
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: x.py") and "--max_iters=3" in out and "total iterations" in out  # the value given
        assert "--datasets={'shakespeare': 1.0}" in out and "--out_dir=out" in out
    with open(os.path.join(REPO, "train.py")) as f:  # the docs are the comments of the defaults block
        assert 'max_iters = 2000  # total training iterations' in f.read()
    assert key_docs(os.path.join(REPO, "train.py"))["max_iters"] == "total training iterations"


# ----------------------------------------------------------------------------- property tests: any input ->
# a result or one of our one-line errors, never another exception

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
values = st.one_of(st.text(max_size=12), st.sampled_from(["1e4", "-3", "1e400", "nan", "inf", "true", "[1, 2]",
                                                          "{'a': 1.0}", "{[1]: 2}", "((", "0x10", "1_000", "None"]))
keys = st.one_of(st.sampled_from(list(DEFAULTS)), st.text(max_size=8))
args = st.lists(st.one_of(st.builds(lambda k, v: f"--{k}={v}", keys, values), st.builds(lambda k: f"--{k}", keys),
                          values.filter(lambda v: not os.path.exists(v) and v not in ("-h", "--help"))), max_size=6)


@PROPERTY
@given(argv=args)
def test_configurator_any_command_line_gives_a_config_or_one_line(argv):
    argv = [a for a in argv if a not in ("-h", "--help")]
    try:
        cfg = configure(DEFAULTS, argv, verbose=False)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert set(cfg) == set(DEFAULTS)
        assert all(type(cfg[k]) is type(DEFAULTS[k]) for k in DEFAULTS if DEFAULTS[k] is not None)


@PROPERTY
@given(lines=st.lists(st.builds(lambda k, v: f"{k} = {v}", keys, values), max_size=4))
def test_configurator_any_config_file_gives_a_config_or_one_line(lines, tmp_path):
    f = tmp_path / "c.py"
    f.write_text("\n".join(lines))
    try:
        configure(DEFAULTS, [str(f)], verbose=False)
    except ConfigError as e:
        assert "\n" not in str(e) and str(f) in str(e)


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ck") / "good.pt")
    save_checkpoint(model_checkpoint(tiny(V=64, w=16), iter_num=3), path)
    return path


@PROPERTY
@given(data=st.data())
def test_checkpoint_loader_any_file_gives_a_model_or_one_line(data, good_ckpt, tmp_path):
    blob = bytearray(open(good_ckpt, "rb").read())
    kind = data.draw(st.sampled_from(["flip", "cut", "random"]))
    if kind == "flip":  # bytes changed anywhere: zip structure, pickle, tensor data
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "cut":
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    else:
        blob = data.draw(st.binary(max_size=2000))
    p = tmp_path / "x.pt"
    p.write_bytes(bytes(blob))
    try:
        model, _ = load_model(str(p))
    except ValueError as e:
        assert "\n" not in str(e) and str(p) in str(e)
    else:
        assert isinstance(model, GPT)


@PROPERTY
@given(args=st.fixed_dictionaries({}, optional={k: st.one_of(st.integers(-2, 64), st.text(max_size=4), st.booleans(),
                                                            st.floats(allow_nan=True), st.none())
                                             for k in ("vocab_size", "block_size", "n_layer", "n_head", "d_model",
                                                       "dropout", "bias", "embedding", "rope_base", "other")}))
def test_checkpoint_loader_any_model_args_give_a_model_or_one_line(args, good_ckpt, tmp_path):
    ck = torch.load(good_ckpt, weights_only=True)
    ck["model_args"] = {**ck["model_args"], **args}
    try:
        model_from_checkpoint(ck, "cpu", "x.pt")
    except ValueError as e:
        assert "\n" not in str(e) and "x.pt" in str(e)


def test_help_shows_a_string_with_a_newline_or_odd_spaces_quoted(capsys):
    from configurator import print_help
    print_help({"start": "\n", "name": "ROMEO: ", "out": "out-x", "empty": ""}, {"start": "prompt text"}, "x.py")
    out = capsys.readouterr().out
    assert "--start='\\n'" in out and "--name='ROMEO: '" in out and "--out=out-x" in out and "--empty=''" in out
    assert len(out.splitlines()) == 5  # the usage line and one line per key: no raw newline


def test_progress_bar_only_on_a_terminal_unless_always(monkeypatch):
    from common import bar_on
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        assert [bar_on(s) for s in (True, "auto", "Always", False, "never", "False")] == \
            [tty, tty, True, False, False, False]
    with pytest.raises(ValueError, match="progress='sometimes'"):
        bar_on("sometimes")


def test_reproduce_report_help_prints_its_usage():
    r = subprocess.run([sys.executable, os.path.join(REPO, "reproduce_report.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: python reproduce.py") and not r.stderr
    r = subprocess.run([sys.executable, os.path.join(REPO, "reproduce_report.py"), "x"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage:")
