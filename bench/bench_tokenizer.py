"""
Encoding throughput of unicode_tokenizer vs HF `tokenizers` on the same vocabulary and merges, side by
side in one run, with a check that every id is identical; then the time of one long document of
10k / 30k / 100k characters (near-linear encoding).

    python bench/bench_tokenizer.py --text_dir /tmp/corpus/txt --mb 10                 # bvv241-2-3
    python bench/bench_tokenizer.py --text_dir /tmp/corpus/txt --mb 3 --tokenizer bvv241-max

The reference for bvv241-2-3 is tests/fixtures/bvv241-2-3/tokenizer.json (the released layout); for any
other name, `tokenizers` loads the tokenizer.json that our tokenizer writes with .save().

--text_dir holds en/, ru/, zh/ folders of UTF-8 text files (docs/data.md, "The offline corpora",
says how to get them offline); about mb/3 MB is taken from each language and split into documents at blank lines.
Single thread: every document encoded one by one with .encode() by both libraries; timed in CPU
seconds of this process (best of --repeats; robust when other jobs share the machine) and once in
wall-clock seconds. Both start every timed run cold: a new engine for ours (the Python engine caches
short runs), a freshly loaded tokenizer.json for tokenizers (its BPE caches short words).
All cores: encode_batch() of both (our thread pool around tiktoken vs tokenizers' rayon pool).
"""
import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
from unicode_tokenizer import get_tokenizer


def load_text(text_dir, mb):
    per_lang = int(mb * 1e6 / 3)
    docs = []
    for lang in ("en", "ru", "zh"):
        files = sorted(glob.glob(os.path.join(text_dir, lang, "*")))
        if not files:
            raise SystemExit(f"bench: no files in {os.path.join(text_dir, lang)} (see docs/data.md: The offline corpora)")
        size = 0
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                for d in split_docs(fh.read()):
                    if size >= per_lang:
                        break
                    if d.strip():
                        docs.append(d)
                        size += len(d.encode("utf-8"))
            if size >= per_lang:
                break
    return docs


def split_docs(text, max_chars=20_000):
    """Paragraphs (blank-line separated); a file with no blank lines (the People's Daily corpus)
    is cut at line ends into documents of at most max_chars."""
    for para in text.split("\n\n"):
        if len(para) <= max_chars:
            yield para
            continue
        doc = []
        for line in para.splitlines(keepends=True):
            doc.append(line)
            if sum(map(len, doc)) > max_chars:
                yield "".join(doc)
                doc = []
        yield "".join(doc)


def best_of(fn, repeats, clock=time.perf_counter, setup=lambda: None):
    best, out = float("inf"), None
    for _ in range(repeats):
        setup()
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--tokenizer", default="bvv241-2-3", help="a name for unicode_tokenizer.get_tokenizer")
    p.add_argument("--text_dir", default="/tmp/corpus/txt")
    p.add_argument("--mb", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2, help="best of N runs for each timing")
    a = p.parse_args()
    from tokenizers import Tokenizer
    ours = get_tokenizer(a.tokenizer)
    ref_json = os.path.join(os.path.dirname(here), "tests", "fixtures", "bvv241-2-3", "tokenizer.json")
    if a.tokenizer != "bvv241-2-3":
        ref_json = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
        ours.save(ref_json)
    hf = Tokenizer.from_file(ref_json)
    docs = load_text(a.text_dir, a.mb)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)

    def fresh():  # a new engine before every timed run of ours, outside the timing: the Python engine
        ours._engine = None  # caches short runs, and a warm cache would flatter every repeat after the first
        ours.encode("warm up")

    def fresh_hf():  # the same for tokenizers (its BPE caches short words)
        nonlocal hf
        hf = Tokenizer.from_file(ref_json)

    print(f"{len(docs):,} documents, {nbytes / 1e6:.2f} MB (en/ru/zh), tokenizer {a.tokenizer} vs {ref_json} "
          f"(engine {ours.engine.kind}), {os.cpu_count()} cores, python {sys.version.split()[0]}")
    t_build, _ = best_of(fresh, a.repeats, time.process_time)
    t_load, _ = best_of(fresh_hf, a.repeats, time.process_time)
    print(f"start (CPU time, not in the figures below): our engine built in {t_build:.2f} s | tokenizer.json "
          f"loaded by tokenizers in {t_load:.2f} s")

    # single thread: CPU seconds of this process (robust when other jobs share the cores), then wall
    t_ours, ids_ours = best_of(lambda: [ours.encode(d) for d in docs], a.repeats, time.process_time, fresh)
    t_hf, ids_hf = best_of(lambda: [hf.encode(d).ids for d in docs], a.repeats, time.process_time, fresh_hf)
    w_ours, _ = best_of(lambda: [ours.encode(d) for d in docs], 1, setup=fresh)
    w_hf, _ = best_of(lambda: [hf.encode(d).ids for d in docs], 1, setup=fresh_hf)
    same = ids_ours == ids_hf
    ntok = sum(map(len, ids_ours))
    print(f"single thread (CPU time):  unicode_tokenizer {nbytes / t_ours / 1e6:6.2f} MB/s | tokenizers "
          f"{nbytes / t_hf / 1e6:6.2f} MB/s | ratio {t_hf / t_ours:.2f}x | ids identical: {same} "
          f"({ntok:,} tokens, {nbytes / ntok:.2f} bytes/token)")
    print(f"single thread (wall time): unicode_tokenizer {nbytes / w_ours / 1e6:6.2f} MB/s | tokenizers "
          f"{nbytes / w_hf / 1e6:6.2f} MB/s | ratio {w_hf / w_ours:.2f}x")

    tb_ours, b_ours = best_of(lambda: ours.encode_batch(docs), a.repeats, setup=fresh)
    tb_hf, b_hf = best_of(lambda: [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)], a.repeats,
                         setup=fresh_hf)
    same_b = b_ours == b_hf == ids_ours
    print(f"all cores (wall time):     unicode_tokenizer {nbytes / tb_ours / 1e6:6.2f} MB/s | tokenizers {nbytes / tb_hf / 1e6:6.2f} MB/s"
          f" | ratio {tb_hf / tb_ours:.2f}x | ids identical: {same_b}")

    # one long document, as it is and with its whitespace removed (then nothing cuts it into pieces:
    # the worst case for BPE, where a quadratic one shows)
    text = "".join(docs)
    for n in (10_000, 30_000, 100_000):
        for what, doc in (("text", text[:n]), ("no whitespace", "".join(text.split())[:n])):
            t_o, ids_o = best_of(lambda: ours.encode(doc), a.repeats, time.process_time, fresh)
            t_h, ids_h = best_of(lambda: hf.encode(doc).ids, a.repeats, time.process_time, fresh_hf)
            print(f"one document of {n:>7,} characters ({what:>13}): unicode_tokenizer {t_o:.3f} s | "
                  f"tokenizers {t_h:.3f} s (CPU) | ids identical: {ids_o == ids_h}")
            same = same and ids_o == ids_h
    if not (same and same_b):
        raise SystemExit("bench: ids differ")


if __name__ == "__main__":
    main()
