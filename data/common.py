"""
The binary token format every prepare script writes and train.py / eval.py read.

data/<name>/train.bin, val.bin: flat token ids, little-endian uint16 when the vocabulary fits in
16 bits, uint32 otherwise; documents are separated by one eos token. data/<name>/meta.json records
which tokenizer made them (so a loader can refuse a mismatch) and how many UTF-8 bytes of text
they hold (so a loss in nats per token converts to bits per byte, comparable across tokenizers).
"""
import json
import os

import numpy as np
from tqdm import tqdm

ENCODE_CHUNK = 256  # documents per encode_batch call: big enough to keep all cores busy


def dtype_for(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_split(path, docs, tok, desc=None):
    """Encode an iterable of document strings into `path`; returns (n_tokens, n_bytes).
    Writes to path + '.tmp' and renames at the end, so an interrupted run never leaves a
    half-written file that looks complete."""
    if tok.eos_id is None:
        raise ValueError(f"tokenizer {tok.name!r} has no eos token to separate documents")
    dtype = dtype_for(tok.vocab_size)
    n_tokens = n_bytes = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f, tqdm(desc=desc or os.path.basename(path), unit="B", unit_scale=True) as bar:
        def flush(batch):
            nonlocal n_tokens, n_bytes
            for ids in tok.encode_batch(batch):
                arr = np.asarray(ids + [tok.eos_id], dtype=np.int64)
                f.write(arr.astype(dtype).tobytes())
                n_tokens += len(arr)
            size = sum(len(d.encode("utf-8")) for d in batch)
            n_bytes += size
            bar.update(size)
        batch = []
        for doc in docs:
            batch.append(doc)
            if len(batch) == ENCODE_CHUNK:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    os.replace(tmp, path)
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
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    os.replace(meta_path + ".tmp", meta_path)
    print(f"{out_dir}: train {train_tokens:,} tokens ({train_bytes:,} bytes), val {val_tokens:,} tokens "
          f"({val_bytes:,} bytes), {train_bytes / max(train_tokens, 1):.2f} bytes/token")
    return meta


def read_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (python data/<name>/prepare.py)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


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
    return np.memmap(path, dtype=dtype, mode="r")


def split_docs(docs, val_fraction=0.05, seed=1337):
    """Deterministic train/val split of a list of documents (every 1/val_fraction-th by a seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = max(1, int(round(len(docs) * val_fraction)))
    val_idx = set(order[:n_val].tolist())
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val

