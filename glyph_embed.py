"""
Frozen glyph embedding tables (Bochkov 2025): every token id gets a vector computed once from the
picture of its Unicode glyphs in GNU Unifont, never trained.

Pipeline (docs/design.md section 2, the released bvv241 builder, step by step):
  1. draw each character with Pillow (Unifont 15.0.01 .otf at the cell size) where the builder
     places it, from Pillow's getbbox, side by side; every distinct character is drawn once (with
     the ink it spills into its neighbours' cells), cached per font, and strips are composed with numpy
  2. a fixed "augmentation" (rotation, shift, noise, blur, threshold): the builder re-seeds inside
     every call, so it is ONE transform per strip width; we compute it once per width and apply
     it to all tokens of that width at once with numpy
  3. squash the 32 x 32n strip back to one 32x32 cell (nearest neighbour columns)
  4. binarize, 5. PCA over all rows (deterministic signs, null-space axes zeroed), L2-normalise each row.

A table's identity is its substrate key (substrate_key: tokenizer, recipe, font sha256, cell, dim, a
digest of the integer bitmaps), and two tables with one key are the same substrate when they agree
within SUBSTRATE_TOL (check_same_substrate), whatever LAPACK computed them.

Usage:
    from glyph_embed import frozen_table, render
    table, info = frozen_table(tok, kind="glyph", table_dim=1024)     # [V, 1024] float32, cached on disk
    python glyph_embed.py --tokenizer bvv241-2-3 --dim 1024 --out table.pt --report --sheet s.png
"""
import contextlib
import hashlib
import json
import os
import random
import sys
import time

import numpy as np
import torch

from checkpoint import all_finite, atomic_write, table_fingerprint
from data.download import cache_dir, download, sha256_file

# -----------------------------------------------------------------------------
# font: GNU Unifont 15.0.01 OpenType, drawn by Pillow exactly as the released builder draws it

# One pinned font everywhere: Debian bookworm's fonts-unifont 1:15.0.01-2 (unifont.otf). Upstream's
# unifont-15.0.01.otf is tried first but accepted only if it is this same file (same sha256);
# otherwise the Debian package itself is fetched and the .otf taken out of it.
UNIFONT_VERSION = "15.0.01"
UNIFONT_SHA256 = "db1960227adcb14640063e7384fdcd2867aaf819d9ca4866bca289d4db9a9f67"  # Debian's unifont.otf
UNIFONT_OTF_URL = f"https://ftpmirror.gnu.org/unifont/unifont-{UNIFONT_VERSION}/unifont-{UNIFONT_VERSION}.otf"
UNIFONT_DEB_URL = "https://deb.debian.org/debian/pool/main/u/unifont/fonts-unifont_15.0.01-2_all.deb"
UNIFONT_DEB_SHA256 = "cd46245f1b228d1277ed2b453ce893fde1cf4bf4ec317e82b0079395bdc9c2b5"
UNIFONT_DEB_MEMBER = "./usr/share/fonts/opentype/unifont/unifont.otf"
DEBIAN_UNIFONT = "/usr/share/fonts/opentype/unifont/unifont.otf"


def otf_from_deb(deb, member=UNIFONT_DEB_MEMBER):
    """The bytes of one file inside a .deb (an ar archive holding data.tar.*), without dpkg."""
    import io
    import tarfile
    with open(deb, "rb") as f:
        data = f.read()
    pos = 8  # "!<arch>\n", then 60-byte member headers, members padded to even length
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tar:
                return tar.extractfile(member).read()
        pos += 60 + size + (size & 1)
    raise ValueError(f"{deb}: no data.tar member (not a Debian package?)")


def download_unifont(dest=None):
    """The pinned Unifont 15.0.01 .otf into our cache (sha256 checked), from the GNU mirror or the
    Debian package (data/download.py: resume, sha256 check, atomic rename)."""
    dest = dest or os.path.join(cache_dir(), f"unifont-{UNIFONT_VERSION}.otf")
    errors = []
    try:
        return download(UNIFONT_OTF_URL, dest, sha256=UNIFONT_SHA256, what="GNU Unifont")
    except SystemExit as e:  # offline, or upstream's build is not byte-identical to Debian's
        errors.append(str(e))
    try:
        deb = download(UNIFONT_DEB_URL, dest + ".deb", sha256=UNIFONT_DEB_SHA256, what="GNU Unifont")
        otf = otf_from_deb(deb)
        if hashlib.sha256(otf).hexdigest() != UNIFONT_SHA256:
            raise SystemExit(f"{deb}: unifont.otf inside has the wrong sha256")
        with atomic_write(dest, "wb") as f:
            f.write(otf)
        os.remove(deb)
        return dest
    except (SystemExit, ValueError, KeyError) as e:
        errors.append(str(e))
    raise SystemExit(f"error: could not download GNU Unifont {UNIFONT_VERSION}: {'; '.join(errors)}. Install the "
                     f"Debian package 'fonts-unifont', or pass an .otf path (--font / $GLYPHGPT_UNIFONT)")


def find_font(path=None):
    """An explicit path or $GLYPHGPT_UNIFONT (any font: the user asked for it), else the pinned
    Unifont 15.0.01: the Debian file if it is that file, our cache, else download."""
    explicit = path or os.environ.get("GLYPHGPT_UNIFONT")
    if explicit:
        if not os.path.exists(explicit):
            raise FileNotFoundError(f"font file not found: {explicit}")
        return explicit
    cached = os.path.join(cache_dir(), f"unifont-{UNIFONT_VERSION}.otf")
    for p in (DEBIAN_UNIFONT, cached):
        if os.path.exists(p) and sha256_file(p) == UNIFONT_SHA256:
            return p
        if os.path.exists(p):
            print(f"note: {p} is not GNU Unifont {UNIFONT_VERSION} (sha256 {sha256_file(p)[:16]}), not used",
                  file=sys.stderr)
    return download_unifont()


class Font:
    """A font file drawn by Pillow at the size of the cell, one placed character at a time."""

    def __init__(self, path):
        from PIL import ImageFont
        self.path, self.sha256 = path, sha256_file(path)
        self.pinned = self.sha256 == UNIFONT_SHA256
        if not self.pinned:
            print(f"note: glyphs drawn with {path} (sha256 {self.sha256[:16]}), not the pinned GNU Unifont "
                  f"{UNIFONT_VERSION}: the table's substrate key says so", file=sys.stderr)
        try:
            ImageFont.truetype(path, 32)
        except OSError as e:
            raise ValueError(f"{path}: Pillow cannot read it as a font ({e}); expected GNU Unifont .otf") from None
        self._pillow, self._cells = {}, {}

    def pillow(self, size):
        """Pillow's basic layout (FreeType alone), pinned: with libraqm installed Pillow would shape
        text with HarfBuzz instead, which gives a lone combining mark an advance of 16 instead of 0
        and refuses line-break characters. The released builder's boxes (docs/design.md section 2)
        are the basic layout's."""
        from PIL import ImageFont
        if size not in self._pillow:
            self._pillow[size] = ImageFont.truetype(self.path, size, layout_engine=ImageFont.Layout.BASIC)
        return self._pillow[size]

    def draw_char(self, ch, cell):
        """The builder's drawing of one character in its cell, on a 3-cell-wide canvas so that ink
        spilling into the neighbouring cells (zero-advance combining marks) is kept: [cell, 3 cell]
        bool, True = ink. Pillow's box (l, t, r, b) is not the ink box (docs/design.md section 2)."""
        from PIL import Image, ImageDraw
        font = self.pillow(cell)
        img = Image.new("L", (3 * cell, cell), color=255)
        try:  # what the builder does when Pillow refuses a character (line breaks): nothing drawn
            l, t, r, b = font.getbbox(ch)
            ImageDraw.Draw(img).text((cell + (cell - (r - l)) // 2, (cell - (b - t)) // 2 - t), ch, fill=0, font=font)
        except Exception:
            pass
        a = np.asarray(img)
        if ((a != 0) & (a != 255)).any():
            raise ValueError(f"{self.path}: U+{ord(ch):04X} is drawn with grey pixels; a bitmap font "
                             f"(Unifont) is needed for exact 1-bit glyphs")
        return a == 0

    def char_cells(self, cps, cell=32):
        """(own [k, cell, cell], left [k, ...], right [k, ...]) uint8 1 = ink: what each code point
        draws into its own cell and into the cells left / right of it. Drawn once per font and
        cell size, cached on disk (verified by digest)."""
        have = self._cells.get(cell)
        if have is None:
            have = cache_load(os.path.join(cache_dir(), "glyph", f"chars_{self.sha256[:16]}_c{cell}_basic.npz"))
            have = have or {"cps": np.zeros(0, np.int64), "cells": np.zeros((0, 3, cell * cell // 8), np.uint8)}
        cps = np.asarray(cps, dtype=np.int64)
        missing = np.setdiff1d(cps, have["cps"])
        if len(missing):
            with timed("draw"):
                drawn = np.stack([self.draw_char(chr(c), cell).reshape(cell, 3, cell).transpose(1, 0, 2)
                                  for c in missing.tolist()])
            allc = np.concatenate([have["cps"], missing])
            cells = np.concatenate([have["cells"], np.packbits(drawn.reshape(len(missing), 3, -1), axis=2)])
            order = np.argsort(allc)
            have = {"cps": allc[order], "cells": cells[order]}
            cache_save(os.path.join(cache_dir(), "glyph", f"chars_{self.sha256[:16]}_c{cell}_basic.npz"), have)
        self._cells[cell] = have
        i = np.searchsorted(have["cps"], cps)
        c = np.unpackbits(have["cells"][i], axis=2).reshape(len(cps), 3, cell, cell)
        return c[:, 1], c[:, 0], c[:, 2]


_FONTS = {}


def load_font(path=None):
    p = find_font(path)
    if p not in _FONTS:
        _FONTS[p] = Font(p)
    return _FONTS[p]

# -----------------------------------------------------------------------------
# cache entries verified by a digest of their content, recorded when written

def content_digest(arrays):
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def cache_save(path, arrays):
    """numpy arrays -> path (.npz), with the sha256 of their content; atomic."""
    with atomic_write(path, "wb") as f:
        np.savez(f, _digest=np.array(content_digest(arrays)), **arrays)


def cache_load(path):
    """The arrays of a cache entry, or None (absent; or damaged: then one line says so, to be rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "_digest"}
            if str(z["_digest"]) == content_digest(arrays):
                return arrays
        why = "content does not match its recorded digest"
    except Exception as e:  # truncated, not a zip, missing digest ...
        why = f"unreadable ({type(e).__name__})"
    print(f"warning: cache entry {path}: {why}; rebuilding it", file=sys.stderr)
    return None

# -----------------------------------------------------------------------------
# the fixed distortion of the released builder, as index maps computed once per strip width

# bvv241-2-3 constants (the default) and bvv241-max / -abs / -nemo constants: (R degrees, S px, p noise)
RECIPES = {"bvv241-2-3": (4, 2, 0.01), "bvv241-max": (7, 3, 0.03)}
HARD = (0, 0, 0.001)  # strings not purely Latin (to U+024F) or Greek..Armenian (U+0370-U+058F)


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


def render_group(strip, cell, easy, recipe, constants):
    """strip [N, n, cell, cell] cells of N strings of n characters -> bitmaps [N, cell, cell] 1 = ink."""
    N, n = strip.shape[:2]
    k, off, mask, blur, keep = plan(n, cell, easy, recipe, constants)
    cells = np.concatenate([strip.reshape(N, -1), np.zeros((N, cell * cell), np.uint8)], axis=1)  # + blank
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
    own, left, right = font.char_cells(uniq, cell)
    # ink outside a character's own cell (combining marks reach left): kept for those few only
    spills = np.nonzero(left.any(axis=(1, 2)) | right.any(axis=(1, 2)))[0]
    spill_row = np.full(len(uniq) + 1, len(spills), np.int64)
    spill_row[spills] = np.arange(len(spills))
    blank = np.zeros((1, cell, cell), np.uint8)
    left, right = np.concatenate([left[spills], blank]), np.concatenate([right[spills], blank])
    own = np.concatenate([own, blank])
    hard = np.concatenate([[0], np.cumsum(~((cps <= 0x24F) | ((cps >= 0x370) & (cps <= 0x58F))))])
    easy = (hard[starts + lens] - hard[starts]) == 0
    out = np.zeros((len(texts), cell, cell), dtype=np.uint8)
    for n in np.unique(lens[lens > 0]):
        for e in (False, True):
            sel = np.nonzero((lens == n) & (easy == e))[0]
            chunk = max(1, (1 << 22) // (cell * cell * n))   # bounded memory per step
            for c in range(0, len(sel), chunk):
                s = sel[c:c + chunk]
                ix = inv[starts[s][:, None] + np.arange(n)]
                strip = own[ix]                              # [N, n, cell, cell]
                sr = spill_row[ix]
                if n > 1 and (sr < len(spills)).any():       # neighbours' spilt ink, clipped at the ends
                    strip[:, :-1] |= left[sr[:, 1:]]
                    strip[:, 1:] |= right[sr[:, :-1]]
                out[s] = render_group(strip, cell, bool(e) and recipe == "faithful", recipe, constants)
    return out  # an empty string stays blank (the builder never sees one)


def render(text, cell=32, recipe="faithful", font=None, constants="bvv241-2-3"):
    """Bitmap [cell, cell] uint8 of one token string, 1 = ink."""
    return render_batch([text], cell, recipe, font, constants)[0]


# -----------------------------------------------------------------------------
# tables

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
    Byte-level (tiktoken) tokens are rendered in their stored form, e.g. 'Ġpainted' (docs/design.md section 1: bvv241-nemo),
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


# A table's identity is its substrate key (what it was built from, down to a digest of the integer
# bitmaps), never the hash of its float bytes: the last bits of an eigendecomposition depend on the
# LAPACK/BLAS in use. Two tables with the same key are the same substrate when they agree within
# SUBSTRATE_TOL everywhere (check_same_substrate).
SUBSTRATE_TOL = 1e-6
NULL_VARIANCE = 1e-9  # components with eigenvalue <= this x the largest are numerically zero: zeroed
PCA_CONVENTION = "cov-f64;eigh;null<=1e-9*max->zero;sign:max|loading|>0;proj-f64->f32;l2"


def gram_counts(X, chunk=8192):
    """X^T X [D, D] int64 of X [V, D] uint8 0/1: co-occurrence counts of ink pixels, exact. An int8
    matmul (int32 sums, a chunk of rows at a time) is ~4x faster here than float32 and exact on
    every CPU whatever its summation order."""
    G = torch.zeros(X.shape[1], X.shape[1], dtype=torch.int64)
    for i in range(0, X.shape[0], chunk):
        x = torch.from_numpy(X[i:i + chunk]).to(torch.int8)
        G += torch._int_mm(x.T.contiguous(), x)
    return G


def pca(X, eigh="torch"):
    """X [V, D] uint8 0/1 -> (mean [D] f64, W [D, D] f64 columns = axes by decreasing variance, eigvals).
    The covariance comes from integer counts, so it is bit-identical everywhere. The eigenvectors are
    not (LAPACK): null-space axes are arbitrary, so they are zeroed; the others agree to float noise,
    signs fixed below."""
    V, D = X.shape
    with timed("gram"):
        G = gram_counts(X).to(torch.float64)
    counts = torch.from_numpy(X.sum(axis=0, dtype=np.int64)).to(torch.float64)
    mu = counts / V
    C = (G - torch.outer(counts, counts) / V) / max(V - 1, 1)
    with timed("eigh"):
        evals, evecs = eigenpairs(C, eigh)                           # ascending
    evals, W = evals.flip(0), evecs.flip(1).clone()
    W[:, evals <= NULL_VARIANCE * evals[0]] = 0.0
    # sign convention: the largest-|loading| entry of every component is positive (|loading| compared
    # at 1e-9, so that near-ties pick the same entry whatever the LAPACK)
    pick = torch.round(W.abs() * 1e9).argmax(dim=0)
    sign = torch.sign(W[pick, torch.arange(D)])
    W = W * torch.where(sign == 0, 1.0, sign)
    return mu.numpy(), W.numpy(), evals.numpy()


def eigenpairs(C, eigh="torch"):
    """(eigenvalues ascending, eigenvectors) of the symmetric C, by torch's or numpy's LAPACK."""
    if eigh == "numpy":
        return tuple(torch.from_numpy(a) for a in np.linalg.eigh(C.numpy()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-threaded eigh: as fast here, and immune to the 30x slow-down
    try:                      # of threaded LAPACK when other processes share the cores
        return torch.linalg.eigh(C)
    finally:
        torch.set_num_threads(threads)


def project(X, mu, W, dim):
    """Rows of (X - mu) @ W[:, :dim], L2-normalised: computed in float64, rounded once to float32.
    The zeroed null-space axes (the last columns of W) project to exact zeros, so they are not
    multiplied (433 of the 4096 axes of the 131,072-token 64x64 table)."""
    live = np.flatnonzero(np.any(W[:, :dim] != 0, axis=0))
    live = int(live[-1]) + 1 if len(live) else 0
    Wd = torch.from_numpy(np.ascontiguousarray(W[:, :live]))
    off = torch.from_numpy(mu) @ Wd
    out = torch.zeros(X.shape[0], dim, dtype=torch.float32)
    chunk = max(1, (1 << 24) // dim)                     # 128 MB of float64 rows at a time, in place
    for i in range(0, X.shape[0], chunk):
        y = torch.from_numpy(X[i:i + chunk]).to(torch.float64) @ Wd
        y.sub_(off)
        y.div_(y.norm(dim=1, keepdim=True).clamp_min(1e-12))
        out[i:i + chunk, :live] = y
    return out


KEY_FIELDS = ("kind", "tokenizer_fingerprint", "recipe", "constants", "font_sha256", "cell", "dim",
              "bitmaps_sha256", "pca", "unique_eps")


def substrate_key(info):
    """16 hex chars naming what a table is: a sha256 of its KEY_FIELDS."""
    fields = {k: info.get(k) for k in KEY_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def max_abs_difference(a, b, chunk=8192):
    """max |a - b| over two [V, w] tables, in float64, a block of rows at a time (no V x w copy)."""
    m = 0.0
    for i in range(0, a.shape[0], chunk):
        d = (a[i:i + chunk].double() - b[i:i + chunk].double()).abs().max().item() if a.numel() else 0.0
        m = max(m, d) if d == d else float("nan")
        if m != m:
            break
    return m


def check_same_substrate(a_info, a_table, b_info, b_table, where):
    """Refuse (ValueError, one line) two frozen tables that are not the same substrate: different
    keys, or the same key but values further apart than SUBSTRATE_TOL. Returns max |difference|.
    A missing key (a table of an older version) falls back to the numerical check alone."""
    a_info, b_info = a_info or {}, b_info or {}
    ka, kb = a_info.get("key"), b_info.get("key")
    if ka and kb and ka != kb:
        diff = [f"{k} {a_info.get(k)!r} vs {b_info.get(k)!r}" for k in KEY_FIELDS if a_info.get(k) != b_info.get(k)]
        raise ValueError(f"{where}: different frozen tables: substrate key {ka} vs {kb}"
                         f"{' (' + '; '.join(diff) + ')' if diff else ''}")
    if a_table is None or b_table is None:
        if a_table is None and b_table is None:
            return 0.0
        raise ValueError(f"{where}: one side has a frozen table, the other a trainable embedding")
    if tuple(a_table.shape) != tuple(b_table.shape):
        raise ValueError(f"{where}: frozen tables of shapes {tuple(a_table.shape)} and {tuple(b_table.shape)}")
    d = max_abs_difference(a_table, b_table)
    if not d <= SUBSTRATE_TOL:
        raise ValueError(f"{where}: frozen tables (key {ka or kb}) differ by up to {d:.3g}, more than the "
                         f"tolerance {SUBSTRATE_TOL:g} for one substrate")
    return d


TIMINGS = {}  # stage -> (wall s, process CPU s) of the last build, for bench_glyph.py and the CLI


@contextlib.contextmanager
def timed(stage):
    w, c = time.perf_counter(), time.process_time()
    yield
    TIMINGS[stage] = (time.perf_counter() - w, time.process_time() - c)


def glyph_basis(strings, tok_fp, cell=32, recipe="faithful", constants="bvv241-2-3", font=None,
                use_cache=True, eigh="torch"):
    """Bitmaps (packed) + full PCA of a vocabulary, cached on disk (each dim is then one matmul).
    The cache entry is verified against the digest recorded with it, and rebuilt when wrong."""
    font = font or load_font()
    path = os.path.join(cache_dir(), "glyph", f"basis_{tok_fp}_{recipe}_{constants}_{cell}_{font.sha256[:16]}.npz")
    b = cache_load(path) if use_cache else None
    if b is not None and b["packed"].shape[0] == len(strings) and np.isfinite(b["W"]).all():
        return b
    with timed("render"):
        X = render_batch(strings, cell, recipe, font, constants).reshape(len(strings), -1)
    with timed("pca"):
        mu, W, ev = pca(X, eigh=eigh)
    if not (np.isfinite(W).all() and np.isfinite(mu).all()):
        raise ValueError(f"PCA of the {len(strings)} glyph bitmaps is not finite (eigh={eigh})")
    b = {"packed": np.packbits(X, axis=1), "mu": mu, "W": W, "eigvals": ev}
    if use_cache:
        cache_save(path, b)
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
                use_cache=True, eigh="torch"):
    """(table, the fields of its substrate key)."""
    V = len(strings)
    if kind == "binary16":
        t = binary16_table(V)
        return t, {"recipe": "binary16", "bitmaps_sha256": content_digest({"t": t.numpy()})}
    if kind == "random":
        t = random_table(V, dim)
        return t, {"recipe": "random-pm1-seed1337", "bitmaps_sha256": content_digest({"t": t.numpy()})}
    if kind not in ("glyph", "glyph_unique"):
        raise ValueError(f"kind must be one of glyph, glyph_unique, binary16, random; got {kind!r}")
    if not 1 <= dim <= cell * cell:
        raise ValueError(f"dim={dim} is not possible with {cell}x{cell} glyph cells (1..{cell * cell}); "
                         f"use cell=64 for up to 4096")
    b = glyph_basis(strings, tok_fp, cell, "faithful", constants, font, use_cache, eigh)
    X = np.unpackbits(b["packed"], axis=1)[:, :cell * cell]
    with timed("project"):
        t = project(X, b["mu"], b["W"], dim)
    extra = {}
    if kind == "glyph_unique":
        t, extra = make_unique(t)
    return t, {"recipe": "faithful-pillow-basic-layout", "constants": list(RECIPES[constants]) + [constants], "font_sha256": font.sha256,
               "font_pinned": font.pinned, "cell": cell, "bitmaps_sha256": hashlib.sha256(b["packed"]).hexdigest(),
               "pca": PCA_CONVENTION, **extra}


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


def table_width(kind, table_dim):
    """Columns of a frozen table of `kind` asked for table_dim wide: binary16 codes are 16 wide whatever
    table_dim says (binary16_table), the others table_dim."""
    return 16 if kind == "binary16" else table_dim


def frozen_table(tokenizer, kind="glyph", table_dim=1024, cell=None, constants="bvv241-2-3", font_path=None,
                 use_cache=True, eigh="torch"):
    """(table [V, w] float32, info) for a tokenizer (or a list of token strings); built once, cached.
    info["key"] is the table's substrate key (KEY_FIELDS), info["fingerprint"] the hash of its bytes."""
    strings, tok_fp, _ = token_strings_of(tokenizer)
    dim = table_width(kind, table_dim)
    cell = cell or (64 if dim > 1024 else 32)
    font = None
    if kind in ("glyph", "glyph_unique"):
        font = load_font(font_path)
    fsha = font.sha256[:16] if font else "nofont"
    path = os.path.join(cache_dir(), "glyph", f"{tok_fp}_{kind}_{constants}_c{cell}_d{dim}_{fsha}.pt")
    if use_cache and os.path.exists(path):
        try:
            table, info = load_table(path, tok_fp)
            if info.get("key") == substrate_key(info):
                return table, info
            print(f"warning: {path}: cache entry of an older version (no substrate key); rebuilding it", file=sys.stderr)
        except ValueError as e:  # a damaged cache entry is rebuilt, never used
            print(f"warning: {e}; rebuilding it", file=sys.stderr)
    table, extra = build_table(strings, tok_fp, kind, dim, cell, constants, font, use_cache, eigh)
    if not all_finite(table):
        raise ValueError(f"the {kind} table built for tokenizer {tok_fp} has non-finite values: not used")
    info = {"kind": kind, "dim": table.shape[1], "tokenizer_fingerprint": tok_fp, **extra}
    info["key"] = substrate_key(info)
    info["fingerprint"] = table_fingerprint(table)
    if use_cache:
        save_table(table, info, path)
    return table, info


def save_table(table, info, path):
    if not all_finite(table):
        raise ValueError(f"{path}: refusing to save a table with non-finite values")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save({"table": table, "info": info}, f)


def load_table(path, tokenizer_or_fp=None):
    """Load a saved table; checks its bytes against the recorded fingerprint (the file is intact),
    that it is finite, and (if given) the tokenizer's fingerprint."""
    try:
        d = torch.load(path, weights_only=True)
        table, info = d["table"], d["info"]
    except Exception as e:
        raise ValueError(f"{path}: not a glyph table file ({type(e).__name__})") from None
    if table_fingerprint(table) != info.get("fingerprint"):
        raise ValueError(f"{path}: table fingerprint {table_fingerprint(table)} != recorded "
                         f"{info.get('fingerprint')} (corrupted file)")
    if not all_finite(table):
        raise ValueError(f"{path}: table has non-finite values")
    if tokenizer_or_fp is not None:
        fp = tokenizer_or_fp if isinstance(tokenizer_or_fp, str) else token_strings_of(tokenizer_or_fp)[1]
        if info.get("tokenizer_fingerprint") != fp:
            raise ValueError(f"{path}: built for tokenizer fingerprint {info.get('tokenizer_fingerprint')}, "
                             f"but the tokenizer in use has {fp}")
    return table, info

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
    ap.add_argument("--font", default=None, help="another font file (.otf/.ttf; default: $GLYPHGPT_UNIFONT, else the pinned "
                                                       "Unifont 15.0.01 from Debian, the cache or a download)")
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
