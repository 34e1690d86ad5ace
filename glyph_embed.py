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
import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time

import numpy as np
import torch

from data.download import cache_dir, download, sha256_file

# -----------------------------------------------------------------------------
# font: GNU Unifont .hex (one line per code point: "XXXX:" + 32 or 64 hex digits = 16 rows of 8/16 px)

# Pinned release: the GNU mirror first, the upstream (unifoundry) font-builds copy second; one sha256.
UNIFONT_VERSION = "15.1.05"
UNIFONT_URLS = [
    f"https://ftpmirror.gnu.org/unifont/unifont-{UNIFONT_VERSION}/unifont-{UNIFONT_VERSION}.hex.gz",
    f"https://unifoundry.com/pub/unifont/unifont-{UNIFONT_VERSION}/font-builds/unifont-{UNIFONT_VERSION}.hex.gz",
]
UNIFONT_SHA256 = "e2b2e2c3c85a26e76afec499d27be66f2ebb356be6634cc2f3339e6a41026eeb"
DEBIAN_UNIFONT = "/usr/share/unifont/unifont.hex"
_HEX_LINE = re.compile(rb"^([0-9A-Fa-f]{4,6}):([0-9A-Fa-f]{32}|[0-9A-Fa-f]{64})$")


def download_unifont(urls=None, sha256=UNIFONT_SHA256, dest=None):
    """Download the pinned Unifont .hex.gz (data/download.py: progress bar, resume, sha256 check,
    atomic rename), trying the mirrors in turn."""
    urls = [urls] if isinstance(urls, str) else (urls or UNIFONT_URLS)
    dest = dest or os.path.join(cache_dir(), os.path.basename(urls[0]))
    errors = []
    for url in urls:
        try:
            return download(url, dest, sha256=sha256, what="GNU Unifont")
        except SystemExit as e:  # download() reports one line per failure: try the next mirror
            errors.append(str(e))
    raise SystemExit(f"error: could not download GNU Unifont: {'; '.join(errors)}. Install the Debian package "
                     f"'unifont', or pass a .hex/.hex.gz path (--font / $GLYPHGPT_UNIFONT)")


def find_font(path=None):
    """Explicit path, $GLYPHGPT_UNIFONT, the Debian file, our cache, else download."""
    candidates = [path, os.environ.get("GLYPHGPT_UNIFONT"), DEBIAN_UNIFONT,
                  os.path.join(cache_dir(), os.path.basename(UNIFONT_URLS[0]))]
    for i, p in enumerate(candidates):
        if p and os.path.exists(p):
            return p
        if p and i < 2:  # an explicit choice that does not exist is an error, not a fallback
            raise FileNotFoundError(f"Unifont file not found: {p}")
    return download_unifont()


class Font:
    """Unifont glyphs as numpy arrays: glyphs[k] = 16x16 uint8 (8-px glyphs left-aligned) of code point
    cps[k] (sorted), widths[k] = 8 | 16."""

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
        glyphs = np.zeros((len(cps), 16, 16), dtype=np.uint8)
        for is_wide, w in ((False, 8), (True, 16)):
            sel = np.nonzero(wide == is_wide)[0]
            if len(sel) == 0:
                continue
            raw = np.frombuffer(bytes.fromhex("".join(hexes[i].decode() for i in sel)), dtype=np.uint8)
            glyphs[sel, :, :w] = np.unpackbits(raw.reshape(len(sel), 16, w // 8), axis=2)  # MSB = leftmost
        # sorted code points (the last line wins for a repeated one) -> glyph rows, found by searchsorted
        order = np.argsort(cps, kind="stable")
        last = np.r_[cps[order][1:] != cps[order][:-1], True]
        keep = order[last]
        self.cps, self.glyphs, self.widths = cps[keep], glyphs[keep], np.where(wide[keep], 16, 8)
        # The released build drew text with Pillow, which draws nothing for line breaks and
        # control characters (so space and newline collide); Unifont .hex has boxes for them.
        ctrl = (self.cps < 0x20) | ((self.cps >= 0x7F) & (self.cps < 0xA0))
        self.glyphs[ctrl] = 0

    def lookup(self, cps):
        """(glyphs [k, 16, 16], widths [k]) of code points; absent ones blank with width 0."""
        cps = np.asarray(cps, dtype=np.int64)
        i = np.clip(np.searchsorted(self.cps, cps), 0, len(self.cps) - 1)
        ok = self.cps[i] == cps
        return self.glyphs[i] * ok[:, None, None], self.widths[i] * ok

    def cells(self, cps, cell=32):
        """[len(cps), cell, cell] uint8 1=ink: advance box centred horizontally, ink box centred vertically."""
        s = cell // 16
        g, w = self.lookup(cps)                                      # missing glyph -> blank
        inked = g.any(axis=2)                                        # [k, 16] font rows with ink
        has = inked.any(axis=1)
        first = np.where(has, inked.argmax(axis=1), 0)
        last = np.where(has, 15 - inked[:, ::-1].argmax(axis=1), -1)
        ink_h = (last - first + 1) * s
        top = (cell - ink_h) // 2
        big = g.repeat(s, axis=1).repeat(s, axis=2)                  # [k, 16s, 16s] font pixels s x s
        # vertical: cell row y shows big row y - top + first*s (whole-row gather, blank outside the ink box)
        ry = np.arange(cell)[None, :] - top[:, None] + first[:, None] * s
        inside = (ry >= first[:, None] * s) & (ry < (last[:, None] + 1) * s)
        rows = big[np.arange(len(g))[:, None], np.clip(ry, 0, 16 * s - 1)] * inside[:, :, None]
        # horizontal: the advance box (w*s px, w = 8 or 16) centred in the cell
        out = np.zeros((len(g), cell, cell), dtype=np.uint8)
        for wv in (8, 16):
            sel = w == wv
            x0 = (cell - wv * s) // 2
            out[sel, :, x0:x0 + wv * s] = rows[sel, :, :wv * s]
        return out


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


def kept_columns(n, cell):
    """Pillow's NEAREST resize of a 1-bit strip [cell, cell*n] to [cell, cell]: column x <- floor((x+0.5)n)."""
    return np.floor((np.arange(cell) + 0.5) * n).astype(np.int64)


# GaussianBlur(0.5) is 3 box passes that each reach 1 px: a blurred pixel depends on +-3 columns only,
# so for long strips we blur a window of +-BLUR_REACH columns around each kept column (exact).
BLUR_REACH = 4
_PLANS = {}


def plan(n, cell, easy, recipe, constants):
    """What to compute for every strip of n characters: for each needed pre-blur pixel, which character
    (k; n = blank) and which pixel of its cell (off) it comes from, after rotation + paste; the noise mask
    at those pixels; and how to blur (None | "full" | "window"). Computed once per strip width."""
    key = (n, cell, easy, recipe, constants)
    if key in _PLANS:
        return _PLANS[key]
    W, keep = cell * n, kept_columns(n, cell)
    blur = None
    if recipe == "clean":
        cols, src, mask = keep, np.arange(cell * W).reshape(cell, W)[:, keep], None
    else:
        R, S, p = RECIPES[constants] if easy else HARD
        src_all, mask_all = distortion_map(W, cell, R, S, p)
        if not easy:
            cols = keep                                  # no blur: only the kept columns matter
        elif W <= cell * (2 * BLUR_REACH + 1):
            cols, blur = np.arange(W), "full"
        else:
            cols = np.clip(keep[:, None] + np.arange(-BLUR_REACH, BLUR_REACH + 1), 0, W - 1).ravel()
            blur = "window"                              # clipping = Pillow's edge extension
        src, mask = src_all[:, cols], mask_all[:, cols]
    k = np.where(src >= 0, (src % W) // cell, n)
    off = np.where(src >= 0, (src // W) * cell + (src % W) % cell, 0)
    _PLANS[key] = (k, off, mask, blur, keep)
    return _PLANS[key]


def render_group(cell_ix, table, cell, easy, recipe, constants):
    """cell_ix [N, n] rows of `table` (cells, last row blank) -> bitmaps [N, cell, cell] 1 = ink."""
    N, n = cell_ix.shape
    k, off, mask, blur, keep = plan(n, cell, easy, recipe, constants)
    ix = np.concatenate([cell_ix, np.full((N, 1), len(table) - 1, np.int64)], axis=1)
    cells = table[ix].reshape(N, -1)                     # [N, (n+1)*cell*cell] whole-cell copies
    pick = (k * (cell * cell) + off).ravel()
    if n == 1 and np.array_equal(pick, np.arange(cell * cell)):
        ink = cells[:, :cell * cell].reshape(N, cell, cell)  # identity (one undistorted character)
    else:
        ink = cells[:, pick].reshape(N, *k.shape)
    if mask is not None:
        ink[:, mask] = 1                                 # noise pixels become ink
    if blur is None:
        return ink                                       # hard scripts / clean: already the kept columns
    img = (1 - ink) * np.uint8(255)                      # the builder's 8-bit image: ink 0, paper 255
    from PIL import Image, ImageFilter
    if blur == "full":                                   # rows of the whole strip, then the kept columns
        tall = Image.fromarray(np.ascontiguousarray(img.reshape(N * cell, -1)))
        img = np.asarray(tall.filter(ImageFilter.GaussianBlur((0.5, 0)))).reshape(N, cell, -1)[:, :, keep]
    else:                                                # every window is its own row, keep its centre
        tall = Image.fromarray(np.ascontiguousarray(img.reshape(-1, 2 * BLUR_REACH + 1)))
        img = np.asarray(tall.filter(ImageFilter.GaussianBlur((0.5, 0))))[:, BLUR_REACH].reshape(N, cell, cell)
    wide = Image.fromarray(np.ascontiguousarray(img.transpose(1, 0, 2).reshape(cell, N * cell)))
    img = np.asarray(wide.filter(ImageFilter.GaussianBlur((0, 0.5)))).reshape(cell, N, cell).transpose(1, 0, 2)
    return (img < 128).astype(np.uint8)                  # threshold


def render_batch(texts, cell=32, recipe="faithful", font=None, constants="bvv241-2-3"):
    """Bitmaps [len(texts), cell, cell] uint8 (1 = ink) of many strings, vectorised per strip width."""
    if recipe not in ("faithful", "clean"):
        raise ValueError(f"recipe must be 'faithful' or 'clean', got {recipe!r}")
    if constants not in RECIPES:
        raise ValueError(f"constants must be one of {sorted(RECIPES)}, got {constants!r}")
    font = font or load_font()
    lens = np.array([len(t) for t in texts], dtype=np.int64)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    uniq, inv = np.unique(cps, return_inverse=True)
    table = np.concatenate([font.cells(uniq, cell), np.zeros((1, cell, cell), np.uint8)])  # + blank
    hard = np.concatenate([[0], np.cumsum(~((cps <= 0x24F) | ((cps >= 0x370) & (cps <= 0x58F))))])
    easy = (hard[starts + lens] - hard[starts]) == 0
    out = np.zeros((len(texts), cell, cell), dtype=np.uint8)
    for n in np.unique(lens[lens > 0]):
        for e in (False, True):
            sel = np.nonzero((lens == n) & (easy == e))[0]
            chunk = max(1, (1 << 22) // (cell * cell * (n if e else 1)))   # bounded memory per step
            for c in range(0, len(sel), chunk):
                s = sel[c:c + chunk]
                ix = inv[starts[s][:, None] + np.arange(n)]
                out[s] = render_group(ix, table, cell, bool(e) and recipe == "faithful", recipe, constants)
    return out  # an empty string stays blank (the builder never sees one)


def render(text, cell=32, recipe="faithful", font=None, constants="bvv241-2-3"):
    """Bitmap [cell, cell] uint8 of one token string, 1 = ink."""
    return render_batch([text], cell, recipe, font, constants)[0]


# -----------------------------------------------------------------------------
# tables

def table_fingerprint(t):
    """16 hex chars of sha256 of the float32 bytes."""
    a = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()[:16]  # no 2nd copy of a big table


def bytes_to_unicode():
    """GPT-2's printable stand-in for every byte: how byte-level vocabularies store their tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_strings_of(tokenizer):
    """(surface strings, fingerprint, name) of a tokenizer or of a plain list of strings.
    Byte-level (tiktoken) tokens are rendered in their stored form, e.g. 'Ġpainted' (SPEC: bvv241-nemo),
    so partial UTF-8 characters get distinct pictures instead of all becoming U+FFFD."""
    if isinstance(tokenizer, (list, tuple)):
        strings = list(tokenizer)
        fp = hashlib.sha256(json.dumps(strings, ensure_ascii=False).encode()).hexdigest()[:16]
        return strings, fp, "list"
    enc = getattr(tokenizer, "enc", None)
    if enc is not None and hasattr(enc, "decode_single_token_bytes"):
        b2u = bytes_to_unicode()
        strings = []
        for i in range(tokenizer.vocab_size):
            try:
                strings.append("".join(b2u[b] for b in enc.decode_single_token_bytes(i)))
            except KeyError:  # ids that are no token (cl100k_base has a few)
                strings.append("")
    else:
        strings = list(tokenizer.token_strings())
    if len(strings) != tokenizer.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name!r}: token_strings() has {len(strings)} entries, "
                         f"vocab_size is {tokenizer.vocab_size}")
    return strings, tokenizer.fingerprint, getattr(tokenizer, "name", "?")


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-threaded eigh: as fast here, deterministic, and immune to the
    try:                      # 30x slow-down of threaded LAPACK when other processes share the cores
        evals, evecs = torch.linalg.eigh(C)                          # ascending
    finally:
        torch.set_num_threads(threads)
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


TIMINGS = {}  # stage -> (wall s, process CPU s) of the last build, for bench_glyph.py and the CLI


@contextlib.contextmanager
def timed(stage):
    w, c = time.perf_counter(), time.process_time()
    yield
    TIMINGS[stage] = (time.perf_counter() - w, time.process_time() - c)


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
        try:
            b = torch.load(path, weights_only=True)
            b = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in b.items()}
            if b["packed"].shape[0] == len(strings) and b["font_sha256"] == font.sha256:
                return b
        except Exception:
            pass
        print(f"warning: ignoring unreadable or stale cache file {path}; rebuilding", file=sys.stderr)
    with timed("render"):
        X = render_batch(strings, cell, recipe, font, constants).reshape(len(strings), -1)
    with timed("pca"):
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
    with timed("project"):
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


def min_distance_to_others(t, ids, chunk=512):
    """Smallest Euclidean distance between any row in ids and any other row: every pair that
    make_unique changed involves a moved row (rows are unit-norm, so d^2 = 2 - 2 cos)."""
    if len(ids) == 0:
        return None
    best = 4.0
    for i in range(0, len(ids), chunk):
        sel = torch.as_tensor(ids[i:i + chunk])
        cos = t[sel] @ t.T
        cos[torch.arange(len(sel)), sel] = -2.0
        j = cos.argmax(dim=1)                             # nearest other row, then exact in float64
        d = (t[sel].double() - t[j].double()).norm(dim=1).min()
        best = min(best, float(d))
    return best


def min_pairwise_distance(t, chunk=2048):
    """Smallest distance between two DIFFERENT rows (exact duplicates, i.e. collisions, are merged
    first): blocked float32 cosines pick each row's nearest neighbour, whose distance is then
    recomputed in float64. O(V^2 d): ~10 s for 65,536 x 64 here, minutes at 1024 dims."""
    u = torch.from_numpy(np.unique(np.ascontiguousarray(t.numpy()), axis=0))
    best = float("inf")
    for i in range(0, len(u), chunk):
        cos = u[i:i + chunk] @ u[i:].T                   # upper triangle of the block row
        cos[torch.arange(cos.shape[0]), torch.arange(cos.shape[0])] = -2.0
        if cos.shape[1] <= 1:
            continue
        j = cos.argmax(dim=1) + i
        ok = j != torch.arange(i, i + cos.shape[0])
        if ok.any():
            d = (u[i:i + chunk][ok].double() - u[j[ok]].double()).norm(dim=1).min()
            best = min(best, float(d))
    return best


def expand(table, d_model):
    """A table narrower than d_model, widened the way the papers do: repeat_interleave(d_model // w)."""
    w = table.shape[1]
    if d_model % w:
        raise ValueError(f"d_model={d_model} is not a multiple of the table width {w}")
    return table.repeat_interleave(d_model // w, dim=1)


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
        try:
            return load_table(path, tok_fp)
        except ValueError as e:  # a damaged cache entry is rebuilt, never used
            print(f"warning: {e}; rebuilding", file=sys.stderr)
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

# -----------------------------------------------------------------------------
# reports, sample sheet, command line

def collision_report(table, strings, top=15):
    """Human-readable summary of the groups of ids with identical rows."""
    groups = collision_groups(table)
    n_ids = sum(len(g) for g in groups)
    lines = [f"{len(groups)} collision groups covering {n_ids} of {len(strings)} ids "
             f"({len(strings) - n_ids + len(groups)} distinct rows)"]
    index = {t: i for i, t in reversed(list(enumerate(strings)))}
    for a, b in ((" ", "\n"), ("a", "\u0430"), ("o", "\u043e"), ("P", "\u0420"), ("and", "ard")):
        if a in index and b in index:
            same = bool((table[index[a]] == table[index[b]]).all())
            lines.append(f"  {a!r} vs {b!r}: {'identical' if same else 'different'}")
    for g in groups[:top]:
        shown = ", ".join(f"{i}:{strings[i]!r}" for i in g[:8])
        lines.append(f"  [{len(g)}] {shown}{' ...' if len(g) > 8 else ''}")
    return "\n".join(lines)


def sample_sheet(path, texts=("A", "the", "中", "<pad>", "ing"), cell=32, constants="bvv241-2-3", font=None,
                 zoom=4):
    """PNG: one row per sample, columns = clean render, faithful render (ink black, 1 px grey grid gap)."""
    from PIL import Image, ImageDraw
    font = font or load_font()
    label_w, pad = 120, 4
    W = label_w + 2 * (cell * zoom + pad) + pad
    H = pad + len(texts) * (cell * zoom + pad) + 16
    sheet = Image.new("L", (W, H), 200)
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w + pad, 2), "clean", fill=0)
    draw.text((label_w + 2 * pad + cell * zoom, 2), "faithful", fill=0)
    for r, t in enumerate(texts):
        y = 16 + pad + r * (cell * zoom + pad)
        label = t if t.isascii() else " ".join(f"U+{ord(c):04X}" for c in t)
        draw.text((pad, y + cell * zoom // 2 - 6), label, fill=0)
        for c, recipe in enumerate(("clean", "faithful")):
            bm = render(t, cell, recipe, font, constants)
            img = Image.fromarray(((1 - bm) * 255).astype(np.uint8)).resize((cell * zoom,) * 2, Image.NEAREST)
            sheet.paste(img, (label_w + pad + c * (cell * zoom + pad), y))
    sheet.save(path)
    return path


def strings_from_tokenizer_json(path):
    """id -> stored token string of an HF tokenizer.json (model.vocab + added_tokens); gaps -> ''."""
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    vocab = dict((v, k) for k, v in j.get("model", {}).get("vocab", {}).items())
    for a in j.get("added_tokens", []):
        vocab[a["id"]] = a["content"]
    if not vocab:
        raise ValueError(f"{path}: no model.vocab / added_tokens found (not an HF tokenizer.json?)")
    return [vocab.get(i, "") for i in range(max(vocab) + 1)]


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Build a frozen glyph embedding table for a tokenizer.")
    ap.add_argument("--tokenizer", default="bvv241-2-3", help="name or path accepted by unicode_tokenizer.get_tokenizer")
    ap.add_argument("--strings_json", default=None,
                    help="instead of --tokenizer: any HF tokenizer.json, rendered from its stored vocab strings "
                         "(the table's tokenizer fingerprint is then a hash of those strings)")
    ap.add_argument("--kind", default="glyph", choices=["glyph", "glyph_unique", "binary16", "random"])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--cell", type=int, default=None, help="32 (<= 1024 dims) or 64 (<= 4096 dims)")
    ap.add_argument("--constants", default="bvv241-2-3", choices=sorted(RECIPES))
    ap.add_argument("--font", default=None, help="Unifont .hex or .hex.gz (default: $GLYPHGPT_UNIFONT, Debian, cache, download)")
    ap.add_argument("--out", default=None, help="write {'table', 'info'} here (torch.save)")
    ap.add_argument("--report", action="store_true", help="print the collision report")
    ap.add_argument("--sheet", default=None, help="write a PNG of sample glyph bitmaps here")
    ap.add_argument("--min_dist", action="store_true", help="also print the exact minimum distance between distinct rows (slow)")
    ap.add_argument("--no_cache", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.strings_json:
            tok = strings_from_tokenizer_json(a.strings_json)
        else:
            from unicode_tokenizer import get_tokenizer
            tok = get_tokenizer(a.tokenizer)
        strings = token_strings_of(tok)[0]
        t0 = time.time()
        table, info = frozen_table(tok, a.kind, a.dim, a.cell, a.constants, a.font, use_cache=not a.no_cache)
        stages = ", ".join(f"{k} {w:.1f}s" for k, (w, c) in TIMINGS.items())
        print(f"{a.kind} table {tuple(table.shape)} in {time.time() - t0:.1f}s ({stages or 'cached'}): {json.dumps(info)}")
        if a.out:
            save_table(table, info, a.out)
            print(f"wrote {a.out}")
        if a.report:
            print(collision_report(table, strings))
        if a.min_dist:
            print(f"minimum distance between distinct rows: {min_pairwise_distance(table):.6f}")
        if a.sheet:
            sample_sheet(a.sheet, cell=a.cell or 32, constants=a.constants, font=load_font(a.font))
            print(f"wrote {a.sheet}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
