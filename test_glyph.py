"""Tests of glyph_embed.py: bitmaps, the faithful distortion (checked against a literal per-token
Pillow re-implementation of the released builder), PCA tables, uniqueness, caching, bad input."""
import gzip
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import glyph_embed as ge

DEBIAN = ge.DEBIAN_UNIFONT
needs_debian = pytest.mark.skipif(not os.path.exists(DEBIAN), reason="Debian unifont not installed")

# a few real Unifont 15 glyphs (from unifont.hex): enough to test parsing and placement by hand
FIXTURE = """\
000A:AAAA000180000001800020F9A08020F9A0803E81800000018000000180005555
0020:00000000000000000000000000000000
0041:0000000018242442427E424242420000
0061:0000000000003C42023E4242463A0000
0069:000000080800180808080808083E0000
0410:0000000018242442427E424242420000
0430:0000000000003C42023E4242463A0000
4E2D:01000100010001003FF8210821082108210821083FF821080100010001000100
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def small_font(tmp_path):
    p = tmp_path / "small.hex"
    p.write_text(FIXTURE)
    return ge.Font(str(p))


def font():
    return ge.load_font(DEBIAN)


def small_vocab():
    """~4k strings like a bvv241 vocabulary: code points, n-grams, special and unused tokens."""
    cps = [chr(c) for c in list(range(0, 0x800)) + list(range(0x4E00, 0x5600))]
    return cps + ["the", "and", "ard", "ing", "при", "中国", "<pad>", "<s>", "</s>", "<unused_63743>", ""]


# --- font + placement -------------------------------------------------------

def test_parse_and_place_A_by_hand(small_font):
    assert small_font.lookup([0x41, 0x4E2D, 0x42])[1].tolist() == [8, 16, 0]
    bm = ge.render("A", recipe="clean", font=small_font)
    # 'A' ink rows are font rows 4..13 (10 rows -> 20 px): top = (32 - 20) // 2 = 6; the 8-px advance
    # box (16 px) is centred: x0 = 8. Font row 4 = 0x18 = ...11... -> px columns 8 + 2*3 .. 8 + 2*5 - 1
    assert bm[:6].sum() == 0 and bm[26:].sum() == 0 and bm[6:26].any(axis=1).all()
    assert np.flatnonzero(bm[6]).tolist() == [14, 15, 16, 17]
    assert bm[6].tolist() == bm[7].tolist()                       # pixels are 2x2
    assert np.flatnonzero(bm[16]).tolist() == list(range(10, 22))  # the bar 0x7E, row 9 of the font
    assert bm.sum() == 4 * sum(bin(b).count("1") for b in bytes.fromhex("18242442427E42424242"))


def test_i_keeps_its_bearing_and_cjk_fills_the_cell(small_font):
    i = ge.render("i", recipe="clean", font=small_font)
    cols = np.flatnonzero(i.any(axis=0))
    assert cols.min() == 8 + 2 * 2 and cols.max() == 8 + 2 * 6 + 1  # 0x3E = cols 2..6: not ink-centred
    zh = ge.render("中", recipe="clean", font=small_font)
    assert zh.any(axis=1).all()                                    # 16 ink rows -> all 32 px rows
    assert np.flatnonzero(zh[0]).tolist() == [14, 15]              # 0x0100: col 7 of a 16-px glyph, x0 = 0


def test_blank_and_missing_glyphs_are_white(small_font):
    for t in (" ", "\n", "\u0378", "😀"):                           # space, control, absent, above BMP
        assert ge.render(t, recipe="clean", font=small_font).sum() == 0


@needs_debian
def test_latin_cyrillic_lookalikes_identical():
    assert np.array_equal(ge.render("a"), ge.render("а"))          # U+0061 / U+0430
    assert np.array_equal(ge.render("and"), ge.render("ard"))      # squashed trigrams keep cols 1, 4, 7...


# --- the faithful distortion, against a literal Pillow builder -------------

def reference_render(text, f, constants="bvv241-2-3", cell=32):
    """The released builder, one token at a time with Pillow (SPEC section 2), from our cells."""
    n = len(text)
    strip = np.concatenate(list(f.cells(np.array([ord(c) for c in text]), cell)), axis=1)
    img = Image.fromarray(((1 - strip) * 255).astype(np.uint8))    # 8-bit, black ink on white
    easy = ge.is_easy(text)
    R, S, p = ge.RECIPES[constants] if easy else (0, 0, 0.001)
    random.seed(42)
    np.random.seed(42)
    angle = random.uniform(-R, R)
    dx, dy = random.randint(-S, S), random.randint(-S, S)
    img = img.rotate(angle, expand=0, fillcolor=255)
    out = Image.new("L", img.size, 255)
    out.paste(img, (dx, dy))
    a = np.array(out)
    a[np.random.rand(cell, cell * n) < p] = 0
    out = Image.fromarray(a)
    if easy:
        out = out.filter(ImageFilter.GaussianBlur(radius=0.5))
    out = Image.fromarray(((np.asarray(out) < 128) == 0).astype(np.uint8) * 255).convert("1")
    out = out.resize((cell, cell))                                 # mode "1" resizes nearest-neighbour
    return (np.asarray(out) == 0).astype(np.uint8)


@needs_debian
@pytest.mark.parametrize("constants,cell", [("bvv241-2-3", 32), ("bvv241-max", 32), ("bvv241-max", 64)])
def test_batched_faithful_equals_pillow_builder(constants, cell):
    f = font()
    texts = ["ĠForeign", "-" * 64, "ÃĥÃĤ" * 5, "A", "a", "а", "the", "and", "ing", "при", "Ωμέγα", "<pad>", "<unused_63743>", "i", " ", "\n",
             "中", "中国", "你好世界", "한국", "ãé", "ж", "Ԁ", "مرحبا", "नमस्ते", "x中", "<special_token_57367>"]
    ours = ge.render_batch(texts, cell, font=f, constants=constants)
    for t, bm in zip(texts, ours):
        assert np.array_equal(bm, reference_render(t, f, constants, cell)), t


@needs_debian
def test_faithful_vs_clean_latin_vs_cjk():
    f = font()
    noise = np.random.RandomState(42).rand(32, 32) < 0.001
    # CJK: no rotation / shift / blur, only the fixed sparse noise is added
    for t in ("中", "好", "あ"):
        assert np.array_equal(ge.render(t, font=f), ge.render(t, recipe="clean", font=f) | noise)
    # Latin: rotated + shifted (dx = -2) + blurred, so the clean and faithful bitmaps differ
    A, Ac = ge.render("A", font=f), ge.render("A", recipe="clean", font=f)
    assert not np.array_equal(A, Ac)
    assert abs(np.flatnonzero(A.any(axis=0)).mean() - (np.flatnonzero(Ac.any(axis=0)).mean() - 2)) < 2
    assert ge.draws(4, 2, 0.01, (1, 1))[:3] == pytest.approx((1.1154, -2, 0), abs=1e-4)
    assert ge.draws(7, 3, 0.03, (1, 1))[:3] == pytest.approx((1.9520, -3, 2), abs=1e-4)


@needs_debian
def test_batched_blur_is_bit_exact():
    rng = np.random.RandomState(0)
    imgs = (rng.rand(7, 32, 96) < 0.3).astype(np.uint8) * 255
    ours = ge.gaussian_blur_batch(imgs)
    for a, b in zip(imgs, ours):
        assert np.array_equal(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(0.5))), b)


# --- tables -----------------------------------------------------------------

@needs_debian
def test_glyph_table_properties():
    V = small_vocab()
    t, info = ge.frozen_table(V, "glyph", 1024, font_path=DEBIAN)  # caches the PCA basis too
    assert t.shape == (len(V), 1024) and t.dtype == torch.float32
    assert torch.allclose(t.norm(dim=1), torch.ones(len(V)), atol=1e-5)
    assert set(info) >= {"kind", "dim", "recipe", "tokenizer_fingerprint", "font_sha256", "fingerprint"}
    assert info["font_sha256"] == ge.sha256_file(DEBIAN) and info["fingerprint"] == ge.table_fingerprint(t)
    t2, info2 = ge.frozen_table(V, "glyph", 1024, font_path=DEBIAN, use_cache=False)
    assert info2["fingerprint"] == info["fingerprint"]             # deterministic
    idx = {s: i for i, s in enumerate(V)}
    assert torch.equal(t[idx[" "]], t[idx["\n"]]) and torch.equal(t[idx["and"]], t[idx["ard"]])
    assert not torch.equal(t[idx["a"]], t[idx["b"]])

    # PCA: independent float64 recomputation; truncated tables = leading components re-normalised
    X = ge.render_batch(V, font=font()).reshape(len(V), -1).astype(np.float64)
    Xc = X - X.mean(0)
    b = ge.glyph_basis(V, info["tokenizer_fingerprint"], font=font())  # the cached one
    W = b["W"]
    assert np.allclose(W.T @ W, np.eye(1024), atol=1e-8)
    assert np.all(np.diff(b["eigvals"]) <= 1e-9)
    big = np.abs(W).argmax(axis=0)
    assert np.all(W[big, np.arange(1024)] > 0)                     # sign convention
    Y = Xc @ W
    cov = Y[:, :8].T @ Y[:, :8] / (len(V) - 1)
    assert np.allclose(cov, np.diag(b["eigvals"][:8]), atol=1e-6 * b["eigvals"][0])
    for d in (16, 64):
        td, infod = ge.frozen_table(V, "glyph", d, font_path=DEBIAN)
        ref = Y[:, :d] / np.linalg.norm(Y[:, :d], axis=1, keepdims=True)
        assert td.shape == (len(V), d) and infod["dim"] == d
        assert np.abs(td.numpy() - ref).max() < 1e-4


@needs_debian
def test_unique_mode_is_injective_and_close():
    V = small_vocab()
    t, _ = ge.frozen_table(V, "glyph", 64, font_path=DEBIAN)
    u, info = ge.frozen_table(V, "glyph_unique", 64, font_path=DEBIAN)  # reuses the cached PCA basis
    assert ge.collision_groups(t) and not ge.collision_groups(u)
    idx = {s: i for i, s in enumerate(V)}
    assert not torch.equal(u[idx[" "]], u[idx["\n"]])
    assert torch.allclose(u.norm(dim=1), torch.ones(len(V)), atol=1e-5)
    moved = (u - t).norm(dim=1)
    assert (moved > 0).sum() == info["unique_moved"] and moved.max() < 2 * info["unique_eps"]
    assert 0 < info["min_dist_moved"] <= info["unique_eps"] * 2


def test_binary16_and_random():
    V = [str(i) for i in range(300)]
    b, info = ge.frozen_table(V, "binary16", use_cache=False)
    assert b.shape == (300, 16) and info["dim"] == 16 and info["font_sha256"] is None
    assert b[5].tolist() == [0.0] * 13 + [1.0, 0.0, 1.0]
    r, info = ge.frozen_table(V, "random", 32, use_cache=False)
    assert r.shape == (300, 32) and set(r.unique().tolist()) == {-1.0, 1.0}
    assert len(torch.unique(r, dim=0)) == 300
    assert torch.equal(r, ge.frozen_table(V, "random", 32, use_cache=False)[0])


@needs_debian
def test_cache_roundtrip_and_fingerprint_checks(tmp_path):
    V = small_vocab()[:3000]
    t, info = ge.frozen_table(V, "glyph", 32, font_path=DEBIAN)
    files = os.listdir(os.path.join(os.environ["GLYPHGPT_CACHE"], "glyph"))
    assert any(info["tokenizer_fingerprint"] in f and "_d32_" in f for f in files)
    t2, info2 = ge.frozen_table(V, "glyph", 32, font_path=DEBIAN)  # from the cache
    assert torch.equal(t, t2) and info == info2
    cached = os.path.join(os.environ["GLYPHGPT_CACHE"], "glyph", [f for f in files if "_d32_" in f][0])
    with open(cached, "r+b") as fh:                                # damage the cache entry: rebuilt
        fh.truncate(100)
    t3, info3 = ge.frozen_table(V, "glyph", 32, font_path=DEBIAN)
    assert info3["fingerprint"] == info["fingerprint"]
    p = str(tmp_path / "t.pt")
    ge.save_table(t, info, p)
    with pytest.raises(ValueError, match="tokenizer fingerprint"):
        ge.load_table(p, V[:2999] + ["other"])
    ge.load_table(p, V)
    bad = t.clone()
    bad[0, 0] += 1
    torch.save({"table": bad, "info": info}, p)
    with pytest.raises(ValueError, match="corrupted"):
        ge.load_table(p)


# --- bad input --------------------------------------------------------------

def test_bad_inputs(tmp_path, small_font):
    with pytest.raises(ValueError, match="dim=2048"):
        ge.frozen_table(["a", "b"], "glyph", 2048, cell=32, font_path=small_font.path, use_cache=False)
    with pytest.raises(ValueError, match="kind"):
        ge.frozen_table(["a"], "nope", use_cache=False)
    notfont = tmp_path / "notes.hex"
    notfont.write_text("hello world\n")
    with pytest.raises(ValueError, match="not Unifont hex"):
        ge.Font(str(notfont))
    trunc = tmp_path / "trunc.hex"
    trunc.write_text(FIXTURE[:-20])
    with pytest.raises(ValueError, match="line 8"):
        ge.Font(str(trunc))
    gz = tmp_path / "trunc.hex.gz"
    gz.write_bytes(gzip.compress(FIXTURE.encode())[:-30])
    with pytest.raises(ValueError, match="truncated"):
        ge.Font(str(gz))
    with pytest.raises(FileNotFoundError, match="nowhere.hex"):
        ge.find_font(str(tmp_path / "nowhere.hex"))


def test_download_error_is_one_line_naming_url(tmp_path):
    url = "http://127.0.0.1:9/unifont-15.1.05.hex.gz"             # nothing listens: offline-safe
    with pytest.raises(SystemExit) as e:
        ge.download_unifont(url, dest=str(tmp_path / "u.hex.gz"))
    msg = str(e.value)
    assert url in msg and "\n" not in msg and not os.path.exists(tmp_path / "u.hex.gz")


@needs_debian
def test_cli_report_and_sheet(tmp_path, capsys):
    import json
    vocab = {s: i for i, s in enumerate(["a", "а", " ", "\n", "the", "中", "and", "ard", "<pad>"])}
    tj = tmp_path / "tokenizer.json"
    tj.write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    out, sheet = tmp_path / "t.pt", tmp_path / "sheet.png"
    ge.main(["--strings_json", str(tj), "--dim", "8", "--out", str(out), "--report", "--sheet", str(sheet)])
    printed = capsys.readouterr().out
    assert "collision groups" in printed and "'and' vs 'ard': identical" in printed
    assert "' ' vs '\\n': identical" in printed and Image.open(sheet).size[0] > 100
    table, info = ge.load_table(str(out))
    assert table.shape == (9, 8) and info["dim"] == 8
    with pytest.raises(SystemExit) as e:
        ge.main(["--strings_json", str(tj), "--dim", "5000", "--cell", "32"])
    assert "dim=5000" in str(e.value) and "\n" not in str(e.value)
