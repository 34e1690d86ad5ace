"""Tests of eval.py and data/benchmarks.py on the small benchmark samples in data/eval_items (the benchmarks'
original formats)."""
import errno
import io
import json
import math
import os
import re
import tarfile
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

from checkpoint import load_model, model_checkpoint, save_checkpoint, table_fingerprint
from common import script_main
from configurator import key_docs
import eval as E
import merge
from data import benchmarks as B
from model import GPT, GPTConfig

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "eval_items")


def tiny_gpt(block_size=256, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=65536, block_size=block_size, n_layer=2, n_head=2, d_model=32, embedding="trainable")
    return GPT(cfg).eval()


def forced_gpt(letter="B", block_size=256):
    """A real GPT whose output head ignores its input and puts all the mass on one character."""
    m = tiny_gpt(block_size)
    with torch.no_grad():
        m.lm_head.weight.zero_()
        m.lm_head.bias.zero_()
        m.lm_head.bias[ord(letter)] = 30.0
    return m


class InterfaceOnly(torch.nn.Module):
    """Logit averaging with nothing but the model interface (model(idx), generate, config): how any
    model eval.py does not know is scored (the generic path)."""

    def __init__(self, experts):
        super().__init__()
        self.experts = torch.nn.ModuleList(experts)
        self.config = experts[0].config

    def forward(self, idx, targets=None):
        return torch.stack([e(idx)[0] for e in self.experts]).mean(0), None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        from model import sample_next
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            idx = torch.cat((idx, sample_next(logits[:, -1], temperature, top_k, generator)), dim=1)
        return idx


# ---------------------------------------------------------------------------- prompts, byte-exact

def test_prompts_are_byte_exact_to_spec():
    mmlu = E.load_task("mmlu", FIX)
    wr = [it for it in mmlu if it["subject"] == "world_religions"]
    assert wr[1]["prompt"] == ("Question: Which text is central to Sikhism?\n(Choose one.)\n"
                               "Options: A) The Guru Granth Sahib B) The Vedas C) The Tripitaka D) The Avesta\nAnswer:")
    assert wr[1]["gold"] == 0 and wr[1]["labels"] == list("ABCD")
    arc = E.load_task("arc_easy", FIX)
    assert arc[0]["prompt"] == ("Question: Which form of energy does a solar panel change into electricity?\n"
                                "Options:\nA) sound\nB) light\nC) wind\nD) heat\nAnswer:")
    assert arc[2]["labels"] == ["1", "2", "3", "4"] and arc[2]["gold"] == 2  # numeric ARC labels kept
    csqa = E.load_task("commonsense_qa", FIX)
    assert csqa[0]["prompt"].endswith("\nD) floor\nE) oven\nAnswer:") and csqa[0]["gold"] == 0
    squad = E.load_task("squad_v2", FIX)
    assert squad[0]["prompt"] == ("Context: The Normans were the people who in the 10th and 11th centuries gave their "
                                  "name to Normandy, a region in France.\nQuestion: In what country is Normandy "
                                  "located?\nAnswer:")
    opus = E.load_task("opus_en_ru", FIX)
    assert opus[0]["prompt"] == "Translate from English to Russian:\nThank you very much.\nAnswer:"
    assert opus[0]["ref"] == "Большое спасибо." and opus[0]["max_new"] == len("Большое спасибо.")
    zh_en = E.load_task("opus_zh_en", FIX)
    assert zh_en[1]["prompt"] == "Translate from Chinese to English:\n车站在哪里？\nAnswer:" and zh_en[1]["ref"] == "Where is the station?"


def test_loader_rules():
    squad = E.load_task("squad_v2", FIX)
    # answerable, first answer <= 8 chars: "France", "8", "O"; not the 23-char one, not the impossible one
    assert sorted(it["answer"] for it in squad) == ["8", "France", "O"]
    assert {it["max_new"] for it in squad} == {6, 1}
    assert [len(E.load_task("mmlu", FIX, limit=1))] == [3]  # --limit counts per MMLU subject
    hs = E.load_task("hellaswag", FIX)
    assert hs[2]["ll_context"] == "Home and Garden: How to water a plant. Check the soil."
    # exactly lm-eval's cleanup: "[step] Push" loses the marker but keeps its space, then " " + ending
    assert hs[2]["ll_choices"][0] == "  Push a finger into the soil to feel if it is dry."
    assert hs[0]["ll_context"] == "Roof shingle removal: A man is sitting on a roof. He"
    boolq = E.load_task("boolq", FIX)
    assert boolq[1]["prompt"].endswith("\nQuestion: can penguins fly?\nAnswer:") and boolq[1]["gold"] == 1
    assert E.load_task("arc_easy", FIX)[0]["ll_choices"] == ["A", "B", "C", "D"]  # the answer follows "Answer:"


# ---------------------------------------------------------------------------- scoring rules, CI

def test_released_answer_reading():
    """The released script: decode prompt + new tokens, drop <s>, slice off len(prompt) characters,
    strip, upper-case."""
    prompt = "Question: x\nAnswer:"
    assert E.released_answer(prompt + " b)", prompt) == "B)"
    # a <s> anywhere in the decoded output is removed BEFORE slicing: the slice still starts after
    # the prompt (slicing first would cut 3 characters too early and keep ':'-less garbage)
    assert E.released_answer("<s>" + prompt + " paris<s>\n", prompt) == "PARIS"
    assert E.released_answer(prompt[:5] + "<s>" + prompt[5:] + "c", prompt) == "C"
    assert E.released_answer(prompt + "  \n", prompt) == ""


def test_released_answer_through_the_model_path(tok):
    """sample_answers reads every answer through released_answer(decode(prompt ids + new ids), prompt):
    a model forced to emit 'b' answers 'B' after the whole prompt, not a character of the prompt."""
    items = E.load_task("arc_easy", FIX)
    answers, trunc = E.sample_answers(forced_gpt("b"), tok, "arc_easy", [it["prompt"] for it in items], 2, 3, 1.0,
                                      50, 0)
    assert answers == [["BB"] * 3] * len(items) and trunc == 0
    # prompts longer than the context lose their beginning: the answer is read after the kept part
    answers, trunc = E.sample_answers(forced_gpt("b", block_size=24), tok, "arc_easy", [it["prompt"] for it in items],
                                      2, 3, 1.0, 50, 0)
    assert answers == [["BB"] * 3] * len(items) and trunc == len(items)


def test_scoring_rules():
    assert E.first_char_correct(" b", "B") and E.first_char_correct("B)", "B") and E.first_char_correct("\nc ", "C")
    assert not E.first_char_correct(" ", "B")       # one new token spent on a space: wrong (docs/design.md §7)
    assert not E.first_char_correct("", "A") and not E.first_char_correct("AB"[1:], "A")
    assert E.first_char_correct(" 3", "3")
    assert E.substring_correct(" in france, yes", "France") and not E.substring_correct("Fran", "France")
    assert E.first_word_correct(" Yes, it is", "yes") and not E.first_word_correct("no", "yes")
    assert not E.first_word_correct("yesterday", "yes")


def test_translation_bleu_is_the_released_per_item_corpus_bleu():
    # an exact match of at least 4 words: every n-gram precision is 1, brevity penalty 1 -> 100.0
    assert E.translation_bleu("THE CAT SAT ON THE MAT", "The cat sat on the mat") == pytest.approx(100.0)
    # by hand: 1-grams 5/6 (THE clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, same length:
    # 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25
    assert E.translation_bleu("THE CAT SAT ON THE MAT", "the cat sat on a mat") == pytest.approx(100 * (1 / 12) ** 0.25)
    # corpus_bleu has no effective order: under 4 words there are no 4-grams and an exact match scores
    # 0.0 (sentence_bleu, the rule before, gives 100.0 here). The released script does this.
    assert E.translation_bleu("HELLO WORLD", "hello world") == 0.0
    # the hypothesis ends at the first </S> (an upper-cased </s>): what follows is not scored
    assert E.translation_bleu("THE CAT SAT ON THE MAT</S>GARBAGE AFTER THE END", "the cat sat on the mat") == \
        pytest.approx(100.0)
    assert E.translation_bleu("</S>THE CAT SAT ON THE MAT", "the cat sat on the mat") == 0.0
    # the answer reaching the rule is already upper-cased (released_answer), so is the reference
    assert E.translation_bleu(E.released_answer("p: big red cat sat down</s>x", "p:"), "Big red cat sat down") == \
        pytest.approx(100.0)


def test_intervals_ddof():
    # paper protocol, the released script: 1.96 * np.std(runs) / sqrt(n_runs), population std (ddof 0).
    # runs 20, 22, 24, 26: mean 23, deviations -3, -1, 1, 3, std = sqrt(20 / 4) = sqrt(5)
    mean, ci = E.run_interval([20.0, 22.0, 24.0, 26.0])
    assert mean == 23.0 and ci == pytest.approx(1.96 * math.sqrt(5) / 2)
    assert E.run_interval([5.0]) == (5.0, 0.0)
    res = E.acc_entry(np.array([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=bool))  # runs 75 and 100: std 12.5
    assert res["runs"] == [75.0, 100.0] and res["mean"] == 87.5 and res["ci95"] == pytest.approx(1.96 * 12.5 / math.sqrt(2))
    # loglik protocol, one run over items: the standard error with the sample std (ddof 1), as lm-eval
    mean, ci = E.item_interval([0.0, 100.0, 0.0, 0.0])  # sample std 50
    assert mean == 25.0 and ci == pytest.approx(1.96 * 50 / 2)


# ---------------------------------------------------------------------------- the scorer

@torch.no_grad()
def naive_loglik(model, requests):
    """Reference: every request alone, full logits, the lm-eval way."""
    L = model.config.block_size
    out = []
    for ctx, cont in requests:
        x = (ctx + cont)[-(L + 1):][:-1]
        lp = torch.log_softmax(model(torch.tensor([x]))[0][0].float(), -1)
        pos = range(len(x) - len(cont), len(x))
        out.append((sum(float(lp[p, t]) for p, t in zip(pos, cont)),
                    all(int(lp[p].argmax()) == t for p, t in zip(pos, cont))))
    return out


def test_grouped_loglik_equals_per_request_scoring(tok):
    model = tiny_gpt(block_size=48)  # small block: several ARC prompts get truncated from the left
    items = E.load_task("arc_challenge", FIX) + E.load_task("hellaswag", FIX) + E.load_task("boolq", FIX)
    reqs = E.encode_requests(tok, E.choice_requests(items))
    reqs.append((reqs[0][0], []))                # an empty continuation: log-likelihood 0
    ours, truncated = E.loglikelihoods(model, reqs, batch_size=3, max_tokens=100)
    ref = naive_loglik(model, reqs)
    assert [g for _, g in ours] == [g for _, g in ref]
    assert np.allclose([lp for lp, _ in ours], [lp for lp, _ in ref], atol=1e-4)
    assert ours[-1] == (0.0, True)
    assert len(truncated) > 0 and all(len(reqs[r][0]) + len(reqs[r][1]) > 48 for r in truncated)
    # ARC letters: all options of one item are read from ONE row
    rows, _, _ = E.plan_loglik(reqs[:len(items[0]["ll_choices"])], 1024)
    assert len(rows) == 1


def test_encode_requests_is_lm_eval_split(tok):
    (ctx, cont), = E.encode_requests(tok, [("Question: x\nAnswer: ", "B")])
    assert tok.decode(ctx) == "Question: x\nAnswer:" and tok.decode(cont) == " B"  # trailing space moves over


def test_lm_eval_adapter_returns_our_loglikelihoods(tok):
    from lm_eval.api.instance import Instance  # a test requirement: missing, this test fails (no skip)
    from lm_eval_adapter import GlyphLM
    model = tiny_gpt(block_size=64)
    items = E.load_task("arc_easy", FIX) + E.load_task("hellaswag", FIX)
    pairs = E.choice_requests(items)
    ours, _ = E.loglikelihoods(model, E.encode_requests(tok, pairs))
    lm = GlyphLM(model=model, tokenizer=tok, batch_size=4)
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert np.allclose([lp for lp, _ in ours], [lp for lp, _ in theirs], atol=1e-4)
    assert E.choose(items, ours) == E.choose(items, theirs)
    forced = GlyphLM(model=forced_gpt("B"), tokenizer=tok)
    text = forced.generate_until([Instance("generate_until", {}, ("Question: hi\nAnswer:", dict(until=["\n"], max_gen_toks=3)), 0),
                                  Instance("generate_until", {}, ("Question: hi\nAnswer:", dict(until=["BB"], max_gen_toks=3)), 1)],
                                 disable_tqdm=True)
    assert text == ["BBB", ""]  # three new tokens, or cut at the first stop string
    # a text that fits the context: one window conditioned on the eos token, i.e. the plain sum of
    # log p(token | eos, the tokens before it)
    string = "some text " * 5
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (string,), 0)], disable_tqdm=True)
    ids = tok.encode(string)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([[tok.eos_id] + ids[:-1]]))[0][0].float(), -1)
    assert rolling[0] == pytest.approx(float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum()), abs=1e-3)


# ---------------------------------------------------------------------------- protocols end to end

def test_forced_letter_model_gives_expected_accuracy(tok):
    model = forced_gpt("B")
    for protocol in ("loglik", "paper"):
        res = E.evaluate(model, tok, ["mmlu", "arc_easy", "commonsense_qa", "squad_v2"], protocol, FIX, runs=3)
        assert res["mmlu"]["mean"] == pytest.approx(100 * 3 / 7)  # golds B, C, D, B, B, C, A
        assert res["arc_easy"]["mean"] == pytest.approx(25.0)      # golds B, A, 3, D
        assert res["commonsense_qa"]["mean"] == pytest.approx(100 / 3)
        # SQuAD is generative under both protocols: a model that writes "OOO..." has the answer "O" of
        # the three ("France", "8", "O") as a substring of its output, the forced "B" model none
        assert res["squad_v2"]["mean"] == 0.0
        assert E.evaluate(forced_gpt("O"), tok, ["squad_v2"], protocol, FIX, runs=2)["squad_v2"]["mean"] == \
            pytest.approx(100 / 3)
        subj = res["mmlu"]["per_subject"]
        assert subj["abstract_algebra"]["mean"] == pytest.approx(100 / 3) and subj["world_religions"]["mean"] == 0
        assert sum(s["n"] for s in subj.values()) == 7
        assert res["mmlu"]["subject_macro_mean"] == pytest.approx((100 / 3 + 100 + 0) / 3)  # geography: golds B, B
    assert res["mmlu"]["ci95"] == 0.0 and res["mmlu"]["runs"] == [res["mmlu"]["mean"]] * 3


def test_paper_protocol_is_seeded_and_one_token_path_matches_generate(tok):
    model = tiny_gpt()
    a = E.evaluate(model, tok, ["mmlu", "arc_challenge"], "paper", FIX, runs=3, seed=7, log_samples=True)
    b = E.evaluate(model, tok, ["mmlu", "arc_challenge"], "paper", FIX, runs=3, seed=7, log_samples=True)
    for t in a:
        assert a[t]["samples"] == b[t]["samples"] and a[t]["runs"] == b[t]["runs"]
    c = E.evaluate(model, tok, ["mmlu"], "paper", FIX, runs=3, seed=8, log_samples=True)
    assert c["mmlu"]["samples"] != a["mmlu"]["samples"]
    # MMLU's single new token is drawn from one batched forward pass; model.generate with the same
    # per-item generator draws the very same tokens
    items = E.load_task("mmlu", FIX)[:4]
    fast, _ = E.sample_answers(model, tok, "mmlu", [it["prompt"] for it in items], 1, 5, 1.0, 50, 7,
                               [it["id"] for it in items], batch_size=3)
    for i, it in enumerate(items):
        ids = tok.encode(it["prompt"])
        g = E.item_generator(7, "mmlu", it["id"], "cpu")
        y = model.generate(torch.tensor([ids] * 5), 1, temperature=1.0, top_k=50, generator=g)
        assert fast[i] == [E.released_answer(tok.decode(seq), it["prompt"]) for seq in y.tolist()]
    # --limit does not change an item's samples (seeded by its id, not its position)
    lim = E.evaluate(model, tok, ["mmlu"], "paper", FIX, runs=3, seed=7, limit=1, log_samples=True)["mmlu"]["samples"]
    full = {s["id"]: s["answers"] for s in a["mmlu"]["samples"]}
    assert all(full[s["id"]] == s["answers"] for s in lim)


def test_all_tasks_both_protocols_and_long_prompts_are_truncated(tok):
    model = tiny_gpt(block_size=40)  # shorter than most prompts: truncated from the left, never a crash
    names = [t for t in E.GROUPS["all"] if not t.startswith("opus") and t != "bpb"] + ["opus_en_zh"]
    for protocol in ("paper", "loglik"):
        res = E.evaluate(model, tok, names, protocol, FIX, runs=2, limit=2)
        assert set(res) == set(names)
        assert {t: r["n"] for t, r in res.items()} == dict(mmlu=6, arc_easy=2, arc_challenge=2, commonsense_qa=2,
                                                           hellaswag=2, boolq=2, squad_v2=2, opus_en_zh=2)
        assert res["mmlu"]["truncated"] == 6 and res["arc_easy"]["truncated"] == 2  # 2 per MMLU subject
        for r in res.values():
            assert 0 <= r["mean"] <= 100
            assert len(r["runs"]) == 2 if protocol == "paper" else "runs" not in r
    assert "acc_norm" in res["hellaswag"] and "runs" not in res["hellaswag"]  # loglik: one deterministic run


def test_merged_model_evaluates(tok, tmp_path):
    a, b = tiny_gpt(seed=1), tiny_gpt(seed=2)
    m = merge.MergedGPT([a, b]).eval()
    items = E.load_task("arc_easy", FIX)
    reqs = E.encode_requests(tok, E.choice_requests(items))
    ours, _ = E.loglikelihoods(m, reqs)  # the merge's fast path: both heads only at the scored rows
    assert np.allclose([lp for lp, _ in ours], [lp for lp, _ in naive_loglik(m, reqs)], atol=1e-4)
    generic, _ = E.loglikelihoods(InterfaceOnly([a, b]), reqs)  # a model known only by its interface
    assert np.allclose([lp for lp, _ in ours], [lp for lp, _ in generic], atol=1e-4)
    same, _ = E.loglikelihoods(merge.MergedGPT([a, a]), reqs)  # a merge of two copies == that model
    single, _ = E.loglikelihoods(a, reqs)
    assert np.allclose([lp for lp, _ in same], [lp for lp, _ in single], atol=1e-4)
    # a merge FILE through the command line (model.load_model, kind "merge")
    paths = [str(tmp_path / f"e{i}.pt") for i in (1, 2)]
    for p, e in zip(paths, (a, b)):
        save_checkpoint(model_checkpoint(e, tok), p)
    _, ckpt = merge.build_merge(paths)
    save_checkpoint(ckpt, str(tmp_path / "merged.pt"))
    out = str(tmp_path / "merged.json")
    E.main([f"--ckpt={tmp_path / 'merged.pt'}", f"--data_dir={FIX}", "--tasks=arc_easy,mmlu", "--protocol=paper",
            "--runs=2", "--limit=1", f"--out={out}", "--device=cpu"])
    r = json.load(open(out))
    assert r["kind"] == "merge" and r["tasks"]["arc_easy"]["n"] == 1 and r["tasks"]["mmlu"]["n"] == 3


def test_bits_per_byte(tok, tmp_path):
    from data.common import write_dataset
    docs = ["The quick brown fox jumps over the lazy dog. " * 3, "Съешь же ещё этих мягких французских булок.", "你好，世界。" * 4]
    meta = write_dataset(str(tmp_path / "d"), docs * 3, docs, tok, source="test")
    model = tiny_gpt(block_size=32)
    res = E.evaluate(model, tok, ["bpb"], val_data=str(tmp_path / "d"))["bpb"]
    from data.common import open_split
    data = torch.from_numpy(open_split(str(tmp_path / "d"), "val", tok).astype(np.int64))
    n = (len(data) - 1) // 32
    x, y = data[:n * 32].view(n, 32), data[1:n * 32 + 1].view(n, 32)
    loss = torch.nn.functional.cross_entropy(model(x)[0].reshape(-1, 65536), y.reshape(-1)).item()
    assert res["loss"] == pytest.approx(loss, rel=1e-5)
    assert res["mean"] == pytest.approx(loss / math.log(2) * meta["val_tokens"] / meta["val_bytes"], rel=1e-5)


# ---------------------------------------------------------------------------- command line, files, bad input

def test_cli_writes_json_and_compare_table(tok, tmp_path, capsys):
    model = forced_gpt("B")
    ckpt = str(tmp_path / "forced.pt")
    save_checkpoint(model_checkpoint(model, tok), ckpt)
    out1, out2 = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    E.main([f"--ckpt={ckpt}", f"--data_dir={FIX}", "--tasks=mmlu,arc_easy", "--protocol=loglik", f"--out={out1}",
            "--device=cpu"])
    E.main(["--ckpt", ckpt, "--data_dir", FIX, "--tasks", "mmlu", "--runs", "2", "--out", out2, "--device", "cpu"])  # --key value
    r = json.load(open(out1))
    assert r["protocol"] == "loglik" and len(r["model_fingerprint"]) == 16 and r["ckpt"] == os.path.abspath(ckpt)
    assert r["substrate"] == dict(tokenizer="bvv241-2-3", tokenizer_fingerprint=tok.fingerprint, table_key=None,
                                  table_fingerprint=None)  # a trainable embedding has no frozen table
    assert r["tasks"]["mmlu"]["mean"] == pytest.approx(100 * 3 / 7) and "abstract_algebra" in r["tasks"]["mmlu"]["per_subject"]
    paper = json.load(open(out2))
    assert paper["protocol"] == "paper"  # the default, as the default task group is the paper's
    assert {k: paper["choices"][k] for k in ("runs", "temperature", "top_k", "seed")} == \
        dict(runs=2, temperature=E.TEMPERATURE, top_k=E.TOP_K, seed=E.SEED)
    assert "random.Random(0)" in paper["choices"]["items"]["squad_v2"] and paper["choices"]["items"]["limit"] is None
    capsys.readouterr()
    E.main(["--compare", out1, out2])
    text = capsys.readouterr().out
    assert "| task | metric | a (loglik) | b (paper) |" in text
    assert "| mmlu | acc | 42.86 ± " in text and "| arc_easy | acc | 25.00 ± 49.00 % |  |" in text
    assert "a (loglik): ± is item sampling" in text and "b (paper): ± is decoding noise: ± 1.96·std/√n over 2 sampled" in text
    # the forced model answers B every time under both protocols: the same items, no difference
    assert "| mmlu | acc | +0.00 % | [+0.00, +0.00] % | 7 |" in text
    assert r["tasks"]["mmlu"]["per_item"]["ids"][0] == "abstract_algebra/0" and r["intervals"]["item_ci95"].startswith(
        "item sampling: 95% percentile bootstrap")


def test_result_files_are_named_after_the_run_and_never_overwrite_another(tok, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory
    runs = {}
    for run, letter in (("run_a", "B"), ("run_b", "C")):
        (tmp_path / run).mkdir()
        runs[run] = str(tmp_path / run / "ckpt.pt")
        save_checkpoint(model_checkpoint(forced_gpt(letter, block_size=48), tok), runs[run])
        E.main([f"--ckpt={runs[run]}", f"--data_dir={FIX}", "--tasks=mmlu", "--protocol=loglik", "--device=cpu"])
    a, b = (json.load(open(tmp_path / run / "eval_ckpt_loglik.json")) for run in ("run_a", "run_b"))
    assert a["tasks"]["mmlu"]["mean"] == pytest.approx(100 * 3 / 7) and b["tasks"]["mmlu"]["mean"] == pytest.approx(200 / 7)
    assert not list(tmp_path.glob("*.json"))
    out = capsys.readouterr().out
    # the output says what trunc 7/7 means (every MMLU prompt is longer than a 48-token context)
    assert "7/7" in out and "trunc: items whose prompt was longer than the model's context (48 tokens" in out
    # the same run again: replaced; another run's file: refused, before any work, and left as it was
    E.main([f"--ckpt={runs['run_a']}", f"--data_dir={FIX}", "--tasks=mmlu", "--protocol=loglik", "--device=cpu"])
    theirs = str(tmp_path / "run_b" / "eval_ckpt_loglik.json")
    before = open(theirs).read()
    with pytest.raises(ValueError, match="eval_ckpt_loglik.json holds the results of .*run_b/ckpt.pt, not of "
                                         ".*run_a/ckpt.pt: not overwritten"):
        E.main([f"--ckpt={runs['run_a']}", f"--data_dir={FIX}", "--tasks=mmlu", f"--out={theirs}", "--protocol=loglik"])
    assert open(theirs).read() == before
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="notes.json exists and is not an eval.py result file"):
        E.main([f"--ckpt={runs['run_a']}", f"--data_dir={FIX}", "--tasks=mmlu", f"--out={tmp_path / 'notes.json'}"])
    # bpb needs --val_data: named alone it is an error, through the group `all` it is left out with a note
    with pytest.raises(ValueError, match="task bpb needs --val_data DIR"):
        E.main([f"--ckpt={runs['run_a']}", "--tasks=bpb"])
    capsys.readouterr()
    E.main([f"--ckpt={runs['run_a']}", f"--data_dir={FIX}", "--tasks=all", "--limit=1", "--runs=1", "--device=cpu"])
    out = capsys.readouterr().out
    assert "bpb (bits per byte on held-out text) not run: task bpb needs --val_data DIR" in out
    assert set(json.load(open(tmp_path / "run_a" / "eval_ckpt_paper.json"))["tasks"]) == set(E.TASKS) - {"bpb"}


def test_result_records_the_frozen_substrate(tok, tmp_path):
    """A frozen-table model's results name its table: glyph_embed's substrate key (table_info["key"])
    and the fingerprint of the table's bytes, both read back from the checkpoint."""
    from model import GPTConfig
    table = (torch.randint(0, 2, (65536, 16), generator=torch.Generator().manual_seed(0)).float() * 2 - 1)
    m = GPT(GPTConfig(vocab_size=65536, block_size=64, n_layer=1, n_head=2, d_model=32, embedding="random"), table)
    m.table_info = {"kind": "random", "dim": 16, "key": "0123456789abcdef"}
    ckpt, out = str(tmp_path / "glyph.pt"), str(tmp_path / "r.json")
    save_checkpoint(model_checkpoint(m, tok), ckpt)
    E.main([f"--ckpt={ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", "--limit=1", "--protocol=loglik", f"--out={out}",
            "--device=cpu"])
    sub = json.load(open(out))["substrate"]
    assert sub["table_key"] == "0123456789abcdef" and sub["table_fingerprint"] == table_fingerprint(m.frozen_table) is not None


def test_help_shows_every_option_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        E.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "python eval.py --compare out/eval_ckpt_paper.json" in text and "mmlu/test/{subject}_test.csv" in text
    docs = key_docs(E.__file__)
    for key, default in E.DEFAULTS.items():  # every option: its default, then its comment of the defaults block
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"--{key}="))
        assert docs[key] and line.rstrip().endswith(docs[key]), key
    assert set(E.DEFAULTS) == {"ckpt", "tasks", "protocol", "data_dir", "val_data", "limit", "runs", "temperature",
                               "top_k", "seed", "batch_size", "max_tokens", "device", "dtype", "tokenizer", "out",
                               "log_samples", "compare", "results"}  # and nothing else (no constant leaks in)
    assert (E.PROTOCOL, E.RUNS, E.TEMPERATURE, E.TOP_K, E.SEED) == ("paper", 10, 1.0, 50, 1337)
    listed = " ".join(text.split("Tasks:", 1)[1].split("Options are")[0].split())  # the docstring's list, in --help
    assert all(re.search(rf"\b{t}\b", listed) for t in list(E.TASKS) + list(E.GROUPS)), listed
    assert "paper = " + ",".join(E.GROUPS["paper"]) in listed


def test_bad_input_messages(tok, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'mmlu_pro'.*known tasks: mmlu, arc_easy"):
        E.resolve_tasks("mmlu,mmlu_pro")
    with pytest.raises(FileNotFoundError, match="ARC-Easy-Dev.jsonl: missing benchmark file"):
        E.load_task("arc_easy", str(tmp_path))
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    bad = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    bad.write_text("What is it?,a,b,c,d,A\nWhat else?,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"anatomy_test.csv:2: answer 'E' is not one of A, B, C, D"):
        E.load_task("mmlu", str(tmp_path))
    bad.write_text("What is it?,a,b,c,A\n")
    with pytest.raises(ValueError, match=r"anatomy_test.csv:1: expected 6 fields"):
        E.load_task("mmlu", str(tmp_path))
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "dev.jsonl").write_text('{"question": "q", "answer": true, "passage": "p"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"dev.jsonl:2: not valid JSON"):
        E.load_task("boolq", str(tmp_path))
    (tmp_path / "boolq" / "dev.jsonl").write_text('{"question": "q", "answer": true}\n')
    with pytest.raises(ValueError, match=r"dev.jsonl:1: missing key 'passage'"):
        E.load_task("boolq", str(tmp_path))
    not_model = tmp_path / "notes.pt"
    not_model.write_text("hello")
    with pytest.raises(ValueError, match="notes.pt: not a readable checkpoint"):
        E.main([f"--ckpt={not_model}", f"--data_dir={FIX}", "--tasks=mmlu"])
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        E.main([f"--ckpt={not_model}", "--tasks=nope"])


def test_download_cache_and_archive_layout(tmp_path, monkeypatch, tok):
    """ensure_data with an archive already in the cache (no network): verified, extracted into the
    same layout --data_dir reads."""
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ["data/test/anatomy_test.csv", "data/dev/anatomy_dev.csv"]:
            body = b"What is it?,a,b,c,d,C\n"
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    raw = buf.getvalue()
    import hashlib
    src = dict(B.SOURCES["mmlu"], size=len(raw), sha256=hashlib.sha256(raw).hexdigest(), url="https://example.invalid/data.tar")
    monkeypatch.setitem(B.SOURCES, "mmlu", src)
    dl = tmp_path / "cache" / "eval" / "downloads"
    dl.mkdir(parents=True)
    (dl / "data.tar").write_bytes(raw)
    data_dir = B.ensure_data(["mmlu"])
    assert os.listdir(os.path.join(data_dir, "mmlu", "test")) == ["anatomy_test.csv"]
    assert E.load_task("mmlu", data_dir)[0]["gold"] == 2
    # a plain file is looked for (and downloaded to) data_dir/<source>/<file name of its URL>
    body = b'{"question": "is it", "passage": "it is", "answer": true}\n'
    monkeypatch.setitem(B.SOURCES, "boolq", dict(url="https://example.invalid/dev.jsonl", size=len(body),
                                                 sha256=hashlib.sha256(body).hexdigest()))
    os.makedirs(os.path.join(data_dir, "boolq"))
    with open(os.path.join(data_dir, "boolq", "dev.jsonl"), "wb") as f:
        f.write(body)
    assert B.ensure_data(["boolq"]) == data_dir  # verified in place: example.invalid is never asked
    assert B.boolq_records(B.read_text(os.path.join(data_dir, "boolq", "dev.jsonl")), "dev.jsonl")[0]["answer"] is True


# ---------------------------------------------------------------------------- bad input: one line, before any work


@pytest.fixture(scope="module")
def tiny_ckpt(tok, tmp_path_factory):
    """A small real checkpoint (trainable embedding, 16 wide, 64-token context) for the command line."""
    path = str(tmp_path_factory.mktemp("tiny") / "ckpt.pt")
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65536, block_size=64, n_layer=1, n_head=2, d_model=16, embedding="trainable"))
    save_checkpoint(model_checkpoint(m, tok), path)
    return path


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the command line was checked")


def one_line_exit(argv):
    """script_main's answer to argv: None (a result) or its one-line message."""
    try:
        script_main("eval.py", E.main, argv)
    except SystemExit as e:
        assert isinstance(e.code, str) and e.code.startswith("eval.py: error: "), e.code
        assert "\n" not in e.code and "Traceback" not in e.code
        return e.code
    return None


BAD_VALUES = [
    ("temperature", "-1", "temperature=-1.0: expected 0 (greedy) or a finite number >= 1e-06"),
    ("temperature", "nan", "temperature=nan: expected 0 (greedy)"),
    ("temperature", "inf", "temperature=inf: expected 0 (greedy)"),
    ("temperature", "1e-9", "temperature=1e-09: expected 0 (greedy)"),  # would overflow the scaled logits
    ("temperature", "hot", "temperature expects float (default 1.0), got 'hot'"),
    ("top_k", "-1", "top_k=-1: expected a whole number >= 0 (0 = none)"),
    ("runs", "0", "runs=0: expected a whole number >= 1"),
    ("runs", "two", "runs expects int (default 10), got 'two'"),
    ("limit", "-1", "limit=-1: expected a whole number >= 0 (0 = all)"),
    ("limit", "0.5", "limit expects int (default 0), got '0.5'"),
    ("seed", "-5", "seed=-5: expected a whole number >= 0"),
    ("batch_size", "0", "batch_size=0: expected a whole number >= 1"),
    ("max_tokens", "0", "max_tokens=0: expected a whole number >= 1"),
    ("protocol", "greedy", "protocol='greedy': expected paper or loglik"),
    ("dtype", "int8", "dtype='int8': expected one of auto, float32, bfloat16, float16"),
    ("device", "gpu", "device='gpu': expected auto, cpu, cuda or cuda:N"),
    ("tasks", "mmlu,nope", "unknown task 'nope'"),
    ("tasks", " , ", "no task given (--tasks)"),
    ("data_dir", "/nonexistent/eval", "data_dir=/nonexistent/eval: no such folder"),
    ("out", "a\nb.json", "out='a\\nb.json': a path or name with a control character"),
    ("ckpt", "/nonexistent/ckpt.pt", "ckpt=/nonexistent/ckpt.pt: no such checkpoint file (/nonexistent does not exist)"),
    ("unknown_key", "1", "unknown config key 'unknown_key'"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_values_are_checked_before_any_work(key, value, message, tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "load_model", no_model)
    out = tmp_path / "r.json"
    argv = [f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", f"--out={out}", f"--{key}={value}"]
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        E.main(argv)
    assert "\n" not in str(e.value) and not out.exists()
    assert one_line_exit(argv) == f"eval.py: error: {e.value}"


def test_cuda_on_a_cpu_machine_says_so_and_blames_no_file(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(E, "load_model", no_model)
    for dev in ("cuda", "cuda:1"):
        msg = one_line_exit([f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", f"--device={dev}"])
        assert f"device={dev!r}, but torch sees no CUDA GPU here" in msg and "ckpt" not in msg
    assert not list(tmp_path.iterdir()) and not [f for f in os.listdir(os.path.dirname(tiny_ckpt)) if f.endswith(".json")]


def test_out_is_never_an_input_nor_a_folder_and_is_checked_before_the_work(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "load_model", no_model)
    (tmp_path / "notes.txt").write_text("x")
    os.symlink(tiny_ckpt, tmp_path / "link.pt")
    folder = os.path.dirname(tiny_ckpt)
    before = sorted(os.listdir(folder)), open(tiny_ckpt, "rb").read()
    for out, message in [(tiny_ckpt, "is the checkpoint"), (str(tmp_path / "link.pt"), "is the checkpoint"),
                         (folder, "holds the checkpoint"), (folder + "/", "holds the checkpoint"),
                         (str(tmp_path / "."), "is a folder: expected a file path"),
                         (str(tmp_path / "new") + "/", "is a folder"),
                         (str(tmp_path / "notes.txt" / "r.json"), "notes.txt is a file, not a folder"),
                         (str(tmp_path / "notes.txt"), "notes.txt exists and is not an eval.py result file")]:
        with pytest.raises(ValueError, match=re.escape(message)) as e:
            E.main([f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", f"--out={out}"])
        assert "\n" not in str(e.value) and os.path.basename(out.rstrip("/")) in str(e.value)
    assert (sorted(os.listdir(folder)), open(tiny_ckpt, "rb").read()) == before
    assert open(tmp_path / "notes.txt").read() == "x"

    def unwritable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    import checkpoint
    monkeypatch.setattr(checkpoint.tempfile, "TemporaryFile", unwritable)  # (root writes anywhere: simulate a read-only folder)
    with pytest.raises(ValueError, match=re.escape(f"out={tmp_path / 'sub' / 'r.json'}: cannot write in {tmp_path} "
                                                   f"(Permission denied)")):
        E.main([f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", f"--out={tmp_path / 'sub' / 'r.json'}"])


def test_a_failed_write_is_one_line_and_the_file_comes_before_the_table(tiny_ckpt, tmp_path, monkeypatch, capsys):
    argv = [f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy", "--limit=1", "--protocol=loglik"]
    out = tmp_path / "new" / "r.json"  # a folder that does not exist yet: made at write time

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(E, "write_json", full_disk)
        with pytest.raises(ValueError, match=re.escape(f"out={out}: could not write it (No space left on device)")):
            E.main(argv + [f"--out={out}"])
    assert not out.exists()

    def broken_pipe(record):  # `python eval.py ... | head` closed early: the results are on disk already
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(E, "table", broken_pipe)
    assert one_line_exit(argv + [f"--out={out}"]) == "eval.py: error: [Errno 32] Broken pipe"
    assert json.load(open(out))["tasks"]["arc_easy"]["n"] == 1


def test_a_checkpoint_with_a_nan_weight_is_refused_under_both_protocols(tok, tmp_path):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65536, block_size=64, n_layer=1, n_head=2, d_model=16, embedding="trainable"))
    ck = model_checkpoint(m, tok)
    ck["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    path = str(tmp_path / "nan.pt")
    save_checkpoint(ck, path)
    for protocol in ("paper", "loglik"):
        out = tmp_path / f"{protocol}.json"
        argv = [f"--ckpt={path}", f"--data_dir={FIX}", "--tasks=arc_easy", f"--protocol={protocol}", f"--out={out}"]
        with pytest.raises(ValueError, match=re.escape(path) + r": .*non-finite weights in transformer.h.0.mlp.c_fc.weight"):
            E.main(argv)
        assert "non-finite" in one_line_exit(argv) and not out.exists()


ARC = {"id": "q1", "question": {"stem": "Which?", "choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}]},
       "answerKey": "A"}
HS = {"ind": 7, "activity_label": "Cooking", "ctx_a": "A man", "ctx_b": "cuts", "endings": ["a", "b", "c", "d"], "label": 0}
BOOLQ = {"question": "is it", "passage": "it is", "answer": True}
SQUAD = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "In France.", "qas": [
    {"id": "s1", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}], "is_impossible": False}]}]}]}
FILES = dict(arc_easy="arc/ARC-Easy/ARC-Easy-Dev.jsonl", commonsense_qa="commonsense_qa/dev_rand_split.jsonl",
             hellaswag="hellaswag/hellaswag_val.jsonl", boolq="boolq/dev.jsonl", squad_v2="squad_v2/dev-v2.0.json",
             mmlu="mmlu/test/anatomy_test.csv", opus_en_ru="opus100/en-ru/opus.en-ru-dev.en")


def with_(obj, path, value):
    """A deep copy of obj with the value at the dotted path (list indices as numbers) replaced; DROP deletes it."""
    obj = json.loads(json.dumps(obj))
    *head, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = obj
    for k in head:
        target = target[k]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return obj


DROP = object()
jl = lambda *objs: "".join(json.dumps(o) + "\n" for o in objs).encode()
MALFORMED = [
    ("arc_easy", jl(with_(ARC, "question.choices", 5)), r":1: 'question.choices' is 5, expected a list"),
    ("arc_easy", jl(ARC, with_(ARC, "question.choices", ["a", "b"])),
     r":2: question.choices\[0\]: expected an object holding 'label', got 'a'"),
    ("arc_easy", jl(with_(ARC, "question.choices.1.label", 2)), r":1: question.choices\[1\]: 'label' is 2, expected a string"),
    ("arc_easy", jl(with_(ARC, "question.choices.1.label", "A")), r":1: the labels \['A', 'A'\] must be distinct"),
    ("arc_easy", jl(with_(ARC, "question.choices", [])), r":1: 'question.choices' is an empty list"),
    ("arc_easy", jl(with_(ARC, "question.stem", DROP)), r":1: missing key 'question.stem'"),
    ("arc_easy", jl(with_(ARC, "question", "Which?")), r":1: expected an object holding 'choices', got 'Which\?'"),
    ("arc_easy", jl(with_(ARC, "answerKey", "Z")), r":1: answerKey 'Z' is not one of the labels \['A', 'B'\]"),
    ("arc_easy", jl(with_(ARC, "answerKey", DROP)), r": item q1 has no answerKey"),
    ("arc_easy", jl(with_(ARC, "id", {"a": 1})), r":1: id \{'a': 1\} is not a string or a whole number"),
    ("arc_easy", b"[1, 2]\n", r":1: expected a JSON object per line, got \[1, 2\]"),
    ("arc_easy", b"1" * 5000 + b"\n", r":1: not readable JSON \(ValueError"),
    ("arc_easy", b"[" * 100000 + b"\n", r":1: not readable JSON \(RecursionError"),
    ("arc_easy", jl(ARC).replace(b"Which?", b"Which\\ud800?"), r":1: a string holds a lone surrogate escape"),
    ("arc_easy", b"\xff\xfe{}\n", r": not UTF-8 text \(invalid start byte at byte 0\)"),
    ("commonsense_qa", jl(with_(ARC, "question.choices.0", None)), r":1: question.choices\[0\]: expected an object"),
    ("hellaswag", jl(with_(HS, "endings", 7)), r":1: 'endings' is 7, expected a list"),
    ("hellaswag", jl(with_(HS, "endings", ["a", 3])), r":1: endings\[1\] is 3, expected a string"),
    ("hellaswag", jl(with_(HS, "endings", [])), r":1: 'endings' is an empty list"),
    ("hellaswag", jl(with_(HS, "endings", list("abcdefghijk"))), r": item 7: 11 endings; the prompt letters at most 10"),
    ("hellaswag", jl(with_(HS, "label", "x")), r":1: label 'x' is not an index into the 4 endings"),
    ("hellaswag", jl(with_(HS, "label", 4)), r":1: label 4 is not an index"),
    ("hellaswag", jl(with_(HS, "label", "²")), r":1: label '²' is not an index"),
    ("hellaswag", jl(with_(HS, "label", True)), r":1: label True is not an index"),
    ("hellaswag", jl(with_(HS, "ctx_a", None)), r":1: 'ctx_a' is None, expected a string"),
    ("boolq", jl(with_(BOOLQ, "answer", "yes")), r":1: answer 'yes' is not true/false"),
    ("boolq", jl(with_(BOOLQ, "question", 5)), r":1: 'question' is 5, expected a string"),
    ("squad_v2", json.dumps(with_(SQUAD, "data", {})).encode(), r": 'data' is \{\}, expected a list"),
    ("squad_v2", json.dumps(with_(SQUAD, "data.0.paragraphs.0.qas.0.question", DROP)).encode(),
     r": data\[0\].paragraphs\[0\].qas\[0\]: missing key 'question'"),
    ("squad_v2", json.dumps(with_(SQUAD, "data.0.paragraphs.0.qas.0.answers", "France")).encode(),
     r": data\[0\].paragraphs\[0\].qas\[0\]: 'answers' is 'France', expected a list"),
    ("squad_v2", json.dumps(with_(SQUAD, "data.0.paragraphs.0.qas.0.is_impossible", "no")).encode(),
     r": data\[0\].paragraphs\[0\].qas\[0\]: 'is_impossible' is 'no', expected true or false"),
    ("squad_v2", json.dumps(with_(SQUAD, "data.0.paragraphs.0.context", 3)).encode(),
     r": data\[0\].paragraphs\[0\]: 'context' is 3"),
    ("squad_v2", b'{"data": [', r": not valid JSON \(Expecting value at line 1 column 11\)"),
    ("squad_v2", b"\x80", r": not UTF-8 text"),
    ("mmlu", b"What?,a,b,c,d,A\n\xe9t\xe9,a,b,c,d,B\n", r": not UTF-8 text \(invalid continuation byte at byte 16\)"),
    ("mmlu", b'"' + b"x" * 200000 + b'",a,b,c,d,A\n', r":1: not readable CSV \(field larger than field limit"),
    ("opus_en_ru", b"Hello\n\xc0\n", r": not UTF-8 text \(invalid start byte at byte 6\)"),
]


@pytest.mark.parametrize("task,body,message", MALFORMED, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(MALFORMED)])
def test_a_malformed_benchmark_file_is_one_line_naming_it(task, body, message, tmp_path):
    path = tmp_path / FILES[task]
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    if task == "opus_en_ru":
        (tmp_path / "opus100/en-ru/opus.en-ru-dev.ru").write_text("Привет\nМир\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + message) as e:
        E.load_task(task, str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_malformed_benchmark_file_through_the_command_line(tiny_ckpt, tmp_path):
    path = tmp_path / "data" / FILES["arc_easy"]
    path.parent.mkdir(parents=True)
    path.write_bytes(jl(ARC, with_(ARC, "question.choices", 5)))
    msg = one_line_exit([f"--ckpt={tiny_ckpt}", f"--data_dir={tmp_path / 'data'}", "--tasks=arc_easy",
                         f"--out={tmp_path / 'r.json'}"])
    assert msg == f"eval.py: error: {path}:2: 'question.choices' is 5, expected a list"
    assert not (tmp_path / "r.json").exists()


RESULT = {"protocol": "loglik", "tasks": {"arc_easy": {"metric": "acc", "n": 4, "mean": 25.0, "ci95": 49.0,
                                                       "acc_norm": {"mean": 50.0, "ci95": 57.0}}}}
BAD_RESULTS = [
    (b"not json", r": not JSON \(Expecting value: line 1 column 1 \(char 0\)\), so not an eval.py result file"),
    (b"\xff\xfe{}", r": not UTF-8 text \(invalid start byte at byte 0\), so not an eval.py result file"),
    (b"[" * 100000, r": not JSON \(maximum recursion depth"),
    (b"{}", r": not an eval.py result file \(no 'tasks' object\)"),
    (b'"tasks"', r": not an eval.py result file \(no 'tasks' object\)"),
    (b'{"tasks": 5}', r": not an eval.py result file \(no 'tasks' object\)"),
    (b'{"tasks": {"mmlu": 5}}', r": task 'mmlu' has no 'metric'"),
    (b'{"tasks": {"mmlu": {"mean": 1.0}}}', r": task 'mmlu' has no 'metric'"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": "high"}}}', r": task 'mmlu': 'mean' / 'ci95' are not numbers"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": 1, "acc_norm": 3}}}', r": task 'mmlu': 'mean' / 'ci95'"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": 1, "item_ci95": [1]}}}', r": task 'mmlu': acc 'item_ci95' is not"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": 1, "per_item": {"acc": [1]}}}}', r": task 'mmlu': 'per_item' has no"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": 1, "per_item": {"ids": ["a", "a"]}}}}', r": task 'mmlu': 'per_item' ids repeat"),
    (b'{"tasks": {"mmlu": {"metric": "acc", "mean": 1, "per_item": {"ids": ["a"], "acc": [1, 0]}}}}',
     r": task 'mmlu': 'per_item' 'acc' is not 1 numbers, one per id"),
]


@pytest.mark.parametrize("body,message", BAD_RESULTS, ids=range(len(BAD_RESULTS)))
def test_compare_of_a_malformed_file_is_one_line_naming_it(body, message, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(RESULT))
    bad.write_bytes(body)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + message) as e:
        E.main(["--compare", str(good), str(bad)])
    assert "\n" not in str(e.value)


def test_item_bootstrap_interval_is_seeded_and_has_the_known_width():
    assert E.bootstrap_interval([]) is None
    assert E.bootstrap_interval([100.0] * 50) == [100.0, 100.0]  # every resample the same: no width
    coin = [100.0, 0.0] * 200  # 400 items, half right: the normal approximation gives 50 ± 1.96·50/20 = ± 4.9
    lo, hi = E.bootstrap_interval(coin)
    assert E.bootstrap_interval(coin) == [lo, hi] and lo == pytest.approx(45.1, abs=0.6) and hi == pytest.approx(54.9, abs=0.6)
    res = E.add_items(dict(metric="acc", mean=50.0, ci95=0.0, acc_norm=dict(mean=0.0, ci95=0.0)), [f"q{i}" for i in range(400)],
                      dict(acc=coin, acc_norm=[0.0] * 400))
    assert res["item_ci95"] == [lo, hi] and res["acc_norm"]["item_ci95"] == [0.0, 0.0]  # beside the protocol's ci95
    assert res["per_item"]["ids"][:2] == ["q0", "q1"] and res["per_item"]["acc"][:2] == [100.0, 0.0]


def result_file(path, ids, scores, protocol="paper"):
    """A constructed result file: one ARC-E task with the given per-item scores (in %)."""
    mean = sum(scores) / len(scores)
    task = dict(metric="acc", n=len(ids), mean=mean, ci95=0.0, per_item=dict(ids=ids, acc=scores))
    path.write_text(json.dumps(dict(protocol=protocol, choices=dict(runs=10), tasks=dict(arc_easy=task))))
    return str(path)


def paired_row(table):
    return next(line for line in table.splitlines()[2:] if line.startswith("| arc_easy | acc | ") and "[" in line)


def test_compare_gives_the_paired_difference_over_shared_items(tmp_path, capsys):
    ids = [f"q{i}" for i in range(200)]
    some = [100.0 * (i % 3 == 0) for i in range(200)]
    a = result_file(tmp_path / "a.json", ids, some)
    same = result_file(tmp_path / "same.json", ids, some)
    row = paired_row(E.main(["--compare", a, same]))
    assert row == "| arc_easy | acc | +0.00 % | [+0.00, +0.00] % | 200 |"  # identical files: no difference
    # all right on q0-q199 vs all wrong on q50-q249: the 150 shared items differ by exactly 100 points
    right = result_file(tmp_path / "right.json", ids, [100.0] * 200)
    wrong = result_file(tmp_path / "wrong.json", [f"q{i}" for i in range(50, 250)], [0.0] * 200)
    assert paired_row(E.main(["--compare", wrong, right])) == "| arc_easy | acc | +100.00 % | [+100.00, +100.00] % | 150 |"
    # 20 of 200 items flipped from wrong to right: +10 points, an interval that excludes 0 but not 10
    flipped = [100.0 if i < 20 else 0.0 for i in range(200)]
    table = E.main(["--compare", result_file(tmp_path / "base.json", ids, [0.0] * 200),
                    result_file(tmp_path / "better.json", ids, flipped)])
    diff, interval, n = paired_row(table).split(" | ")[2:5]
    lo, hi = (float(x) for x in interval.rstrip(" %").strip("[]").split(", "))
    assert diff == "+10.00 %" and 0 < lo < 10 < hi and n == "200 |"
    assert "better − base, paired over the items both files hold: item sampling: 95% percentile bootstrap" in table
    assert "base (paper): ± is decoding noise: ± 1.96·std/√n over 10 sampled runs" in table


def test_compare_files_out_and_positional_arguments(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(RESULT))
    b.write_text(json.dumps(dict(RESULT, protocol="paper")))
    for missing in (tmp_path / "nope.json", tmp_path):
        with pytest.raises(ValueError, match=re.escape(str(missing)) + ": cannot read it"):
            E.main(["--compare", str(a), str(missing)])
    with pytest.raises(ValueError, match="result files for --compare; the checkpoint to evaluate is --ckpt=PATH"):
        E.main([str(a), str(b)])
    with pytest.raises(ValueError, match="--compare needs result files"):
        E.main(["--compare"])
    with pytest.raises(ValueError, match=re.escape(f"out={a} is the --compare file {a}: writing there would destroy it")):
        E.main(["--compare", str(a), str(b), f"--out={a}"])
    (tmp_path / "notes.md").write_text("mine\n")
    with pytest.raises(ValueError, match="notes.md exists and is not a comparison table: not overwritten"):
        E.main(["--compare", str(a), str(b), f"--out={tmp_path / 'notes.md'}"])
    capsys.readouterr()
    table = E.main(["--compare", str(a), str(b), f"--out={tmp_path / 'cmp.md'}"])
    assert capsys.readouterr().out == table + "\n" == open(tmp_path / "cmp.md").read()
    assert table.splitlines()[0] == "| task | metric | a (loglik) | b (paper) |"
    assert "| arc_easy | acc_norm | 50.00 ± 57.00 % | 50.00 ± 57.00 % |" in table
    assert "| arc_easy | acc | - | no per-item scores (rerun eval.py) | - |" in table  # a file from before per_item
    E.main([f"--results=[{str(a)!r}]", "--compare", str(b), f"--out={tmp_path / 'cmp.md'}"])  # a table: replaced
    assert open(tmp_path / "cmp.md").read().startswith("| task | metric | a (loglik) | b (paper) |")


# ---------------------------------------------------------------------------- property tests: any command line,
# any benchmark or result file -> a result or one of our one-line errors, never another exception

PROPERTY = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
odd_numbers = st.sampled_from(["1e400", "-1e400", "5e-324", "nan", "-0.0", "1_0", "0x10", "true", "", "1e3", "2.5"])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, width=16)
                           | st.text(max_size=5), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                                         max_size=3),
                           max_leaves=6)


@PROPERTY
@given(opts=st.fixed_dictionaries({}, optional=dict(
    temperature=st.one_of(st.floats(-1, 3).map(repr), st.floats().map(repr), odd_numbers, st.text(max_size=4)),
    top_k=st.one_of(st.integers(-2, 70000).map(str), odd_numbers), runs=st.one_of(st.integers(-1, 3).map(str), odd_numbers),
    limit=st.one_of(st.integers(-1, 3).map(str), odd_numbers), seed=st.one_of(st.integers(-2, 2 ** 70).map(str), odd_numbers),
    batch_size=st.one_of(st.integers(-1, 3).map(str), odd_numbers), protocol=st.sampled_from(["paper", "loglik", "x"]),
    out=st.one_of(st.text(max_size=8), st.sampled_from(["", ".", "ckpt", "folder/", "sub/r.json", "in/file.json"])))))
def test_any_option_values_give_a_result_or_one_line(opts, tiny_ckpt, tmp_path):
    work = tempfile.mkdtemp(dir=tmp_path)
    with open(os.path.join(work, "in"), "w") as f:
        f.write("a file where a folder is expected")
    out = opts.get("out")
    if out is not None:
        out = {"ckpt": tiny_ckpt}.get(out, out)
        if ".." not in out.split("/") and out != tiny_ckpt:
            out = os.path.join(work, out.lstrip("/")) if out else ""  # never outside this test's folder
        opts["out"] = out if ".." not in out.split("/") else ""
    argv = [f"--ckpt={tiny_ckpt}", f"--data_dir={FIX}", "--tasks=arc_easy,mmlu", "--max_tokens=512"] + \
        [f"--{k}={v}" for k, v in opts.items()]
    msg = one_line_exit(argv)
    event("refused" if msg else "result")  # (--hypothesis-show-statistics: both outcomes are drawn)
    if msg is None:  # a result: written where it was asked for
        path = opts.get("out") or E.default_out(tiny_ckpt, opts.get("protocol", "paper"))
        record = json.load(open(path))
        limit = int(float(opts.get("limit", "0").replace("_", ""))) or None
        assert record["tasks"]["arc_easy"]["n"] == min(limit or 4, 4)


MUTABLE = dict(arc_easy=(ARC, ["id", "question", "question.stem", "question.choices", "question.choices.0",
                               "question.choices.0.label", "question.choices.1.text", "answerKey"]),
               hellaswag=(HS, ["ind", "activity_label", "ctx_a", "ctx_b", "endings", "endings.0", "label"]),
               boolq=(BOOLQ, ["question", "passage", "answer"]),
               squad_v2=(SQUAD, ["data", "data.0", "data.0.paragraphs", "data.0.paragraphs.0", "data.0.paragraphs.0.context",
                                 "data.0.paragraphs.0.qas", "data.0.paragraphs.0.qas.0", "data.0.paragraphs.0.qas.0.id",
                                 "data.0.paragraphs.0.qas.0.question", "data.0.paragraphs.0.qas.0.answers",
                                 "data.0.paragraphs.0.qas.0.answers.0", "data.0.paragraphs.0.qas.0.answers.0.text",
                                 "data.0.paragraphs.0.qas.0.is_impossible"]))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=65536, block_size=64, n_layer=1, n_head=2, d_model=16, embedding="trainable")).eval()


@PROPERTY
@given(data=st.data())
def test_any_benchmark_file_gives_items_or_one_line_naming_it(data, tok, tiny_model, tmp_path):
    task = data.draw(st.sampled_from(sorted(FILES)))
    if task in MUTABLE and data.draw(st.booleans()):  # a real record with one value changed or dropped
        record, paths = MUTABLE[task]
        value = data.draw(st.one_of(st.just(DROP), json_values))
        record = with_(record, data.draw(st.sampled_from(paths)), value)
        body = json.dumps(record).encode() + (b"" if task == "squad_v2" else b"\n")
    else:
        body = data.draw(st.one_of(st.binary(max_size=200), st.text(max_size=60).map(str.encode)))
    d = tempfile.mkdtemp(dir=tmp_path)
    path = os.path.join(d, FILES[task])
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(body)
    if task == "opus_en_ru":
        with open(os.path.join(d, "opus100/en-ru/opus.en-ru-dev.ru"), "wb") as f:
            f.write(body)
    try:
        items = E.load_task(task, d)
        event(f"{len(items) > 0} items")
        if items:  # what was accepted can be scored
            E.evaluate(tiny_model, tok, [task], data.draw(st.sampled_from(["paper", "loglik"])), d, runs=2)
    except ValueError as e:
        event("refused")
        assert "\n" not in str(e) and path in str(e), str(e)


@PROPERTY
@given(body=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"tasks": st.dictionaries(st.text(max_size=4), st.one_of(
                          json_values, st.fixed_dictionaries({"metric": st.one_of(st.text(max_size=4), json_values)},
                                                             optional=dict(mean=json_values, ci95=json_values,
                                                                           acc_norm=json_values))), max_size=3)},
                                             optional=dict(protocol=json_values)).map(lambda v: json.dumps(v).encode())))
def test_any_compare_file_gives_a_table_or_one_line_naming_it(body, tmp_path, capsys):
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "r.json")
    with open(path, "wb") as f:
        f.write(body)
    msg = one_line_exit(["--compare", path])
    event("refused" if msg else "table")
    assert msg is None and capsys.readouterr().out.startswith("| task | metric | r (") or path in msg


def test_a_failed_download_is_one_line_suggesting_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))

    def offline(url, dest, *args, **kwargs):
        raise SystemExit(f"cannot download {url} (ConnectionError): the boolq benchmark needs internet access")
    monkeypatch.setattr(B, "download", offline)
    with pytest.raises(ValueError, match=r"cannot download https://.*dev.jsonl \(ConnectionError\).*; or pass "
                                         r"--data_dir=DIR holding the original files") as e:
        B.ensure_data(["boolq"])
    assert "\n" not in str(e.value)
