"""merge.py: the merged model is the weighted average of its experts' logits, behaves like a single
model (loss, KV-cache generation, save/load, sample.py / eval.py / train.py validation), and bad
input gets one-line errors. Tiny random experts of different depth and width: no training needed."""
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from checkpoint import load_model, model_checkpoint, save_checkpoint, table_fingerprint
from unicode_tokenizer import checkpoint_tokenizer
import merge as M
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 65536  # the real vocabulary, for the experts saved with the real tokenizer's fingerprint
VS = 1024  # a small vocabulary for the tests of the arithmetic (fast on 2 cores)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; tok comes from there too


def random_table(seed, width=16, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (vocab, width), generator=g).float() * 2 - 1  # +-1 codes, like kind "random"


def make_expert(seed, table, n_layer, d_model, n_head, block_size, bias=True, embedding="random"):
    torch.manual_seed(seed)
    conf = GPTConfig(vocab_size=table.shape[0], block_size=block_size, n_layer=n_layer, n_head=n_head, d_model=d_model,
                     bias=bias, embedding=embedding)
    m = GPT(conf, table if embedding != "trainable" else None)
    m.table_info = {"kind": "random", "dim": table.shape[1]} if embedding != "trainable" else {}
    with torch.no_grad():  # a random GPT's logits are nearly flat: give the heads some spread
        m.lm_head.weight.normal_(0, 0.5)
        if bias:
            m.lm_head.bias.normal_(0, 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def table():
    return random_table(0)


@pytest.fixture(scope="module")
def experts(table):
    """A 6-layer and a 9-layer expert of different widths and contexts, sharing one table."""
    return [make_expert(1, table, 6, 32, 2, 32), make_expert(2, table, 9, 64, 4, 48)]


@pytest.fixture(scope="module")
def small_table():
    return random_table(0, vocab=VS)


@pytest.fixture(scope="module")
def small(small_table):
    """The same shapes with a small vocabulary."""
    return [make_expert(1, small_table, 6, 32, 2, 32), make_expert(2, small_table, 9, 64, 4, 48)]


@pytest.fixture(scope="module")
def expert_files(experts, tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("experts")
    paths = []
    for i, e in enumerate(experts):
        p = str(d / f"e{i}.pt")
        save_checkpoint(model_checkpoint(e, tok, iter_num=7, optimizer={"state": {}}), p)
        paths.append(p)
    return paths


def idx_batch(B=3, T=20, seed=0, vocab=V):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# the merge is the average

@pytest.mark.parametrize("bias", [True, False])
def test_merged_logits_are_the_weighted_average_of_the_experts(small_table, bias):
    es = [make_expert(1, small_table, 6, 32, 2, 32, bias), make_expert(2, small_table, 9, 64, 4, 48, bias)]
    x = idx_batch(vocab=VS)
    with torch.no_grad():
        l0, l1 = es[0](x)[0], es[1](x)[0]
        merged = M.MergedGPT(es, [1, 3])  # normalised to 0.25 / 0.75
        got = merged(x)[0]
        assert merged.config.block_size == 32 and merged.weights == [0.25, 0.75]
        torch.testing.assert_close(got, 0.25 * l0 + 0.75 * l1, atol=2e-5, rtol=1e-5)
        equal = M.MergedGPT(es)  # default: equal weights
        torch.testing.assert_close(equal(x)[0], (l0 + l1) / 2, atol=2e-5, rtol=1e-5)
        lp = M.MergedGPT(es, [1, 3], mode="logprobs")(x)[0]  # average log-probabilities
        want = 0.25 * F.log_softmax(l0, -1) + 0.75 * F.log_softmax(l1, -1)
        torch.testing.assert_close(lp, want, atol=2e-5, rtol=1e-5)
        # ... which is the paper's merge shifted by a constant per position: the same distribution
        torch.testing.assert_close(F.softmax(lp, -1), F.softmax(got, -1), atol=1e-6, rtol=1e-4)
        mix = M.MergedGPT(es, [1, 3], mode="probs")(x)[0]  # not the paper's: a mixture of distributions
        want = torch.log(0.25 * F.softmax(l0, -1) + 0.75 * F.softmax(l1, -1))
        torch.testing.assert_close(mix, want, atol=2e-5, rtol=1e-5)
        assert (F.softmax(mix, -1) - F.softmax(got, -1)).abs().max() > 1e-3  # really another merge
    assert (got - l0).abs().max() > 0.1  # the experts really differ, so the test can fail


def test_one_expert_with_weight_one_is_that_expert(small):
    experts = small
    x = idx_batch(vocab=VS)
    with torch.no_grad():
        want = experts[1](x)[0]
        torch.testing.assert_close(M.MergedGPT([experts[1]], [1.0])(x)[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(M.MergedGPT(experts, [0, 1])(x)[0], want, atol=1e-5, rtol=1e-5)
        mix = M.MergedGPT(experts, [0, 1], mode="probs")(x)[0]
        torch.testing.assert_close(mix, F.log_softmax(want, -1), atol=1e-5, rtol=1e-5)


def test_loss_matches_cross_entropy_of_the_merged_logits(experts):
    merged = M.MergedGPT(experts, [0.4, 0.6])  # the real vocabulary: several row chunks
    x, y = idx_batch(seed=1), idx_batch(seed=2)
    y[0, :5] = -1  # ignored targets
    with torch.no_grad():
        logits, loss = merged(x, y)
        want = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=-1)
        _, chunked = merged(x, y, return_logits=False)  # the CPU path: row chunks, no [B*T, V] tensor
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(chunked, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="block_size 32"):
        merged(idx_batch(T=40))


def test_experts_share_one_table_in_memory(experts):
    merged = M.MergedGPT(experts)
    assert merged.experts[0].frozen_table is merged.experts[1].frozen_table
    per_expert = sum(sum(p.numel() for p in e.parameters()) for e in experts)  # each expert's own count
    assert merged.param_counts()["total"] == per_expert - V * 16


# -----------------------------------------------------------------------------
# generation

def greedy_without_cache(model, idx, n):
    """Greedy decoding from full forward passes, with generate()'s context policy: when the
    context holds block_size tokens, continue from the last block_size // 2."""
    block = model.config.block_size
    start = max(0, idx.size(1) - block)
    for _ in range(n):
        nxt = model(idx[:, start:])[0][:, -1].argmax(-1, keepdim=True)  # a full forward, no cache
        if idx.size(1) - start >= block:
            start = idx.size(1) + 1 - block // 2
        idx = torch.cat((idx, nxt), 1)
    return idx


@pytest.mark.parametrize("mode", M.MergedGPT.MODES)
def test_generate_with_kv_caches_matches_generation_without(small, mode):
    merged = M.MergedGPT(small, [0.5, 0.5], mode=mode)
    prompt = idx_batch(B=2, T=6, seed=3, vocab=VS)
    n = 45  # past the 32-token context: every expert's cache is rebuilt
    with torch.no_grad():
        got = merged.generate(prompt, n, temperature=0)
        want = greedy_without_cache(merged, prompt, n)
    assert got.shape == (2, 6 + n)
    assert torch.equal(got, want)
    g = torch.Generator().manual_seed(0)
    sampled = merged.generate(prompt, 5, temperature=1.0, top_k=10, generator=g)
    assert sampled.shape == (2, 11)


# -----------------------------------------------------------------------------
# the merge file and the scripts that accept it

def test_cli_writes_a_merge_file_that_loads_back_identically(experts, expert_files, tmp_path):
    out = str(tmp_path / "m.pt")
    M.main([*expert_files, f"--out={out}", "--weights=0.3,0.7", "--mode=logits"])
    raw = torch.load(out, weights_only=True)  # plain data only
    assert raw["kind"] == "merge" and raw["weights"] == pytest.approx([0.3, 0.7])
    assert all("transformer.wte.weight" not in e["model"] for e in raw["experts"])  # the table is stored once
    assert table_fingerprint(raw["table"]) == raw["table_info"]["fingerprint"]
    assert [e["source"] for e in raw["experts"]] == [os.path.abspath(p) for p in expert_files]
    model, ck = load_model(out)
    assert isinstance(model, M.MergedGPT) and not model.training
    x = idx_batch(seed=4)
    with torch.no_grad():
        want = M.MergedGPT(experts, [0.3, 0.7])(x)[0]
        assert torch.equal(model(x)[0], want)
        assert torch.equal(model.generate(x[:, :4], 8, temperature=0), M.MergedGPT(experts, [0.3, 0.7]).generate(x[:, :4], 8, temperature=0))


@pytest.fixture(scope="module")
def data_root(tok, tmp_path_factory):
    from data.common import write_dataset
    root = tmp_path_factory.mktemp("data")
    docs = [f"line {i}: the king doth speak to the queen, and the fool will weep." for i in range(60)]
    write_dataset(str(root / "tiny"), docs[:50], docs[50:], tok, source="test")
    return str(root)


def test_sample_eval_and_train_validation_accept_the_merge(experts, expert_files, data_root, tok, tmp_path):
    out = str(tmp_path / "m.pt")
    results = M.main([*expert_files, f"--out={out}", f"--data_root={data_root}", "--datasets=tiny",
                      "--eval_iters=2", "--batch_size=2", "--block_size=16"])
    assert len(results) == 3  # two experts and the merge, by train.py's validation
    # the merge's row is the merged model's cross-entropy on train.py's validation batches (same seed)
    import math
    import train as T
    data = T.MixtureData({**T.DEFAULTS, "datasets": {"tiny": 1.0}, "data_root": data_root, "batch_size": 2,
                          "block_size": 16}, tok, "cpu")
    merged = M.MergedGPT(experts)
    with torch.no_grad():
        losses = [merged(*data.batch("val", j, 0))[1].item() for j in range(2)]
    label = next(k for k in results if k.startswith("merge"))
    assert results[label]["tiny"]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert results[label]["tiny"]["bpb"] == pytest.approx(sum(losses) / 2 / math.log(2) / data.bytes_per_token(0), rel=1e-5)
    assert len({round(r["tiny"]["loss"], 4) for r in results.values()}) == 3  # experts and merge really differ
    import sample
    texts = sample.sample({**sample.DEFAULTS, "ckpt": out, "start": "the king", "num_samples": 1,
                           "max_new_tokens": 4, "temperature": 0.0, "device": "cpu"})
    assert texts[0].startswith("the king")
    import eval as E
    model, ck = load_model(out, "cpu")
    res = E.evaluate(model, checkpoint_tokenizer(ck, out), ["bpb"], val_data=os.path.join(data_root, "tiny"))
    in_memory = E.evaluate(merged, tok, ["bpb"], val_data=os.path.join(data_root, "tiny"))
    assert res["bpb"]["mean"] == pytest.approx(in_memory["bpb"]["mean"], rel=1e-6)  # the file is that merge


# -----------------------------------------------------------------------------
# bad input: one-line errors, nothing written

def test_mismatched_tokenizer_or_table_is_refused_naming_both_fingerprints(experts, expert_files, tok, tmp_path):
    other_tok = dict(model_checkpoint(experts[1], tok), tokenizer_name="gpt2", tokenizer_fingerprint="0123456789abcdef")
    p_tok = str(tmp_path / "tok.pt")
    save_checkpoint(other_tok, p_tok)
    with pytest.raises(ValueError, match=f"tokenizer mismatch.*{tok.fingerprint}.*0123456789abcdef"):
        M.build_merge([expert_files[0], p_tok])
    other_table = make_expert(3, random_table(9), 1, 32, 2, 32)
    p_tab = str(tmp_path / "tab.pt")
    save_checkpoint(model_checkpoint(other_table, tok), p_tab)
    fp0, fp1 = table_fingerprint(experts[0].frozen_table), table_fingerprint(other_table.frozen_table)
    with pytest.raises(ValueError, match=f"frozen table mismatch.*{fp0}.*{fp1}"):
        M.build_merge([expert_files[0], p_tab])
    trainable = make_expert(4, random_table(0), 1, 32, 2, 32, embedding="trainable")
    p_tr = str(tmp_path / "tr.pt")
    save_checkpoint(model_checkpoint(trainable, tok), p_tr)
    with pytest.raises(ValueError, match="frozen table mismatch.*None"):
        M.build_merge([expert_files[0], p_tr])


@pytest.mark.parametrize("args, message", [
    (["{e0}"], "at least 2 expert checkpoints"),
    (["{e0}", "{e1}", "--weights=1,2,3"], "3 weight\\(s\\) for 2 expert"),
    (["{e0}", "{e1}", "--weights=0,0"], "sum to a positive value"),
    (["{e0}", "{e1}", "--weights=-1,2"], ">= 0"),
    (["{e0}", "{e1}", "--weights=a,b"], "comma-separated numbers"),
    (["{e0}", "{e1}", "--mode=mean"], "mode='mean'"),
    (["{e0}", "{junk}"], "not a readable checkpoint"),
    (["{e0}", "{missing}"], "no such checkpoint file"),
    (["{e0}", "{merged}"], "already a merge file"),
])
def test_bad_input_gives_one_line_errors_and_writes_nothing(expert_files, tmp_path, args, message):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    merged = str(tmp_path / "merged.pt")
    save_checkpoint({"kind": "merge", "format": M.MergedGPT.FORMAT, "experts": []}, merged)
    names = dict(e0=expert_files[0], e1=expert_files[1], junk=str(junk), missing=str(tmp_path / "nope.pt"), merged=merged)
    out = str(tmp_path / "out.pt")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        M.main([a.format(**names) for a in args] + [f"--out={out}"])
    assert "\n" not in str(err.value)
    assert not os.path.exists(out)


def sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_out_never_replaces_an_expert_by_any_name(expert_files, tmp_path):
    e0, e1 = expert_files
    before = sha256(e0)
    link, hard = tmp_path / "link.pt", tmp_path / "hard.pt"
    link.symlink_to(e0)
    os.link(e0, hard)
    names = [e0, os.path.relpath(e0), os.path.join(os.path.dirname(e0), "..", os.path.basename(os.path.dirname(e0)),
                                                     os.path.basename(e0)), str(link), str(hard)]
    for out in names:  # in-process: every way of naming the same file
        with pytest.raises(ValueError, match=f"out={out} is the expert "):
            M.main([e0, e1, f"--out={out}", "--overwrite=True"])
    # at the command line, as a user meets it: one line, exit status 1, the expert byte-identical
    r = subprocess.run([sys.executable, "merge.py", e0, e1, f"--out={link}", "--overwrite=True"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == f"merge.py: error: out={link} is the expert {e0}: " \
                                                      f"writing there would destroy it; choose another --out"
    assert sha256(e0) == before and os.path.samefile(e0, hard) and os.path.islink(link)


def test_out_replaces_an_existing_file_only_when_asked(expert_files, tmp_path):
    out = tmp_path / "old.pt"
    out.write_bytes(b"an earlier merge")
    with pytest.raises(ValueError, match=f"out={out} exists: pass --overwrite=True to replace it"):
        M.main([*expert_files, f"--out={out}"])
    assert out.read_bytes() == b"an earlier merge"
    with pytest.raises(ValueError, match=f"out={tmp_path} is a folder: expected a file path"):
        M.main([*expert_files, f"--out={tmp_path}", "--overwrite=True"])
    M.main([*expert_files, f"--out={out}", "--overwrite=True"])
    assert load_model(str(out))[1]["kind"] == "merge"


def test_options_take_either_flag_style_and_help_lists_every_key(capsys):
    from configurator import parse
    got = parse(M.DEFAULTS, ["a.pt", "--out", "m.pt", "b.pt", "--overwrite", "--mode=probs"], False, positional="experts")
    assert got == {"experts": ["a.pt", "b.pt"], "out": "m.pt", "overwrite": True, "mode": "probs"}
    with pytest.raises(SystemExit) as e:
        M.main(["-h"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"--{k}=" in out for k in M.DEFAULTS)
    assert "replace --out if it exists (refused otherwise)" in out


def test_command_line_error_is_one_line(expert_files, tmp_path):
    r = subprocess.run([sys.executable, "merge.py", expert_files[0], f"--out={tmp_path / 'o.pt'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("merge.py: error: a merge needs at least 2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_bf16_merge_matches_float32(experts):
    import copy
    merged = M.MergedGPT(copy.deepcopy(experts)).to("cuda")
    x = idx_batch().cuda()
    with torch.no_grad():
        ref = merged(x)[0].float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = merged(x)[0].float()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_one_substrate_within_float_noise_is_merged_another_is_refused(tok):
    """Experts whose tables differ by float noise (another LAPACK) merge; a table whose bitmaps
    differ in one token is another substrate (glyph_embed.check_same_substrate)."""
    import glyph_embed as ge
    strings = [chr(0x41 + i % 900) + ("" if i < 900 else chr(0x61 + i % 26)) for i in range(VS)]
    table, info = ge.frozen_table(strings, "glyph", 16, use_cache=False)
    other, other_info = ge.frozen_table(strings[:-1] + ["zz"], "glyph", 16, use_cache=False)
    noisy = table + 1e-7 * torch.randn(table.shape, generator=torch.Generator().manual_seed(0))
    experts = []
    for seed, (t, i) in enumerate([(table, info), (noisy, info), (other, other_info)]):
        e = make_expert(seed, t, 1, 32, 2, 32, embedding="glyph")
        e.table_info = dict(i, fingerprint=table_fingerprint(t))
        experts.append(e)
    ckpts = [model_checkpoint(e, tok) for e in experts]
    M.check_compatible(["a.pt", "b.pt"], ckpts[:2])
    merged = M.MergedGPT(experts[:2])
    assert merged.experts[1].frozen_table is merged.experts[0].frozen_table  # shared, one copy
    with pytest.raises(ValueError, match=f"frozen table mismatch: a.pt .* vs c.pt .*substrate key "
                                         f"{info['key']} vs {other_info['key']}"):
        M.check_compatible(["a.pt", "c.pt"], [ckpts[0], ckpts[2]])


def test_output_into_a_file_has_lines_and_no_bar_frames(data_root, tmp_path):
    """Run as `... > log 2>&1` would: train.py (two tiny experts) and merge.py's validation write their
    lines, a line per model and dataset among them, and no tqdm carriage-return frames."""
    tiny = ["--n_layer=1", "--n_head=2", "--d_model=32", "--block_size=32", "--batch_size=4", "--table_dim=16",
            "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--log_interval=1", f"--data_root={data_root}",
            "--datasets={'tiny': 1.0}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = []
    for i in range(2):
        r = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *tiny, f"--out_dir={tmp_path / f'e{i}'}",
                            f"--seed={i}"], capture_output=True, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        assert b"iter 1: loss" in r.stdout
        outs.append(r)
    r = subprocess.run([sys.executable, os.path.join(REPO, "merge.py"), str(tmp_path / "e0" / "ckpt.pt"),
                        str(tmp_path / "e1" / "ckpt.pt"), f"--out={tmp_path / 'm.pt'}", f"--data_root={data_root}",
                        "--datasets=tiny", "--eval_iters=2", "--batch_size=2"], capture_output=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    lines = r.stdout.decode().splitlines()
    assert [line.split(":")[0].strip() for line in lines if ", tiny: loss " in line] == \
        [f"1/3 expert {tmp_path / 'e0' / 'ckpt.pt'}, tiny", f"2/3 expert {tmp_path / 'e1' / 'ckpt.pt'}, tiny",
         "3/3 merge (logits, weights 0.5,0.5), tiny"]
    for p in outs + [r]:
        assert b"\r" not in p.stdout + p.stderr


def test_validation_one_dataset_at_a_time_equals_the_whole_mixture(experts, data_root, tok, tmp_path):
    """merge.py scores one dataset at a time (a line each as it finishes): the same figures as
    train.evaluate over all the datasets at once."""
    import train as T
    from common import autocast
    from data.common import write_dataset
    from eval import domain_data, evaluate_domains
    other = str(tmp_path / "other")
    write_dataset(other, [f"{i} fortunes of the fool" * 9 for i in range(30)], ["the queen weeps" * 20], tok, source="test")
    tcfg, data = domain_data(["tiny", other], {"data_root": data_root, "batch_size": 2, "block_size": 16,
                                               "eval_iters": 2}, tok, "cpu")
    with torch.no_grad():
        got = evaluate_domains({"a": experts[0]}, tcfg, data, "cpu", progress=False)["a"]
        want = T.evaluate(experts[0], data, tcfg, autocast("cpu"))["val"]
    assert list(got) == ["tiny", other] and got == want
