"""
Frozen glyph embedding tables (Bochkov 2025): every token id gets a vector computed once from the
picture of its Unicode glyphs in GNU Unifont, never trained.

The recipe is the released bvv241 builder's (docs/design.md section 2); this file follows it in order:
  1. draw       each character of a token with Pillow from the pinned Unifont 15.0.01 .otf
                (glyph_font.py) where the builder places it, side by side: a strip of n cells
  2. distort    the builder's fixed "augmentation": rotation, shift, sparse noise, blur. It re-seeds
                inside every call, so it is ONE transform per strip width: computed once per width
                as index maps and applied to all the tokens of that width at once with numpy
  3. squash     the strip back to one cell (Pillow's nearest-neighbour pick of columns)
  4. binarise   threshold at 128: one 0/1 bitmap per token
  5. PCA        of all the tokens' bitmaps, from exact integer pixel counts (signs fixed, the
                null-space axes zeroed: the same table on every machine)
  6. normalise  project each bitmap on the leading table_dim axes and L2-normalise the row
Then the kinds of frozen table (glyph, glyph_unique, binary16, random ...) and a table's identity.
A table's file is checkpoint.save_table / load_table; the exact integer products of step 5 and 6
are int8_matmul.py; the command line and the tools around tables (importing a released matrix,
matching it to a recipe, reports) are glyph_tools.py. Two choices are part of the recipe: the
distortion's constants (by default the tokenizer's own: constants_for) and Pillow's layout engine
(basic, the default, or raqm).

A table's identity is its substrate key (substrate_key: tokenizer, recipe, font sha256, cell, width,
a digest of the integer bitmaps), and two tables with one key are the same substrate when they
agree within SUBSTRATE_TOL (check_same_substrate), whatever LAPACK computed them.

Usage:
    from glyph_embed import frozen_table, render
    table, info = frozen_table(tok, kind="glyph", table_dim=1024)     # [V, 1024] float32, cached on disk
    python glyph_tools.py --tokenizer=bvv241-2-3 --table_dim=1024 --out=table.pt   # the same, from the shell
"""
import contextlib
import hashlib
import json
import os
import random
import re
import sys
import time

import numpy as np
import torch

import int8_matmul
from checkpoint import all_finite, load_table, table_fingerprint
from common import threaded
from data.download import cache_dir
from glyph_font import cache_load, cache_save, cache_write, check_layout, content_digest, load_font


TIMINGS = {}  # stage -> (wall s, process CPU s) of the last build, for bench_glyph.py and glyph_tools.py


@contextlib.contextmanager
def timed(stage):
    w, c = time.perf_counter(), time.process_time()
    yield
    TIMINGS[stage] = (time.perf_counter() - w, time.process_time() - c)


# -----------------------------------------------------------------------------
# 1. draw: each token's characters side by side, as the builder places them

def render(text, cell=32, recipe="faithful", font=None, constants="bvv241-2-3", layout="basic"):
    """Bitmap [cell, cell] uint8 of one token string, 1 = ink."""
    return render_batch([text], cell, recipe, font, constants, layout)[0]


def render_batch(texts, cell=32, recipe="faithful", font=None, constants="bvv241-2-3", layout="basic"):
    """Bitmaps [len(texts), cell, cell] uint8 (1 = ink) of many strings. recipe "faithful" is the
    builder's (steps 1-4), "clean" only draws and squashes. Every distinct character is drawn once
    (Font.char_cells); the strips of all strings of one length and one script class are composed
    and then distorted, squashed and binarised together (render_group). layout: Pillow's layout
    engine (glyph_font.LAYOUTS)."""
    if recipe not in ("faithful", "clean"):
        raise ValueError(f"recipe must be 'faithful' or 'clean', got {recipe!r}")
    check_constants(constants)
    font = font or load_font()
    lens = np.array([len(t) for t in texts], dtype=np.int64)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    uniq, inv = np.unique(cps, return_inverse=True)
    with timed("draw"):
        own, left, right = font.char_cells(uniq, cell, layout)
    # ink outside a character's own cell (combining marks reach left): kept for those few only
    spills = np.nonzero(left.any(axis=(1, 2)) | right.any(axis=(1, 2)))[0]
    spill_row = np.full(len(uniq) + 1, len(spills), np.int64)
    spill_row[spills] = np.arange(len(spills))
    blank = np.zeros((1, cell, cell), np.uint8)
    left, right = np.concatenate([left[spills], blank]), np.concatenate([right[spills], blank])
    own = np.concatenate([own, blank])
    # "easy" strings (every character Latin to U+024F or Greek..Armenian U+0370-U+058F) get the
    # full distortion, the others only the sparse noise (HARD)
    hard = np.concatenate([[0], np.cumsum(~((cps <= 0x24F) | ((cps >= 0x370) & (cps <= 0x58F))))])
    easy = (hard[starts + lens] - hard[starts]) == 0
    out = np.zeros((len(texts), cell, cell), dtype=np.uint8)

    def draw_piece(piece):
        n, e, s = piece
        ix = inv[starts[s][:, None] + np.arange(n)]
        strip = own[ix]                                      # [N, n, cell, cell]
        sr = spill_row[ix]
        if n > 1 and (sr < len(spills)).any():               # neighbours' spilt ink, clipped at the ends
            strip[:, :-1] |= left[sr[:, 1:]]
            strip[:, 1:] |= right[sr[:, :-1]]
        out[s] = render_group(strip, cell, e and recipe == "faithful", recipe, constants)

    pieces = []
    for n in np.unique(lens[lens > 0]):
        for e in (False, True):
            sel = np.nonzero((lens == n) & (easy == e))[0]
            chunk = max(1, (1 << 22) // (cell * cell * n))   # bounded memory per step
            pieces += [(int(n), e, sel[c:c + chunk]) for c in range(0, len(sel), chunk)]
    threaded(draw_piece, pieces)                             # pieces write disjoint rows of out
    return out  # an empty string stays blank (the builder never sees one)


# -----------------------------------------------------------------------------
# 2. distort: the builder's fixed rotation, shift and noise, as index maps computed once per strip width

# (R degrees, S px, p noise) of "easy" strings: bvv241-2-3 and bvv241-max / -abs / -nemo
RECIPES = {"bvv241-2-3": (4, 2, 0.01), "bvv241-max": (7, 3, 0.03)}
HARD = (0, 0, 0.001)  # strings not purely Latin (to U+024F) or Greek..Armenian (U+0370-U+058F)


def check_constants(constants):
    """ValueError (one line) unless constants names a RECIPES entry."""
    if constants not in RECIPES:
        raise ValueError(f"constants must be one of {', '.join(RECIPES)}; got {constants!r}")


def constants_for(tokenizer):
    """The RECIPES entry a tokenizer's released table was built with, from its name (a tokenizer, or
    the name / path it was loaded from): the 131,072-id builds bvv241-max, -abs and -nemo (also as
    NAME-lossless, hf:..., or a path naming them) used "bvv241-max"; bvv241-2-3 "bvv241-2-3". Any other
    tokenizer (gpt2, a plain list of strings ...) has no released table: it gets "bvv241-2-3", the
    recipe of the first paper."""
    name = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "name", None) or ""
    return "bvv241-max" if re.search(r"bvv241-(max|abs|nemo)(?!\w)", name) else "bvv241-2-3"


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


# -----------------------------------------------------------------------------
# 3. squash: only the columns that survive the resize to one cell are computed

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
    key = (n, cell, easy, recipe, constants)  # (two threads may both compute a missing plan: the same one)
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


# -----------------------------------------------------------------------------
# 4. binarise: the plan applied to a batch of strips, blurred and thresholded as the builder does

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
    # Pillow blurs rows, then columns, rounding to uint8 in between: a tall stack of images blurs
    # their rows exactly in one call, a wide one (images side by side) their columns
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


# -----------------------------------------------------------------------------
# 5. PCA of all the bitmaps, the same on every machine

NULL_VARIANCE = 1e-9  # components with eigenvalue <= this x the largest are numerically zero: zeroed
# "proj-f64->f32" still describes project(): its exact int8 sums of W in fixed point are the float64
# projection to ~1e-9 (W rounded to 2^-30) before the rounding to float32 (a unit of 6e-8 at 0.5):
# the 131,072 x 4096 table is at most 6e-8 from the float64 matmul's (SUBSTRATE_TOL is 1e-6). So
# the text, a field of every substrate key, is unchanged, and so are the keys.
PCA_CONVENTION = "cov-f64;eigh;null<=1e-9*max->zero;sign:max|loading|>0;proj-f64->f32;l2"


def pca(X, eigh="torch"):
    """X [V, D] uint8 0/1 -> (mean [D] f64, W [D, D] f64 columns = axes by decreasing variance, eigvals).
    The covariance comes from integer counts, so it is bit-identical everywhere. The eigenvectors are
    not (LAPACK): null-space axes are arbitrary, so they are zeroed; the others agree to float noise,
    signs fixed below."""
    V, D = X.shape
    with timed("gram"):
        G = int8_matmul.gram_counts(X).to(torch.float64)
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


def glyph_basis(strings, tok_fp, cell=32, recipe="faithful", constants="bvv241-2-3", font=None,
                use_cache=True, eigh="torch", layout="basic"):
    """Steps 1-5 for a vocabulary: its bitmaps (packed) and their full PCA, cached on disk, so that
    a table of any width is then one projection. The cache entry is verified against the digest
    recorded with it, and rebuilt when wrong."""
    font = font or load_font()
    path = os.path.join(cache_dir(), "glyph", f"basis_{tok_fp}_{recipe}_{constants}_{cell}_{font.sha256[:16]}"
                                              f"{LAYOUT_SUFFIX[layout]}.npz")
    b = cache_load(path) if use_cache else None
    if b is not None and b["packed"].shape[0] == len(strings) and np.isfinite(b["W"]).all():
        return b
    with timed("render"):
        X = render_batch(strings, cell, recipe, font, constants, layout).reshape(len(strings), -1)
    with timed("pca"):
        mu, W, ev = pca(X, eigh=eigh)
    if not (np.isfinite(W).all() and np.isfinite(mu).all()):
        raise ValueError(f"PCA of the {len(strings)} glyph bitmaps is not finite (eigh={eigh})")
    b = {"packed": np.packbits(X, axis=1), "mu": mu, "W": W, "eigvals": ev}
    if use_cache:
        cache_save(path, b)
    return b


# -----------------------------------------------------------------------------
# 6. project and normalise

def project(X, mu, W, table_dim):
    """Rows of (X - mu) @ W[:, :table_dim], L2-normalised, rounded once to float32. X is 0/1, so X @ W
    is a sum of rows of W: int8_matmul.centred_unit_rows computes it with exact integer sums of W in
    fixed point, the float64 projection to ~1e-9 (see PCA_CONVENTION), the same on every CPU and GPU.
    The zeroed null-space axes (the last columns of W) project to exact zeros, so they are not
    multiplied (433 of the 4096 axes of the 131,072-token 64x64 table)."""
    live = np.flatnonzero(np.any(W[:, :table_dim] != 0, axis=0))
    live = int(live[-1]) + 1 if len(live) else 0
    out = torch.zeros(X.shape[0], table_dim, dtype=torch.float32)
    if live:
        int8_matmul.centred_unit_rows(X, mu, W[:, :live], out[:, :live])
    return out


# -----------------------------------------------------------------------------
# the tables: which strings a tokenizer's ids stand for, the kinds of table, the cached build

TABLE_KINDS = ("glyph", "glyph_unique", "binary16", "random", "random_bits", "random_float")


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


def table_width(kind, table_dim):
    """Columns of a frozen table of `kind` asked for table_dim wide: binary16 codes are 16 wide whatever
    table_dim says (binary16_table), the others table_dim."""
    return 16 if kind == "binary16" else table_dim


def binary16_table(V):
    """Each id written as its 16 binary digits (most significant first), as 0./1. floats."""
    ids = np.arange(V, dtype=np.int64)
    return torch.from_numpy(((ids[:, None] >> np.arange(15, -1, -1)) & 1).astype(np.float32))


def random_table(V, table_dim, seed=1337):
    """Distinct random +-1 codes, seeded: drawn at once, then the ids whose code repeats an earlier
    id's are redrawn until none is left. That ends quickly only with at least twice as many codes
    as ids, so a narrower width is refused."""
    need = (V - 1).bit_length() + 1  # the least width with 2**width >= 2V
    if table_dim < need:
        raise ValueError(f"kind=random: table_dim={table_dim} is too narrow for {V:,} distinct random +-1 codes; "
                         f"the minimum is table_dim={need} (2**{need} = {2 ** need:,} codes, twice the ids)")
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2, (V, table_dim), generator=g).to(torch.float32) * 2 - 1
    while len(torch.unique(t, dim=0)) < V:
        dup = _duplicate_ids(t.numpy())
        t[dup] = torch.randint(0, 2, (len(dup), table_dim), generator=g).to(torch.float32) * 2 - 1
    return t


def random_bits_table(V, table_dim, seed=1337):
    """random_table's codes written with 0/1 components: the model cards' N_BIT arms ("binary vector
    (0/1 components) ... unique ID per token")."""
    return (random_table(V, table_dim, seed) + 1) / 2


def random_float_table(V, table_dim, seed=1337):
    """The model cards' N_FLOAT arms ("random unique code -> PCA projection to n_embed -> L2
    normalization"): the leading table_dim principal components of the 1,024-bit random_bits codes
    (wider codes above 1,024), each row L2-normalised, by the glyph tables' PCA."""
    X = random_bits_table(V, max(1024, table_dim), seed).to(torch.uint8).numpy()
    mu, W, _ = pca(X)
    return project(X, mu, W, table_dim)


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


def make_unique(t, eps=1e-2, seed=0):
    """Break every tie deterministically: in each group of identical rows the lowest id keeps its row,
    each other id moves by a small id-seeded random step (then re-normalised), so the table becomes
    injective while each row stays within ~eps of its faithful row."""
    groups = collision_groups(t)
    movers = np.array([i for g in groups for i in g[1:]], dtype=np.int64)
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


# the code tables: how each is made, and the recipe field of its substrate key
RANDOM_KINDS = {"random": (random_table, "random-pm1-seed1337"), "random_bits": (random_bits_table, "random-01-seed1337"),
                "random_float": (random_float_table, "random-01-seed1337-pca-l2")}

# the recipe field of a glyph table's substrate key, per layout engine (basic's is the name today's
# keys were made with); the cache files of basic keep their names too
LAYOUT_RECIPES = {"basic": "faithful-pillow-basic-layout", "raqm": "faithful-pillow-raqm-layout"}
LAYOUT_SUFFIX = {"basic": "", "raqm": "_raqm"}


def build_table(strings, tok_fp, kind="glyph", table_dim=1024, cell=32, constants="bvv241-2-3", font=None,
                use_cache=True, eigh="torch", layout="basic"):
    """(table, the fields of its substrate key)."""
    V = len(strings)
    if kind == "binary16":
        t = binary16_table(V)
        return t, {"recipe": "binary16", "bitmaps_sha256": content_digest({"t": t.numpy()})}
    if kind in RANDOM_KINDS:
        make, recipe = RANDOM_KINDS[kind]
        t = make(V, table_dim)
        return t, {"recipe": recipe, "bitmaps_sha256": content_digest({"t": t.numpy()})}
    if not 1 <= table_dim <= cell * cell:
        raise ValueError(f"table_dim={table_dim} is not possible with {cell}x{cell} glyph cells (1..{cell * cell}); "
                         f"use cell=64 for up to 4096")
    b = glyph_basis(strings, tok_fp, cell, "faithful", constants, font, use_cache, eigh, layout)
    X = np.unpackbits(b["packed"], axis=1)[:, :cell * cell]
    with timed("project"):
        t = project(X, b["mu"], b["W"], table_dim)
    extra = {}
    if kind == "glyph_unique":
        t, extra = make_unique(t)
    return t, {"recipe": LAYOUT_RECIPES[layout], "constants": list(RECIPES[constants]) + [constants], "font_sha256": font.sha256,
               "font_pinned": font.pinned, "cell": cell, "bitmaps_sha256": hashlib.sha256(b["packed"]).hexdigest(),
               "pca": PCA_CONVENTION, **extra}


def frozen_table(tokenizer, kind="glyph", table_dim=1024, cell=None, constants=None, font_path=None,
                 use_cache=True, eigh="torch", layout="basic"):
    """(table [V, w] float32, info) for a tokenizer (or a list of token strings); built once, cached.
    kind: glyph (the recipe above), glyph_unique (glyph with ties broken: make_unique), binary16 (each
    id's 16 bits), random (distinct seeded +-1 codes), random_bits (the same codes as 0/1),
    random_float (random_bits codes through PCA, L2-normalised: the model cards' N_FLOAT arms).
    constants: the distortion's (RECIPES), None = the tokenizer's own (constants_for); layout: Pillow's
    layout engine (glyph_font.LAYOUTS). Both are fields of info["key"], the table's substrate key
    (KEY_FIELDS); info["fingerprint"] is the hash of its bytes."""
    if kind not in TABLE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TABLE_KINDS)}; got {kind!r}")
    constants = constants or constants_for(tokenizer)
    check_constants(constants)
    strings, tok_fp, _ = token_strings_of(tokenizer)
    table_dim = table_width(kind, table_dim)
    cell = cell or (64 if table_dim > 1024 else 32)
    font = None
    if kind in ("glyph", "glyph_unique"):
        check_layout(layout)
        font = load_font(font_path)
    fsha = font.sha256[:16] if font else "nofont"
    path = os.path.join(cache_dir(), "glyph", f"{tok_fp}_{kind}_{constants}_c{cell}_d{table_dim}_{fsha}"
                                              f"{LAYOUT_SUFFIX[layout] if font else ''}.pt")
    if use_cache and os.path.exists(path):
        try:
            table, info = load_table(path, tok_fp)
            if info.get("key") == substrate_key(info):
                return table, info
            print(f"warning: {path}: cache entry whose substrate key does not match its fields; rebuilding it",
                  file=sys.stderr)
        except ValueError as e:  # a damaged cache entry is rebuilt, never used
            print(f"warning: {e}; rebuilding it", file=sys.stderr)
    table, extra = build_table(strings, tok_fp, kind, table_dim, cell, constants, font, use_cache, eigh, layout)
    if not all_finite(table):
        raise ValueError(f"the {kind} table built for tokenizer {tok_fp} has non-finite values: not used")
    info = {"kind": kind, "dim": table.shape[1], "tokenizer_fingerprint": tok_fp, **extra}
    info["key"] = substrate_key(info)
    info["fingerprint"] = table_fingerprint(table)
    if use_cache:
        cache_write(path, lambda f: torch.save({"table": table, "info": info}, f))
    return table, info


# -----------------------------------------------------------------------------
# a table's identity: what it was built from, and when two tables are one substrate

# A table's identity is its substrate key (what it was built from, down to a digest of the integer
# bitmaps), never the hash of its float bytes: the last bits of an eigendecomposition depend on the
# LAPACK/BLAS in use. Two tables with the same key are the same substrate when they agree within
# SUBSTRATE_TOL everywhere (check_same_substrate). The field names are a stored format (info["dim"]
# is the table's width).
SUBSTRATE_TOL = 1e-6
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
    A side whose info has no key is checked by the numerical comparison alone."""
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
