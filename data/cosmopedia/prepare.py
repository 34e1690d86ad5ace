"""
Cosmopedia (HuggingFaceTB/cosmopedia: synthetic textbooks, blog posts, stories and WikiHow-style
articles written by Mixtral-8x7B-Instruct, Apache-2.0), streamed from the hub's parquet shards like
data/fineweb_edu, up to a TOKEN budget. With FineWeb-Edu it is the data of the growth paper's v3
16-layer run (config/grow_v3_binary16_16x1024.py).

    python data/cosmopedia/prepare.py --max_tokens 1e9 [--subsets stanford,stories] [--tokenizer T]

The hub keeps one folder per subset (data/<subset>/train-*.parquet). The subsets are read side by
side, one document of each in turn, so a budget takes a share of every subset rather than the
first ones whole. The budget is in tokens of OUR tokenizer, measured on the first --calib_docs
documents as in data/fineweb_edu; --max_bytes sets a byte budget directly. Shards are downloaded only
while the budget lasts, resumably, checked against the hub's size and sha256. One document = one
row's `text` (the generating `prompt` is left out); documents separated by one eos token. Needs pyarrow.
"""
import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from data.common import amount, base_parser, get_tokenizer, write_dataset  # noqa: E402
from data.corpus import StreamSplit, add_to_meta, iter_parquet, parquet_shards, token_budget  # noqa: E402

REPO = "HuggingFaceTB/cosmopedia"
SUBSETS = ("auto_math_text", "khanacademy", "openstax", "stanford", "stories", "web_samples_v1",
           "web_samples_v2", "wikihow")


def subset_docs(subset, local_dir=None):
    """(key, text) of one subset's rows; the key (subset/shard/row) decides the val split, so it does
    not depend on the budget or on how the subsets interleave."""
    for path in parquet_shards(REPO, f"data/{subset}", local_dir, what="Cosmopedia"):
        for i, row in enumerate(iter_parquet(path, ["text"])):
            yield f"{subset}/{os.path.basename(path)}/{i}", row["text"]


def interleave(streams):
    """One item of each stream in turn until all are exhausted."""
    done = object()
    for items in itertools.zip_longest(*streams, fillvalue=done):
        yield from (x for x in items if x is not done)


def parse_subsets(spec):
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in SUBSETS]
    if bad or not names:
        raise SystemExit(f"--subsets {spec!r}: {'unknown ' + bad[0] if bad else 'none given'}; "
                         f"Cosmopedia's subsets: {', '.join(SUBSETS)}")
    return list(dict.fromkeys(names))


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)), val_fraction=0.005)
    p.add_argument("--max_tokens", type=amount, default=None, help="token budget (of --tokenizer; 1e9 style, 0 = all)")
    p.add_argument("--subsets", default=",".join(SUBSETS), help="comma list of Cosmopedia subsets (default: all eight)")
    p.add_argument("--calib_docs", type=int, default=1000, help="documents used to measure bytes per token")
    p.add_argument("--local_dir", default=None, help="read data/<subset>/*.parquet from here instead of the hub")
    args = p.parse_args(argv)
    max_bytes, max_tokens = args.max_bytes, args.max_tokens
    if max_bytes is not None and max_tokens is not None:
        raise SystemExit("give --max_tokens or --max_bytes, not both")
    subsets = parse_subsets(args.subsets)
    tok = get_tokenizer(args.tokenizer)
    stream = interleave([subset_docs(s, args.local_dir) for s in subsets])
    bpt = None
    if max_tokens is not None:
        stream, max_bytes, bpt = token_budget(stream, tok, max_tokens, args.calib_docs)
    split = StreamSplit(stream, max_bytes, 1.0, args.val_fraction)
    meta = write_dataset(args.out_dir, split.train(), (d for d in split.val_docs), tok,
                         source=f"{REPO} (Apache-2.0)", subsets=subsets, max_tokens=max_tokens,
                         calib_bytes_per_token=bpt)
    return add_to_meta(args.out_dir, meta, documents=split.n_docs)


if __name__ == "__main__":
    main()
