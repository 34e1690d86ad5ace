"""
Frozen glyph embedding tables (Bochkov 2025): every token id gets a vector computed once from the
picture of its Unicode glyphs in GNU Unifont, never trained.

Pipeline (../shared/SPEC.md section 2, the released bvv241 builder, step by step):
  1. render each character of the token into a 32x32 cell (Unifont pixels doubled), side by side
  2. a fixed "augmentation" (rotation, shift, noise, blur, threshold): the builder re-seeds inside
     every call, so it is ONE transform per strip width; we compute it once per width and apply
     it to all tokens of that width at once with numpy
  3. squash the 32 x 32n strip back to one 32x32 cell (nearest neighbour columns)
  4. binarize, 5. PCA over all rows (deterministic signs), L2-normalise each row.

Usage:
    from glyph_embed import frozen_table, render
    table, info = frozen_table(tok, kind="glyph", dim=1024)     # [V, 1024] float32, cached on disk
    python glyph_embed.py --tokenizer bvv241-2-3 --dim 1024 --out table.pt --report --sheet s.png
"""
import gzip
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile

import numpy as np
import torch

# -----------------------------------------------------------------------------
# font: GNU Unifont .hex (one line per code point: "XXXX:" + 32 or 64 hex digits = 16 rows of 8/16 px)

UNIFONT_VERSION = "15.1.05"
UNIFONT_URL = f"https://ftp.gnu.org/gnu/unifont/unifont-{UNIFONT_VERSION}/unifont-{UNIFONT_VERSION}.hex.gz"
UNIFONT_SHA256 = "3f1ff33e1ce5e4bbdbfa5fb4f57a4e4d2c5e1a8e8d08a3f6b5d0e0bd9b0ba8e9"  # see README: verify when online
DEBIAN_UNIFONT = "/usr/share/unifont/unifont.hex"
_HEX_LINE = re.compile(rb"^([0-9A-Fa-f]{4,6}):([0-9A-Fa-f]{32}|[0-9A-Fa-f]{64})$")


def cache_dir():
    d = os.environ.get("GLYPHGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glyphgpt")
    os.makedirs(d, exist_ok=True)
    return d


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_unifont(url=UNIFONT_URL, sha256=UNIFONT_SHA256, dest=None):
    """Download the pinned Unifont .hex.gz with a progress bar, verify its sha256, cache it."""
    import requests
    from tqdm import tqdm
    dest = dest or os.path.join(cache_dir(), os.path.basename(url))
    try:
        r = requests.get(url, stream=True, timeout=30)
        r.raise_for_status()
        total = int(r.headers.get("content-length", 0)) or None
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".part")
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="unifont") as bar:
            for chunk in r.iter_content(1 << 16):
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    except (requests.RequestException, OSError) as e:
        raise SystemExit(f"error: could not download GNU Unifont from {url} ({type(e).__name__}); "
                         f"install the Debian package 'unifont' or pass --font / set GLYPHGPT_UNIFONT")
    if h.hexdigest() != sha256:
        os.remove(tmp)
        raise SystemExit(f"error: sha256 mismatch for {url}: got {h.hexdigest()}, expected {sha256}")
    os.replace(tmp, dest)  # atomic: a half-downloaded file is never cached
    return dest


def find_font(path=None):
    """Explicit path, $GLYPHGPT_UNIFONT, the Debian file, our cache, else download."""
    candidates = [path, os.environ.get("GLYPHGPT_UNIFONT"), DEBIAN_UNIFONT,
                  os.path.join(cache_dir(), os.path.basename(UNIFONT_URL))]
    for i, p in enumerate(candidates):
        if p and os.path.exists(p):
            return p
        if p and i < 2:  # an explicit choice that does not exist is an error, not a fallback
            raise FileNotFoundError(f"Unifont file not found: {p}")
    return download_unifont()


class Font:
    """Unifont glyphs as numpy arrays: bits[cp] = 16x16 uint8 (8-px glyphs left-aligned), width[cp] = 8|16."""

    def __init__(self, path):
        self.path, self.sha256 = path, sha256_file(path)
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                data = f.read()
        except (EOFError, OSError) as e:
            raise ValueError(f"{path}: cannot read Unifont hex file ({e}); truncated download?") from None
        lines = data.splitlines()
        if not lines:
            raise ValueError(f"{path}: empty file, expected GNU Unifont .hex lines like '0041:0000...'")
        cps, hexes = [], []
        for n, line in enumerate(lines, 1):
            m = _HEX_LINE.match(line.strip())
            if m is None:
                if not line.strip():
                    continue
                raise ValueError(f"{path}: line {n} is not Unifont hex ('XXXX:' + 32 or 64 hex digits); "
                                 f"got {line[:40]!r} (truncated or not a .hex file?)")
            cps.append(int(m.group(1), 16))
            hexes.append(m.group(2))
        if not data.endswith(b"\n"):
            raise ValueError(f"{path}: file does not end with a newline: truncated Unifont hex file?")
        cps = np.array(cps, dtype=np.int64)
        wide = np.array([len(h) == 64 for h in hexes])
        size = max(int(cps.max()) + 1, 0x10000)
        self.bits = np.zeros((size, 16, 16), dtype=np.uint8)
        self.width = np.zeros(size, dtype=np.int64)
        for is_wide, w in ((False, 8), (True, 16)):
            sel = np.nonzero(wide == is_wide)[0]
            if len(sel) == 0:
                continue
            raw = np.frombuffer(bytes.fromhex("".join(hexes[i].decode() for i in sel)), dtype=np.uint8)
            g = np.unpackbits(raw.reshape(len(sel), 16, w // 8), axis=2)  # [k, 16, w], MSB = leftmost
            self.bits[cps[sel], :, :w] = g
            self.width[cps[sel]] = w
        # The released build drew text with Pillow, which draws nothing for line breaks and
        # control characters (so space and newline collide); Unifont .hex has boxes for them.
        ctrl = np.r_[0:0x20, 0x7F:0xA0]
        self.bits[ctrl] = 0

    def cells(self, cps, cell=32):
        """[len(cps), cell, cell] uint8 1=ink: advance box centred horizontally, ink box centred vertically."""
        s = cell // 16
        cps = np.asarray(cps, dtype=np.int64)
        ok = (cps >= 0) & (cps < len(self.width))
        cpc = np.where(ok, cps, 0)
        g = self.bits[cpc] * ok[:, None, None]                       # missing glyph -> blank
        w = self.width[cpc] * ok
        rows = g.any(axis=2)                                         # [k, 16] rows with ink
        has = rows.any(axis=1)
        first = np.where(has, rows.argmax(axis=1), 0)
        last = np.where(has, 15 - rows[:, ::-1].argmax(axis=1), -1)
        ink_h = (last - first + 1) * s
        top = (cell - ink_h) // 2
        x0 = (cell - w * s) // 2
        y = np.arange(cell)[None, :] - top[:, None]                  # [k, cell] row offset into ink box
        x = np.arange(cell)[None, :] - x0[:, None]
        vy = (y >= 0) & (y < ink_h[:, None])
        vx = (x >= 0) & (x < (w * s)[:, None])
        ry = np.clip(first[:, None] + y // s, 0, 15)
        rx = np.clip(x // s, 0, 15)
        out = g[np.arange(len(cps))[:, None, None], ry[:, :, None], rx[:, None, :]]
        return out * (vy[:, :, None] & vx[:, None, :])


_FONTS = {}


def load_font(path=None):
    p = find_font(path)
    if p not in _FONTS:
        _FONTS[p] = Font(p)
    return _FONTS[p]

# -----------------------------------------------------------------------------
# the fixed distortion of the released builder, as index maps computed once per strip width

# bvv241-2-3 constants (the default) and bvv241-max / -abs / -nemo constants: (R degrees, S px, p noise)
RECIPES = {"bvv241-2-3": (4, 2, 0.01), "bvv241-max": (7, 3, 0.03)}
HARD = (0, 0, 0.001)  # every string that is not purely an "easy" script


def is_easy(text):
    """Latin / Latin-1 / Latin Extended / Greek / Cyrillic / Armenian only -> the stronger distortion."""
    return all(c <= "\u024f" or "\u0370" <= c <= "\u058f" for c in text)


def draws(R, S, p, shape):
    """The builder's random draws, in its order, after random.seed(42); np.random.seed(42)."""
    rng = random.Random(42)
    angle = rng.uniform(-R, R)
    dx, dy = rng.randint(-S, S), rng.randint(-S, S)
    mask = np.random.RandomState(42).rand(*shape) < p
    return angle, dx, dy, mask


_MAPS = {}


def distortion_map(width, cell, R, S, p):
    """Source index (or -1 = white) of every pixel after rotate+paste, and the noise mask; cached."""
    key = (width, cell, R, S, p)
    if key not in _MAPS:
        from PIL import Image
        angle, dx, dy, mask = draws(R, S, p, (cell, width))
        # Pillow's exact nearest-neighbour rotation, obtained by rotating an image of indices
        idx = Image.fromarray((np.arange(cell * width, dtype=np.int32) + 1).reshape(cell, width))
        rot = np.asarray(idx.rotate(angle, expand=0, fillcolor=0)).astype(np.int64) - 1
        src = np.full((cell, width), -1, dtype=np.int64)             # paste at (dx, dy) on white
        ys, xs = slice(max(dy, 0), cell + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0))
        src[ys, xs] = rot[max(-dy, 0):cell - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
        _MAPS[key] = (src, mask)
    return _MAPS[key]


def gaussian_blur_batch(img):
    """Pillow GaussianBlur(0.5) of every [H, W] uint8 image in img [N, H, W], bit-exact, in 2 calls:
    Pillow blurs rows then columns with uint8 rounding in between, so a tall stack blurs its rows
    exactly, and a wide stack (images side by side) blurs its columns exactly."""
    from PIL import Image, ImageFilter
    N, H, W = img.shape
    tall = Image.fromarray(np.ascontiguousarray(img.reshape(N * H, W)))
    a = np.asarray(tall.filter(ImageFilter.GaussianBlur((0.5, 0)))).reshape(N, H, W)
    wide = Image.fromarray(np.ascontiguousarray(a.transpose(1, 0, 2).reshape(H, N * W)))
    b = np.asarray(wide.filter(ImageFilter.GaussianBlur((0, 0.5)))).reshape(H, N, W)
    return b.transpose(1, 0, 2)


def distort(strips, easy, recipe="bvv241-2-3"):
    """strips [N, cell, cell*n] uint8 1=ink, all the same width -> distorted, thresholded, 1=ink."""
    N, cell, width = strips.shape
    R, S, p = RECIPES[recipe] if easy else HARD
    src, mask = distortion_map(width, cell, R, S, p)
    flat = (1 - strips.reshape(N, -1)).astype(np.uint8) * 255       # 8-bit image: ink 0, paper 255
    flat = np.concatenate([flat, np.full((N, 1), 255, np.uint8)], axis=1)  # index -1 -> white
    img = flat[:, src]                                                 # rotate + paste
    img[:, mask] = 0                                                   # noise pixels become ink
    if easy:
        img = gaussian_blur_batch(img)
    return (img < 128).astype(np.uint8)


def squash(strips, n):
    """[N, cell, cell*n] -> [N, cell, cell]: Pillow NEAREST resize, column x <- column floor((x+0.5)n)."""
    cell = strips.shape[1]
    cols = np.floor((np.arange(cell) + 0.5) * n).astype(np.int64)
    return strips[:, :, cols]


def render_batch(texts, cell=32, recipe="faithful", font=None, constants="bvv241-2-3"):
    """Bitmaps [len(texts), cell, cell] uint8 (1 = ink) of many strings, vectorised per strip width."""
    font = font or load_font()
    out = np.zeros((len(texts), cell, cell), dtype=np.uint8)
    groups = {}
    for i, t in enumerate(texts):
        groups.setdefault((len(t), recipe == "faithful" and is_easy(t)), []).append(i)
    for (n, easy), ids in sorted(groups.items()):
        if n == 0:
            continue  # an empty string stays blank (not distorted: the builder never sees it)
        chunk = max(1, 8192 // n)
        for c in range(0, len(ids), chunk):
            sel = ids[c:c + chunk]
            cps = np.array([[ord(ch) for ch in texts[i]] for i in sel], dtype=np.int64)
            cells = font.cells(cps.reshape(-1), cell).reshape(len(sel), n, cell, cell)
            strips = cells.transpose(0, 2, 1, 3).reshape(len(sel), cell, n * cell)
            if recipe == "faithful":
                strips = distort(strips, easy, constants)
            elif recipe != "clean":
                raise ValueError(f"recipe must be 'faithful' or 'clean', got {recipe!r}")
            out[sel] = squash(strips, n)
    return out


def render(text, cell=32, recipe="faithful", font=None, constants="bvv241-2-3"):
    """Bitmap [cell, cell] uint8 of one token string, 1 = ink."""
    return render_batch([text], cell, recipe, font, constants)[0]

# -----------------------------------------------------------------------------
# tables

def table_fingerprint(t):
    """16 hex chars of sha256 of the float32 bytes."""
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


def token_strings_of(tokenizer):
    """(list of surface strings, fingerprint, name) of a tokenizer object or a plain list of strings."""
    if isinstance(tokenizer, (list, tuple)):
        strings = list(tokenizer)
        fp = hashlib.sha256(json.dumps(strings, ensure_ascii=False).encode()).hexdigest()[:16]
        return strings, fp, "list"
    return list(tokenizer.token_strings()), tokenizer.fingerprint, getattr(tokenizer, "name", "?")


def pca(X, chunk=16384):
    """X [V, D] uint8 0/1 -> (mean [D] f64, W [D, D] f64 columns = axes by decreasing variance, eigvals).
    X^T X is a matrix of integer counts (< 2^24), exact in float32 whatever the BLAS summation order,
    so the covariance (then float64) and the eigendecomposition are deterministic."""
    V, D = X.shape
    G = torch.zeros(D, D, dtype=torch.float64)
    for i in range(0, V, chunk):
        x = torch.from_numpy(X[i:i + chunk]).to(torch.float32)
        G += (x.T @ x).to(torch.float64)
    mu = torch.from_numpy(X.sum(axis=0, dtype=np.int64)).to(torch.float64) / V
    C = (G - V * torch.outer(mu, mu)) / max(V - 1, 1)
    evals, evecs = torch.linalg.eigh(C)                              # ascending
    evals, W = evals.flip(0), evecs.flip(1)
    # sign convention: the largest-|loading| entry of every component is positive
    pick = W.abs().argmax(dim=0)
    sign = torch.sign(W[pick, torch.arange(D)])
    W = W * torch.where(sign == 0, 1.0, sign)
    return mu.numpy(), W.numpy(), evals.numpy()


def project(X, mu, W, dim, chunk=16384):
    """Rows of (X - mu) @ W[:, :dim], L2-normalised, float32."""
    Wd = torch.from_numpy(np.ascontiguousarray(W[:, :dim])).to(torch.float32)
    off = torch.from_numpy(mu).to(torch.float32) @ Wd
    out = torch.empty(X.shape[0], dim, dtype=torch.float32)
    for i in range(0, X.shape[0], chunk):
        y = torch.from_numpy(X[i:i + chunk]).to(torch.float32) @ Wd - off
        out[i:i + chunk] = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def _atomic_save(obj, path):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def glyph_basis(strings, tok_fp, cell=32, recipe="faithful", constants="bvv241-2-3", font=None,
                use_cache=True):
    """Bitmaps (packed) + full PCA of a vocabulary, cached on disk (each dim is then one matmul)."""
    font = font or load_font()
    key = f"basis_{tok_fp}_{recipe}_{constants}_{cell}_{font.sha256[:16]}"
    path = os.path.join(cache_dir(), "glyph", key + ".pt")
    if use_cache and os.path.exists(path):
        b = torch.load(path, weights_only=True)
        return {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in b.items()}
    X = render_batch(strings, cell, recipe, font, constants).reshape(len(strings), -1)
    mu, W, ev = pca(X)
    b = {"packed": np.packbits(X, axis=1), "mu": mu, "W": W, "eigvals": ev, "font_sha256": font.sha256}
    if use_cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_save({k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in b.items()}, path)
    return b


def binary16_table(V):
    """Each id written as its 16 binary digits (most significant first), as 0./1. floats."""
    ids = np.arange(V, dtype=np.int64)
    return torch.from_numpy(((ids[:, None] >> np.arange(15, -1, -1)) & 1).astype(np.float32))


def random_table(V, dim, seed=1337):
    """Unique random +-1 codes, seeded; collisions (impossible in practice for dim >= 32) are redrawn."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2, (V, dim), generator=g).to(torch.float32) * 2 - 1
    while len(torch.unique(t, dim=0)) < V:
        dup = _duplicate_ids(t.numpy())
        t[dup] = torch.randint(0, 2, (len(dup), dim), generator=g).to(torch.float32) * 2 - 1
    return t


def _duplicate_ids(rows):
    """Ids whose row equals the row of an earlier id."""
    _, first, inv = np.unique(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                              return_index=True, return_inverse=True)
    return np.nonzero(first[inv.ravel()] != np.arange(len(rows)))[0]


def collision_groups(table):
    """Groups (lists of ids, ascending) of rows that are bit-identical, largest groups first."""
    rows = np.ascontiguousarray(table.numpy() if torch.is_tensor(table) else table)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    groups = [g.tolist() for g in np.split(order, bounds) if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def build_table(strings, tok_fp, kind="glyph", dim=1024, cell=32, constants="bvv241-2-3", font=None,
                use_cache=True):
    V = len(strings)
    if kind == "binary16":
        return binary16_table(V), {"recipe": "binary16", "font_sha256": None}
    if kind == "random":
        return random_table(V, dim), {"recipe": "random-pm1-seed1337", "font_sha256": None}
    if kind not in ("glyph", "glyph_unique"):
        raise ValueError(f"kind must be one of glyph, glyph_unique, binary16, random; got {kind!r}")
    if not 1 <= dim <= cell * cell:
        raise ValueError(f"dim={dim} is not possible with {cell}x{cell} glyph cells (1..{cell * cell}); "
                         f"use cell=64 for up to 4096")
    b = glyph_basis(strings, tok_fp, cell, "faithful", constants, font, use_cache)
    X = np.unpackbits(b["packed"], axis=1)[:, :cell * cell]
    t = project(X, b["mu"], b["W"], dim)
    extra = {}
    if kind == "glyph_unique":
        t, extra = make_unique(t)
    return t, {"recipe": f"faithful-{constants}-cell{cell}", "font_sha256": b["font_sha256"], **extra}


def make_unique(t, eps=None, seed=0):
    """Break every tie deterministically: in each group of identical rows the lowest id keeps its row,
    each other id moves by a small id-seeded random step (then re-normalised), so the table becomes
    injective while each row stays within ~eps of its faithful row."""
    groups = collision_groups(t)
    movers = np.array([i for g in groups for i in g[1:]], dtype=np.int64)
    if eps is None:
        eps = 1e-2
    if len(movers):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(movers), t.shape[1], generator=g)
        noise = noise / noise.norm(dim=1, keepdim=True)
        moved = t[movers] + eps * noise
        t = t.clone()
        t[movers] = moved / moved.norm(dim=1, keepdim=True)
    rest = collision_groups(t)
    if rest:
        raise RuntimeError(f"unique mode left {len(rest)} collision groups (eps={eps})")
    return t, {"unique_eps": eps, "unique_moved": int(len(movers)),
               "min_dist_moved": min_distance_to_others(t, movers)}


def min_distance_to_others(t, ids, chunk=4096):
    """Smallest Euclidean distance between any row in ids and any other row (all new pairs made by
    make_unique involve a moved row; rows unit-norm so d^2 = 2 - 2 cos)."""
    if len(ids) == 0:
        return None
    best = 4.0
    for i in range(0, len(ids), chunk):
        sel = torch.as_tensor(ids[i:i + chunk])
        cos = t[sel] @ t.T
        cos[torch.arange(len(sel)), sel] = -2.0
        best = min(best, float((2 - 2 * cos.max()).clamp_min(0)))
    return math.sqrt(best)


def frozen_table(tokenizer, kind="glyph", dim=1024, cell=None, constants="bvv241-2-3", font_path=None,
                 use_cache=True):
    """(table [V, w] float32, info) for a tokenizer (or a list of token strings); built once, cached."""
    strings, tok_fp, _ = token_strings_of(tokenizer)
    if kind == "binary16":
        dim = 16
    cell = cell or (64 if dim > 1024 else 32)
    font = None
    if kind in ("glyph", "glyph_unique"):
        font = load_font(font_path)
    fsha = font.sha256[:16] if font else "nofont"
    key = f"{tok_fp}_{kind}_{constants}_c{cell}_d{dim}_{fsha}"
    path = os.path.join(cache_dir(), "glyph", key + ".pt")
    if use_cache and os.path.exists(path):
        table, info = load_table(path, tok_fp)
        return table, info
    table, extra = build_table(strings, tok_fp, kind, dim, cell, constants, font, use_cache)
    info = {"kind": kind, "dim": table.shape[1], "tokenizer_fingerprint": tok_fp, **extra,
            "fingerprint": table_fingerprint(table)}
    if use_cache:
        save_table(table, info, path)
    return table, info


def save_table(table, info, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_save({"table": table, "info": info}, path)


def load_table(path, tokenizer_or_fp=None):
    """Load a saved table; checks its own fingerprint and (if given) the tokenizer's fingerprint."""
    try:
        d = torch.load(path, weights_only=True)
        table, info = d["table"], d["info"]
    except Exception as e:
        raise ValueError(f"{path}: not a glyph table file ({type(e).__name__})") from None
    if table_fingerprint(table) != info.get("fingerprint"):
        raise ValueError(f"{path}: table fingerprint {table_fingerprint(table)} != recorded "
                         f"{info.get('fingerprint')} (corrupted file)")
    if tokenizer_or_fp is not None:
        check_tokenizer(info, tokenizer_or_fp, path)
    return table, info


def check_tokenizer(info, tokenizer_or_fp, where="table"):
    fp = tokenizer_or_fp if isinstance(tokenizer_or_fp, str) else token_strings_of(tokenizer_or_fp)[1]
    if info.get("tokenizer_fingerprint") != fp:
        raise ValueError(f"{where}: built for tokenizer fingerprint {info.get('tokenizer_fingerprint')}, "
                         f"but the tokenizer in use has {fp}")
