"""
Benchmark evaluation of glyphgpt checkpoints, single or merged (docs/design.md §7).

Two protocols:
  paper   the papers' generative protocol, scored as the released `_models_benchmarking.py` scores:
          zero-shot prompts (prompts.py), a few sampled new tokens; the answer is the whole decoded
          output without `<s>`, after len(prompt) characters, stripped and upper-cased; first
          character / substring / per-item BLEU (sacrebleu.corpus_bleu, after a cut at `</S>`);
          `--runs` (10) runs on the same items, mean +- 1.96 * std(run accuracies, ddof 0) / sqrt(runs)
          in % (decoding noise only). What the script leaves open (sampling, seeds, item samples) is ours, recorded in
          every result file. Seeded per item: reruns give the same numbers.
  loglik  deterministic multiple choice the lm-evaluation-harness way: sum of log-probabilities of
          every answer continuation given the prompt; `acc`, and `acc_norm` (normalised by the
          answer's length in UTF-8 bytes). SQuAD v2 and translation stay generative, greedy.

  python eval.py --ckpt=out/ckpt.pt                      # the paper's five tasks, paper protocol
  python eval.py --ckpt=out/ckpt.pt --tasks=mmlu,arc_easy --protocol=loglik --limit=50
  python eval.py --ckpt=out/merged.pt --tasks=all --val_data=data/wiki_en --out=results/merged.json
  python eval.py --compare out/eval_ckpt_paper.json out-trainable/eval_ckpt_paper.json  # + paired intervals
  python eval.py --help                                  # every option, its default and meaning

Tasks: mmlu, arc_easy, arc_challenge, commonsense_qa, hellaswag, boolq, squad_v2, opus_en_ru,
opus_ru_en, opus_en_zh, opus_zh_en, bpb (bits per byte on --val_data). Groups: paper =
mmlu,arc_easy,arc_challenge,commonsense_qa,squad_v2 (the default), translation = the four opus_*, all.

Options are the house style (configurator.py): --key=value or --key value, a bare --flag for a
boolean, config files of `key = value` lines (ending in .py); the other positional arguments are
the result files of --compare.

Intervals: every task has two. `ci95` is the protocol's own (paper: decoding noise over the runs;
loglik: the normal approximation over items); `item_ci95` is a 95% percentile bootstrap over the
items (the error of having drawn these items and not others, which for a few hundred items is
larger than most differences between models). Each task stores its per-item scores (`per_item`),
so `--compare` gives, for every later file against the first, the difference and its paired
bootstrap interval over the items both files share: a difference whose interval holds 0 is not
shown to be real.

Results go next to the checkpoint, named after it and the protocol (out/ckpt.pt ->
out/eval_ckpt_paper.json), or to --out; a result file of another checkpoint is never overwritten,
and --out is never an input (the checkpoint, a --compare file) nor a folder. Every value and the
place of the result file are checked before the model is loaded; the result file is written before
the table is printed.

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
import hashlib
import math
import os
import random
import re
import sys
import time
import unicodedata

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

import prompts
import train
from checkpoint import atomic_write, check_output, load_model, missing_checkpoint_hint, read_json, write_json
from common import (autocast, bar_on, check_sampling, fail, precision_context, resolve_device,
                    resolve_dtype, script_main, shown)
from configurator import configure, defaults_from, key_docs
from data import benchmarks
from data.common import MixtureData, open_split, read_meta
from model import GPT, sample_next
from unicode_tokenizer import checkpoint_tokenizer

# -----------------------------------------------------------------------------
# command-line defaults (python eval.py --help lists them). Where the released script is silent the
# values are our choices, recorded in every result file.
ckpt = ""  # checkpoint (single or merged) to evaluate
tasks = "paper"  # comma list of tasks and groups (listed above)
protocol = "paper"  # paper (the papers' sampled protocol, for the papers' tasks) | loglik (log-likelihood)
data_dir = ""  # the benchmarks' original files (layout above); "" = download them once to $GLYPHGPT_CACHE/eval
val_data = ""  # prepared dataset folder (val.bin + meta.json) for the bpb task; "" = bpb is not run
limit = 0  # first N items per task (per subject for MMLU); 0 = all
runs = 10  # paper protocol: sampled runs on the same items
temperature = 1.0  # paper protocol: sampling temperature, 0 = greedy (1.0, top_k 50: HF generate()'s sampling defaults)
top_k = 50  # paper protocol: sample among the top_k likeliest tokens; 0 = none
seed = 1337  # paper protocol: seeds every item's generator (with the task and the item's id)
batch_size = 64  # max rows per forward pass
max_tokens = 8192  # max padded tokens per forward pass
device = "auto"  # auto | cpu | cuda | cuda:N
dtype = "auto"  # auto (bfloat16 autocast on a GPU that has it, else float32) | float32 | bfloat16 | float16
tokenizer = ""  # override the checkpoint's tokenizer; "" = the one it records
out = ""  # result JSON; "" = <ckpt dir>/eval_<ckpt name>_<protocol>.json (with --compare: the table, written here)
log_samples = False  # store every item's answers in the result JSON
# --compare is a flag and its files are positional (a list key cannot be followed by several paths)
compare = False  # print the result files given as positional arguments side by side (markdown) and exit
results = []  # the result files of --compare: python eval.py --compare a.json b.json
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())  # only the keys above: the constants below are not options

PROTOCOL, RUNS, TEMPERATURE, TOP_K, SEED = protocol, runs, temperature, top_k, seed  # evaluate()'s defaults
PATH_KEYS = ("ckpt", "data_dir", "val_data", "tokenizer", "out")  # with `results`: no control characters
SQUAD_N, SQUAD_MAX_ANSWER, SQUAD_SAMPLE_SEED = 256, 8, 0  # 256 random answerable items, answer <= 8 chars
OPUS_N = 128         # first 128 sentence pairs of the validation (dev) file, per direction
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 10_000, 0  # item bootstrap: fixed, so a rerun prints the same interval
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
    ll_choices = [prompts.ANSWER_SEP + lab for lab in labels] if ll_choices is None else ll_choices
    return dict(id=id_, prompt=prompt, labels=list(labels), gold=gold,
                ll_context=prompt if ll_context is None else ll_context, ll_choices=ll_choices,
                norm_bytes=[len(t.encode("utf-8")) for t in (norm_texts or ll_choices)], **extra)


def mmlu_items(data_dir, limit=None):
    items, seen = [], {}
    for r in benchmarks.mmlu_records(data_dir):
        k = seen[r["subject"]] = seen.get(r["subject"], -1) + 1
        if limit is None or k < limit:  # --limit applies per subject
            items.append(choice_item(f"{r['subject']}/{k}", prompts.mmlu_prompt(r["question"], r["choices"]), "ABCD",
                                     "ABCD".index(r["answer"]), subject=r["subject"]))
    return items


def arc_items(path):
    """ARC and CommonsenseQA: the dataset's own labels (a few ARC items use 1-4)."""
    items = []
    for r in benchmarks.arc_records(benchmarks.read_text(path), path):
        if r["answer"] is None:
            raise ValueError(f"{path}: item {r['id']} has no answerKey (a test split without answers?)")
        items.append(choice_item(r["id"], prompts.arc_prompt(r["question"], r["labels"], r["texts"]), r["labels"],
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
    for r in benchmarks.hellaswag_records(benchmarks.read_text(path), path):
        query = hellaswag_preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
        endings = [hellaswag_preprocess(e) for e in r["endings"]]
        if len(endings) > len(prompts.LETTERS):
            fail(f"{path}: item {r['id']}: {len(endings)} endings; the prompt letters at most "
                 f"{len(prompts.LETTERS)} (A-J)")
        labels = prompts.LETTERS[:len(endings)]
        items.append(choice_item(r["id"], prompts.arc_prompt(query, labels, endings), labels, r["label"],
                                 ll_context=query, ll_choices=[" " + e for e in endings], norm_texts=endings))
    return items


def boolq_items(path):
    labels = [prompts.boolq_answer(True), prompts.boolq_answer(False)]
    return [choice_item(r["id"], prompts.boolq_prompt(r["passage"], r["question"]), labels, 0 if r["answer"] else 1)
            for r in benchmarks.boolq_records(benchmarks.read_text(path), path)]


def squad_items(path, n=SQUAD_N, max_answer=SQUAD_MAX_ANSWER, sample_seed=SQUAD_SAMPLE_SEED):
    """n random answerable questions whose first answer has <= max_answer characters (a fixed sample:
    the same items for every model and run; the released script shuffles unseeded)."""
    pool = [dict(id=r["id"], prompt=prompts.squad_prompt(r["context"], r["question"]), answer=r["answers"][0],
                 max_new=min(len(r["answers"][0]), MAX_NEW_CAP))
            for r in benchmarks.squad_records(benchmarks.read_text(path), path)
            if r["answers"] and len(r["answers"][0]) <= max_answer]
    if len(pool) > n:
        pool = random.Random(sample_seed).sample(pool, n)
    return pool


def opus_items(data_dir, pair, src, tgt, n=OPUS_N):
    lines = benchmarks.opus_lines(data_dir, pair)
    return [dict(id=f"{src}-{tgt}/{i}", prompt=prompts.translate_prompt(src, tgt, s), ref=t,
                 max_new=min(len(t), MAX_NEW_CAP))
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


def bootstrap_interval(values, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
    """[lo, hi]: the 95% percentile interval of the mean of per-item `values` when the items are drawn
    again with replacement (seeded: the same values give the same interval); None for no items. Given
    per-item differences of two models on the same items, this is the paired interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // v.size)  # resamples drawn at once: bounded memory for MMLU's 14,042 items
    for s in range(0, resamples, chunk):
        k = min(chunk, resamples - s)
        means[s:s + k] = v[rng.integers(0, v.size, (k, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def add_items(res, ids, scores):
    """Store each metric's per-item scores (`per_item`, what --compare pairs) and its item-bootstrap
    interval (`item_ci95`, beside the protocol's `ci95`). scores: {metric: per-item values}, a paper
    run's value of an item being its mean over the runs."""
    res["per_item"] = dict(ids=list(ids))
    for metric, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        res["per_item"][metric] = [round(float(x), 4) for x in values]
        (res if metric == res["metric"] else res[metric])["item_ci95"] = bootstrap_interval(values)
    return res


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
    """Logits [N, V] of the positions (rows[i], cols[i]) of idx [B, T]. Our GPT and model.MergedGPT:
    the output head(s) run on those positions only (with a 65,536-id vocabulary the head is most of a
    small model's work). Another model may offer model.logits_at(idx, rows, cols); anything else with
    the model interface: model(idx), then pick the positions."""
    if isinstance(model, GPT):
        return model.lm_head(model.hidden_states(idx)[rows, cols])
    if hasattr(model, "combine") and hasattr(model, "hidden_states"):  # model.MergedGPT: experts' heads at those rows
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
    precision = resolve_dtype(dtype, str(device))  # once: on a GPU it asks the device about bf16
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
            with precision_context(precision):
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
    precision = resolve_dtype(dtype, str(device))  # once: on a GPU it asks the device about bf16
    block = model.config.block_size
    encoded = tok.encode_batch(prompts)
    news = [max_new] * len(prompts) if isinstance(max_new, int) else list(max_new)
    fitted = [fit_prompt(ids, block - n) for ids, n in zip(encoded, news)]
    truncated = sum(t for _, t in fitted)
    rows = [ids for ids, _ in fitted]
    kept = [tok.decode(ids) if cut else p for (ids, cut), p in zip(fitted, prompts)]  # what len() slices off
    keys = list(range(len(prompts))) if keys is None else keys
    out = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=f"{task} generate", unit="item", disable=not progress, leave=False)
    if all(n == 1 for n in news):
        for ids in batches(rows, batch_size, max_tokens):
            b = torch.arange(len(ids), device=device)
            pos = torch.tensor([len(rows[i]) - 1 for i in ids], device=device)
            with precision_context(precision):
                logits = logits_at(model, pad(rows, ids, device), b, pos).float()
            for k, i in enumerate(ids):
                g = item_generator(seed, task, keys[i], device)
                drawn = sample_next(logits[k:k + 1].expand(runs, -1), temperature, top_k, g)[:, 0].tolist()
                answer = {t: released_answer(tok.decode(rows[i] + [t]), kept[i]) for t in set(drawn)}
                out[i] = [answer[t] for t in drawn]
            bar.update(len(ids))
    else:
        for i, ids in enumerate(rows):
            g = item_generator(seed, task, keys[i], device)
            idx = torch.tensor([ids] * runs, dtype=torch.long, device=device)
            with precision_context(precision):
                y = model.generate(idx, news[i], temperature=temperature, top_k=top_k, generator=g)
            out[i] = [released_answer(tok.decode(seq), kept[i]) for seq in y.tolist()]
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
    add_items(res, [it["id"] for it in items], dict(acc=100.0 * correct.mean(axis=0)))
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
    add_items(res, [it["id"] for it in items], dict(acc=acc, acc_norm=acc_norm))
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
    add_items(res, [it["id"] for it in items], {metric: scores.mean(axis=0)})
    samples = [dict(id=it["id"], target=it.get("answer", it.get("ref")), answers=answers[j]) for j, it in enumerate(items)]
    return res, samples


@torch.no_grad()
def eval_bpb(model, tok, val_data, limit=None, batch_size=4, dtype="auto", progress=False):
    """Bits per byte on data/<name>/val.bin: mean next-token loss over non-overlapping windows of
    block_size tokens, / ln 2, * tokens / bytes of the split (meta.json), so tokenizers compare."""
    data = open_split(val_data, "val", tok)
    meta = read_meta(val_data)
    device = next(model.parameters()).device
    precision = resolve_dtype(dtype, str(device))  # once: on a GPU it asks the device about bf16
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
        with precision_context(precision):
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    nats = total / count
    bpb = nats / math.log(2) * meta["val_tokens"] / meta["val_bytes"]
    return dict(metric="bpb", n=count, mean=bpb, ci95=None, loss=nats, truncated=0), []


def check_options(protocol=PROTOCOL, runs=RUNS, temperature=TEMPERATURE, top_k=TOP_K, seed=SEED, limit=None,
                  batch_size=64, max_tokens=8192):
    """The protocol and the numbers of a run, checked before any work: one line naming the key, its
    value and what it may be. limit and top_k: None or 0 = none."""
    if protocol not in ("paper", "loglik"):
        fail(f"protocol={protocol!r}: expected paper or loglik")
    whole = dict(runs=(runs, 1, ""), limit=(0 if limit is None else limit, 0, " (0 = all)"),
                 seed=(seed, 0, ""), batch_size=(batch_size, 1, ""), max_tokens=(max_tokens, 1, ""))
    for key, (v, lo, note) in whole.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            fail(f"{key}={v!r}: expected a whole number >= {lo}{note}")
    check_sampling(temperature, top_k)


def evaluate(model, tok, task_names, protocol=PROTOCOL, data_dir=None, limit=None, runs=RUNS,
             temperature=TEMPERATURE, top_k=TOP_K, seed=SEED, batch_size=64, max_tokens=8192, dtype="auto",
             val_data=None, progress=False, log_samples=False):
    """Evaluate `model` (anything with the GPT interface) on the tasks -> {task: result dict}.
    limit / top_k: None or 0 = all / none."""
    check_options(protocol, runs, temperature, top_k, seed, limit, batch_size, max_tokens)
    limit, top_k = limit or None, top_k or None
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
        old = read_json(path, "a result file")
    except ValueError:
        old = None
    if not isinstance(old, dict) or "tasks" not in old:
        fail(f"{shown(path)} exists and is not an eval.py result file: not overwritten (pass another --out)")
    if not isinstance(old.get("ckpt"), str) or os.path.abspath(old["ckpt"]) != os.path.abspath(ckpt):
        fail(f"{shown(path)} holds the results of {shown(str(old.get('ckpt')))}, not of {shown(ckpt)}: not "
             f"overwritten (pass another --out)")


def write_out(path, write):
    """write(path) -> one line naming the path if it fails (a full disk, a folder gone meanwhile)."""
    try:
        write(path)
    except (OSError, UnicodeEncodeError) as e:
        fail(f"out={shown(path)}: could not write it ({getattr(e, 'strerror', None) or e})")


UNITS = {"acc": "%", "acc_norm": "%", "bleu": "BLEU", "bpb": "bits/byte"}  # what a task's numbers count


def interval_labels(protocol, runs):
    """What each interval of a result file measures, in words: stored in the file, printed under tables."""
    if protocol == "paper":
        ci = (f"decoding noise: ± 1.96·std/√n over {runs} sampled runs on the same items (ddof 0, the released "
              f"script's)")
    elif protocol == "loglik":
        ci = "item sampling: ± 1.96·std/√n over the items of one deterministic run (ddof 1)"
    else:
        ci = f"± as protocol {protocol!r} defines it"
    return dict(ci95=ci, item_ci95=f"item sampling: 95% percentile bootstrap over items ({BOOTSTRAP_RESAMPLES:,} "
                                   f"resamples, seed {BOOTSTRAP_SEED})")


def entry_of(task, metric):
    """The dict holding a metric's figures: the task itself for its main metric, else task[metric]."""
    return task if metric == task["metric"] else task.get(metric) if isinstance(task.get(metric), dict) else None


def fmt(task, metric=None):
    """'42.86 ± 3.10 %': a metric's mean and its protocol interval (ci95), with the unit."""
    metric = metric or task["metric"]
    e = entry_of(task, metric)
    if e is None or e.get("mean") is None:
        return "-"
    ci = e.get("ci95")
    return f"{e['mean']:.2f}" + (f" ± {ci:.2f}" if ci is not None and math.isfinite(ci) else "") \
        + f" {UNITS.get(metric, '')}".rstrip()


def fmt_item(task, metric=None):
    """'[38.10, 47.62] %': a metric's item-bootstrap interval, '' where the task has none (bpb)."""
    e = entry_of(task, metric or task["metric"])
    iv = e.get("item_ci95") if e else None
    return f"[{iv[0]:.2f}, {iv[1]:.2f}] {UNITS.get(metric or task['metric'], '')}".rstrip() if iv else ""


def metrics_of(task):
    return [task["metric"]] + (["acc_norm"] if isinstance(task.get("acc_norm"), dict) else [])


def table(record):
    """The results as a text table, and below it what its intervals measure."""
    lines = [f"{'task':<16} {'metric':<9} {'n':>6}  {'score ± ci95':<20} {'item_ci95':<22} {'trunc':>9}"]
    for name, r in record["tasks"].items():
        trunc = f"{r.get('truncated', 0)}/{r['n']}" if r["metric"] != "bpb" else ""
        for m in metrics_of(r):
            lines.append(f"{name:<16} {m:<9} {r['n']:>6}  {fmt(r, m):<20} {fmt_item(r, m):<22} "
                         f"{trunc if m == r['metric'] else '':>9}")
    labels = record["intervals"]
    lines += [f"ci95: {labels['ci95']}", f"item_ci95: {labels['item_ci95']}",
              "units: acc in %, bleu in BLEU points" + (", bpb in bits per byte (its n counts tokens)"
                                                        if "bpb" in record["tasks"] else "")]
    if any(r.get("truncated") for r in record["tasks"].values()):
        lines.append(f"trunc: items whose prompt was longer than the model's context ({record['block_size']} "
                     f"tokens minus the new ones) and lost its beginning; they are scored on what was left")
    return "\n".join(lines)


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_per_item(path, name, t):
    """A task's per_item (ids and per-metric scores, what --compare pairs) and item_ci95s, if present."""
    bad = lambda what: fail(f"{shown(path)}: task {name!r}: {what}: not an eval.py result file")
    for m in metrics_of(t):
        iv = entry_of(t, m).get("item_ci95")
        if iv is not None and not (isinstance(iv, list) and len(iv) == 2 and all(map(finite, iv))):
            bad(f"{m} 'item_ci95' is not [lo, hi]")
    if "per_item" not in t:
        return
    p = t["per_item"]
    if not isinstance(p, dict) or not isinstance(p.get("ids"), list) or not all(isinstance(i, str) for i in p["ids"]):
        bad("'per_item' has no list of string 'ids'")
    if len(set(p["ids"])) != len(p["ids"]):
        bad("'per_item' ids repeat")
    for m, v in p.items():
        if m != "ids" and not (isinstance(v, list) and len(v) == len(p["ids"]) and all(map(finite, v))):
            bad(f"'per_item' {m!r} is not {len(p['ids'])} numbers, one per id")


def read_result(path):
    """An eval.py result file -> its dict, checked to hold what compare_table reads (one line naming
    the file otherwise)."""
    r = read_json(path, "an eval.py result file")
    if not isinstance(r, dict) or not isinstance(r.get("tasks"), dict):
        fail(f"{shown(path)}: not an eval.py result file (no 'tasks' object)")
    number = lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
    for name, t in r["tasks"].items():
        if not isinstance(t, dict) or not isinstance(t.get("metric"), str):
            fail(f"{shown(path)}: task {name!r} has no 'metric': not an eval.py result file")
        for entry in [t] + ([t["acc_norm"]] if "acc_norm" in t else []):
            if not isinstance(entry, dict) or not all(number(entry.get(k)) for k in ("mean", "ci95")):
                fail(f"{shown(path)}: task {name!r}: 'mean' / 'ci95' are not numbers: not an eval.py result file")
        check_per_item(path, name, t)
    return r


def paired_difference(a, b, metric):
    """Task dicts of two files -> (mean of b - a, paired bootstrap [lo, hi], shared items), over the items
    both hold by id; None when either has no per-item scores for the metric."""
    pa, pb = a.get("per_item") or {}, b.get("per_item") or {}
    if metric not in pa or metric not in pb:
        return None
    sa = dict(zip(pa["ids"], pa[metric]))
    shared = [(sa[i], v) for i, v in zip(pb["ids"], pb[metric]) if i in sa]
    if not shared:
        return 0.0, None, 0
    d = np.array([v - u for u, v in shared])
    return float(d.mean()), bootstrap_interval(d), len(shared)


def compare_table(paths):
    """Several result files side by side, one markdown table (rows: task/metric, columns: files), what
    each file's ± measures, then every later file against the first: the paired difference per task."""
    files = [read_result(p) for p in paths]
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    heads = [n + f" ({r.get('protocol', '?')})" for n, r in zip(names, files)]
    cell = lambda t, m: "" if t is None or m not in metrics_of(t) else fmt(t, m)
    rows, pairs = [], []
    for name in dict.fromkeys(t for r in files for t in r["tasks"]):
        present = [r["tasks"][name] for r in files if name in r["tasks"]]
        for m in dict.fromkeys(m for t in present for m in metrics_of(t)):
            rows.append(f"| {name} | {m} | " + " | ".join(cell(r["tasks"].get(name), m) for r in files) + " |")
            pairs.append((name, m))
    lines = ["| task | metric | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 2)] + rows + [""]
    for head, r in zip(heads, files):
        choices = r.get("choices") if isinstance(r.get("choices"), dict) else {}
        lines.append(f"{head}: ± is {interval_labels(r.get('protocol'), choices.get('runs', '?'))['ci95']}.")
    lines.append("Units: acc in %, bleu in BLEU points, bpb in bits per byte.")
    for k in range(1, len(files)):
        lines += ["", f"{names[k]} − {names[0]}, paired over the items both files hold: "
                      f"{interval_labels(None, None)['item_ci95']} of the per-item differences. "
                      f"An interval holding 0 does not show a real difference.", "",
                  "| task | metric | difference | paired 95% interval | shared items |", "|---|---|---|---|---|"]
        for name, m in pairs:
            a, b = files[0]["tasks"].get(name), files[k]["tasks"].get(name)
            if a is None or b is None or m not in metrics_of(a) or m not in metrics_of(b):
                continue
            got = paired_difference(a, b, m)
            unit = UNITS.get(m, "")
            if got is None:
                lines.append(f"| {name} | {m} | - | no per-item scores (rerun eval.py) | - |")
            else:
                diff, iv, n = got
                lines.append(f"| {name} | {m} | {diff:+.2f} {unit} | "
                             + (f"[{iv[0]:+.2f}, {iv[1]:+.2f}] {unit}" if iv else "-") + f" | {n} |")
    return "\n".join(lines)


TABLE_HEAD = "| task | metric |"  # the first line of a compare table: what --compare --out may replace


# -----------------------------------------------------------------------------
# per-domain validation (merge.py's comparison of the experts and their merge): train.py's own
# validation, the same fixed batches for every model

def domain_data(names, cfg, tok, device):
    """-> (train.py config, MixtureData) of the datasets to score (cfg: eval_iters, batch_size,
    block_size, data_root), checked and opened before anything is written."""
    for key in ("eval_iters", "batch_size", "block_size"):
        if cfg[key] < 1:
            fail(f"{key}={cfg[key]}: expected a positive whole number")
    tcfg = {**train.DEFAULTS, "datasets": {n: 1.0 for n in names}, "data_root": cfg["data_root"],
            "batch_size": cfg["batch_size"], "block_size": cfg["block_size"], "eval_iters": cfg["eval_iters"]}
    return tcfg, MixtureData(tcfg, tok, device)


class OneDataset:
    """Dataset k of a MixtureData as train.evaluate reads a whole mixture, so that validation reports
    each (model, dataset) as it finishes; each batch it hands out moves a progress bar."""

    def __init__(self, data, k, bar):
        self.data, self.k, self.bar = data, k, bar
        self.names, self.weights, self.device = [data.names[k]], [1.0], data.device

    def batch(self, split, a, b):
        self.bar.update(1)
        return self.data.batch(split, a, self.k)

    def bytes_per_token(self, b):
        return self.data.bytes_per_token(self.k)


def evaluate_domains(models, tcfg, data, device, progress="auto"):
    """-> {model label: {dataset: {"loss", "bpb"}}} on train.py's fixed validation batches; a line
    per model and dataset as it goes (one takes seconds to minutes), and a bar over its batches on a
    terminal (common.bar_on)."""
    print(f"validation: {tcfg['eval_iters']} batches x {tcfg['batch_size']} x {tcfg['block_size']} tokens per "
          f"dataset, {len(data.names)} dataset(s), {len(models)} models", flush=True)
    results = {}
    for i, (label, m) in enumerate(models.items(), 1):
        results[label] = {}
        for k, name in enumerate(data.names):
            t0 = time.time()
            with tqdm(total=tcfg["eval_iters"], desc=f"{i}/{len(models)} {name}", unit="batch", leave=False,
                      disable=not bar_on(progress)) as bar:
                r = train.evaluate(m, OneDataset(data, k, bar), tcfg, autocast(device))["val"][name]
            results[label][name] = r
            print(f"  {i}/{len(models)} {label}, {name}: loss {r['loss']:.4f}, {r['bpb']:.4f} bits/byte "
                  f"({time.time() - t0:.1f} s)", flush=True)
    return results


def domain_table(results, names):
    """The markdown table of evaluate_domains' results: loss and bits per byte, a row per model."""
    head = "| model | " + " | ".join(f"{n} loss | {n} bpb" for n in names) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(names)]
    for label, per in results.items():
        rows.append(f"| {label} | " + " | ".join(f"{per[n]['loss']:.4f} | {per[n]['bpb']:.4f}" for n in names) + " |")
    return "\n".join(rows)


# -----------------------------------------------------------------------------
# command line

def check_paths(cfg):
    """Path options: a control character (a newline, a tab) in one is a quoting slip, not a file name."""
    for key, value in [(k, cfg[k]) for k in PATH_KEYS] + [("results", p) for p in cfg["results"]]:
        if not isinstance(value, str) or any(unicodedata.category(c) == "Cc" for c in value):
            fail(f"{key}={value!r}: a path or name with a control character (newline, tab, NUL, ...) is refused")


def run_compare(cfg):
    if not cfg.compare:
        fail(f"positional arguments {' '.join(map(shown, cfg.results))} are result files for --compare; "
             f"the checkpoint to evaluate is --ckpt=PATH")
    if not cfg.results:
        fail("--compare needs result files: python eval.py --compare a.json b.json")
    if cfg.out:
        check_output(cfg.out, [("--compare file", p) for p in cfg.results], "out", file_name="eval.json")
        if os.path.exists(cfg.out):
            try:
                with open(cfg.out, encoding="utf-8") as f:
                    first = f.readline()
            except (OSError, ValueError):
                first = ""
            if not first.startswith(TABLE_HEAD):
                fail(f"{shown(cfg.out)} exists and is not a comparison table: not overwritten (pass another --out)")
    text = compare_table(cfg.results)
    if cfg.out:
        def write(path):
            with atomic_write(path) as f:
                f.write(text + "\n")
        write_out(cfg.out, write)
    print(text)
    return text


def plan(cfg):
    """Everything about a run that can be wrong, checked before the model is loaded -> (tasks, notes,
    device, result path)."""
    if not cfg.ckpt:
        fail("--ckpt=PATH is required (or --compare RESULT.json ...)")
    check_options(cfg.protocol, cfg.runs, cfg.temperature, cfg.top_k, cfg.seed, cfg.limit, cfg.batch_size,
                  cfg.max_tokens)
    task_names = resolve_tasks(cfg.tasks)
    notes = []
    if "bpb" in task_names and not cfg.val_data:
        if "bpb" in [t.strip() for t in cfg.tasks.split(",")]:
            fail(BPB_NEEDS)
        task_names.remove("bpb")
        notes.append(f"bpb (bits per byte on held-out text) not run: {BPB_NEEDS}")
    if cfg.data_dir and not os.path.isdir(cfg.data_dir):
        fail(f"data_dir={shown(cfg.data_dir)}: no such folder")
    if "bpb" in task_names and not os.path.isdir(cfg.val_data):
        fail(f"val_data={shown(cfg.val_data)}: no such folder (a prepared data/<name> with val.bin and meta.json)")
    dev = resolve_device(cfg.device)  # cuda on a machine without one says so here, not as a checkpoint error
    resolve_dtype(cfg.dtype, dev)
    if not os.path.isfile(cfg.ckpt):
        fail(f"ckpt={shown(cfg.ckpt)}: no such checkpoint file{missing_checkpoint_hint(cfg.ckpt)}")
    path = cfg.out or default_out(cfg.ckpt, cfg.protocol)
    check_output(path, [("checkpoint", cfg.ckpt)], "out", file_name="eval.json")
    check_overwrite(path, cfg.ckpt)
    return task_names, notes, dev, path


def run_eval(cfg):
    task_names, notes, dev, path = plan(cfg)
    model, ck = load_model(cfg.ckpt, dev)
    tok = checkpoint_tokenizer(ck, cfg.ckpt, cfg.tokenizer or None)
    sources = [TASKS[t]["source"] for t in task_names if "source" in TASKS[t]]
    data_dir = cfg.data_dir or (benchmarks.ensure_data(sources) if sources else None)
    t0 = time.time()
    res = evaluate(model, tok, task_names, cfg.protocol, data_dir, cfg.limit or None, cfg.runs, cfg.temperature,
                   cfg.top_k or None, cfg.seed, cfg.batch_size, cfg.max_tokens, cfg.dtype, cfg.val_data or None,
                   progress=bar_on(True), log_samples=cfg.log_samples)
    record = dict(ckpt=os.path.abspath(cfg.ckpt), kind=ck.get("kind"), model_fingerprint=model_fingerprint(model),
                  substrate=substrate(model, tok), protocol=cfg.protocol,
                  choices=our_choices(cfg.protocol, cfg.runs, cfg.temperature, cfg.top_k or None, cfg.seed,
                                      cfg.limit or None),
                  intervals=interval_labels(cfg.protocol, cfg.runs),
                  block_size=model.config.block_size, data_dir=data_dir, device=dev,
                  seconds=round(time.time() - t0, 1), created=time.strftime("%Y-%m-%dT%H:%M:%S"), tasks=res)
    write_out(path, lambda p: write_json(p, record))  # before the table: a failing print loses nothing
    print(table(record))
    for note in notes:
        print(note)
    print(f"wrote {path}")
    return record


def main(argv=None):
    """python eval.py ... (see the module's docstring); returns the result record (or the compare
    table). Bad input: ValueError / OSError with a one-line message (script_main prints it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip() + "\n")  # the examples and the data layout, then every option (configure)
    cfg = configure(DEFAULTS, argv, verbose=False, docs=key_docs(__file__), prog="eval.py", positional="results")
    check_paths(cfg)
    if cfg.compare or cfg.results:
        return run_compare(cfg)
    return run_eval(cfg)


if __name__ == "__main__":
    script_main("eval.py", main)
