"""
Encoding throughput of data/common.write_split (where every prepare script spends its time), with 1
and with --workers processes side by side in one run on the same documents, next to the way it was
done before (encode_batch's threads around tiktoken, the rank -> id mapping, regex scans and numpy
conversion on the main thread); checks that all three write the same bytes.

    python bench/bench_encode.py --text_dir /tmp/corpus/txt --mb 6 [--workers 2] [--tokenizer T]

--text_dir holds en/, ru/, zh/ folders of UTF-8 text files (the layout of bench_tokenizer.py; docs/data.md,
"The offline corpora", says how to get them offline); about mb/3 MB is taken from each language
and cut at line ends into documents of about 4 kB. Wall-clock MB/s (UTF-8 bytes of text per second),
best of --repeats, so run it on an otherwise idle machine; the CPU seconds of the main process
show how much of the work is left on it (what caps the speed-up on more cores).
"""
import argparse
import glob
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from data.common import chunks, dtype_for, get_tokenizer, write_split  # noqa: E402


def load_docs(text_dir, mb, doc_bytes=4000):
    per_lang, docs = int(mb * 1e6 / 3), []
    for lang in ("en", "ru", "zh"):
        files = sorted(glob.glob(os.path.join(text_dir, lang, "*")))
        if not files:
            raise SystemExit(f"{os.path.join(text_dir, lang)}: no text files (see docs/data.md: The offline corpora)")
        size, cur, cur_bytes = 0, [], 0
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    cur.append(line)
                    cur_bytes += len(line.encode("utf-8"))
                    if cur_bytes >= doc_bytes:
                        docs.append("".join(cur))
                        size += cur_bytes
                        cur, cur_bytes = [], 0
                    if size >= per_lang:
                        break
            if size >= per_lang:
                break
    return docs


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def write_split_threads(path, docs, tok):
    """The write_split of before: encode_batch (threads) per chunk, ids -> numpy on the main thread."""
    with open(path, "wb") as f:
        for batch in chunks(docs):
            for ids in tok.encode_batch(batch):
                f.write(np.asarray(ids + [tok.eos_id], dtype=np.int64).astype(dtype_for(tok.vocab_size)).tobytes())


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--text_dir", required=True)
    p.add_argument("--mb", type=float, default=6)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokenizer", default=None)
    args = p.parse_args()
    tok = get_tokenizer(args.tokenizer)
    docs = load_docs(args.text_dir, args.mb)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    tok.encode("warm-up")  # build the engine outside the timings
    print(f"{tok.name}: {len(docs):,} documents, {n_bytes / 1e6:.2f} MB, {os.cpu_count()} cores")
    runs = {"write_split, 1 process": lambda path: write_split(path, docs, tok, workers=1),
            f"write_split, {args.workers} processes": lambda path: write_split(path, docs, tok, workers=args.workers),
            "before: encode_batch threads, ids on the main thread": lambda path: write_split_threads(path, docs, tok)}
    with tempfile.TemporaryDirectory() as tmp:
        speed, main_cpu, worker_cpu, outputs = {}, {}, {}, {}
        for name, run in runs.items():
            best = cpu = wcpu = float("inf")
            for r in range(args.repeats):
                path = os.path.join(tmp, f"{len(outputs)}.bin")
                t, c, w = time.perf_counter(), time.process_time(), children_cpu()
                run(path)
                best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
                wcpu = min(wcpu, children_cpu() - w)
            speed[name], main_cpu[name], worker_cpu[name] = n_bytes / best / 1e6, cpu, wcpu
            with open(path, "rb") as f:
                outputs[name] = f.read()
    if len(set(outputs.values())) != 1:
        raise SystemExit("the three ways wrote different bytes")
    base = speed["write_split, 1 process"]
    print(f"{'':54s} {'MB/s':>6s} {'vs 1 process':>13s} {'CPU s: main':>12s} {'workers':>8s}")
    for name, mbs in speed.items():
        print(f"{name:54s} {mbs:6.2f} {mbs / base:12.2f}x {main_cpu[name]:12.2f} {worker_cpu[name]:8.2f}")


if __name__ == "__main__":
    main()
