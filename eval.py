"""
Benchmark evaluation of glyphgpt checkpoints, single or merged (docs/design.md §7).

Two protocols:
  paper   the papers' generative protocol, scored as the released `_models_benchmarking.py` scores:
          zero-shot prompts (prompts.py), a few sampled new tokens; the answer is the whole decoded
          output without `<s>`, after len(prompt) characters, stripped and upper-cased; first
          character / substring / per-item BLEU (sacrebleu.corpus_bleu, after a cut at `</S>`);
          `--runs` (10) runs on the same items, mean +- 1.96 * std(run accuracies, ddof 0) / sqrt(runs)
          in %. What the script leaves open (sampling, seeds, item samples) is ours, recorded in
          every result file. Seeded per item: reruns give the same numbers.
  loglik  deterministic multiple choice the lm-evaluation-harness way: sum of log-probabilities of
          every answer continuation given the prompt; `acc`, and `acc_norm` (normalised by the
          answer's length in UTF-8 bytes). SQuAD v2 and translation stay generative, greedy.

  python eval.py --ckpt out/ckpt.pt                      # the paper's five tasks, paper protocol
  python eval.py --ckpt out/ckpt.pt --tasks mmlu,arc_easy --protocol loglik
  python eval.py --ckpt out/merged.pt --tasks all --val_data data/wiki_en --out results/merged.json
  python eval.py --compare out/eval_ckpt_paper.json out-trainable/eval_ckpt_paper.json

Results go next to the checkpoint, named after it and the protocol (out/ckpt.pt ->
out/eval_ckpt_paper.json), or to --out; a result file of another checkpoint is never overwritten.

Data: the benchmarks' original files, downloaded once (sha256-checked) into $GLYPHGPT_CACHE/eval, or
read from `--data_dir DIR` laid out like the originals (the layout: data/benchmarks.py):
  mmlu/test/{subject}_test.csv, arc/ARC-Easy/ARC-Easy-Dev.jsonl, arc/ARC-Challenge/ARC-Challenge-Dev.jsonl,
  commonsense_qa/dev_rand_split.jsonl, squad_v2/dev-v2.0.json, hellaswag/hellaswag_val.jsonl,
  boolq/dev.jsonl, opus100/en-ru/opus.en-ru-dev.{en,ru}, opus100/en-zh/opus.en-zh-dev.{en,zh}

Speed: log-likelihood requests are grouped by prompt; continuations' shared leading tokens are
scored once, and when what is left of every option is one token (MMLU/ARC letters) all options come
out of ONE forward pass of the prompt. Rows are sorted by length and padded into batches capped by
rows and by tokens; for our GPT only the scored positions go through the 65,536-wide output head.
"""
import argparse
import hashlib
import json
import math
import os
import random
import re
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from checkpoint import checkpoint_tokenizer, load_model, write_json
from common import autocast
import prompts as P
from data import benchmarks as B
from model import GPT, sample_next

# -----------------------------------------------------------------------------
# defaults: where the released script is silent these are our choices, recorded in every result

PROTOCOL = "paper"   # the default task group is the paper's five tasks: score them as the paper does
RUNS = 10            # paper protocol: runs on the same items
TEMPERATURE = 1.0    # Hugging Face generate()'s defaults for do_sample=True, the likeliest setting
TOP_K = 50           #   of an evaluation script that "samples" without saying how
SEED = 1337
SQUAD_N, SQUAD_MAX_ANSWER, SQUAD_SAMPLE_SEED = 256, 8, 0  # 256 random answerable items, answer <= 8 chars
OPUS_N = 128         # first 128 sentence pairs of the validation (dev) file, per direction
MAX_NEW_CAP = 100    # SQuAD / translation: min(len(answer chars), 100) new tokens
BPB_NEEDS = "task bpb needs --val_data DIR (a prepared data/<name> with val.bin and meta.json)"

# task -> how it is scored. "choice": one right option among several (paper: sampled letters scored
# by first character; loglik: log-likelihood of each option). "yesno": BoolQ. "squad", "translate":
# generative under both protocols. "bpb": bits per byte on a prepared val.bin. source: the entry
# of data/benchmarks.SOURCES that holds the task's file.
TASKS = {
    "mmlu": dict(kind="choice", new_tokens=1, source="mmlu"),
    "arc_easy": dict(kind="choice", new_tokens=2, source="arc"),
    "arc_challenge": dict(kind="choice", new_tokens=2, source="arc"),
    "commonsense_qa": dict(kind="choice", new_tokens=2, source="commonsense_qa"),
    "hellaswag": dict(kind="choice", new_tokens=2, source="hellaswag"),
    "boolq": dict(kind="yesno", new_tokens=3, source="boolq"),
    "squad_v2": dict(kind="squad", source="squad_v2"),
    "opus_en_ru": dict(kind="translate", pair="en-ru", src="en", tgt="ru", source="opus_en_ru"),
    "opus_ru_en": dict(kind="translate", pair="en-ru", src="ru", tgt="en", source="opus_en_ru"),
    "opus_en_zh": dict(kind="translate", pair="en-zh", src="en", tgt="zh", source="opus_en_zh"),
    "opus_zh_en": dict(kind="translate", pair="en-zh", src="zh", tgt="en", source="opus_en_zh"),
    "bpb": dict(kind="bpb"),
}
GROUPS = {
    "paper": ["mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "squad_v2"],
    "translation": ["opus_en_ru", "opus_ru_en", "opus_en_zh", "opus_zh_en"],
    "all": list(TASKS),  # bpb only when --val_data is given (main says so otherwise)
}


def resolve_tasks(spec):
    """'mmlu,arc_easy' / 'paper' / 'all' -> list of task names (unknown names: one clear error)."""
    names = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name in GROUPS:
            names += GROUPS[name]
        elif name in TASKS:
            names.append(name)
        else:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}; "
                             f"groups: {', '.join(f'{g} ({len(v)})' for g, v in GROUPS.items())}")
    if not names:
        raise ValueError("no task given (--tasks)")
    return list(dict.fromkeys(names))


# -----------------------------------------------------------------------------
# items: the benchmarks' records (data/benchmarks.py) as prompts and scoring requests
#
# every item: id, prompt (the docs/design.md §7 generative prompt). Choice items add gold (index),
# labels (what the paper protocol's first character must equal), ll_context / ll_choices (the
# log-likelihood request strings). Generative items add answer (SQuAD) or ref (translation) and max_new.

def choice_item(id_, prompt, labels, gold, ll_context=None, ll_choices=None, norm_texts=None, **extra):
    """A multiple-choice item. Log-likelihood scoring reads the answer right after the prompt, as the
    training data writes it (prompts.with_answer): the option's label, e.g. 'B'. acc_norm divides by
    the UTF-8 length of norm_texts (default: the scored continuations)."""
    ll_choices = [P.ANSWER_SEP + lab for lab in labels] if ll_choices is None else ll_choices
    return dict(id=id_, prompt=prompt, labels=list(labels), gold=gold,
                ll_context=prompt if ll_context is None else ll_context, ll_choices=ll_choices,
                norm_bytes=[len(t.encode("utf-8")) for t in (norm_texts or ll_choices)], **extra)


def mmlu_items(data_dir, limit=None):
    items, seen = [], {}
    for r in B.mmlu_records(data_dir):
        k = seen[r["subject"]] = seen.get(r["subject"], -1) + 1
        if limit is None or k < limit:  # --limit applies per subject
            items.append(choice_item(f"{r['subject']}/{k}", P.mmlu_prompt(r["question"], r["choices"]), "ABCD",
                                     "ABCD".index(r["answer"]), subject=r["subject"]))
    return items


def arc_items(path):
    """ARC and CommonsenseQA: the dataset's own labels (a few ARC items use 1-4)."""
    items = []
    for r in B.arc_records(B.read_text(path), path):
        if r["answer"] is None:
            raise ValueError(f"{path}: item {r['id']} has no answerKey (a test split without answers?)")
        items.append(choice_item(r["id"], P.arc_prompt(r["question"], r["labels"], r["texts"]), r["labels"],
                                 r["labels"].index(r["answer"])))
    return items


def hellaswag_preprocess(text):
    # lm-evaluation-harness's cleanup of the WikiHow half of HellaSwag ([title], [step] ... markers)
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(path):
    """HellaSwag is not in the papers: loglik uses lm-eval's completion form (context, then ' ' + each
    ending, acc_norm is the usual figure); the paper protocol lists the endings as options A-D."""
    items = []
    for r in B.hellaswag_records(B.read_text(path), path):
        query = hellaswag_preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
        endings = [hellaswag_preprocess(e) for e in r["endings"]]
        labels = P.LETTERS[:len(endings)]
        items.append(choice_item(r["id"], P.arc_prompt(query, labels, endings), labels, r["label"],
                                 ll_context=query, ll_choices=[" " + e for e in endings], norm_texts=endings))
    return items


def boolq_items(path):
    labels = [P.boolq_answer(True), P.boolq_answer(False)]
    return [choice_item(r["id"], P.boolq_prompt(r["passage"], r["question"]), labels, 0 if r["answer"] else 1)
            for r in B.boolq_records(B.read_text(path), path)]


def squad_items(path, n=SQUAD_N, max_answer=SQUAD_MAX_ANSWER, sample_seed=SQUAD_SAMPLE_SEED):
    """n random answerable questions whose first answer has <= max_answer characters (a fixed sample:
    the same items for every model and run; the released script shuffles unseeded)."""
    pool = [dict(id=r["id"], prompt=P.squad_prompt(r["context"], r["question"]), answer=r["answers"][0],
                 max_new=min(len(r["answers"][0]), MAX_NEW_CAP))
            for r in B.squad_records(B.read_text(path), path) if r["answers"] and len(r["answers"][0]) <= max_answer]
    if len(pool) > n:
        pool = random.Random(sample_seed).sample(pool, n)
    return pool


def opus_items(data_dir, pair, src, tgt, n=OPUS_N):
    lines = B.opus_lines(data_dir, pair)
    return [dict(id=f"{src}-{tgt}/{i}", prompt=P.translate_prompt(src, tgt, s), ref=t, max_new=min(len(t), MAX_NEW_CAP))
            for i, (s, t) in enumerate(zip(lines[src][:n], lines[tgt][:n]))]


def load_task(name, data_dir, limit=None):
    spec = TASKS[name]
    if name == "mmlu":
        return mmlu_items(data_dir, limit)
    if name in ("arc_easy", "arc_challenge"):
        part = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        items = arc_items(os.path.join(data_dir, "arc", part, f"{part}-Dev.jsonl"))
    elif name == "commonsense_qa":
        items = arc_items(os.path.join(data_dir, "commonsense_qa", "dev_rand_split.jsonl"))
    elif name == "hellaswag":
        items = hellaswag_items(os.path.join(data_dir, "hellaswag", "hellaswag_val.jsonl"))
    elif name == "boolq":
        items = boolq_items(os.path.join(data_dir, "boolq", "dev.jsonl"))
    elif name == "squad_v2":
        items = squad_items(os.path.join(data_dir, "squad_v2", "dev-v2.0.json"))
    elif spec["kind"] == "translate":
        items = opus_items(data_dir, spec["pair"], spec["src"], spec["tgt"])
    else:
        raise ValueError(f"task {name!r} has no benchmark file")
    return items if limit is None else items[:limit]


# -----------------------------------------------------------------------------
# scoring rules of the paper protocol (the released _models_benchmarking.py) and the intervals

def released_answer(output, prompt):
    """The released script's reading of one generation: the whole decoded output (prompt + new
    tokens), `<s>` removed, the text after len(prompt) characters, stripped, upper-cased."""
    return output.replace("<s>", "")[len(prompt):].strip().upper()


def first_char_correct(answer, label):
    """MMLU / ARC / CSQA: the answer's first character is the label (' b' -> 'B': stripped, upper)."""
    return answer.strip()[:1].upper() == str(label).upper()


def first_word_correct(answer, expected):
    """BoolQ (not in the papers): the first word, lower-cased, without punctuation, equals yes / no."""
    words = re.findall(r"\w+", answer.lower())
    return bool(words) and words[0] == expected


def substring_correct(answer, expected):
    """SQuAD: upper(expected) is a substring of the upper-cased answer."""
    return expected.upper() in answer.upper()


def translation_bleu(answer, reference):
    """One item's BLEU as the released script computes it: the (upper-cased) answer cut at the first
    `</S>` (an upper-cased `</s>`), sacrebleu.corpus_bleu of that single pair against the upper-cased
    reference. corpus_bleu has no effective order: a hypothesis under 4 words scores 0.0 even when
    it equals the reference (sentence_bleu would give 100.0)."""
    import sacrebleu  # a requirement; imported here so that choice tasks do not pay for it
    hyp = answer.upper().split("</S>", 1)[0]
    return sacrebleu.corpus_bleu([hyp], [[reference.upper()]]).score


def run_interval(run_scores):
    """(mean, half-width) of per-run scores as the released script reports them:
    1.96 * np.std(run_scores) / sqrt(n_runs), numpy's population std (ddof 0)."""
    v = np.asarray(run_scores, dtype=np.float64)
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def item_interval(item_scores):
    """(mean, half-width) over the items of ONE deterministic run (the loglik protocol): 1.96 times
    the standard error with the sample std (ddof 1), as lm-evaluation-harness reports it."""
    v = np.asarray(item_scores, dtype=np.float64)
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return float(v.mean()), float(1.96 * sd / math.sqrt(v.size))


# -----------------------------------------------------------------------------
# the model side: tokenizing request pairs, batched forward passes, log-likelihoods, generation

def split_pair(context, continuation):
    """Trailing spaces of the context belong to the continuation (as lm-evaluation-harness does it)."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def encode_requests(tok, pairs):
    """(context, continuation) strings -> (context ids, continuation ids), split like lm-evaluation-
    harness: encode the whole string and the context; the continuation is what the whole adds after
    the context's tokens. One encode_batch call over the distinct strings."""
    split = [split_pair(c, k) for c, k in pairs]
    texts = list(dict.fromkeys([c for c, _ in split] + [c + k for c, k in split]))
    ids = dict(zip(texts, tok.encode_batch(texts)))
    return [(ids[c], ids[c + k][len(ids[c]):]) for c, k in split]


def logits_at(model, idx, rows, cols):
    """Logits [N, V] of the positions (rows[i], cols[i]) of idx [B, T]. Our GPT and merge.MergedGPT:
    the output head(s) run on those positions only (with a 65,536-id vocabulary the head is most of a
    small model's work). Another model may offer model.logits_at(idx, rows, cols); anything else with
    the model interface: model(idx), then pick the positions."""
    if isinstance(model, GPT):
        return model.lm_head(model.hidden_states(idx)[rows, cols])
    if hasattr(model, "combine") and hasattr(model, "hidden_states"):  # merge.MergedGPT: experts' heads at those rows
        return model.combine([h[rows, cols] for h in model.hidden_states(idx)])
    if hasattr(model, "logits_at"):
        return model.logits_at(idx, rows, cols)
    logits, _ = model(idx)
    return logits[rows, cols]


def batches(rows, batch_size, max_tokens):
    """Indices of rows (token lists) in batches: longest first (little padding), at most batch_size
    rows and max_tokens padded tokens per batch."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    batch, width = [], 0
    for i in order:
        w = max(width, len(rows[i]))
        if batch and (len(batch) == batch_size or w * (len(batch) + 1) > max_tokens):
            yield batch
            batch, w = [], len(rows[i])
        batch.append(i)
        width = w
    if batch:
        yield batch


def pad(rows, ids, device):
    width = max(len(rows[i]) for i in ids)
    x = torch.zeros((len(ids), width), dtype=torch.long)
    for b, i in enumerate(ids):
        x[b, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
    return x.to(device)


def plan_loglik(requests, block_size):
    """Turn (context ids, continuation ids) requests into forward rows. Requests with the same context
    share rows: the continuations' common leading tokens are appended once, and if every remaining
    tail is a single token all of them are read from the last position of ONE row. Otherwise each
    request gets its own row, context + continuation[:-1]. Rows longer than block_size lose tokens
    from the left (the context's start). Returns rows, targets (row, position, token, request) and
    the set of truncated requests."""
    groups = {}
    for r, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise ValueError("empty context: every request needs at least one context token")
        groups.setdefault(tuple(ctx), []).append(r)
    rows, targets, truncated = [], [], set()

    def add_row(seq, per_request):  # per_request: {request: [(position, token)]}
        cut = max(0, len(seq) - block_size)
        row = len(rows)
        rows.append(seq[cut:])
        for r, pts in per_request.items():
            if cut:
                truncated.add(r)
            targets.extend((row, p - cut, t, r) for p, t in pts if p - cut >= 0)

    for ctx, members in groups.items():
        ctx = list(ctx)
        conts = [requests[r][1] for r in members]
        lcp = 0
        while all(len(c) > lcp for c in conts) and len({c[lcp] for c in conts}) == 1:
            lcp += 1
        if all(len(c) - lcp <= 1 for c in conts):
            seq = ctx + conts[0][:lcp]
            shared = [(len(ctx) - 1 + j, conts[0][j]) for j in range(lcp)]
            add_row(seq, {r: shared + ([(len(seq) - 1, c[lcp])] if len(c) > lcp else [])
                          for r, c in zip(members, conts)})
        else:
            for r, c in zip(members, conts):
                add_row((ctx + c)[:-1], {r: [(len(ctx) - 1 + j, t) for j, t in enumerate(c)]})
    return rows, targets, truncated


@torch.no_grad()
def loglikelihoods(model, requests, batch_size=64, max_tokens=8192, dtype="auto", progress=False):
    """Sum of log-probabilities of each continuation given its context, and whether it is the greedy
    continuation: [(logprob, is_greedy)] in request order, plus the set of truncated requests (their
    context lost tokens from the left to fit block_size)."""
    device = next(model.parameters()).device
    block = model.config.block_size
    rows, targets, truncated = plan_loglik(requests, block)
    by_row = {}
    for t in targets:
        by_row.setdefault(t[0], []).append(t)
    logprob = torch.zeros(len(requests), dtype=torch.float64)
    misses = torch.zeros(len(requests), dtype=torch.long)
    bar = tqdm(total=len(rows), desc="loglik", unit="row", disable=not progress, leave=False)
    for ids in batches(rows, batch_size, max_tokens):
        tg = [t for b, i in enumerate(ids) for t in ((b,) + x[1:] for x in by_row.get(i, []))]
        if tg:
            b, pos, tok, req = (torch.tensor(c) for c in zip(*tg))
            with autocast(device, dtype):
                logits = logits_at(model, pad(rows, ids, device), b.to(device), pos.to(device))
            lp = F.log_softmax(logits.float(), dim=-1).cpu()
            logprob.index_add_(0, req, lp[torch.arange(len(tok)), tok].double())
            misses.index_add_(0, req, (lp.argmax(-1) != tok).long())
        bar.update(len(ids))
    bar.close()
    return [(float(lp), bool(m == 0)) for lp, m in zip(logprob, misses)], truncated


def fit_prompt(ids, max_len):
    """Keep the last max_len tokens (truncation from the left); -> (ids, was_truncated)."""
    return (ids[-max_len:], True) if len(ids) > max_len else (ids, False)


def item_generator(seed, task, key, device):
    """A generator seeded by (seed, task, item id): samples do not depend on batching or --limit."""
    h = int.from_bytes(hashlib.sha256(f"{seed}/{task}/{key}".encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator(device=device)
    g.manual_seed(h)
    return g


@torch.no_grad()
def sample_answers(model, tok, task, prompts, max_new, runs, temperature, top_k, seed, keys=None,
                   batch_size=64, max_tokens=8192, dtype="auto", progress=False):
    """-> ([per item: `runs` answers, each released_answer() of prompt + new tokens], n truncated).
    temperature 0 = greedy (runs = 1). keys: the items' ids, which seed their generators (default:
    their positions). A prompt longer than the context loses its beginning; its answer is then read
    after the decoded kept prompt instead of after len(prompt) characters.
    One new token (MMLU): the prompts are batched, one forward pass each, and the `runs` samples are
    drawn from that one distribution. Longer: model.generate (KV cache) on the prompt repeated
    `runs` times."""
    device = next(model.parameters()).device
    block = model.config.block_size
    encoded = tok.encode_batch(prompts)
    news = [max_new] * len(prompts) if isinstance(max_new, int) else list(max_new)
    fitted = [fit_prompt(ids, block - n) for ids, n in zip(encoded, news)]
    truncated = sum(t for _, t in fitted)
    rows = [ids for ids, _ in fitted]
    shown = [tok.decode(ids) if cut else p for (ids, cut), p in zip(fitted, prompts)]  # what len() slices off
    keys = list(range(len(prompts))) if keys is None else keys
    out = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=f"{task} generate", unit="item", disable=not progress, leave=False)
    if all(n == 1 for n in news):
        for ids in batches(rows, batch_size, max_tokens):
            b = torch.arange(len(ids), device=device)
            pos = torch.tensor([len(rows[i]) - 1 for i in ids], device=device)
            with autocast(device, dtype):
                logits = logits_at(model, pad(rows, ids, device), b, pos).float()
            for k, i in enumerate(ids):
                g = item_generator(seed, task, keys[i], device)
                drawn = sample_next(logits[k:k + 1].expand(runs, -1), temperature, top_k, g)[:, 0].tolist()
                answer = {t: released_answer(tok.decode(rows[i] + [t]), shown[i]) for t in set(drawn)}
                out[i] = [answer[t] for t in drawn]
            bar.update(len(ids))
    else:
        for i, ids in enumerate(rows):
            g = item_generator(seed, task, keys[i], device)
            idx = torch.tensor([ids] * runs, dtype=torch.long, device=device)
            with autocast(device, dtype):
                y = model.generate(idx, news[i], temperature=temperature, top_k=top_k, generator=g)
            out[i] = [released_answer(tok.decode(seq), shown[i]) for seq in y.tolist()]
            bar.update(1)
    bar.close()
    return out, truncated


# -----------------------------------------------------------------------------
# one task under one protocol

def acc_entry(correct_runs):
    """correct_runs [runs, n] booleans -> mean / ci95 (% over runs) and the per-run accuracies."""
    accs = 100.0 * np.asarray(correct_runs, dtype=np.float64).mean(axis=1)
    mean, ci = run_interval(accs)
    return dict(mean=mean, ci95=ci, runs=[float(a) for a in accs])


def item_entry(values):
    """Per-item values (one deterministic run) -> mean and the usual standard-error CI over items."""
    mean, ci = item_interval(values)
    return dict(mean=mean, ci95=ci)


def per_subject(items, correct, stat):
    """MMLU per-subject figures; correct: [runs, n] (paper) or [n] (loglik). The overall `mean` of a
    task is over items (micro, as the papers' 14,042); `subject_macro_mean` averages the subjects."""
    correct = np.asarray(correct)
    subjects = {}
    for j, it in enumerate(items):
        subjects.setdefault(it["subject"], []).append(j)
    return {s: dict(n=len(js), **stat(correct[..., js])) for s, js in sorted(subjects.items())}


def add_per_subject(res, items, correct, stat):
    res["per_subject"] = per_subject(items, correct, stat)
    res["subject_macro_mean"] = float(np.mean([v["mean"] for v in res["per_subject"].values()]))


def eval_choice_paper(model, tok, name, items, opt):
    spec = TASKS[name]
    answers, trunc = sample_answers(model, tok, name, [it["prompt"] for it in items], spec["new_tokens"],
                                    opt["runs"], opt["temperature"], opt["top_k"], opt["seed"],
                                    [it["id"] for it in items], **opt["batching"])
    if spec["kind"] == "yesno":
        ok = lambda c, it: first_word_correct(c, it["labels"][it["gold"]])
    else:
        ok = lambda c, it: first_char_correct(c, it["labels"][it["gold"]])
    correct = np.array([[ok(answers[j][r], it) for j, it in enumerate(items)] for r in range(opt["runs"])])
    res = dict(metric="acc", n=len(items), truncated=trunc, **acc_entry(correct))
    if name == "mmlu":
        add_per_subject(res, items, correct, lambda c: {k: v for k, v in acc_entry(c).items() if k != "runs"})
    samples = [dict(id=it["id"], gold=it["labels"][it["gold"]], answers=answers[j]) for j, it in enumerate(items)]
    return res, samples


def choose(items, lls):
    """Per item: index of the best option by log-likelihood (acc) and by log-likelihood per UTF-8 byte
    of the option text (acc_norm; HellaSwag: of the ending without the joining space, as lm-eval),
    lls in request order: options of item 0, then of item 1, ..."""
    k = 0
    picks, picks_norm = [], []
    for it in items:
        n = len(it["ll_choices"])
        ll = [lls[k + c][0] for c in range(n)]
        norm = [l / max(1, nb) for l, nb in zip(ll, it["norm_bytes"])]
        picks.append(int(np.argmax(ll)))
        picks_norm.append(int(np.argmax(norm)))
        k += n
    return picks, picks_norm


def choice_requests(items):
    return [(it["ll_context"], ch) for it in items for ch in it["ll_choices"]]


def eval_choice_loglik(model, tok, name, items, opt):
    reqs = encode_requests(tok, choice_requests(items))
    lls, trunc = loglikelihoods(model, reqs, **opt["batching"])
    picks, picks_norm = choose(items, lls)
    acc = [100.0 * (p == it["gold"]) for p, it in zip(picks, items)]
    acc_norm = [100.0 * (p == it["gold"]) for p, it in zip(picks_norm, items)]
    owner = [j for j, it in enumerate(items) for _ in it["ll_choices"]]  # request -> item
    truncated_items = len({owner[r] for r in trunc})
    res = dict(metric="acc", n=len(items), truncated=truncated_items, **item_entry(acc),
               acc_norm=item_entry(acc_norm))
    if name == "mmlu":
        add_per_subject(res, items, np.array(acc), item_entry)
    k, samples = 0, []
    for it, p, pn in zip(items, picks, picks_norm):
        n = len(it["ll_choices"])
        samples.append(dict(id=it["id"], gold=it["gold"], pick=p, pick_norm=pn, loglik=[lls[k + c][0] for c in range(n)]))
        k += n
    return res, samples


def eval_generative(model, tok, name, items, opt, greedy):
    kind = TASKS[name]["kind"]
    runs, temperature = (1, 0.0) if greedy else (opt["runs"], opt["temperature"])
    answers, trunc = sample_answers(model, tok, name, [it["prompt"] for it in items], [it["max_new"] for it in items],
                                    runs, temperature, opt["top_k"], opt["seed"], [it["id"] for it in items],
                                    **opt["batching"])
    if kind == "squad":
        metric = "acc"
        scores = np.array([[100.0 * substring_correct(answers[j][r], it["answer"]) for j, it in enumerate(items)]
                           for r in range(runs)])
    else:
        metric = "bleu"
        scores = np.array([[translation_bleu(answers[j][r], it["ref"]) for j, it in enumerate(items)]
                           for r in range(runs)])
    per_run = scores.mean(axis=1)
    if greedy:
        stat = item_entry(scores[0])
    else:
        mean, ci = run_interval(per_run)
        stat = dict(mean=mean, ci95=ci, runs=[float(x) for x in per_run])
    res = dict(metric=metric, n=len(items), truncated=trunc, **stat)
    samples = [dict(id=it["id"], target=it.get("answer", it.get("ref")), answers=answers[j]) for j, it in enumerate(items)]
    return res, samples


@torch.no_grad()
def eval_bpb(model, tok, val_data, limit=None, batch_size=4, dtype="auto", progress=False):
    """Bits per byte on data/<name>/val.bin: mean next-token loss over non-overlapping windows of
    block_size tokens, / ln 2, * tokens / bytes of the split (meta.json), so tokenizers compare."""
    from data.common import open_split, read_meta
    data = open_split(val_data, "val", tok)
    meta = read_meta(val_data)
    device = next(model.parameters()).device
    block = model.config.block_size
    n_windows = max(1, (len(data) - 1) // block)
    if limit is not None:
        n_windows = min(n_windows, limit)
    total, count = 0.0, 0
    for s in tqdm(range(0, n_windows, batch_size), desc="bpb", disable=not progress, leave=False):
        starts = [w * block for w in range(s, min(n_windows, s + batch_size))]
        L = min(block, len(data) - 1 - starts[-1])
        x = torch.stack([torch.from_numpy(data[a:a + L].astype(np.int64)) for a in starts]).to(device)
        y = torch.stack([torch.from_numpy(data[a + 1:a + 1 + L].astype(np.int64)) for a in starts]).to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    nats = total / count
    bpb = nats / math.log(2) * meta["val_tokens"] / meta["val_bytes"]
    return dict(metric="bpb", n=count, mean=bpb, ci95=None, loss=nats, truncated=0), []


def evaluate(model, tok, task_names, protocol=PROTOCOL, data_dir=None, limit=None, runs=RUNS,
             temperature=TEMPERATURE, top_k=TOP_K, seed=SEED, batch_size=64, max_tokens=8192, dtype="auto",
             val_data=None, progress=False, log_samples=False):
    """Evaluate `model` (anything with the GPT interface) on the tasks -> {task: result dict}."""
    if protocol not in ("paper", "loglik"):
        raise ValueError(f"protocol {protocol!r}: expected 'paper' or 'loglik'")
    model.eval()  # no dropout while scoring
    opt = dict(runs=runs, temperature=temperature, top_k=top_k, seed=seed,
               batching=dict(batch_size=batch_size, max_tokens=max_tokens, dtype=dtype, progress=progress))
    results = {}
    for name in task_names:
        t0 = time.time()
        kind = TASKS[name]["kind"]
        if kind == "bpb":
            if not val_data:
                raise ValueError(BPB_NEEDS)
            res, samples = eval_bpb(model, tok, val_data, limit, dtype=dtype, progress=progress)
        else:
            items = load_task(name, data_dir, limit)
            if not items:
                raise ValueError(f"task {name}: no items found under {data_dir}")
            if kind in ("choice", "yesno"):
                res, samples = (eval_choice_paper if protocol == "paper" else eval_choice_loglik)(model, tok, name, items, opt)
            else:
                res, samples = eval_generative(model, tok, name, items, opt, greedy=(protocol == "loglik"))
        res["seconds"] = round(time.time() - t0, 2)
        if log_samples:
            res["samples"] = samples
        results[name] = res
    return results


# -----------------------------------------------------------------------------
# result files and reporting

def model_fingerprint(model):
    """16 hex chars of sha256 over every parameter and buffer (names and float32 bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def substrate(model, tok):
    """The frozen substrate the scores stand on: the tokenizer, and the glyph table's substrate key
    (glyph_embed: what the table is built from) and fingerprint (its bytes); None for a trainable
    embedding or a checkpoint saved before tables carried a key."""
    info = getattr(model, "table_info", None) or {}
    return dict(tokenizer=tok.name, tokenizer_fingerprint=tok.fingerprint, table_key=info.get("key"),
                table_fingerprint=info.get("fingerprint"))


def our_choices(protocol, runs, temperature, top_k, seed, limit):
    """What the released script does not fix and we chose, for the result file (docs/design.md §7)."""
    items = dict(squad_v2=f"{SQUAD_N} answerable dev items whose first answer has <= {SQUAD_MAX_ANSWER} characters, "
                          f"random.Random({SQUAD_SAMPLE_SEED}).sample (the released script shuffles unseeded)",
                 opus=f"the first {OPUS_N} dev lines per direction", limit=limit)
    truncation = "a prompt longer than the context loses tokens from the left; the answer is read after the kept prompt"
    if protocol == "paper":
        return dict(scoring="released _models_benchmarking.py", runs=runs, temperature=temperature, top_k=top_k,
                    seed=seed, seeding="one generator per (seed, task, item id)", items=items, truncation=truncation)
    return dict(scoring="log-likelihood of each option (acc; acc_norm per UTF-8 byte); SQuAD and translation "
                        "greedy, answers read as the released script reads them", items=items, truncation=truncation)


def default_out(ckpt, protocol):
    """out/ckpt.pt -> out/eval_ckpt_paper.json: next to the checkpoint, named after it."""
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    return os.path.join(os.path.dirname(os.path.abspath(ckpt)), f"eval_{stem}_{protocol}.json")


def check_overwrite(path, ckpt):
    """A result file may only be replaced by new results of the same checkpoint file."""
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict) or "tasks" not in old:
        raise ValueError(f"{path} exists and is not an eval.py result file: not overwritten (pass another --out)")
    if os.path.abspath(old.get("ckpt", "")) != os.path.abspath(ckpt):
        raise ValueError(f"{path} holds the results of {old.get('ckpt')}, not of {ckpt}: not overwritten "
                         f"(pass another --out)")


def fmt(res, key="mean"):
    v = res.get(key) if key == "mean" else res.get(key, {}).get("mean")
    if v is None:
        return "-"
    ci = res.get("ci95") if key == "mean" else res[key].get("ci95")
    return f"{v:.2f}" + (f" ± {ci:.2f}" if ci is not None and not math.isnan(ci) else "")


def table(record):
    """The results as a text table, and below it what its columns mean where that is not obvious."""
    lines = [f"{'task':<16} {'metric':<9} {'n':>6}  {'score':<16} {'acc_norm':<16} {'trunc':>9}"]
    for name, r in record["tasks"].items():
        trunc = f"{r.get('truncated', 0)}/{r['n']}" if r["metric"] != "bpb" else ""
        lines.append(f"{name:<16} {r['metric']:<9} {r['n']:>6}  {fmt(r):<16} "
                     f"{fmt(r, 'acc_norm') if 'acc_norm' in r else '':<16} {trunc:>9}")
    lines.append("score: mean ± 1.96·std/√n over " + (f"{record['choices']['runs']} runs (ddof 0, the released script's)"
                                                     if record["protocol"] == "paper" else "items (ddof 1)")
                 + ("; bpb's n counts tokens" if "bpb" in record["tasks"] else ""))
    if any(r.get("truncated") for r in record["tasks"].values()):
        lines.append(f"trunc: items whose prompt was longer than the model's context ({record['block_size']} "
                     f"tokens minus the new ones) and lost its beginning; they are scored on what was left")
    return "\n".join(lines)


def compare(paths):
    """Several result files side by side, one markdown table (rows: task/metric, columns: files)."""
    files = []
    for p in paths:
        try:
            with open(p) as f:
                files.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not a readable result file ({e})") from None
        if "tasks" not in files[-1]:
            raise ValueError(f"{p}: not an eval.py result file (no 'tasks')")
    heads = [os.path.splitext(os.path.basename(p))[0] + f" ({r.get('protocol', '?')})" for p, r in zip(paths, files)]

    def cell(t, m):
        if t is None:
            return ""
        return fmt(t) if m == t["metric"] else fmt(t, m) if isinstance(t.get(m), dict) else ""

    rows = []
    for name in dict.fromkeys(t for r in files for t in r["tasks"]):
        present = [r["tasks"][name] for r in files if name in r["tasks"]]
        metrics = dict.fromkeys(m for t in present for m in [t["metric"]] + (["acc_norm"] if "acc_norm" in t else []))
        for m in metrics:
            rows.append(f"| {name} | {m} | " + " | ".join(cell(r["tasks"].get(name), m) for r in files) + " |")
    head = "| task | metric | " + " | ".join(heads) + " |"
    return "\n".join([head, "|" + "---|" * (len(heads) + 2)] + rows)


# -----------------------------------------------------------------------------
# command line

def open_model(path, device):
    try:
        return load_model(path, device=device)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: cannot load as a glyphgpt model: {e}") from None


def parse_args(argv):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ckpt", help="checkpoint (single or merged) to evaluate")
    ap.add_argument("--tasks", default="paper", help=f"comma list of tasks or groups (default: paper = "
                                                     f"{','.join(GROUPS['paper'])}); tasks: {', '.join(TASKS)}; "
                                                     f"groups: {', '.join(GROUPS)}")
    ap.add_argument("--protocol", default=PROTOCOL, choices=["paper", "loglik"], help=f"(default: {PROTOCOL})")
    ap.add_argument("--data_dir", help="read the benchmarks' original files from here (default: download them "
                                       "once into $GLYPHGPT_CACHE/eval)")
    ap.add_argument("--val_data", help="prepared dataset directory (val.bin + meta.json) for the bpb task "
                                       "(default: none, so bpb is not run)")
    ap.add_argument("--limit", type=int, help="first N items per task, per subject for MMLU (default: all)")
    ap.add_argument("--runs", type=int, default=RUNS, help=f"paper protocol: sampled runs on the same items (default: {RUNS})")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE,
                    help=f"paper protocol: sampling temperature (default: {TEMPERATURE})")
    ap.add_argument("--top_k", type=int, default=TOP_K, help=f"paper protocol: top-k, 0 = none (default: {TOP_K})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"paper protocol: seed of every item's generator (default: {SEED})")
    ap.add_argument("--batch_size", type=int, default=64, help="max rows per forward pass (default: 64)")
    ap.add_argument("--max_tokens", type=int, default=8192, help="max padded tokens per forward pass (default: 8192)")
    ap.add_argument("--device", default=device, help=f"(default: {device})")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32"], help="auto: bf16 autocast on CUDA (default: auto)")
    ap.add_argument("--tokenizer", help="override the checkpoint's tokenizer (default: the one it records)")
    ap.add_argument("--out", help="result JSON (default: <ckpt dir>/eval_<ckpt name>_<protocol>.json)")
    ap.add_argument("--log_samples", action="store_true", help="store every item's answers in the JSON (default: off)")
    ap.add_argument("--compare", nargs="+", metavar="RESULT.json", help="print result files side by side and exit")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.compare:
            print(compare(args.compare))
            return
        if not args.ckpt:
            raise ValueError("--ckpt is required (or --compare FILES)")
        tasks = resolve_tasks(args.tasks)
        notes = []
        if "bpb" in tasks and not args.val_data:
            if "bpb" in [s.strip() for s in args.tasks.split(",")]:
                raise ValueError(BPB_NEEDS)
            tasks.remove("bpb")
            notes.append(f"bpb (bits per byte on held-out text) not run: {BPB_NEEDS}")
        if args.runs < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--runs and --limit must be >= 1")
        if args.data_dir and not os.path.isdir(args.data_dir):
            raise ValueError(f"--data_dir {args.data_dir}: no such directory")
        path = args.out or default_out(args.ckpt, args.protocol)
        check_overwrite(path, args.ckpt)  # before the work, not after it
        model, ckpt = open_model(args.ckpt, args.device)
        tok = checkpoint_tokenizer(ckpt, args.ckpt, args.tokenizer)
        sources = [TASKS[t]["source"] for t in tasks if "source" in TASKS[t]]
        data_dir = args.data_dir or (B.ensure_data(sources) if sources else None)
        t0 = time.time()
        results = evaluate(model, tok, tasks, args.protocol, data_dir, args.limit, args.runs, args.temperature,
                           args.top_k or None, args.seed, args.batch_size, args.max_tokens, args.dtype,
                           args.val_data, progress=True, log_samples=args.log_samples)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"eval.py: {e}") from None
    record = dict(ckpt=os.path.abspath(args.ckpt), kind=ckpt.get("kind"), model_fingerprint=model_fingerprint(model),
                  substrate=substrate(model, tok), protocol=args.protocol,
                  choices=our_choices(args.protocol, args.runs, args.temperature, args.top_k or None, args.seed, args.limit),
                  block_size=model.config.block_size, data_dir=data_dir, device=args.device,
                  seconds=round(time.time() - t0, 1), created=time.strftime("%Y-%m-%dT%H:%M:%S"), tasks=results)
    write_json(path, record)
    print(table(record))
    for note in notes:
        print(note)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
