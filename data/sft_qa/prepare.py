"""
The instruction-format ("SFT") part of the papers' training mix: question-answering items written
byte for byte in the evaluation prompt formats of prompts.py (docs/design.md §7) with the answer right after
"Answer:" (no space, see prompts.ANSWER_SEP), one item per document.

    python data/sft_qa/prepare.py [--sources all|synthetic|arc_easy,squad_v2,...] [--local_dir D]
                                  [--tokenizer T] [--max_bytes N] [--val_fraction F] [--out_dir D]

Only TRAIN splits are used: ARC-Easy/Challenge, CommonsenseQA, SQuAD v2 (answerable items), BoolQ,
NQ-Open, TriviaQA (unfiltered, no context) and HotpotQA (supporting paragraphs as context), each from its original distribution (TriviaQA from
its authors' hub copy). Their validation/test files, and MMLU's test/dev/val questions, are read too,
only to drop any train item whose normalised question also occurs there (decontamination).
"synthetic" is a seeded generator (arithmetic, comparisons, word choice, extraction; several question
forms each) that needs no network, so the mixture and its tests work offline; its options are drawn so
that only the question tells the answer (see the generator's comment). Every source, the synthetic
one included, is checked against every evaluation split on disk. Train and val are split by question:
all items asking the same (normalised) question land in the same split.

Downloads go to the cache ($GLYPHGPT_CACHE or ~/.cache/glyphgpt)/sft_qa/<source>/; --local_dir
reads the same layout from a folder instead (the tests point it at tests/fixtures/data/sft_qa).
"""
import glob
import json
import os
import random
import re
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import prompts  # noqa: E402
from data.common import base_parser, get_tokenizer, take_bytes, write_dataset  # noqa: E402
from data.corpus import unit_hash  # noqa: E402
from data.benchmarks import (SOURCES as BENCHMARKS, arc_records, boolq_records, jsonl_rows,  # noqa: E402
                             mmlu_records, mmlu_tar_questions, read_text, squad_records)
from data.download import cache_dir, download, hf_fetch, hf_list  # noqa: E402

# The two archives eval.py also reads (data/benchmarks.py), in the same cache path: downloaded once for both.
ARC_ZIP, MMLU_TAR = BENCHMARKS["arc"], BENCHMARKS["mmlu"]
CSQA = "https://s3.amazonaws.com/commensenseqa/"
SQUAD = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
BOOLQ = "https://storage.googleapis.com/boolq/"
NQ = "https://raw.githubusercontent.com/google-research-datasets/natural-questions/master/nq_open/"
HOTPOT = "http://curtis.ml.cmu.edu/datasets/hotpot/"  # train file ~540 MB (all ten context paragraphs)
TRIVIA_HF = ("mandarjoshi/trivia_qa", "unfiltered.nocontext")

# source -> {"train": [file names], "eval": [file names]}, names inside <root>/<source>/.
# For ARC the files are members of the zip; for TriviaQA parquet shard name prefixes on the hub.
SOURCES = {
    "arc_easy": dict(train=["ARC-Easy/ARC-Easy-Train.jsonl"],
                     eval=["ARC-Easy/ARC-Easy-Dev.jsonl", "ARC-Easy/ARC-Easy-Test.jsonl"]),
    "arc_challenge": dict(train=["ARC-Challenge/ARC-Challenge-Train.jsonl"],
                          eval=["ARC-Challenge/ARC-Challenge-Dev.jsonl", "ARC-Challenge/ARC-Challenge-Test.jsonl"]),
    "commonsense_qa": dict(train=["train_rand_split.jsonl"],
                           eval=["dev_rand_split.jsonl", "test_rand_split_no_answers.jsonl"]),
    "squad_v2": dict(train=["train-v2.0.json"], eval=["dev-v2.0.json"]),
    "boolq": dict(train=["train.jsonl"], eval=["dev.jsonl"]),
    "nq_open": dict(train=["NQ-open.train.jsonl"], eval=["NQ-open.dev.jsonl"]),
    "trivia_qa": dict(train=["train-"], eval=["validation-", "test-"]),
    "hotpot_qa": dict(train=["hotpot_train_v1.1.json"],
                      eval=["hotpot_dev_distractor_v1.json", "hotpot_dev_fullwiki_v1.json"]),
}
REAL = list(SOURCES)
LICENCES = {"arc_easy": "CC BY-SA 4.0", "arc_challenge": "CC BY-SA 4.0", "commonsense_qa": "MIT",
            "squad_v2": "CC BY-SA 4.0", "boolq": "CC BY-SA 3.0", "nq_open": "CC BY-SA 3.0",
            "trivia_qa": "Apache-2.0", "hotpot_qa": "CC BY-SA 4.0", "synthetic": "generated here"}


# ---------------------------------------------------------------------------- fetching

class Files:
    """Where the raw files of each source come from: a local folder with the cache's layout, or the
    network (downloaded once into the cache, resumable and size/sha256-checked)."""

    def __init__(self, local_dir=None):
        self.local_dir = local_dir
        self.root = local_dir or cache_dir("sft_qa")

    def _local(self, source, name):
        path = os.path.join(self.root, source, name)
        if self.local_dir and not os.path.exists(path):
            raise SystemExit(f"{path}: not found (--local_dir must hold <source>/<file> as in the cache)")
        return path

    def _archive(self, spec, what):
        dest = os.path.join(cache_dir("eval", "downloads"), os.path.basename(spec["url"]))
        return download(spec["url"], dest, spec["sha256"], spec["size"], what=what)

    def open_text(self, source, name):
        """The text of one file of a source (for ARC: a member of the zip)."""
        if source.startswith("arc_"):
            zpath = self._local("arc", "ARC-V1-Feb2018.zip") if self.local_dir else self._archive(ARC_ZIP, "ARC")
            with zipfile.ZipFile(zpath) as z:
                members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
                if not members:
                    raise SystemExit(f"{zpath}: no member {name}")
                return z.read(members[0]).decode("utf-8")
        with open(self.path(source, name), encoding="utf-8") as f:
            return f.read()

    def path(self, source, name):
        """Local path of a plain (non-archive) file of a source, downloaded first if needed."""
        if self.local_dir:
            return self._local(source, name)
        base = dict(commonsense_qa=CSQA, squad_v2=SQUAD, boolq=BOOLQ, nq_open=NQ, hotpot_qa=HOTPOT)[source]
        return download(base + name, os.path.join(self.root, source, name), what=source)

    def parquet_paths(self, source, prefix):
        if self.local_dir:
            paths = sorted(glob.glob(os.path.join(self.root, source, prefix + "*.parquet")))
            if not paths:
                raise SystemExit(f"{self.root}/{source}/{prefix}*.parquet: not found")
            return paths
        repo, config = TRIVIA_HF
        files = [f for f in hf_list(repo, config, what=source) if os.path.basename(f["path"]).startswith(prefix)]
        return [hf_fetch(repo, f, what=source) for f in files]

    def has_eval(self, source):
        """Whether the eval files of `source` are on disk already (local_dir, or the cache)."""
        if source.startswith("arc_"):
            return os.path.exists(os.path.join(self.root, "arc", "ARC-V1-Feb2018.zip") if self.local_dir else
                                  os.path.join(cache_dir("eval", "downloads"), os.path.basename(ARC_ZIP["url"])))
        if source == "trivia_qa":
            return bool(self.local_dir) and all(glob.glob(os.path.join(self.root, source, p + "*.parquet"))
                                                for p in SOURCES[source]["eval"])
        return all(os.path.exists(os.path.join(self.root, source, n)) for n in SOURCES[source]["eval"])

    def has_mmlu(self):
        return os.path.exists(os.path.join(self.root, "mmlu", "data.tar") if self.local_dir else
                              os.path.join(cache_dir("eval", "downloads"), os.path.basename(MMLU_TAR["url"])))

    def mmlu_questions(self):
        """Questions of MMLU's test, dev and val CSVs (original data.tar)."""
        path = self._local("mmlu", "data.tar") if self.local_dir else self._archive(MMLU_TAR, "MMLU")
        return mmlu_tar_questions(path)


def iter_json_array(path, chunk=1 << 22):
    """The elements of a file holding one big JSON array, decoded one at a time (HotpotQA's 540 MB
    train file would take several GB as one json.load)."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, started = "", 0, False
        while True:
            more = f.read(chunk)
            buf = buf[pos:] + more
            pos = 0
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if not started and pos < len(buf):
                    if buf[pos] != "[":
                        raise SystemExit(f"{path}: expected a JSON array")
                    started, pos = True, pos + 1
                    continue
                if pos < len(buf) and buf[pos] == "]":
                    return
                try:
                    obj, end = dec.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if not more:
                        raise SystemExit(f"{path}: truncated or invalid JSON near character {pos}") from None
                    break  # the element continues in the next chunk
                yield obj
                pos = end
            if not more:
                raise SystemExit(f"{path}: JSON array not closed (truncated file?)")


def read_parquet(paths, columns):
    import pyarrow.parquet as pq  # only TriviaQA needs parquet
    rows = []
    for p in paths:
        try:
            rows += pq.read_table(p, columns=columns).to_pylist()
        except Exception as e:  # pyarrow raises several types for a truncated/corrupt file
            raise SystemExit(f"{p}: not a readable parquet file ({e})") from None
    return rows


# ---------------------------------------------------------------------------- parsing: rows -> items
# An item is (key, text): key = the normalised question (for decontamination), text = the document.

def norm(question):
    return " ".join(re.sub(r"[^\w]+", " ", question.lower()).split())


def parse_arc_style(records, mmlu_fraction, salt):
    """ARC / CommonsenseQA records (data/benchmarks.arc_records) -> items; a deterministic mmlu_fraction
    of them is written in the MMLU layout (options on one line, lettered A-D...) so that both
    evaluation formats are taught."""
    items = []
    for r in records:
        q, labels, texts, key = r["question"], r["labels"], r["texts"], r["answer"]
        if key is None:
            continue  # test files without answers
        if unit_hash(r["id"], salt) < mmlu_fraction and len(texts) <= len(prompts.LETTERS):
            text = prompts.with_answer(prompts.mmlu_prompt(q, texts), prompts.LETTERS[labels.index(key)])
        else:
            text = prompts.with_answer(prompts.arc_prompt(q, labels, texts), key)
        items.append((norm(q), text))
    return items


def parse_squad(records):
    """Answerable SQuAD v2 questions (data/benchmarks.squad_records); the answer is the first annotated span."""
    return [(norm(r["question"]), prompts.with_answer(prompts.squad_prompt(r["context"], r["question"]), r["answers"][0]))
            for r in records if r["answers"]]


def parse_boolq(rows):
    return [(norm(r["question"]), prompts.with_answer(prompts.boolq_prompt(r["passage"], r["question"]),
                                                      prompts.boolq_answer(r["answer"]))) for r in rows]


def parse_nq(rows):
    return [(norm(r["question"]), prompts.with_answer(prompts.qa_prompt(r["question"]), r["answer"][0]))
            for r in rows if r.get("answer")]


def parse_trivia(rows):
    return [(norm(r["question"]), prompts.with_answer(prompts.qa_prompt(r["question"]), r["answer"]["value"]))
            for r in rows if r["answer"]["value"]]


def parse_hotpot(rows):
    """HotpotQA: the context is the supporting paragraphs only (the two that hold the answer, in the
    order the facts cite them), not the eight distractors, to keep items SQuAD-sized."""
    items = []
    for r in rows:
        paragraphs = {title: "".join(sentences).strip() for title, sentences in r["context"]}
        titles = list(dict.fromkeys(t for t, _ in r["supporting_facts"] if t in paragraphs))
        if not titles or not r["answer"]:
            continue
        context = " ".join(paragraphs[t] for t in titles)
        items.append((norm(r["question"]), prompts.with_answer(prompts.squad_prompt(context, r["question"]), r["answer"])))
    return items


def load_source(files, source, split, mmlu_fraction=0.0):
    """Items (split="train") or just the questions (split="eval") of one source."""
    out = []
    for name in SOURCES[source][split]:
        what = f"{source}/{name}"
        if source == "trivia_qa":
            rows = read_parquet(files.parquet_paths(source, name), ["question", "answer"] if split == "train" else ["question"])
            out += parse_trivia(rows) if split == "train" else [r["question"] for r in rows]
        elif source == "hotpot_qa":
            rows = iter_json_array(files.path(source, name))
            out += parse_hotpot(rows) if split == "train" else [r["question"] for r in rows]
        elif source == "squad_v2":
            rows = squad_records(files.open_text(source, name), what)
            out += parse_squad(rows) if split == "train" else [r["question"] for r in rows]
        elif source in ("arc_easy", "arc_challenge", "commonsense_qa"):
            rows = arc_records(files.open_text(source, name), what)
            out += parse_arc_style(rows, mmlu_fraction, source) if split == "train" else [r["question"] for r in rows]
        elif source == "boolq":
            rows = boolq_records(files.open_text(source, name), what)
            out += parse_boolq(rows) if split == "train" else [r["question"] for r in rows]
        else:
            rows = [obj for _, obj in jsonl_rows(files.open_text(source, name), what)]
            out += parse_nq(rows) if split == "train" else [r["question"] for r in rows]
    return out


# ---------------------------------------------------------------------------- offline generator
# Every generated item needs its question. A multiple-choice item draws its options FIRST, as the
# results of a few nearby computations (operands off by a little, as a solver slips), and only then
# makes one of them the answer, uniformly, by writing the question that produces it. So the options
# alone (their position, size, spacing, length, which one is the odd one out) tell the answer no more
# often than chance; tests/test_data.py fits the usual shortcut rules to generated items to check it.

WORDS = ["apple", "river", "stone", "cloud", "garden", "window", "candle", "forest", "bridge", "mirror",
         "pencil", "island", "rocket", "violin", "harbor", "tunnel", "meadow", "lantern", "saddle", "kettle",
         "basket", "desert", "engine", "feather", "glacier", "hammer", "jacket", "ladder", "magnet", "needle",
         "orchard", "pepper", "quilt", "ribbon", "spoon", "tiger", "umbrella", "valley", "wagon", "yarn"]
NAMES = ["Anna", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Irina", "Jonas"]
THINGS = ["apples", "books", "coins", "stamps", "shells", "marbles", "pencils", "tickets"]
ORDINALS = ["first", "second", "third", "fourth", "fifth"]

# operator -> (function, operand range, perturbation range, question forms)
ARITHMETIC = {
    "+": (lambda a, b: a + b, (2, 99), 12, ["What is {a} + {b}?", "What is the sum of {a} and {b}?",
                                           "Add {a} and {b}. What is the result?", "{a} plus {b} equals what?"]),
    "-": (lambda a, b: a - b, (2, 99), 12, ["What is {a} - {b}?", "What is {a} minus {b}?",
                                           "Subtract {b} from {a}. What is left?", "What is the difference {a} - {b}?"]),
    "*": (lambda a, b: a * b, (2, 30), 3, ["What is {a} times {b}?", "What is the product of {a} and {b}?",
                                          "Multiply {a} by {b}. What is the result?", "What is {a} * {b}?"]),
}


def nearby_operands(rng, op, n):
    """n operand pairs, a random one and n-1 perturbations of it (each operand moved by a random amount,
    symmetric around it), whose results under `op` are all different."""
    f, (lo, hi), d, _ = ARITHMETIC[op]
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    pairs, results = [(a, b)], {f(a, b)}
    while len(pairs) < n:
        p = (a + rng.randint(-d, d), b + rng.randint(-d, d))
        if min(p) >= 1 and f(*p) not in results:
            pairs.append(p)
            results.add(f(*p))
    return pairs


def choice_item(rng, options, question_of, layout):
    """A multiple-choice item: `options` (distinct strings) are shuffled, then one is made the answer
    uniformly at random and question_of(that option) writes the question whose answer it is."""
    options = list(options)
    rng.shuffle(options)
    answer = rng.randrange(len(options))
    q, letter = question_of(options[answer]), prompts.LETTERS[answer]
    if layout == "mmlu":
        return q, prompts.with_answer(prompts.mmlu_prompt(q, options), letter)
    return q, prompts.with_answer(prompts.arc_prompt(q, list(prompts.LETTERS[:len(options)]), options), letter)


def arithmetic_choice(rng, layout):
    op = rng.choice(list(ARITHMETIC))
    f, _, _, forms = ARITHMETIC[op]
    pairs = nearby_operands(rng, op, 4)
    rng.shuffle(pairs)
    form = rng.choice(forms)
    by_value = {str(f(*p)): p for p in pairs}

    def question_of(value):
        a, b = by_value[value]
        return form.format(a=a, b=b)
    return choice_item(rng, list(by_value), question_of, layout)


def arithmetic_open(rng):
    op = rng.choice(list(ARITHMETIC))
    f, (lo, hi), _, forms = ARITHMETIC[op]
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    q = rng.choice(forms).format(a=a, b=b)
    return q, prompts.with_answer(prompts.qa_prompt(q), str(f(a, b)))


def distinct_words(rng, n, feature):
    """n random words that differ in feature(word) (so a question about the feature has one answer)."""
    out, seen = [], set()
    for w in rng.sample(WORDS, len(WORDS)):
        if feature(w) not in seen:
            out.append(w)
            seen.add(feature(w))
            if len(out) == n:
                return out
    raise AssertionError("WORDS too uniform for this feature")


def word_choice(rng):
    """Five words as options (ARC layout, five options like CommonsenseQA). 'Which word is number k'
    lists the words in the question in an order independent of the options', so the k-th letter is
    not the answer more often than any other letter."""
    form = rng.randrange(4)
    if form < 2:
        listed = rng.sample(WORDS, 5)
        options = listed
        lst = ", ".join(listed)

        def question_of(word):
            k = listed.index(word)
            if form == 0:
                return rng.choice([f"Which word is number {k + 1} in the list {lst}?",
                                   f"In the list {lst}, which word comes {ORDINALS[k]}?"])
            return f"Counting from the end of the list {lst}, which word is number {5 - k}?"
    elif form == 2:
        options = distinct_words(rng, 5, lambda w: w[-2:])

        def question_of(word):
            return f"Which word ends with the letters \"{word[-2:]}\"?"
    else:
        options = distinct_words(rng, 5, lambda w: w[0])

        def question_of(word):
            return rng.choice([f"Which word starts with the letter \"{word[0]}\"?",
                               f"Which of these words begins with \"{word[0]}\"?"])
    return choice_item(rng, options, question_of, "arc")


def extraction(rng):
    """SQuAD layout: a context of 3-4 facts (person, count, thing) in random order; the question asks
    for the count, the person or the thing of one fact chosen uniformly."""
    n = rng.randint(3, 4)
    people, things = rng.sample(NAMES, n), rng.sample(THINGS, n)
    counts = rng.sample(range(2, 100), n)
    context = " ".join(f"{p} has {c} {t}." for p, c, t in zip(people, counts, things))
    i = rng.randrange(n)
    p, c, t = people[i], counts[i], things[i]
    q, a = rng.choice([(f"How many {t} does {p} have?", str(c)), (f"What number of {t} does {p} own?", str(c)),
                       (f"Who has {c} {t}?", p), (f"What does {p} have {c} of?", t)])
    return q, prompts.with_answer(prompts.squad_prompt(context, q), a)


def yes_no(rng):
    """BoolQ layout: two quantities in the context in random order; the question compares them in
    either direction ("more"/"fewer", "greater"/"smaller", first/second), the answer yes or no with
    equal odds."""
    x, y = rng.sample(range(2, 100), 2)
    want = rng.random() < 0.5
    if rng.random() < 0.5:
        p1, p2 = rng.sample(NAMES, 2)
        t = rng.choice(THINGS)
        more = rng.random() < 0.5
        q = f"does {p1} have {'more' if more else 'fewer'} {t} than {p2}"
        if ((x > y) == more) != want:
            x, y = y, x
        facts = [f"{p1} has {x} {t}.", f"{p2} has {y} {t}."]
        rng.shuffle(facts)
        context = " ".join(facts)
    else:
        first_asked = rng.random() < 0.5  # "is the first ... than the second" or the other way round
        bigger = rng.random() < 0.5
        word = rng.choice(["greater", "larger"]) if bigger else rng.choice(["smaller", "less"])
        q = (f"is the first number {word} than the second" if first_asked
             else f"is the second number {word} than the first")
        if ((x > y) == (bigger == first_asked)) != want:
            x, y = y, x
        context = f"The first number is {x} and the second number is {y}."
    return q, prompts.with_answer(prompts.boolq_prompt(context, q), prompts.boolq_answer(want))


KINDS = [lambda rng: arithmetic_choice(rng, "mmlu"), lambda rng: arithmetic_choice(rng, "arc"),
         word_choice, extraction, yes_no, arithmetic_open]


def synthetic_items(n, seed=0):
    """n seeded items cycling through the task kinds, in all the prompt formats, keyed by their
    normalised question (the key decontamination and the train/val split use)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        q, text = KINDS[i % len(KINDS)](rng)
        items.append((norm(q), text))
    return items


# ---------------------------------------------------------------------------- the mixture

def benchmark_questions(data_dir):
    """The questions of the benchmark files eval.py reads (data/benchmarks.py) that are on disk in
    its data dir (they are there once eval.py has run, or once they were put there by hand)."""
    questions = []
    if glob.glob(os.path.join(data_dir, "mmlu", "test", "*_test.csv")):
        questions += [r["question"] for r in mmlu_records(data_dir)]
    for name, records in (("arc/ARC-Easy/ARC-Easy-Dev.jsonl", arc_records),
                          ("arc/ARC-Challenge/ARC-Challenge-Dev.jsonl", arc_records),
                          ("commonsense_qa/dev_rand_split.jsonl", arc_records),
                          ("boolq/dev.jsonl", boolq_records), ("squad_v2/dev-v2.0.json", squad_records)):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            questions += [r["question"] for r in records(read_text(path), path)]
    return questions


def eval_keys(files, sources, check_mmlu=True):
    """Normalised questions of every evaluation split we can read: the benchmark files of eval.py on
    disk, those of the chosen real sources (downloaded when needed), and those of any other source (and
    MMLU) already on disk, so that a synthetic-only run is checked too."""
    keys = {norm(q) for q in benchmark_questions(cache_dir("eval", "data"))}
    for s in REAL:
        if s in sources or files.has_eval(s):
            keys.update(norm(q) for q in load_source(files, s, "eval"))
    if check_mmlu and (files.has_mmlu() or any(s in REAL for s in sources)):
        keys.update(norm(q) for q in files.mmlu_questions())
    return keys


def build(sources, files, n_synthetic=6000, mmlu_fraction=0.5, check_mmlu=True, seed=1337):
    """All train items (key, text) of `sources`, every source decontaminated against every eval split
    we can read (an item whose normalised question is there is dropped), deduplicated and shuffled
    deterministically. Returns (items, stats)."""
    banned = eval_keys(files, sources, check_mmlu)
    print(f"decontamination: against {len(banned):,} evaluation questions" if banned else
          "decontamination: no evaluation split on disk to check against (eval.py puts its benchmark files in "
          f"{cache_dir('eval', 'data')}; --local_dir can hold the QA sets' dev/test files)")
    stats, seen, out = {}, set(), []
    for s in sources:
        items = synthetic_items(n_synthetic, seed) if s == "synthetic" else load_source(files, s, "train", mmlu_fraction)
        clean = [(k, t) for k, t in items if k not in banned]
        before = len(out)
        for key, text in clean:
            if text not in seen:
                seen.add(text)
                out.append((key, text))
        stats[s] = dict(items=len(items), in_eval=len(items) - len(clean), kept=len(out) - before)
        print(f"{s}: {stats[s]['kept']:,} of {len(items):,} train items kept ({stats[s]['in_eval']:,} in an eval "
              f"split, the rest duplicates)")
    random.Random(seed).shuffle(out)
    return out, dict(sources=stats, eval_questions=len(banned))


def split_by_question(items, val_fraction, salt="val"):
    """Train / val by hashing each item's question, so all items asking the same question land in
    the same split (no validation question is ever trained on). Both splits get at least one question."""
    keys = sorted({k for k, _ in items}, key=lambda k: unit_hash(k, salt))
    if len(keys) < 2:
        raise SystemExit(f"only {len(keys)} distinct question(s): nothing to split into train and val")
    n_val = min(len(keys) - 1, max(1, sum(unit_hash(k, salt) < val_fraction for k in keys)))
    val_keys = set(keys[:n_val])
    return [t for k, t in items if k not in val_keys], [t for k, t in items if k in val_keys]


def parse_sources(spec):
    names = REAL + ["synthetic"] if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES and s != "synthetic"]
    if unknown or not names:
        raise SystemExit(f"--sources: unknown {unknown or spec!r}; expected 'all' or a comma list of "
                         f"{REAL + ['synthetic']}")
    return names


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--sources", default="all", help="'all', or a comma list of " + ",".join(REAL + ["synthetic"]))
    p.add_argument("--local_dir", default=None, help="read <source>/<file> from here instead of downloading")
    p.add_argument("--synthetic", type=int, default=6000, help="number of generated items (source 'synthetic')")
    p.add_argument("--mmlu_fraction", type=float, default=0.5,
                   help="share of ARC/CommonsenseQA train items written in the MMLU one-line layout")
    p.add_argument("--no_mmlu_check", action="store_true", help="skip MMLU decontamination (saves the 166 MB data.tar)")
    args = p.parse_args(argv)
    if not 0 <= args.mmlu_fraction <= 1:
        raise SystemExit(f"--mmlu_fraction must be in [0, 1] (got {args.mmlu_fraction:g})")
    sources = parse_sources(args.sources)
    tok = get_tokenizer(args.tokenizer)
    try:
        items, stats = build(sources, Files(args.local_dir), args.synthetic, args.mmlu_fraction, not args.no_mmlu_check)
    except ValueError as e:  # a malformed benchmark row: data/benchmarks.py names its file:line
        raise SystemExit(str(e)) from None
    texts = set(take_bytes([t for _, t in items], args.max_bytes))  # whole items, in the shuffled order
    items = [(k, t) for k, t in items if t in texts]
    train, val = split_by_question(items, args.val_fraction)
    licences = ", ".join(f"{s}: {LICENCES[s]}" for s in sources)
    return write_dataset(args.out_dir, train, val, tok, source=f"QA train splits in docs/design.md §7 formats ({licences})",
                         documents=len(items), answer_sep=prompts.ANSWER_SEP, **stats)


if __name__ == "__main__":
    main()
