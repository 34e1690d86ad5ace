"""
The instruction-format ("SFT") part of the papers' training mix: question-answering items written
byte for byte in the evaluation prompt formats of prompts.py (SPEC §7) with the answer right after
"Answer:" (no space, see prompts.ANSWER_SEP), one item per document.

    python data/sft_qa/prepare.py [--sources all|synthetic|arc_easy,squad_v2,...] [--local_dir D]
                                  [--tokenizer bvv241-2-3] [--max_bytes N]

Only TRAIN splits are used: ARC-Easy/Challenge, CommonsenseQA, SQuAD v2 (answerable items), BoolQ,
NQ-Open, TriviaQA (unfiltered, no context) and HotpotQA (supporting paragraphs as context), each from its original distribution (TriviaQA from
its authors' hub copy). Their validation/test files, and MMLU's test/dev/val questions, are read too,
only to drop any train item whose normalised question also occurs there (decontamination).
"synthetic" is a small deterministic generator (arithmetic, comparisons, letter choice, extraction)
that needs no network, so the mixture and its tests work offline.

Downloads go to the cache ($GLYPHGPT_CACHE or ~/.cache/glyphgpt)/sft_qa/<source>/; --local_dir
reads the same layout from a folder instead (the tests point it at data/fixtures/sft_qa).
"""
import glob
import io
import json
import os
import random
import re
import sys
import tarfile
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import prompts  # noqa: E402
from data.common import split_docs, write_dataset  # noqa: E402
from data.corpus import base_parser, check_budget, check_fraction, get_tokenizer, take_bytes, unit_hash  # noqa: E402
from data.download import cache_dir, download, hf_fetch, hf_list  # noqa: E402

# The two archives eval.py also reads: same URLs, sizes and sha256 (recorded by the HF `datasets`
# loaders), and the same cache path, so they are downloaded once for both.
ARC_ZIP = dict(url="https://s3-us-west-2.amazonaws.com/ai2-website/data/ARC-V1-Feb2018.zip", size=680841265,
               sha256="6d2d5ab50b2ceec6ba5f79c921be77cf2de712ea25a2b3f4fff3acc101cecfa0")  # with the ARC corpus
MMLU_TAR = dict(url="https://people.eecs.berkeley.edu/~hendrycks/data.tar", size=166184960,
                sha256="bec563ba4bac1d6aaf04141cd7d1605d7a5ca833e38f994051e818489592989b")
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

    def mmlu_questions(self):
        """Questions of MMLU's test, dev and val CSVs (original data.tar)."""
        path = self._local("mmlu", "data.tar") if self.local_dir else self._archive(MMLU_TAR, "MMLU")
        import csv
        out = []
        with tarfile.open(path) as t:
            for m in t.getmembers():
                if m.isfile() and m.name.endswith(".csv") and "/auxiliary_train/" not in m.name:
                    rows = csv.reader(io.TextIOWrapper(t.extractfile(m), encoding="utf-8"))
                    out += [r[0] for r in rows if r]
        return out


def read_jsonl(text, what):
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{what} line {i}: not JSON ({e})") from None
    return rows


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


def parse_arc_style(rows, mmlu_fraction, salt):
    """ARC / CommonsenseQA JSONL rows -> items; a deterministic mmlu_fraction of them is written in the
    MMLU layout (options on one line, lettered A-D...) so that both evaluation formats are taught."""
    items = []
    for r in rows:
        q, key = r["question"], r.get("answerKey")
        labels = [c["label"] for c in q["choices"]]
        texts = [c["text"] for c in q["choices"]]
        if key not in labels:
            continue  # test files without answers
        if unit_hash(r["id"], salt) < mmlu_fraction and len(texts) <= len(prompts.LETTERS):
            text = prompts.with_answer(prompts.mmlu_prompt(q["stem"], texts), prompts.LETTERS[labels.index(key)])
        else:
            text = prompts.with_answer(prompts.arc_prompt(q["stem"], labels, texts), key)
        items.append((norm(q["stem"]), text))
    return items


def arc_questions(rows):
    return [r["question"]["stem"] for r in rows]


def parse_squad(data):
    """Answerable SQuAD v2 questions; the answer is the first annotated span."""
    items = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                text = prompts.with_answer(prompts.squad_prompt(para["context"], qa["question"]),
                                           qa["answers"][0]["text"])
                items.append((norm(qa["question"]), text))
    return items


def squad_questions(data):
    return [qa["question"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


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
            data = json.loads(files.open_text(source, name))
            out += parse_squad(data) if split == "train" else squad_questions(data)
        else:
            rows = read_jsonl(files.open_text(source, name), what)
            if source in ("arc_easy", "arc_challenge", "commonsense_qa"):
                out += parse_arc_style(rows, mmlu_fraction, source) if split == "train" else arc_questions(rows)
            elif source == "boolq":
                out += parse_boolq(rows) if split == "train" else [r["question"] for r in rows]
            else:
                out += parse_nq(rows) if split == "train" else [r["question"] for r in rows]
    return out


# ---------------------------------------------------------------------------- offline generator

WORDS = ["apple", "river", "stone", "cloud", "garden", "window", "candle", "forest", "bridge", "mirror",
         "pencil", "island", "rocket", "violin", "harbor", "tunnel", "meadow", "lantern", "saddle", "kettle"]
NAMES = ["Anna", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Irina", "Jonas"]
THINGS = ["apples", "books", "coins", "stamps", "shells", "marbles", "pencils", "tickets"]


def _choices(rng, answer, n=4):
    """n distinct integer options containing `answer`, shuffled."""
    opts = {answer}
    while len(opts) < n:
        opts.add(answer + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10]) * rng.randint(1, 3))
    opts = sorted(opts)
    rng.shuffle(opts)
    return opts


def synthetic_items(n, seed=0):
    """n deterministic items cycling through six task kinds, in all the prompt formats."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = i % 6
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if kind == 0:  # arithmetic, MMLU layout
            opts = _choices(rng, a + b)
            q = f"What is {a} + {b}?"
            text = prompts.with_answer(prompts.mmlu_prompt(q, [str(o) for o in opts]), "ABCD"[opts.index(a + b)])
        elif kind == 1:  # arithmetic, ARC layout
            opts = _choices(rng, a * b % 100 + 1)
            q = f"What is {a} times {b}, modulo 100, plus 1?"
            text = prompts.with_answer(prompts.arc_prompt(q, list("ABCD"), [str(o) for o in opts]),
                                       "ABCD"[opts.index(a * b % 100 + 1)])
        elif kind == 2:  # letter choice, ARC layout with 5 options like CommonsenseQA
            words = rng.sample(WORDS, 5)
            target = rng.randrange(5)
            q = f"Which word ends with the letters \"{words[target][-2:]}\"?"
            if sum(w.endswith(words[target][-2:]) for w in words) != 1:
                q = f"Which word is number {target + 1} in the list?"
            text = prompts.with_answer(prompts.arc_prompt(q, list("ABCDE"), words), "ABCDE"[target])
        elif kind == 3:  # extraction, SQuAD layout
            name, thing = rng.choice(NAMES), rng.choice(THINGS)
            other = rng.choice([t for t in THINGS if t != thing])
            c = f"{name} has {a} {thing} and {b} {other}. {name} keeps them in a box."
            q = f"How many {thing} does {name} have?"
            text = prompts.with_answer(prompts.squad_prompt(c, q), str(a))
        elif kind == 4:  # yes/no, BoolQ layout
            c = f"The first number is {a} and the second number is {b}."
            q = "is the first number greater than the second"
            text = prompts.with_answer(prompts.boolq_prompt(c, q), prompts.boolq_answer(a > b))
        else:  # closed book
            q = f"What is {a} minus {b}?"
            text = prompts.with_answer(prompts.qa_prompt(q), str(a - b))
        items.append((f"synthetic {i}", text))
    return items


# ---------------------------------------------------------------------------- the mixture

def build(sources, files, n_synthetic=6000, mmlu_fraction=0.5, check_mmlu=True, seed=1337):
    """All train items of `sources`, decontaminated against every eval split we know of, deduplicated
    and shuffled deterministically. Returns (docs, stats)."""
    eval_keys = set()
    real = [s for s in sources if s != "synthetic"]
    for s in real:
        eval_keys.update(norm(q) for q in load_source(files, s, "eval"))
    if real and check_mmlu:
        eval_keys.update(norm(q) for q in files.mmlu_questions())
    stats, seen, docs = {}, set(), []
    for s in sources:
        items = synthetic_items(n_synthetic, seed) if s == "synthetic" else load_source(files, s, "train", mmlu_fraction)
        kept = 0
        for key, text in items:
            if key in eval_keys or text in seen:
                continue
            seen.add(text)
            docs.append(text)
            kept += 1
        stats[s] = dict(items=len(items), kept=kept)
        print(f"{s}: {kept:,} of {len(items):,} train items kept (rest: in an eval split or duplicate)")
    random.Random(seed).shuffle(docs)
    return docs, stats


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
    max_bytes = check_budget(args.max_bytes)
    check_fraction(args.val_fraction, "--val_fraction")
    if not 0 <= args.mmlu_fraction <= 1:
        raise SystemExit(f"--mmlu_fraction must be in [0, 1] (got {args.mmlu_fraction:g})")
    sources = parse_sources(args.sources)
    tok = get_tokenizer(args.tokenizer)
    docs, stats = build(sources, Files(args.local_dir), args.synthetic, args.mmlu_fraction, not args.no_mmlu_check)
    docs = take_bytes(docs, max_bytes)
    if len(docs) < 2:
        raise SystemExit(f"only {len(docs)} item(s) left: nothing to split into train and val")
    train, val = split_docs(docs, args.val_fraction)
    licences = ", ".join(f"{s}: {LICENCES[s]}" for s in sources)
    return write_dataset(args.out_dir, train, val, tok, source=f"QA train splits in SPEC §7 formats ({licences})",
                         documents=len(docs), sources=stats, answer_sep=prompts.ANSWER_SEP)


if __name__ == "__main__":
    main()
