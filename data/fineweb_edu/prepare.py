"""
FineWeb-Edu (HuggingFaceFW/fineweb-edu: English web pages rated educational by a classifier,
ODC-By 1.0), streamed from the hub's parquet shards with plain `requests` like data/wikipedia, up to
a TOKEN budget.

    python data/fineweb_edu/prepare.py --max_tokens 1e9 [--subset sample/10BT] [--tokenizer T]

The budget is in tokens of OUR tokenizer: the first --calib_docs documents are encoded once to
measure bytes per token, and the budget becomes a byte budget (the exact token count is in
meta.json; it lands within a few percent of --max_tokens). --max_bytes sets a byte budget directly.
Shards are downloaded only while the budget lasts, resumably, checked against the hub's size and
sha256. One document = one page's `text`; documents separated by one eos token. Needs pyarrow.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from data.common import amount, base_parser, get_tokenizer, write_dataset  # noqa: E402
from data.corpus import StreamSplit, add_to_meta, iter_parquet, parquet_shards, token_budget  # noqa: E402

REPO = "HuggingFaceFW/fineweb-edu"


def pages(subset, local_dir=None):
    for path in parquet_shards(REPO, subset, local_dir, what="FineWeb-Edu"):
        for row in iter_parquet(path, ["id", "text"]):
            yield row["id"], row["text"]


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)), val_fraction=0.005)
    p.add_argument("--max_tokens", type=amount, default=None, help="token budget (of --tokenizer; 1e9 style, 0 = all)")
    p.add_argument("--subset", default="sample/10BT", help="hub folder: sample/10BT, sample/100BT, data/CC-MAIN-2024-10, ...")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of pages kept (0 < f <= 1)")
    p.add_argument("--calib_docs", type=int, default=1000, help="documents used to measure bytes per token")
    p.add_argument("--local_dir", default=None, help="read <subset>/*.parquet from here instead of the hub")
    args = p.parse_args(argv)
    max_bytes, max_tokens = args.max_bytes, args.max_tokens
    if max_bytes is not None and max_tokens is not None:
        raise SystemExit("give --max_tokens or --max_bytes, not both")
    if not 0 < args.sample <= 1:
        raise SystemExit(f"--sample must be in (0, 1] (got {args.sample:g})")
    tok = get_tokenizer(args.tokenizer)
    stream = pages(args.subset, args.local_dir)
    bpt = None
    if max_tokens is not None:
        stream, max_bytes, bpt = token_budget(stream, tok, max_tokens, args.calib_docs, "pages")
    split = StreamSplit(stream, max_bytes, args.sample, args.val_fraction)
    meta = write_dataset(args.out_dir, split.train(), (d for d in split.val_docs), tok,
                         source=f"{REPO} {args.subset} (ODC-By 1.0)", subset=args.subset,
                         max_tokens=max_tokens, calib_bytes_per_token=bpt)
    return add_to_meta(args.out_dir, meta, documents=split.n_docs)


if __name__ == "__main__":
    main()
