"""
Encoding throughput of unicode_tokenizer vs HF `tokenizers` on the same tokenizer.json, side by side
in one run, with a check that every id is identical.

    python bench_tokenizer.py --text_dir /tmp/corpus/txt --mb 10
    python bench_tokenizer.py --tokenizer_json ../shared/fixtures/bvv241-2-3/tokenizer.json

--text_dir holds en/, ru/, zh/ folders of UTF-8 text files (README "Tokenizer" says how to get them
offline); about mb/3 MB is taken from each language and split into documents at blank lines.
Single thread: every document encoded one by one with .encode() by both libraries; timed in CPU
seconds of this process (best of --repeats; robust when other jobs share the machine) and once in
wall-clock seconds.
All cores: encode_batch() of both (our thread pool around tiktoken vs tokenizers' rayon pool).
"""
import argparse
import glob
import os
import sys
import time

from unicode_tokenizer import UnicodeTokenizer


def load_text(text_dir, mb):
    per_lang = int(mb * 1e6 / 3)
    docs = []
    for lang in ("en", "ru", "zh"):
        files = sorted(glob.glob(os.path.join(text_dir, lang, "*")))
        if not files:
            raise SystemExit(f"bench: no files in {os.path.join(text_dir, lang)} (see README: Tokenizer)")
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


def best_of(fn, repeats, clock=time.perf_counter):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--tokenizer_json", default=os.path.join(here, "..", "shared", "fixtures", "bvv241-2-3", "tokenizer.json"))
    p.add_argument("--text_dir", default="/tmp/corpus/txt")
    p.add_argument("--mb", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2, help="best of N runs for each timing")
    a = p.parse_args()
    from tokenizers import Tokenizer
    if not os.path.exists(a.tokenizer_json):
        raise SystemExit(f"bench: {a.tokenizer_json} not found")
    ours = UnicodeTokenizer.from_hf_json(a.tokenizer_json)
    hf = Tokenizer.from_file(a.tokenizer_json)
    docs = load_text(a.text_dir, a.mb)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    ours.encode("warm up")  # builds the tiktoken engine (about 0.2 s), not part of the throughput
    print(f"{len(docs):,} documents, {nbytes / 1e6:.2f} MB (en/ru/zh), tokenizer {a.tokenizer_json} "
          f"(engine {ours.engine.kind}), {os.cpu_count()} cores, python {sys.version.split()[0]}")

    # single thread: CPU seconds of this process (robust when other jobs share the cores), then wall
    t_ours, ids_ours = best_of(lambda: [ours.encode(d) for d in docs], a.repeats, time.process_time)
    t_hf, ids_hf = best_of(lambda: [hf.encode(d).ids for d in docs], a.repeats, time.process_time)
    w_ours, _ = best_of(lambda: [ours.encode(d) for d in docs], 1)
    w_hf, _ = best_of(lambda: [hf.encode(d).ids for d in docs], 1)
    same = ids_ours == ids_hf
    ntok = sum(map(len, ids_ours))
    print(f"single thread (CPU time):  unicode_tokenizer {nbytes / t_ours / 1e6:6.2f} MB/s | tokenizers "
          f"{nbytes / t_hf / 1e6:6.2f} MB/s | ratio {t_hf / t_ours:.2f}x | ids identical: {same} "
          f"({ntok:,} tokens, {nbytes / ntok:.2f} bytes/token)")
    print(f"single thread (wall time): unicode_tokenizer {nbytes / w_ours / 1e6:6.2f} MB/s | tokenizers "
          f"{nbytes / w_hf / 1e6:6.2f} MB/s | ratio {w_hf / w_ours:.2f}x")

    tb_ours, b_ours = best_of(lambda: ours.encode_batch(docs), a.repeats)
    tb_hf, b_hf = best_of(lambda: [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)], a.repeats)
    same_b = b_ours == b_hf == ids_ours
    print(f"all cores (wall time):     unicode_tokenizer {nbytes / tb_ours / 1e6:6.2f} MB/s | tokenizers {nbytes / tb_hf / 1e6:6.2f} MB/s"
          f" | ratio {tb_hf / tb_ours:.2f}x | ids identical: {same_b}")
    if not (same and same_b):
        raise SystemExit("bench: ids differ")


if __name__ == "__main__":
    main()
