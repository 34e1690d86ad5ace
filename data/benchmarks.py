"""
The benchmarks' original files: where they are downloaded from (once, size- and sha256-checked, into
the cache) and how each format is read into plain records. One home for both readers of these files:
eval.py turns the records into prompts and scoring requests, data/sft_qa/prepare.py writes the train
splits as training items and uses the eval splits' questions to decontaminate.

Layout of a data dir (the download's, $GLYPHGPT_CACHE/eval/data, or eval.py's --data_dir):
  mmlu/test/{subject}_test.csv           rows question,A,B,C,D,answer (no header)
  arc/ARC-Easy/ARC-Easy-Dev.jsonl        AllenAI JSONL (question.stem, question.choices, answerKey)
  arc/ARC-Challenge/ARC-Challenge-Dev.jsonl
  commonsense_qa/dev_rand_split.jsonl    same JSONL layout as ARC
  squad_v2/dev-v2.0.json                 the official SQuAD v2 JSON
  hellaswag/hellaswag_val.jsonl          rowanz/hellaswag JSONL
  boolq/dev.jsonl                        google-research BoolQ JSONL
  opus100/en-ru/opus.en-ru-dev.{en,ru}   OPUS-100 v1.0 line-aligned text (likewise en-zh)

Readers take the file's text (prepare.py reads ARC's members straight out of the zip) and a `where`
name; a malformed row is one ValueError naming file:line and the key or value that is wrong.
"""
import csv
import glob
import io
import json
import os
import re
import tarfile
import zipfile

from checkpoint import atomic_write
from data.download import cache_dir, download

# the original files; sizes and sha256 as the Hugging Face `datasets` loaders record them
SOURCES = {
    "mmlu": dict(url="https://people.eecs.berkeley.edu/~hendrycks/data.tar", size=166184960,
                 sha256="bec563ba4bac1d6aaf04141cd7d1605d7a5ca833e38f994051e818489592989b",
                 members={r"data/test/(\w+_test\.csv)": "mmlu/test/{0}"}),
    "arc": dict(url="https://s3-us-west-2.amazonaws.com/ai2-website/data/ARC-V1-Feb2018.zip", size=680841265,
                sha256="6d2d5ab50b2ceec6ba5f79c921be77cf2de712ea25a2b3f4fff3acc101cecfa0",
                members={r"ARC-V1-Feb2018-2/(ARC-(Easy|Challenge))/ARC-(Easy|Challenge)-Dev\.jsonl":
                         "arc/{0}/{0}-Dev.jsonl"}),
    "commonsense_qa": dict(url="https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl", size=471653,
                           sha256="3210497fdaae614ac085d9eb873dd7f4d49b6f965a93adadc803e1229fd8a02a"),
    "squad_v2": dict(url="https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json", size=4370528,
                     sha256="80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8"),
    "hellaswag": dict(url="https://github.com/rowanz/hellaswag/raw/master/data/hellaswag_val.jsonl", size=12246618,
                      sha256="0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"),
    "boolq": dict(url="https://storage.googleapis.com/boolq/dev.jsonl", size=2238726,
                  sha256="ebc29ea3808c5c611672384b3de56e83349fe38fc1fe876fd29b674d81d0a80a"),
    "opus_en_ru": dict(url="https://object.pouta.csc.fi/OPUS-100/v1.0/opus-100-corpus-en-ru-v1.0.tar.gz",
                       size=68501634, sha256="422c96c952e37a0e7ae924538f6c521a9dcedb200e0b29eab07a6e3fd00cca9d",
                       members={r"opus-100-corpus/v1\.0/supervised/en-ru/(opus\.en-ru-dev\.(en|ru))": "opus100/en-ru/{0}"}),
    "opus_en_zh": dict(url="https://object.pouta.csc.fi/OPUS-100/v1.0/opus-100-corpus-en-zh-v1.0.tar.gz",
                       size=83265500, sha256="c417af397ec380032528a9de8e2fbed40e2de78e0bcc6bace0de257a01ae6635",
                       members={r"opus-100-corpus/v1\.0/supervised/en-zh/(opus\.en-zh-dev\.(en|zh))": "opus100/en-zh/{0}"}),
}

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


# -----------------------------------------------------------------------------
# downloads

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
                f = a.open(name) if isinstance(a, zipfile.ZipFile) else a.extractfile(name)
                with f, atomic_write(out, "wb") as g:
                    g.write(f.read())


def ensure_data(sources):
    """Download (once) the original files of `sources` (keys of SOURCES) -> the data dir they are laid
    out in. Archives are kept in the cache's eval/downloads, where prepare.py finds them too."""
    data_dir = cache_dir("eval", "data")
    done = os.path.join(data_dir, ".done")
    have = set(open(done).read().split()) if os.path.exists(done) else set()
    for src in dict.fromkeys(sources):
        if src in have:
            continue
        s = SOURCES[src]
        try:
            if "members" not in s:  # a plain file: straight into the layout, as data_dir/<source>/<its name>
                dest = os.path.join(data_dir, src, os.path.basename(s["url"]))
                download(s["url"], dest, s["sha256"], s["size"], what=f"the {src} benchmark")
            else:
                archive = os.path.join(cache_dir("eval", "downloads"), os.path.basename(s["url"]))
                extract(download(s["url"], archive, s["sha256"], s["size"], what=f"the {src} benchmark"),
                        s["members"], data_dir)
        except SystemExit as e:  # data/download.py's one-line refusal: one line here too (script_main prints it)
            raise ValueError(f"{e}; offline, --data_dir=data/eval_items scores the few items shipped with the "
                             f"repository; or pass --data_dir=DIR holding the original files (layout: python eval.py "
                             f"--help)") from None
        with open(done, "a") as f:
            f.write(src + "\n")
    return data_dir


# -----------------------------------------------------------------------------
# reading

def read_text(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing benchmark file (pass --data_dir with the original layout, "
                                f"or leave --data_dir out to download it)")
    with open(path, "rb") as f:
        return decode(f.read(), path)


def decode(raw, where):
    """UTF-8 bytes -> text, or one line naming `where` and the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}): a benchmark file must be the "
                         f"original UTF-8 file") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's way to write a lone surrogate (\ud800)
_SURROGATE = re.compile("[\ud800-\udfff]")


def load_json(text, where):
    """json.loads with one-line errors naming `where` (a file or file:line): malformed JSON, numbers
    Python will not read, nesting too deep, strings that are not valid Unicode (lone surrogates)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of 5,000 digits, [[[[... 100,000 deep
        raise ValueError(f"{where}: not readable JSON ({type(e).__name__}: {str(e)[:100]})") from None
    if _SURROGATE_ESCAPE.search(text) and _SURROGATE.search(json.dumps(obj, ensure_ascii=False)):
        raise ValueError(f"{where}: a string holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode")
    return obj


def jsonl_rows(text, where):
    """[(line number, object)] of a JSONL text; blank lines skipped; every line must be one JSON object."""
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        obj = load_json(line, f"{where}:{n}")
        if not isinstance(obj, dict):
            raise ValueError(f"{where}:{n}: expected a JSON object per line, got {brief(obj)}")
        rows.append((n, obj))
    return rows


KINDS = {str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def brief(value, n=40):
    """A value in an error message: its repr (one line), cut to n characters."""
    text = repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def field(obj, dotted, where, kind=None):
    """obj['a']['b'] for 'a.b', or a ValueError naming the place and the key; kind (str, list, dict,
    bool): the type the value must have."""
    for key in dotted.split("."):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object holding {key!r}, got {brief(obj)}")
        if key not in obj:
            raise ValueError(f"{where}: missing key {dotted!r}")
        obj = obj[key]
    if kind is not None and not isinstance(obj, kind):
        raise ValueError(f"{where}: {dotted!r} is {brief(obj)}, expected {KINDS[kind]}")
    return obj


def strings(obj, dotted, where, empty_ok=False):
    """A field that must be a list of strings (non-empty unless empty_ok)."""
    values = field(obj, dotted, where, list)
    if not values and not empty_ok:
        raise ValueError(f"{where}: {dotted!r} is an empty list")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{where}: {dotted}[{i}] is {brief(v)}, expected a string")
    return values


def item_id(value, where, default):
    """An item's id from the file (a string or a whole number), or `default` where it has none."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: id {brief(value)} is not a string or a whole number")
    return str(value)


def mmlu_rows(f, where):
    """One MMLU CSV (an open text file) -> [(question, [A, B, C, D], answer letter)]."""
    reader = csv.reader(f)
    rows = []
    try:
        for row in reader:
            at = f"{where}:{reader.line_num}"
            if len(row) != 6:
                raise ValueError(f"{at}: expected 6 fields (question,A,B,C,D,answer), got {len(row)}")
            answer = row[5].strip()
            if answer not in ("A", "B", "C", "D"):
                raise ValueError(f"{at}: answer {brief(row[5])} is not one of A, B, C, D")
            rows.append((row[0], row[1:5], answer))
    except csv.Error as e:  # a field over the csv module's size limit, ...
        raise ValueError(f"{where}:{reader.line_num}: not readable CSV ({e})") from None
    return rows


def mmlu_records(data_dir):
    """Every MMLU test question: dict(subject, question, choices, answer), subjects in name order."""
    test_dir = os.path.join(data_dir, "mmlu", "test")
    if not os.path.isdir(test_dir) and os.path.isdir(os.path.join(data_dir, "mmlu", "data", "test")):
        test_dir = os.path.join(data_dir, "mmlu", "data", "test")  # data.tar unpacked as is
    files = sorted(glob.glob(os.path.join(test_dir, "*_test.csv")))
    if not files:
        raise FileNotFoundError(f"{test_dir}: no MMLU files ({{subject}}_test.csv) found")
    records = []
    for path in files:
        subject = os.path.basename(path)[:-len("_test.csv")]
        f = io.StringIO(read_text(path), newline="")
        records += [dict(subject=subject, question=q, choices=c, answer=a) for q, c, a in mmlu_rows(f, path)]
    return records


def mmlu_tar_questions(path):
    """The questions of every CSV in MMLU's original data.tar except auxiliary_train (test, dev, val)."""
    questions = []
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.isfile() and m.name.endswith(".csv") and "/auxiliary_train/" not in m.name:
                where = f"{path}:{m.name}"
                f = io.StringIO(decode(t.extractfile(m).read(), where), newline="")
                questions += [q for q, _, _ in mmlu_rows(f, where)]
    return questions


def jsonl_records(text, where, record):
    """[record(obj, n, at)] for the objects of a JSONL text: n its line number, at 'file:line' for errors."""
    return [record(obj, n, f"{where}:{n}") for n, obj in jsonl_rows(text, where)]


def arc_records(text, where):
    """ARC / CommonsenseQA JSONL (AllenAI layout) -> dict(id, question, labels, texts, answer); answer
    is None where the file has no answerKey (CommonsenseQA's test split)."""
    return jsonl_records(text, where, arc_record)


def arc_record(obj, n, at):
    choices = field(obj, "question.choices", at, list)
    if not choices:
        raise ValueError(f"{at}: 'question.choices' is an empty list")
    labels = [field(c, "label", f"{at}: question.choices[{i}]", str) for i, c in enumerate(choices)]
    texts = [field(c, "text", f"{at}: question.choices[{i}]", str) for i, c in enumerate(choices)]
    if "" in labels or len(set(labels)) != len(labels):
        raise ValueError(f"{at}: the labels {brief(labels, 80)} must be distinct and not empty")
    answer = obj.get("answerKey")
    if answer is not None and answer not in labels:
        raise ValueError(f"{at}: answerKey {brief(answer)} is not one of the labels {brief(labels, 80)}")
    return dict(id=item_id(obj.get("id"), at, str(n)), question=field(obj, "question.stem", at, str), labels=labels,
                texts=texts, answer=answer)


def hellaswag_records(text, where):
    """rowanz/hellaswag JSONL -> dict(id, activity_label, ctx_a, ctx_b, endings, label (int))."""
    return jsonl_records(text, where, hellaswag_record)


def hellaswag_record(obj, n, at):
    endings = strings(obj, "endings", at)
    label = field(obj, "label", at)
    if isinstance(label, bool) or not isinstance(label, (int, str)) or not re.fullmatch(r"[0-9]+", str(label)) \
            or int(label) >= len(endings):
        raise ValueError(f"{at}: label {brief(label)} is not an index into the {len(endings)} endings")
    return dict(id=item_id(obj.get("ind"), at, str(n)), activity_label=field(obj, "activity_label", at, str),
                ctx_a=field(obj, "ctx_a", at, str), ctx_b=field(obj, "ctx_b", at, str), endings=endings,
                label=int(label))


def boolq_records(text, where):
    """BoolQ JSONL -> dict(id, question, passage, answer (bool))."""
    return jsonl_records(text, where, boolq_record)


def boolq_record(obj, n, at):
    answer = field(obj, "answer", at)
    if not isinstance(answer, bool):
        raise ValueError(f"{at}: answer {brief(answer)} is not true/false")
    return dict(id=str(n), question=field(obj, "question", at, str), passage=field(obj, "passage", at, str),
                answer=answer)


def squad_records(text, where):
    """SQuAD v2 JSON -> every question: dict(id, context, question, answers (texts; [] when unanswerable))."""
    data = load_json(text, where)
    records = []
    for a, article in enumerate(field(data, "data", where, list)):
        for p, para in enumerate(field(article, "paragraphs", f"{where}: data[{a}]", list)):
            at = f"{where}: data[{a}].paragraphs[{p}]"
            context = field(para, "context", at, str)
            for q, qa in enumerate(field(para, "qas", at, list)):
                where_qa = f"{at}.qas[{q}]"
                question = field(qa, "question", where_qa, str)
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise ValueError(f"{where_qa}: 'is_impossible' is {brief(impossible)}, expected true or false")
                answers = []
                if not impossible:
                    given = qa.get("answers") or []
                    if not isinstance(given, list):
                        raise ValueError(f"{where_qa}: 'answers' is {brief(given)}, expected a list")
                    answers = [field(x, "text", f"{where_qa}.answers[{i}]", str) for i, x in enumerate(given)]
                records.append(dict(id=item_id(qa.get("id"), where_qa, f"{a}/{p}/{q}"), context=context,
                                    question=question, answers=answers))
    return records


def opus_lines(data_dir, pair):
    """OPUS-100 dev files of a pair ('en-ru') -> {language: [lines]}, checked to align line by line."""
    paths = {lang: os.path.join(data_dir, "opus100", pair, f"opus.{pair}-dev.{lang}") for lang in pair.split("-")}
    lines = {}
    for lang, path in paths.items():
        lines[lang] = read_text(path).split("\n")
        if lines[lang] and lines[lang][-1] == "":
            lines[lang].pop()
    a, b = pair.split("-")
    if len(lines[a]) != len(lines[b]):
        raise ValueError(f"{paths[a]} has {len(lines[a])} lines but {paths[b]} has {len(lines[b])}: "
                         f"the two sides of a parallel corpus must align line by line")
    return lines
