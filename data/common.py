"""
The binary token format every prepare script writes and train.py / eval.py read.

data/<name>/train.bin, val.bin: flat token ids, little-endian uint16 when the vocabulary fits in
16 bits, uint32 otherwise; documents are separated by one eos token. data/<name>/meta.json records
which tokenizer made them (so a loader can refuse a mismatch) and how many UTF-8 bytes of text
they hold (so a loss in nats per token converts to bits per byte, comparable across tokenizers).
"""
import argparse
import collections
import itertools
import math
import multiprocessing
import os

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import atomic_write, read_json, write_json
from common import bar_on, fail, shown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK_CHARS = 1 << 17  # characters of documents per task of a worker process: a task's overhead stays small
_TOK = None  # the tokenizer of the running write_split; forked workers inherit it (built once, before the fork)


def dtype_for(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_chunk(docs):
    """(token bytes, n_tokens, n_bytes) of a list of documents, each followed by eos: ALL the
    per-token work (BPE, rank -> id mapping, the tokenizer's regex scans, the numpy conversion), so that
    it runs in a worker process and the main process only writes bytes."""
    ids = []
    for d in docs:
        ids += _TOK.encode(d)
        ids.append(_TOK.eos_id)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return np.array(ids, dtype=dtype_for(_TOK.vocab_size)).tobytes(), len(ids), n_bytes


def chunks(docs, max_chars=CHUNK_CHARS):
    """Lists of whole documents of about max_chars characters each (a longer document is one chunk)."""
    batch, n = [], 0
    for doc in docs:
        batch.append(doc)
        n += len(doc)
        if n >= max_chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def encoded_chunks(docs, tok, workers):
    """encode_chunk of each chunk of documents, in order. With workers > 1 the chunks are encoded by
    that many forked processes, at most two per process in flight, so a long stream of documents is
    never read far ahead of what has been written (bounded memory)."""
    global _TOK
    _TOK = tok
    batches = chunks(docs)
    head = list(itertools.islice(batches, 2))
    if workers <= 1 or len(head) < 2:  # one chunk: starting processes would cost more than it saves
        yield from map(encode_chunk, itertools.chain(head, batches))
        return
    tok.encode("warm-up")  # builds the encoding engine once, here, so every worker inherits it
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending = collections.deque()
        for batch in itertools.chain(head, batches):
            pending.append(pool.apply_async(encode_chunk, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_split(path, docs, tok, desc=None, workers=None):
    """Encode an iterable of document strings into `path` with `workers` processes (default: all
    cores); returns (n_tokens, n_bytes). Written atomically, so an interrupted run never leaves a
    half-written file that looks complete."""
    if tok.eos_id is None:
        raise ValueError(f"tokenizer {tok.name!r} has no eos token to separate documents")
    n_tokens = n_bytes = 0
    with atomic_write(path, "wb") as f, tqdm(desc=desc or os.path.basename(path), unit="B", unit_scale=True,
                                             disable=not bar_on(True)) as bar:
        for data, tokens, size in encoded_chunks(docs, tok, workers or os.cpu_count() or 1):
            f.write(data)
            n_tokens += tokens
            n_bytes += size
            bar.update(size)
    return n_tokens, n_bytes


def write_dataset(out_dir, train_docs, val_docs, tok, source, **extra):
    """Write train.bin, val.bin and meta.json (meta last: its presence marks a complete dataset)."""
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the old meta would describe bins we are about to replace
    train_tokens, train_bytes = write_split(os.path.join(out_dir, "train.bin"), train_docs, tok, "train")
    val_tokens, val_bytes = write_split(os.path.join(out_dir, "val.bin"), val_docs, tok, "val")
    if min(train_tokens, val_tokens) == 0:
        raise ValueError(f"{out_dir}: a split came out empty (train {train_tokens}, val {val_tokens} tokens)")
    meta = dict(tokenizer_name=tok.name, tokenizer_fingerprint=tok.fingerprint, vocab_size=tok.vocab_size,
                dtype=np.dtype(dtype_for(tok.vocab_size)).name, eos_id=tok.eos_id,
                train_tokens=train_tokens, val_tokens=val_tokens, train_bytes=train_bytes, val_bytes=val_bytes,
                source=source, **extra)
    write_json(meta_path, meta)
    print(f"{out_dir}: train {train_tokens:,} tokens ({train_bytes:,} bytes), val {val_tokens:,} tokens "
          f"({val_bytes:,} bytes), {train_bytes / max(train_tokens, 1):.2f} bytes/token")
    return meta


def prepare_command(data_dir):
    """The command that writes a missing dataset folder, for its error message: data/<name>/prepare.py
    when there is one (with --out_dir when the folder is not that script's default), else a pointer."""
    name = os.path.basename(os.path.normpath(str(data_dir)))
    script = os.path.join("data", name, "prepare.py")
    if not os.path.isfile(os.path.join(REPO, script)):
        return f"write it with a data/*/prepare.py script and --out_dir {shown(data_dir)}: docs/data.md lists them"
    same = os.path.abspath(data_dir) == os.path.join(REPO, "data", name)
    return f"run python {script}" + ("" if same else f" --out_dir {shown(data_dir)}")


def read_meta(data_dir):
    """data_dir/meta.json, checked (check_meta): every reader of a dataset gets one-line errors."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{shown(path)} not found: the dataset is not prepared ({prepare_command(data_dir)})")
    meta = read_json(path, "a dataset's meta.json")
    check_meta(meta, data_dir)
    return meta


def open_split(data_dir, split, tok=None):
    """Memory-map data_dir/{split}.bin, refusing data made by a different tokenizer."""
    meta = read_meta(data_dir)
    if tok is not None and meta["tokenizer_fingerprint"] != tok.fingerprint:
        raise ValueError(f"{data_dir}/meta.json was made with tokenizer {meta['tokenizer_name']!r} "
                         f"(fingerprint {meta['tokenizer_fingerprint']}), but the model uses {tok.name!r} "
                         f"(fingerprint {tok.fingerprint}): re-run the prepare script with --tokenizer")
    path = os.path.join(data_dir, f"{split}.bin")
    dtype = np.dtype(meta["dtype"])
    expected = meta[f"{split}_tokens"] * dtype.itemsize
    if not os.path.isfile(path) or os.path.getsize(path) != expected:
        raise ValueError(f"{path} is missing or truncated: expected {expected:,} bytes ({meta[f'{split}_tokens']:,} "
                         f"{dtype.name} tokens per meta.json)")
    ids = np.memmap(path, dtype=dtype, mode="r")
    # an id the model has no row for would fail mid-run (a CUDA assert on a GPU); a dtype whose largest
    # value is a valid id needs no pass over the file
    if tok is not None and np.iinfo(dtype).max >= tok.vocab_size:
        top = max((int(ids[i:i + (1 << 26)].max()) for i in range(0, len(ids), 1 << 26)), default=0)
        if top >= tok.vocab_size:
            raise ValueError(f"{path} holds token id {top}, beyond the {tok.vocab_size:,} ids of tokenizer "
                             f"{tok.name!r}: the file is damaged or was not made by this tokenizer")
    return ids


def split_docs(docs, val_fraction=0.05, seed=1337):
    """Deterministic train/val split of a list of documents (every 1/val_fraction-th by a seeded shuffle)."""
    if len(docs) < 2:
        raise SystemExit(f"only {len(docs)} document(s) to split into train and val: raise --max_bytes")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = max(1, int(round(len(docs) * val_fraction)))
    val_idx = set(order[:n_val].tolist())
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val



# ---------------------------------------------------------------------------- the common command line

def amount(text):
    """argparse type of --max_bytes (and --max_tokens): 1000000, 1e6 or 1_000_000; 0 means no limit (None)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 1e6 or 1_000_000 (0 = all), got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a count >= 0 (0 = all), got {text!r}")
    return int(value) or None


def fraction(text):
    """argparse type of --val_fraction: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 exclusive, got {text!r}")
    return value


def base_parser(description, default_out, val_fraction=0.05):
    """The options every prepare script takes, with the same meaning in all of them. The prepare
    scripts keep argparse (the other scripts use configurator.py): each runs once per corpus with a
    few flags of its own and no config files."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tokenizer", default=None,
                   help="anything unicode_tokenizer.get_tokenizer() accepts (default: its default)")
    p.add_argument("--max_bytes", type=amount, default=None,
                   help="take whole documents until this many UTF-8 bytes of text (1e6, 1_000_000; 0 or absent: all)")
    p.add_argument("--val_fraction", type=fraction, default=val_fraction,
                   help=f"share of documents held out for val.bin (default {val_fraction})")
    p.add_argument("--out_dir", default=default_out)
    return p


def get_tokenizer(name=None):
    """unicode_tokenizer.get_tokenizer (its default when name is None), with a one-line error."""
    from unicode_tokenizer import get_tokenizer as _get
    try:
        return _get() if name is None else _get(name)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"--tokenizer {name!r}: {e}") from None


def take_bytes(docs, max_bytes):
    """The longest prefix of whole documents whose UTF-8 size stays within max_bytes (None = all; the
    first document is always taken)."""
    if max_bytes is None:
        return list(docs)
    out, total = [], 0
    for d in docs:
        n = len(d.encode("utf-8"))
        if total + n > max_bytes and out:
            break
        out.append(d)
        total += n
    return out


# -----------------------------------------------------------------------------
# reading: train.py's deterministic sampler over one or more prepared datasets

VAL_SEED = 1337  # draws the validation batches (the default seed's, so earlier figures stay comparable)


def check_meta(meta, d):
    """The meta.json entries the sampler needs, each of the right kind (one line naming the file)."""
    path = os.path.join(d, "meta.json")
    if not isinstance(meta, dict):
        fail(f"{path}: expected a JSON object")
    for key in ("tokenizer_name", "tokenizer_fingerprint", "dtype", "train_tokens", "val_tokens", "val_bytes"):
        if key not in meta:
            fail(f"{path} has no {key!r}: re-run the dataset's prepare script")
    if meta["dtype"] not in ("uint16", "uint32"):
        fail(f"{path}: dtype={meta['dtype']!r}, expected 'uint16' or 'uint32'")
    for key in ("train_tokens", "val_tokens", "val_bytes"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            fail(f"{path}: {key}={meta[key]!r}, expected a positive whole number")


class MixtureData:
    """Batches are pure functions of (seed, a, b): train micro-batch b of iteration a, or validation
    batch a of dataset b (those from VAL_SEED: the same for every seed). Nothing to save for resume
    but the iteration number."""

    def __init__(self, cfg, tok, device):
        weights = cfg["datasets"]
        if not isinstance(weights, dict) or not weights:
            fail(f"datasets={weights!r}: expected a dict name -> weight, e.g. {{'shakespeare': 1.0}}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf")
               for w in weights.values()) or not sum(weights.values()) < float("inf"):
            fail(f"datasets={weights!r}: weights must be positive numbers with a finite sum")
        root = cfg["data_root"] or os.path.join(REPO, "data")
        self.names = list(weights)
        total = sum(weights.values())
        self.weights = np.array([weights[n] / total for n in self.names])
        self.T, self.B, self.seed, self.device = cfg["block_size"], cfg["batch_size"], cfg["seed"], device
        need, have = self.B * (self.T + 1) * 8, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:  # found now, not after minutes of swapping or a library's allocation error
            fail(f"batch_size={self.B} x block_size={self.T}: one batch of token ids needs {need / 1e9:,.0f} GB, "
                 f"more than this machine's {have / 1e9:,.0f} GB of memory")
        self.train, self.val, self.meta = [], [], []
        for name in self.names:
            d = name if os.path.isdir(str(name)) else os.path.join(root, str(name))
            if not os.path.isdir(d):
                fail(f"dataset {name!r}: data directory {shown(d)} not found ({prepare_command(d)})")
            meta = read_meta(d)
            splits = [open_split(d, s, tok) for s in ("train", "val")]
            for s, arr in zip(("train", "val"), splits):
                if len(arr) <= self.T + 1:
                    fail(f"dataset {name!r}: {s} split has {len(arr):,} tokens, not more than "
                         f"block_size={self.T}: use a smaller block_size or more data")
            self.train.append(splits[0])
            self.val.append(splits[1])
            self.meta.append(meta)

    def _rows(self, arr, rng, n):
        ix = rng.integers(0, len(arr) - self.T - 1, size=n)
        return np.stack([arr[i:i + self.T + 1] for i in ix]).astype(np.int64)

    def batch(self, split, a, b):
        if split == "train":  # rows drawn from the mixture by weight
            rng = np.random.default_rng([self.seed, 0, a, b])
            src = rng.choice(len(self.names), size=self.B, p=self.weights)
            rows = np.empty((self.B, self.T + 1), dtype=np.int64)
            for k in range(len(self.names)):
                sel = np.nonzero(src == k)[0]
                if len(sel):
                    rows[sel] = self._rows(self.train[k], rng, len(sel))
        else:  # validation batch a of dataset b: one fixed set for every seed, run and grow.py stage
            rng = np.random.default_rng([VAL_SEED, 1, a, b])
            rows = self._rows(self.val[b], rng, self.B)
        t = torch.from_numpy(rows)
        if self.device.startswith("cuda"):
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def bytes_per_token(self, k):
        m = self.meta[k]
        return m["val_bytes"] / m["val_tokens"]
