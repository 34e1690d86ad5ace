"""
Russian text that this machine can get without internet: the Debian package fortunes-ru (about
3.5 MB of Russian aphorisms and jokes in fortune(6) format, GPL-2), fetched with `apt-get download`
and unpacked with `dpkg-deb -x` (no installation, no dependencies).

    python data/russian_offline/prepare.py [--tokenizer T] [--max_bytes N] [--val_fraction F] [--out_dir D]
                                           [--deb PATH]

One document per fortune (the "%" lines separate them), colour codes removed, exact duplicates
dropped; train/val by data.common.split_docs.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from data.common import base_parser, get_tokenizer, split_docs, take_bytes, write_dataset  # noqa: E402
from data.corpus import ANSI  # noqa: E402
from data.download import apt_fetch, deb_extract  # noqa: E402

PACKAGE = "fortunes-ru"
FORTUNE_DIR = "usr/share/games/fortunes/ru"


def read_fortune_file(path):
    """The fortunes of one fortune(6) source file: entries separated by lines holding only '%'."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = ANSI.sub("", f.read())
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            out.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    out.append("\n".join(cur))
    return [d.strip("\n") for d in out if d.strip()]


def fortune_docs(root, subdir):
    """All fortunes under root/subdir (sorted by file name; the .dat indexes and .u8 links skipped),
    first occurrence of each kept."""
    folder = os.path.join(root, subdir)
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not found; is this really the {PACKAGE} package?")
    seen, docs = set(), []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
            continue
        for d in read_fortune_file(path):
            if d not in seen:
                seen.add(d)
                docs.append(d)
    if not docs:
        raise SystemExit(f"{folder}: no fortunes found")
    return docs


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--deb", default=None, help=f"a local {PACKAGE}_*.deb instead of apt-get download")
    args = p.parse_args(argv)
    tok = get_tokenizer(args.tokenizer)
    deb = args.deb or apt_fetch(PACKAGE)
    docs = take_bytes(fortune_docs(deb_extract(deb), FORTUNE_DIR), args.max_bytes)
    train, val = split_docs(docs, args.val_fraction)
    return write_dataset(args.out_dir, train, val, tok, source=f"Debian {os.path.basename(deb)} (GPL-2)",
                         documents=len(docs), language="ru")


if __name__ == "__main__":
    main()
