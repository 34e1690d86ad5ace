"""
The command line for frozen tables, and the tools around them: build a table (glyph_embed.frozen_table)
and write it, bring in a matrix from elsewhere (a released table: checked, then written as our table
file), find which of our recipes reproduces such a matrix, and look at a table (its collisions, the
closest two distinct rows, a sheet of sample glyph bitmaps).

    python glyph_tools.py --tokenizer=bvv241-2-3 --table_dim=1024 --out=table.pt --report --sheet=s.png
    python glyph_tools.py --tokenizer=bvv241-max --import_from=released.safetensors --out=table.pt
    python glyph_tools.py --tokenizer=bvv241-2-3 --match=released.pt  # which layout x constants reproduces it
    python glyph_tools.py --help                                      # every key, its default and meaning
"""
import json
import os
import time

import numpy as np
import torch

from checkpoint import all_finite, read_json, save_table, table_fingerprint
from common import fail, first_line, script_main
from configurator import configure, defaults_from, key_docs
from data.download import sha256_file
from glyph_embed import (RECIPES, TIMINGS, collision_groups, constants_for, frozen_table, render_batch,
                         substrate_key, token_strings_of)
from glyph_font import content_digest, layout_available, load_font

# -----------------------------------------------------------------------------
# command-line defaults (python glyph_tools.py --key=value ...)
tokenizer = "bvv241-2-3"  # a name or path that unicode_tokenizer.get_tokenizer accepts
strings_json = ""  # instead of tokenizer: any HF tokenizer.json, its stored vocab strings drawn (fingerprint = their hash)
kind = "glyph"  # glyph | glyph_unique | binary16 | random | random_bits | random_float (frozen_table says what each is)
table_dim = 1024  # columns of the table: PCA components (glyph), code width (random); binary16 is 16 wide
cell = 0  # glyph cell in pixels: 32 (up to 1024 columns) or 64 (up to 4096); 0 = 32, or 64 above 1024
constants = ""  # the distortion's constants (RECIPES): bvv241-2-3 | bvv241-max; "" = the tokenizer's own (constants_for)
layout = "basic"  # Pillow's layout engine the glyphs are drawn with: basic | raqm (needs libraqm; docs/design.md section 2)
font = ""  # another font file (.otf/.ttf); "" = $GLYPHGPT_UNIFONT, else the pinned Unifont 15.0.01
out = ""  # also write the table here ({'table', 'info'}, torch.save)
report = False  # print the collision report (groups of ids with identical rows)
sheet = ""  # write a PNG of sample glyph bitmaps here
min_dist = False  # print the exact minimum distance between distinct rows (slow)
import_from = ""  # a [V, d] matrix (.pt: tensor or dict of one; .safetensors; .npy) to check, then write with --out
match = ""  # a [V, d] matrix (same formats, or our table file): which layout x constants reproduces it
cache = True  # read and write the cached bitmaps+PCA and table ($GLYPHGPT_CACHE); False rebuilds them (drawn characters stay cached)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())


# -----------------------------------------------------------------------------
# a matrix from elsewhere (a released table): imported as a table file, matched against our recipes

def read_matrix(path):
    """The one 2-D matrix of a .pt (a tensor, or a dict such as a state dict holding exactly one 2-D
    tensor), .safetensors or .npy file, as a float32 tensor; one line for anything else."""
    if not os.path.isfile(path):
        fail(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".pt", ".pth", ".bin", ".safetensors", ".npy"):
        fail(f"{path}: not a .pt, .safetensors or .npy file")
    try:
        if ext in (".pt", ".pth", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            found = {"": obj} if torch.is_tensor(obj) else obj if isinstance(obj, dict) else {}
        elif ext == ".safetensors":
            from safetensors.torch import load_file
            found = load_file(path)
        else:
            found = {"": torch.from_numpy(np.load(path, allow_pickle=False))}
    except ImportError:
        fail(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)")
    except Exception as e:  # truncated, not that format, a pickle that is not plain tensors ...
        fail(f"{path}: unreadable as {ext} ({type(e).__name__}: {first_line(e)})")
    mats = {k: v for k, v in found.items() if torch.is_tensor(v) and v.dim() == 2}
    if len(mats) != 1:
        shapes = ", ".join(f"{k or 'tensor'} {tuple(v.shape)}" for k, v in found.items() if torch.is_tensor(v))
        fail(f"{path}: holds {len(mats)} 2-D tensors, need exactly one [V, d] matrix ({shapes or 'no tensors'})")
    (name, m), = mats.items()
    if m.is_complex() or not (m.is_floating_point() or m.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16,
                                                                   torch.int32, torch.int64)):
        fail(f"{path}: {name or 'the tensor'} has dtype {m.dtype}, not real numbers")
    return m.to(torch.float32).contiguous()


def import_table(path, tokenizer):
    """(table, info) of a [V, d] matrix from elsewhere (read_matrix), checked: V rows for the tokenizer,
    finite. info records recipe "imported", the file's sha256 and its row norms; the key hashes the
    values (bitmaps_sha256 of the float32 table), so two different matrices never share one."""
    t = read_matrix(path)
    strings, fp, name = token_strings_of(tokenizer)
    if t.shape[0] != len(strings):
        fail(f"{path}: a {t.shape[0]:,} x {t.shape[1]:,} matrix, but tokenizer {name!r} has {len(strings):,} ids "
              f"(one row per id)")
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        fail(f"{path}: {bad:,} rows hold NaN or Inf")
    norms = t.double().norm(dim=1)
    info = {"kind": "imported", "dim": t.shape[1], "tokenizer_fingerprint": fp, "recipe": "imported",
            "bitmaps_sha256": content_digest({"t": t.numpy()}), "source_file": os.path.basename(path),
            "source_sha256": sha256_file(path),
            "row_norms": {"min": norms.min().item(), "mean": norms.mean().item(), "max": norms.max().item(),
                          "zero_rows": int((norms == 0).sum())}}
    info["key"] = substrate_key(info)
    info["fingerprint"] = table_fingerprint(t)
    return t, info


def row_kind(text):
    """What a token is, for listing rows: "combining marks", "format/control characters", else the
    Unicode script of its first letter (the first word of its character name: LATIN, CJK, ARABIC ...)."""
    import unicodedata
    cats = [unicodedata.category(c) for c in text]
    if any(c.startswith("M") for c in cats):
        return "combining marks"
    if any(c in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn") for c in cats):
        return "format/control characters"
    for c in text:
        if unicodedata.category(c)[0] in "LN":
            return unicodedata.name(c, "UNNAMED").split()[0]
    return "empty" if not text else "punctuation/symbols/space"


def cosine_agreement(a, b, anchors=256, pairs=20000, seed=0, chunk=8192):
    """How far two [V, *] tables are one table up to an orthogonal map (PCA's arbitrary axes and signs):
    the correlation of their cosines over random row pairs, and per row the median |difference| of
    its cosines to a fixed random set of anchor rows (a median, so that a few anchors that differ
    themselves do not mark every row). float32 (a 131,072-row table twice, not four times its size):
    its rounding, ~1e-7, is far below MATCH_TOL."""
    V = a.shape[0]
    g = torch.Generator().manual_seed(seed)
    an = torch.randperm(V, generator=g)[:min(anchors, V)]
    i, j = torch.randint(0, V, (pairs,), generator=g), torch.randint(0, V, (pairs,), generator=g)
    na, nb = (x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12) for x in (a, b))
    ca, cb = (na[i] * na[j]).sum(1), (nb[i] * nb[j]).sum(1)
    corr = float(torch.corrcoef(torch.stack([ca, cb]).double())[0, 1]) if ca.std() > 0 and cb.std() > 0 \
        else float(ca.equal(cb))
    score = torch.empty(V)
    for s in range(0, V, chunk):
        score[s:s + chunk] = (na[s:s + chunk] @ na[an].T - nb[s:s + chunk] @ nb[an].T).abs().median(dim=1).values
    return corr, score


# A row disagrees when its score (cosine_agreement) is above MATCH_TOL and above MATCH_SPREAD times the
# lower quartile of all rows' scores: where some bitmaps differ, the mean and the principal axes move
# and every row moves a little with them. Basic vs raqm tables of 637 and 4,107 strings, 64 and 1,024
# wide: no row drawn alike flagged, 1-4 of 144-286 rows drawn differently missed. Other constants move
# every row (the median score is then far above MATCH_TOL): no single row stands out.
MATCH_TOL = 1e-3
MATCH_SPREAD = 5.0


def match_table(matrix, tokenizer, layouts=None, constants=None, tol=MATCH_TOL, font_path=None, use_cache=True):
    """Which of our recipes (layout x constants, the tokenizer's cell) reproduces matrix [V, d]: for each,
    our glyph table of width d, compared by cosine_agreement. -> results, best first (highest
    pairwise-cosine correlation): dicts of layout, constants, key, pair_corr, median (the median row's
    score), reproduces, agree (fraction of rows), rows (the ids that disagree), groups ({row_kind: ids}).
    Layouts this Pillow cannot use are left out."""
    from glyph_font import LAYOUTS as all_layouts
    strings = token_strings_of(tokenizer)[0]
    if matrix.shape[0] != len(strings):
        fail(f"a {matrix.shape[0]:,}-row matrix cannot be matched against a tokenizer of {len(strings):,} ids")
    layouts = layouts or [x for x in all_layouts if layout_available(x)]
    results = []
    for layout in layouts:
        for c in constants or list(RECIPES):
            ours, info = frozen_table(tokenizer, "glyph", matrix.shape[1], constants=c, font_path=font_path,
                                      use_cache=use_cache, layout=layout)
            corr, score = cosine_agreement(matrix, ours)
            median = float(score.median())
            cut = max(tol, MATCH_SPREAD * float(score.quantile(0.25)))
            rows = torch.nonzero(score > cut).flatten().tolist()
            groups = {}
            for r in rows:
                groups.setdefault(row_kind(strings[r]), []).append(r)
            results.append({"layout": layout, "constants": c, "key": info["key"], "pair_corr": corr, "median": median,
                            "reproduces": not rows and median <= tol, "agree": 1 - len(rows) / len(strings),
                            "rows": rows, "groups": dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))})
    return sorted(results, key=lambda r: -r["pair_corr"])


def match_report(results, strings, show=6):
    """The lines --match prints: one per recipe, best first, with its disagreeing rows by kind."""
    lines = []
    for r in results:
        verdict = ("REPRODUCES it" if r["reproduces"] else f"{len(r['rows']):,} rows disagree" if r["rows"]
                   else "no single rows stand out, the whole table differs")
        lines.append(f"layout={r['layout']} constants={r['constants']} (key {r['key']}): pairwise-cosine "
                     f"correlation {r['pair_corr']:.6f}, median row {r['median']:.2g}, {100 * r['agree']:.2f}% of "
                     f"rows agree: {verdict}")
        for kind, ids in r["groups"].items():
            shown = ", ".join(f"{i}:{strings[i]!r}" for i in ids[:show])
            lines.append(f"    {kind}: {len(ids):,} ({shown}{' ...' if len(ids) > show else ''})")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# reports, sample sheet, command line

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
                 zoom=4, layout="basic"):
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
    columns = [render_batch(texts, cell, recipe, font, constants, layout) for recipe in ("clean", "faithful")]
    for r, t in enumerate(texts):
        y = 16 + pad + r * (cell * zoom + pad)
        label = t if t.isascii() else " ".join(f"U+{ord(c):04X}" for c in t)
        draw.text((pad, y + cell * zoom // 2 - 6), label, fill=0)
        for c, bitmaps in enumerate(columns):
            img = Image.fromarray(((1 - bitmaps[r]) * 255).astype(np.uint8)).resize((cell * zoom,) * 2, Image.NEAREST)
            sheet.paste(img, (label_w + pad + c * (cell * zoom + pad), y))
    sheet.save(path)
    return path


def strings_from_tokenizer_json(path):
    """id -> stored token string of an HF tokenizer.json (model.vocab + added_tokens); gaps -> ''."""
    j = read_json(path, "an HF tokenizer.json")
    try:
        vocab = {i: s for s, i in j.get("model", {}).get("vocab", {}).items()}
        vocab.update((a["id"], a["content"]) for a in j.get("added_tokens", []))
    except (AttributeError, TypeError, KeyError):  # not the objects a tokenizer.json holds
        vocab = {}
    if not vocab or not all(type(i) is int and i >= 0 and isinstance(s, str) for i, s in vocab.items()):
        raise ValueError(f"{path}: no model.vocab / added_tokens mapping token strings to ids (not an HF tokenizer.json?)")
    return [vocab.get(i, "") for i in range(max(vocab) + 1)]


def main(argv):
    cfg = configure(DEFAULTS, argv, docs=key_docs(__file__), prog="glyph_tools.py")
    if cfg.strings_json:
        tok = strings_from_tokenizer_json(cfg.strings_json)
    else:
        from unicode_tokenizer import get_tokenizer
        tok = get_tokenizer(cfg.tokenizer)
    if cfg.import_from:
        table, info = import_table(cfg.import_from, tok)
        n = info["row_norms"]
        print(f"imported {cfg.import_from} {tuple(table.shape)}: row norms min {n['min']:.6g}, mean {n['mean']:.6g}, "
              f"max {n['max']:.6g}, {n['zero_rows']:,} zero rows: {json.dumps(info)}")
        if cfg.out:
            save_table(table, info, cfg.out)
            print(f"wrote {cfg.out} (train.py --table_path={cfg.out})")
        return
    if cfg.match:
        results = match_table(read_matrix(cfg.match), tok, constants=[cfg.constants] if cfg.constants else None,
                              font_path=cfg.font or None, use_cache=cfg.cache)
        print(match_report(results, token_strings_of(tok)[0]))
        return
    constants = cfg.constants or constants_for(cfg.strings_json or tok)
    t0 = time.time()
    table, info = frozen_table(tok, cfg.kind, cfg.table_dim, cfg.cell, constants, cfg.font or None,
                               use_cache=cfg.cache, layout=cfg.layout)
    stages = ", ".join(f"{k} {w:.1f}s" for k, (w, c) in TIMINGS.items())
    print(f"{cfg.kind} table {tuple(table.shape)} in {time.time() - t0:.1f}s ({stages or 'cached'}): {json.dumps(info)}")
    if cfg.out:
        save_table(table, info, cfg.out)
        print(f"wrote {cfg.out}")
    if cfg.report:
        print(collision_report(table, token_strings_of(tok)[0]))
    if cfg.min_dist:
        print(f"minimum distance between distinct rows: {min_pairwise_distance(table):.6f}")
    if cfg.sheet:
        sample_sheet(cfg.sheet, cell=cfg.cell or 32, constants=constants, font=load_font(cfg.font or None),
                     layout=cfg.layout)
        print(f"wrote {cfg.sheet}")


if __name__ == "__main__":
    script_main("glyph_tools.py", main)
