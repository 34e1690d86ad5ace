"""
Wikipedia in the papers' languages (English, Russian, Chinese), streamed from the parquet shards
that the Wikimedia Foundation publishes on the Hugging Face hub (dataset wikimedia/wikipedia, dump
20231101; columns id, url, title, text), with plain `requests` (no `datasets` package). Each shard
is downloaded only when needed, resumably, and checked against the size and sha256 the hub lists.

    python data/wikipedia/prepare.py --langs en,ru --max_bytes 2e9 [--sample 0.1] [--tokenizer T]

--max_bytes is the budget of UTF-8 bytes of article text (whole articles), shared equally by the
languages; --sample keeps a fixed pseudo-random fraction of articles (chosen by hashing the article
id, so the same articles whatever the budget), which spreads a small budget over the whole
encyclopedia instead of its first shard.
One document = one article: its title, a blank line, then its `text` field as published (the
dump's text starts with the body); documents are separated by one eos token (`</s>`; see data/common.py).
Needs pyarrow.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from data.common import base_parser, get_tokenizer, write_dataset  # noqa: E402
from data.corpus import StreamSplit, add_to_meta, iter_parquet, parquet_shards  # noqa: E402

REPO = "wikimedia/wikipedia"
DUMP = "20231101"
# The paper's three languages; the hub has ~300 more (add them here after checking the config name).
LANGS = {"en": "English", "ru": "Russian", "zh": "Chinese"}


def parse_langs(spec):
    langs = [lang.strip() for lang in spec.split(",") if lang.strip()]
    unknown = [lang for lang in langs if lang not in LANGS]
    if unknown or not langs:
        raise SystemExit(f"--langs: unknown language code(s) {unknown or spec!r}; expected a comma list of "
                         f"{', '.join(LANGS)}")
    return langs


def articles(lang, local_dir=None, dump=DUMP):
    """(key, document) for every article of one language's shards, in shard order."""
    for path in parquet_shards(REPO, f"{dump}.{lang}", local_dir, what=f"Wikipedia ({lang})"):
        for row in iter_parquet(path, ["id", "title", "text"]):
            text = row["text"].strip()
            if text:
                yield f"{lang}:{row['id']}", f"{row['title']}\n\n{text}"


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)), val_fraction=0.005)
    p.add_argument("--langs", default="en,ru", help=f"comma list of {', '.join(LANGS)}")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of articles kept (0 < f <= 1)")
    p.add_argument("--dump", default=DUMP, help="dump date of the hub dataset's configs")
    p.add_argument("--local_dir", default=None, help="read <dump>.<lang>/*.parquet from here instead of the hub")
    args = p.parse_args(argv)
    langs = parse_langs(args.langs)
    max_bytes = args.max_bytes and args.max_bytes // len(langs)  # per language
    if not 0 < args.sample <= 1:
        raise SystemExit(f"--sample must be in (0, 1] (got {args.sample:g})")
    tok = get_tokenizer(args.tokenizer)
    splits = [StreamSplit(articles(lang, args.local_dir, args.dump), max_bytes, args.sample, args.val_fraction)
              for lang in langs]
    train = (doc for s in splits for doc in s.train())
    val = (doc for s in splits for doc in s.val_docs)  # filled while train is consumed
    meta = write_dataset(args.out_dir, train, val, tok, source=f"{REPO} {args.dump} (CC BY-SA 4.0 / GFDL)",
                         langs=langs, sample=args.sample, max_bytes_per_lang=max_bytes)
    return add_to_meta(args.out_dir, meta, bytes_per_lang={lang: s.bytes for lang, s in zip(langs, splits)},
                       documents={lang: s.n_docs for lang, s in zip(langs, splits)})


if __name__ == "__main__":
    main()
