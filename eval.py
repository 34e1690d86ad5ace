"""
Benchmark evaluation of glyphgpt checkpoints, single or merged (../shared/SPEC.md §7).

Two protocols:
  paper   the papers' generative protocol: zero-shot prompts (prompts.py), a few sampled new tokens,
          scored by first character / substring / BLEU, `--runs` (10) runs on the same items,
          reported as mean +- 1.96*sigma/sqrt(runs) in %. Seeded per item: reruns give the same numbers.
  loglik  deterministic multiple choice the lm-evaluation-harness way: sum of log-probabilities of
          every answer continuation given the prompt; `acc`, and `acc_norm` (normalised by the
          answer's length in UTF-8 bytes). SQuAD v2 and translation stay generative, greedy.

  python eval.py --ckpt out/ckpt.pt --tasks mmlu,arc_easy --protocol loglik
  python eval.py --ckpt out/merged.pt --tasks paper --protocol paper --out results/merged.json
  python eval.py --ckpt out/ckpt.pt --tasks bpb --val_data data/wiki_en
  python eval.py --compare results/frozen.json results/trainable.json results/merged.json

Data: the benchmarks' original distribution files, downloaded once (sha256-checked) into
$GLYPHGPT_CACHE/eval, or read from `--data_dir DIR` laid out like the originals:
  mmlu/test/{subject}_test.csv           rows question,A,B,C,D,answer (no header)
  arc/ARC-Easy/ARC-Easy-Dev.jsonl        AllenAI JSONL (question.stem, question.choices, answerKey)
  arc/ARC-Challenge/ARC-Challenge-Dev.jsonl
  commonsense_qa/dev_rand_split.jsonl    same JSONL layout as ARC
  squad_v2/dev-v2.0.json                 the official SQuAD v2 JSON
  hellaswag/hellaswag_val.jsonl          rowanz/hellaswag JSONL
  boolq/dev.jsonl                        google-research BoolQ JSONL
  opus100/en-ru/opus.en-ru-dev.{en,ru}   OPUS-100 v1.0 line-aligned text (likewise en-zh)

Speed: log-likelihood requests are grouped by prompt; continuations' shared leading tokens are
scored once, and when what is left of every option is one token (MMLU/ARC letters) all options come
out of ONE forward pass of the prompt. Rows are sorted by length and padded into batches capped by
rows and by tokens; for our GPT only the scored positions go through the 65,536-wide output head.
"""
import argparse
import csv
import glob
import hashlib
import json
import math
import os
import random
import re
import sys
import tarfile
import time
import zipfile

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

import prompts as P

# -----------------------------------------------------------------------------
# defaults (SPEC §7 leaves sampling unpublished: these are our choices, recorded in every result)

RUNS = 10            # paper protocol: runs on the same items
TEMPERATURE = 1.0    # Hugging Face generate()'s defaults for do_sample=True, the likeliest setting
TOP_K = 50           #   of an evaluation script that "samples" without saying how
SEED = 1337
SQUAD_N, SQUAD_MAX_ANSWER, SQUAD_SAMPLE_SEED = 256, 8, 0  # 256 random answerable items, answer <= 8 chars
OPUS_N = 128         # first 128 sentence pairs of the validation (dev) file, per direction
MAX_NEW_CAP = 100    # SQuAD / translation: min(len(answer chars), 100) new tokens

MMLU_SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics
computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics
formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science
high_school_european_history high_school_geography high_school_government_and_politics
high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics
high_school_psychology high_school_statistics high_school_us_history high_school_world_history
human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning
management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition
philosophy prehistory professional_accounting professional_law professional_medicine
professional_psychology public_relations security_studies sociology us_foreign_policy virology
world_religions""".split()

# task -> how it is scored. "choice": one right option among several (paper: sampled letters scored
# by first character; loglik: log-likelihood of each option). "yesno": BoolQ. "squad", "translate":
# generative under both protocols. "bpb": bits per byte on a prepared val.bin.
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
    "all": [t for t in TASKS if t != "bpb"],
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
# downloads: the original files, sha256 from the Hugging Face `datasets` loaders' recorded checksums

SOURCES = {
    "mmlu": dict(url="https://people.eecs.berkeley.edu/~hendrycks/data.tar", size=166184960,
                 sha256="bec563ba4bac1d6aaf04141cd7d1605d7a5ca833e38f994051e818489592989b",
                 members={r"data/test/(\w+_test\.csv)": "mmlu/test/{0}"}),
    "arc": dict(url="https://s3-us-west-2.amazonaws.com/ai2-website/data/ARC-V1-Feb2018.zip", size=680841265,
                sha256="6d2d5ab50b2ceec6ba5f79c921be77cf2de712ea25a2b3f4fff3acc101cecfa0",
                members={r"ARC-V1-Feb2018-2/(ARC-(Easy|Challenge))/ARC-(Easy|Challenge)-Dev\.jsonl":
                         "arc/{0}/{0}-Dev.jsonl"}),
    "commonsense_qa": dict(url="https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl", size=471653,
                           sha256="3210497fdaae614ac085d9eb873dd7f4d49b6f965a93adadc803e1229fd8a02a",
                           dest="commonsense_qa/dev_rand_split.jsonl"),
    "squad_v2": dict(url="https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json", size=4370528,
                     sha256="80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
                     dest="squad_v2/dev-v2.0.json"),
    "hellaswag": dict(url="https://github.com/rowanz/hellaswag/raw/master/data/hellaswag_val.jsonl", size=12246618,
                      sha256="0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
                      dest="hellaswag/hellaswag_val.jsonl"),
    "boolq": dict(url="https://storage.googleapis.com/boolq/dev.jsonl", size=2238726,
                  sha256="ebc29ea3808c5c611672384b3de56e83349fe38fc1fe876fd29b674d81d0a80a",
                  dest="boolq/dev.jsonl"),
    "opus_en_ru": dict(url="https://object.pouta.csc.fi/OPUS-100/v1.0/opus-100-corpus-en-ru-v1.0.tar.gz",
                       size=68501634, sha256="422c96c952e37a0e7ae924538f6c521a9dcedb200e0b29eab07a6e3fd00cca9d",
                       members={r"opus-100-corpus/v1\.0/supervised/en-ru/(opus\.en-ru-dev\.(en|ru))": "opus100/en-ru/{0}"}),
    "opus_en_zh": dict(url="https://object.pouta.csc.fi/OPUS-100/v1.0/opus-100-corpus-en-zh-v1.0.tar.gz",
                       size=83265500, sha256="c417af397ec380032528a9de8e2fbed40e2de78e0bcc6bace0de257a01ae6635",
                       members={r"opus-100-corpus/v1\.0/supervised/en-zh/(opus\.en-zh-dev\.(en|zh))": "opus100/en-zh/{0}"}),
}


def extract(archive, members, data_dir):
    """Copy the archive members matching the `members` patterns to data_dir/<target>."""
    opened = zipfile.ZipFile(archive) if archive.endswith(".zip") else tarfile.open(archive)
    with opened as a:
        names = a.namelist() if isinstance(a, zipfile.ZipFile) else a.getnames()
        for name in names:
            for pattern, target in members.items():
                m = re.fullmatch(pattern, name)
                if not m:
                    continue
                out = os.path.join(data_dir, target.format(*m.groups()))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                f = a.open(name) if isinstance(a, zipfile.ZipFile) else a.extractfile(name)
                with f, open(out + ".tmp", "wb") as g:
                    g.write(f.read())
                os.replace(out + ".tmp", out)


def ensure_data(task_names):
    """Download (once) the original files the tasks need; returns the data_dir they are laid out in."""
    from data.download import cache_dir, download  # resumable, size + sha256 verified, one-line errors
    data_dir = cache_dir("eval", "data")
    done = os.path.join(data_dir, ".done")
    have = set(open(done).read().split()) if os.path.exists(done) else set()
    for src in dict.fromkeys(TASKS[t]["source"] for t in task_names if "source" in TASKS[t]):
        if src in have:
            continue
        s = SOURCES[src]
        try:
            if "dest" in s:  # a plain file: download straight into the layout
                download(s["url"], os.path.join(data_dir, s["dest"]), s["sha256"], s["size"], what=f"the {src} benchmark")
            else:
                archive = os.path.join(cache_dir("eval", "downloads"), os.path.basename(s["url"]))
                extract(download(s["url"], archive, s["sha256"], s["size"], what=f"the {src} benchmark"),
                        s["members"], data_dir)
        except SystemExit as e:
            raise SystemExit(f"{e}; or pass --data_dir DIR holding the original files (layout: python eval.py --help)") from None
        with open(done, "a") as f:
            f.write(src + "\n")
    return data_dir


# -----------------------------------------------------------------------------
# loading the original formats into items
#
# every item: id, prompt (the SPEC §7 generative prompt). Choice items add gold (index), labels (what
# the paper protocol's first character must equal), ll_context / ll_choices (the log-likelihood
# request strings). Generative items add answer (SQuAD) or ref (translation) and max_new.

def need_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing benchmark file (pass --data_dir with the original layout, "
                                f"or leave --data_dir out to download it)")
    return path


def read_jsonl(path):
    """[(line number, object)], with file:line in every error."""
    rows = []
    with open(need_file(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def field(obj, dotted, where):
    """obj['a']['b'] for 'a.b', or a ValueError naming the file, line and key."""
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: missing key {dotted!r}")
        obj = obj[key]
    return obj


def choice_item(id_, prompt, labels, gold, ll_context=None, ll_choices=None, norm_texts=None, **extra):
    """A multiple-choice item. Log-likelihood scoring reads the answer right after the prompt, as the
    training data writes it (prompts.with_answer): the option's label, e.g. 'B'. acc_norm divides by
    the UTF-8 length of norm_texts (default: the scored continuations)."""
    ll_choices = [P.ANSWER_SEP + lab for lab in labels] if ll_choices is None else ll_choices
    return dict(id=id_, prompt=prompt, labels=list(labels), gold=gold,
                ll_context=prompt if ll_context is None else ll_context, ll_choices=ll_choices,
                norm_bytes=[len(t.encode("utf-8")) for t in (norm_texts or ll_choices)], **extra)


def load_mmlu(data_dir, limit=None):
    test_dir = os.path.join(data_dir, "mmlu", "test")
    if not os.path.isdir(test_dir) and os.path.isdir(os.path.join(data_dir, "mmlu", "data", "test")):
        test_dir = os.path.join(data_dir, "mmlu", "data", "test")  # data.tar unpacked as is
    files = sorted(glob.glob(os.path.join(test_dir, "*_test.csv")))
    if not files:
        raise FileNotFoundError(f"{test_dir}: no MMLU files ({{subject}}_test.csv) found")
    items = []
    for path in files:
        subject = os.path.basename(path)[:-len("_test.csv")]
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            n_subject = 0
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if len(row) != 6:
                    raise ValueError(f"{where}: expected 6 fields (question,A,B,C,D,answer), got {len(row)}")
                answer = row[5].strip()
                if answer not in ("A", "B", "C", "D"):
                    raise ValueError(f"{where}: answer {row[5]!r} is not one of A, B, C, D")
                if limit is None or n_subject < limit:  # --limit applies per subject
                    items.append(choice_item(f"{subject}/{n_subject}", P.mmlu_prompt(row[0], row[1:5]), "ABCD",
                                             "ABCD".index(answer), subject=subject))
                n_subject += 1
    return items


def load_arc_jsonl(path):
    """ARC and CommonsenseQA share the AllenAI layout: question.stem, question.choices[{text,label}], answerKey."""
    items = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        stem, choices, key = field(obj, "question.stem", where), field(obj, "question.choices", where), \
            field(obj, "answerKey", where)
        labels = [field(c, "label", where) for c in choices]
        texts = [field(c, "text", where) for c in choices]
        if key not in labels:
            raise ValueError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
        items.append(choice_item(obj.get("id", str(n)), P.arc_prompt(stem, labels, texts), labels, labels.index(key)))
    return items


def hellaswag_preprocess(text):
    # lm-evaluation-harness's cleanup of the WikiHow half of HellaSwag ([title], [step] ... markers)
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path):
    """HellaSwag is not in the papers: loglik uses lm-eval's completion form (context, then ' ' + each
    ending, acc_norm is the usual figure); the paper protocol lists the endings as options A-D."""
    items = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        ctx = field(obj, "ctx_a", where) + " " + field(obj, "ctx_b", where).capitalize()
        query = hellaswag_preprocess(field(obj, "activity_label", where) + ": " + ctx)
        endings = [hellaswag_preprocess(e) for e in field(obj, "endings", where)]
        label = str(field(obj, "label", where))
        if not label.isdigit() or int(label) >= len(endings):
            raise ValueError(f"{where}: label {label!r} is not an index into the {len(endings)} endings")
        labels = "ABCDEFGHIJ"[:len(endings)]
        items.append(choice_item(str(obj.get("ind", n)), P.arc_prompt(query, labels, endings), labels, int(label),
                                 ll_context=query, ll_choices=[" " + e for e in endings], norm_texts=endings))
    return items


def load_boolq(path):
    items = []
    for n, obj in read_jsonl(path):
        where = f"{path}:{n}"
        answer = field(obj, "answer", where)
        if not isinstance(answer, bool):
            raise ValueError(f"{where}: answer {answer!r} is not true/false")
        prompt = P.boolq_prompt(field(obj, "passage", where), field(obj, "question", where))
        labels = [P.boolq_answer(True), P.boolq_answer(False)]
        items.append(choice_item(str(n), prompt, labels, 0 if answer else 1))
    return items


def load_squad(path, n=SQUAD_N, max_answer=SQUAD_MAX_ANSWER, sample_seed=SQUAD_SAMPLE_SEED):
    """n random answerable questions whose first answer has <= max_answer characters (a fixed sample:
    the same items for every model and run)."""
    try:
        with open(need_file(path), encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    pool = []
    for a, article in enumerate(field(data, "data", path)):
        for p, para in enumerate(field(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = field(para, "context", where)
            for qa in field(para, "qas", where):
                answers = qa.get("answers") or []
                if qa.get("is_impossible") or not answers:
                    continue
                answer = field(answers[0], "text", where)
                if len(answer) <= max_answer:
                    pool.append(dict(id=qa.get("id"), prompt=P.squad_prompt(context, field(qa, "question", where)),
                                     answer=answer, max_new=min(len(answer), MAX_NEW_CAP)))
    if len(pool) > n:
        pool = random.Random(sample_seed).sample(pool, n)
    return pool


def load_opus(data_dir, pair, src, tgt, n=OPUS_N):
    paths = {lang: need_file(os.path.join(data_dir, "opus100", pair, f"opus.{pair}-dev.{lang}")) for lang in pair.split("-")}
    lines = {}
    for lang, path in paths.items():
        with open(path, encoding="utf-8") as f:
            lines[lang] = f.read().split("\n")
        if lines[lang] and lines[lang][-1] == "":
            lines[lang].pop()
    a, b = pair.split("-")
    if len(lines[a]) != len(lines[b]):
        raise ValueError(f"{paths[a]} has {len(lines[a])} lines but {paths[b]} has {len(lines[b])}: "
                         f"the two sides of a parallel corpus must align line by line")
    items = []
    for i, (s, t) in enumerate(zip(lines[src][:n], lines[tgt][:n])):
        items.append(dict(id=f"{src}-{tgt}/{i}", prompt=P.translate_prompt(src, tgt, s), ref=t,
                          max_new=min(len(t), MAX_NEW_CAP)))
    return items


def load_task(name, data_dir, limit=None):
    spec = TASKS[name]
    if name == "mmlu":
        items = load_mmlu(data_dir, limit)
    elif name in ("arc_easy", "arc_challenge"):
        part = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        items = load_arc_jsonl(os.path.join(data_dir, "arc", part, f"{part}-Dev.jsonl"))
    elif name == "commonsense_qa":
        items = load_arc_jsonl(os.path.join(data_dir, "commonsense_qa", "dev_rand_split.jsonl"))
    elif name == "hellaswag":
        items = load_hellaswag(os.path.join(data_dir, "hellaswag", "hellaswag_val.jsonl"))
    elif name == "boolq":
        items = load_boolq(os.path.join(data_dir, "boolq", "dev.jsonl"))
    elif name == "squad_v2":
        items = load_squad(os.path.join(data_dir, "squad_v2", "dev-v2.0.json"))
    elif spec["kind"] == "translate":
        items = load_opus(data_dir, spec["pair"], spec["src"], spec["tgt"])
    else:
        raise ValueError(f"task {name!r} has no benchmark file")
    return items if (limit is None or name == "mmlu") else items[:limit]


# -----------------------------------------------------------------------------
# scoring rules of the paper protocol and the confidence interval

def first_char(text):
    """First non-space character, upper-cased ('' if none): ' b' -> 'B'."""
    s = text.lstrip()
    return s[:1].upper()


def first_char_correct(continuation, label):
    return first_char(continuation) == str(label).upper()


def first_word_correct(continuation, answer):
    """BoolQ (not in the papers): the first word, lower-cased, without punctuation, equals yes / no."""
    words = re.findall(r"\w+", continuation.lower())
    return bool(words) and words[0] == answer


def substring_correct(continuation, answer):
    return answer.upper() in continuation.upper()


def bleu(hypothesis, reference):
    """Sentence BLEU with sacrebleu's defaults on upper-cased strings (SPEC §7)."""
    try:
        import sacrebleu
    except ImportError:
        raise SystemExit("translation tasks need sacrebleu: pip install sacrebleu") from None
    return sacrebleu.sentence_bleu(hypothesis.upper(), [reference.upper()]).score


def mean_ci(values):
    """(mean, 1.96 * sample std / sqrt(n)): the papers' mean +- 1.96*sigma/sqrt(n); sigma with ddof=1
    (0 when n == 1)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
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


def encode_pair(tok, context, continuation):
    return encode_requests(tok, [(context, continuation)])[0]


def is_plain_gpt(model):
    try:
        from model import GPT
    except ImportError:
        return False
    return isinstance(model, GPT)


def logits_at(model, idx, rows, cols):
    """Logits [N, V] of the positions (rows[i], cols[i]) of idx [B, T]. Our GPT and merge.MergedGPT:
    the output head(s) run on those positions only (with a 65,536-id vocabulary the head is most of a
    small model's work). Another model may offer model.logits_at(idx, rows, cols); anything else with
    the model interface: model(idx), then pick the positions."""
    if is_plain_gpt(model):
        return model.lm_head(model.hidden_states(idx)[rows, cols])
    if hasattr(model, "combine") and hasattr(model, "hidden_states"):  # merge.MergedGPT: experts' heads at those rows
        return model.combine([h[rows, cols] for h in model.hidden_states(idx)])
    if hasattr(model, "logits_at"):
        return model.logits_at(idx, rows, cols)
    logits, _ = model(idx)
    return logits[rows, cols]


def autocast(device, dtype):
    if dtype == "float32" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16)


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
def sample_continuations(model, tok, task, prompts, max_new, runs, temperature, top_k, seed, keys=None,
                         batch_size=64, max_tokens=8192, dtype="auto", progress=False):
    """-> ([per item: `runs` continuation strings], n truncated). temperature 0 = greedy (runs = 1).
    keys: the items' ids, which seed their generators (default: their positions).
    One new token (MMLU): the prompts are batched, one forward pass each, and the `runs` samples are
    drawn from that one distribution. Longer: model.generate (KV cache) on the prompt repeated
    `runs` times."""
    from model import sample_next
    device = next(model.parameters()).device
    block = model.config.block_size
    encoded = tok.encode_batch(prompts)
    news = [max_new] * len(prompts) if isinstance(max_new, int) else list(max_new)
    fitted = [fit_prompt(ids, block - n) for ids, n in zip(encoded, news)]
    truncated = sum(t for _, t in fitted)
    rows = [ids for ids, _ in fitted]
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
                nxt = sample_next(logits[k:k + 1].expand(runs, -1), temperature, top_k, g)
                out[i] = [tok.decode([int(t)]) for t in nxt[:, 0].tolist()]
            bar.update(len(ids))
    else:
        for i, ids in enumerate(rows):
            g = item_generator(seed, task, keys[i], device)
            idx = torch.tensor([ids] * runs, dtype=torch.long, device=device)
            with autocast(device, dtype):
                y = model.generate(idx, news[i], temperature=temperature, top_k=top_k, generator=g)
            out[i] = [tok.decode(seq[len(ids):]) for seq in y.tolist()]
            bar.update(1)
    bar.close()
    return out, truncated


# -----------------------------------------------------------------------------
# one task under one protocol

def acc_entry(correct_runs):
    """correct_runs [runs, n] booleans -> mean / ci95 (% over runs) and the per-run accuracies."""
    accs = 100.0 * np.asarray(correct_runs, dtype=np.float64).mean(axis=1)
    mean, ci = mean_ci(accs)
    return dict(mean=mean, ci95=ci, runs=[float(a) for a in accs])


def item_entry(values):
    """Per-item values (one deterministic run) -> mean and the usual standard-error CI over items."""
    mean, ci = mean_ci(values)
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
    conts, trunc = sample_continuations(model, tok, name, [it["prompt"] for it in items], spec["new_tokens"],
                                        opt["runs"], opt["temperature"], opt["top_k"], opt["seed"],
                                        [it["id"] for it in items], **opt["batching"])
    if spec["kind"] == "yesno":
        ok = lambda c, it: first_word_correct(c, it["labels"][it["gold"]])
    else:
        ok = lambda c, it: first_char_correct(c, it["labels"][it["gold"]])
    correct = np.array([[ok(conts[j][r], it) for j, it in enumerate(items)] for r in range(opt["runs"])])
    res = dict(metric="acc", n=len(items), truncated=trunc, **acc_entry(correct))
    if name == "mmlu":
        add_per_subject(res, items, correct, lambda c: {k: v for k, v in acc_entry(c).items() if k != "runs"})
    samples = [dict(id=it["id"], gold=it["labels"][it["gold"]], outputs=conts[j]) for j, it in enumerate(items)]
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
    conts, trunc = sample_continuations(model, tok, name, [it["prompt"] for it in items], [it["max_new"] for it in items],
                                        runs, temperature, opt["top_k"], opt["seed"], [it["id"] for it in items],
                                        **opt["batching"])
    if kind == "squad":
        metric = "acc"
        scores = np.array([[100.0 * substring_correct(conts[j][r], it["answer"]) for j, it in enumerate(items)]
                           for r in range(runs)])
    else:
        metric = "bleu"
        scores = np.array([[bleu(conts[j][r].strip(), it["ref"]) for j, it in enumerate(items)] for r in range(runs)])
    per_run = scores.mean(axis=1)
    if greedy:
        stat = item_entry(scores[0])
    else:
        mean, ci = mean_ci(per_run)
        stat = dict(mean=mean, ci95=ci, runs=[float(x) for x in per_run])
    res = dict(metric=metric, n=len(items), truncated=trunc, **stat)
    samples = [dict(id=it["id"], target=it.get("answer", it.get("ref")), outputs=conts[j]) for j, it in enumerate(items)]
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


def evaluate(model, tok, task_names, protocol="loglik", data_dir=None, limit=None, runs=RUNS,
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
                raise ValueError("task bpb needs --val_data DIR (a prepared data/<name> with val.bin and meta.json)")
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
# reporting

def model_fingerprint(model):
    """16 hex chars of sha256 over every parameter and buffer (names and float32 bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fmt(res, key="mean"):
    v = res.get(key) if key == "mean" else res.get(key, {}).get("mean")
    if v is None:
        return "-"
    ci = res.get("ci95") if key == "mean" else res[key].get("ci95")
    return f"{v:.2f}" + (f" ± {ci:.2f}" if ci is not None and not math.isnan(ci) else "")


def table(results):
    lines = [f"{'task':<16} {'metric':<9} {'n':>6}  {'score':<16} {'acc_norm':<16} {'trunc':>5}"]
    for name, r in results["tasks"].items():
        lines.append(f"{name:<16} {r['metric']:<9} {r['n']:>6}  {fmt(r):<16} {fmt(r, 'acc_norm') if 'acc_norm' in r else '':<16} "
                     f"{r.get('truncated', 0):>5}")
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
    from model import load_model
    try:
        return load_model(path, device=device)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: cannot load as a glyphgpt model: {e}") from None


def recorded_tokenizer(ckpt):
    """(tokenizer_name, fingerprint) of a checkpoint; a merged one may keep them per expert."""
    if ckpt.get("tokenizer_name"):
        return ckpt["tokenizer_name"], ckpt.get("tokenizer_fingerprint")
    for v in ckpt.values():
        for sub in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(sub, dict) and sub.get("tokenizer_name"):
                return sub["tokenizer_name"], sub.get("tokenizer_fingerprint")
    return None, None


def open_tokenizer(ckpt, name=None):
    from unicode_tokenizer import get_tokenizer
    recorded, want = recorded_tokenizer(ckpt)
    name = name or recorded
    if not name:
        raise SystemExit("the checkpoint records no tokenizer_name: pass --tokenizer")
    tok = get_tokenizer(name)
    if want and tok.fingerprint != want:
        raise SystemExit(f"tokenizer {name!r} has fingerprint {tok.fingerprint}, the checkpoint was trained with "
                         f"{want}: pass the matching --tokenizer")
    return tok


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ckpt", help="checkpoint (single or merged) to evaluate")
    ap.add_argument("--tasks", default="paper", help=f"comma list of tasks or groups; tasks: {', '.join(TASKS)}; "
                                                     f"groups: {', '.join(GROUPS)} (default: paper)")
    ap.add_argument("--protocol", default="loglik", choices=["paper", "loglik"])
    ap.add_argument("--data_dir", help="read the benchmarks' original files from here instead of downloading")
    ap.add_argument("--val_data", help="prepared dataset directory (val.bin + meta.json) for the bpb task")
    ap.add_argument("--limit", type=int, help="first N items per task (per subject for MMLU)")
    ap.add_argument("--runs", type=int, default=RUNS, help="paper protocol: sampled runs per item")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE, help="paper protocol sampling temperature")
    ap.add_argument("--top_k", type=int, default=TOP_K, help="paper protocol top-k (0 = no top-k)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--batch_size", type=int, default=64, help="max rows per forward pass")
    ap.add_argument("--max_tokens", type=int, default=8192, help="max padded tokens per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32"], help="auto: bf16 autocast on CUDA")
    ap.add_argument("--tokenizer", help="override the checkpoint's tokenizer_name")
    ap.add_argument("--out", help="result JSON (default: eval_<ckpt name>_<protocol>.json)")
    ap.add_argument("--log_samples", action="store_true", help="store every item's outputs in the JSON")
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
        if args.runs < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--runs and --limit must be >= 1")
        if args.data_dir and not os.path.isdir(args.data_dir):
            raise ValueError(f"--data_dir {args.data_dir}: no such directory")
        model, ckpt = open_model(args.ckpt, args.device)
        tok = open_tokenizer(ckpt, args.tokenizer)
        needs_data = any("source" in TASKS[t] for t in tasks)
        data_dir = args.data_dir or (ensure_data(tasks) if needs_data else None)
        t0 = time.time()
        results = evaluate(model, tok, tasks, args.protocol, data_dir, args.limit, args.runs, args.temperature,
                           args.top_k or None, args.seed, args.batch_size, args.max_tokens, args.dtype,
                           args.val_data, progress=True, log_samples=args.log_samples)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"eval.py: {e}") from None
    out = dict(ckpt=args.ckpt, kind=ckpt.get("kind"), model_fingerprint=model_fingerprint(model),
               tokenizer=tok.name, tokenizer_fingerprint=tok.fingerprint, protocol=args.protocol,
               seed=args.seed, decoding=(dict(runs=args.runs, temperature=args.temperature, top_k=args.top_k or None)
                                         if args.protocol == "paper" else dict(mc="loglik", generative="greedy")),
               limit=args.limit, data_dir=data_dir, device=args.device, seconds=round(time.time() - t0, 1),
               created=time.strftime("%Y-%m-%dT%H:%M:%S"), tasks=results)
    path = args.out or f"eval_{os.path.splitext(os.path.basename(args.ckpt))[0]}_{args.protocol}.json"
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    print(table(out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
