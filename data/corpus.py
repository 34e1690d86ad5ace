"""
Small helpers shared by the streaming prepare scripts (the common command line is in data/common.py):
deterministic sampling / train-val assignment of streamed documents, and the script-share measure
the tests use to check that a corpus is in the language it claims.
"""
import itertools
import os
import re
import sys
import zlib

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from checkpoint import write_json  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes of the fortune files


def unit_hash(key, salt):
    """A number in [0, 1) fixed by (salt, key): sampling and val assignment of streamed documents that
    does not depend on the order or the number of shards read."""
    return zlib.crc32(f"{salt}\0{key}".encode("utf-8")) / 2**32


def script_share(text):
    """Share of letters (str.isalpha) that are Latin, Cyrillic or CJK/kana/hangul."""
    counts = dict(latin=0, cyrillic=0, cjk=0, other=0)
    for ch in text:
        if not ch.isalpha():
            continue
        o = ord(ch)
        if o < 0x250 or 0x1E00 <= o < 0x1F00:
            counts["latin"] += 1
        elif 0x400 <= o < 0x530:
            counts["cyrillic"] += 1
        elif (0x3040 <= o < 0x3100 or 0x3400 <= o < 0xA000 or 0xAC00 <= o < 0xD7B0
              or 0xF900 <= o < 0xFB00 or 0xFF00 <= o < 0xFFF0):
            counts["cjk"] += 1
        else:
            counts["other"] += 1
    total = max(1, sum(counts.values()))
    return {k: v / total for k, v in counts.items()}


def parquet_shards(repo, prefix, local_dir=None, what="this dataset"):
    """Local paths of the parquet shards of hub dataset `repo` under folder `prefix`, in path order,
    yielded one at a time so each is downloaded only when the reader gets to it. With local_dir, the
    shards are read from local_dir/prefix/ (the hub's layout) and nothing is downloaded."""
    from data.download import hf_fetch, hf_list
    if local_dir:
        import glob
        paths = sorted(glob.glob(os.path.join(local_dir, prefix, "**", "*.parquet"), recursive=True))
        if not paths:
            raise SystemExit(f"{os.path.join(local_dir, prefix)}: no .parquet shards there")
        yield from paths
        return
    for f in hf_list(repo, prefix, what=what):
        yield hf_fetch(repo, f, what=what)


def iter_parquet(path, columns, batch_size=1024):
    """Rows of a parquet file as dicts of `columns`, a record batch at a time (bounded memory).
    A truncated or corrupt file is an error naming the file, never silently skipped."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("reading parquet shards needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise SystemExit(f"{path}: no column(s) {missing}; has {pf.schema_arrow.names}")
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()
    except SystemExit:
        raise
    except Exception as e:  # ArrowInvalid, OSError...: a shard we cannot trust
        raise SystemExit(f"{path}: not a readable parquet file ({type(e).__name__}: {e}); delete it and "
                         f"run again to re-download") from None


class StreamSplit:
    """Routes a stream of (key, text) documents into train (yielded) and val (kept in memory, small),
    with a sample fraction and a byte budget; val is assigned by hashing the key, so the split is the
    same whatever the budget or shard order. Pass `train()` and `val()` to data.common.write_dataset:
    it consumes train first, which fills val."""

    def __init__(self, docs, max_bytes=None, sample=1.0, val_fraction=0.005, salt=""):
        self.docs, self.max_bytes, self.sample, self.val_fraction, self.salt = docs, max_bytes, sample, val_fraction, salt
        self.val_docs, self.bytes, self.n_docs = [], 0, 0

    def train(self):
        for key, text in self.docs:
            if not text or (self.sample < 1 and unit_hash(key, "sample" + self.salt) >= self.sample):
                continue
            n = len(text.encode("utf-8"))
            if self.max_bytes is not None and self.bytes + n > self.max_bytes and self.n_docs:
                return  # budget reached: stop reading (and downloading) more shards
            self.bytes += n
            self.n_docs += 1
            # the first document always goes to val, so a tiny budget still gives a non-empty val.bin
            if self.n_docs == 1 or unit_hash(key, "val" + self.salt) < self.val_fraction:
                self.val_docs.append(text)
            else:
                yield text

    def val(self):
        yield from self.val_docs


def bytes_per_token(tok, docs):
    """UTF-8 bytes per token of `tok` on a sample of documents (each + its eos)."""
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(ids) + 1 for ids in tok.encode_batch(docs))
    return n_bytes / max(1, n_tokens)


def token_budget(stream, tok, max_tokens, calib_docs, what="documents"):
    """A budget in tokens of OUR tokenizer as bytes: the first calib_docs (key, text) items of the stream
    are encoded once to measure bytes per token. -> (the same stream, max_bytes, bytes per token)."""
    head = list(itertools.islice(stream, max(1, calib_docs)))
    bpt = bytes_per_token(tok, [t for _, t in head])
    max_bytes = int(max_tokens * bpt)
    print(f"{bpt:.3f} bytes/token on {len(head)} {what}: --max_tokens {max_tokens:,} -> {max_bytes:,} bytes")
    return itertools.chain(head, stream), max_bytes, bpt


def add_to_meta(out_dir, meta, **extra):
    """Add keys known only after the documents were streamed (counts) to meta.json, atomically."""
    meta.update(extra)
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta
