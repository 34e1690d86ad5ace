"""Tests of glyph_embed.py, glyph_font.py and glyph_tools.py: bitmaps (checked against an independent
re-run of the released builder: Pillow drawing the pinned Unifont OTF token by token), PCA tables, the
substrate key and the numerical equality of tables, verified caches, the pinned font, the command line,
bad input."""
import io
import os
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import glyph_embed as ge
import glyph_font as gf
import int8_matmul
import glyph_tools as gt
from checkpoint import load_table, save_table
from common import script_main
from tests.released_builder import builder_font, builder_render


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))


def font():
    return gf.load_font()  # the pinned Unifont 15.0.01 (Debian's file, our cache or a download)


def small_vocab():
    """~4k strings like a bvv241 vocabulary: code points, n-grams, special and unused tokens."""
    cps = [chr(c) for c in list(range(0, 0x800)) + list(range(0x4E00, 0x5600))]
    return cps + ["the", "and", "ard", "ing", "при", "中国", "<pad>", "<s>", "</s>", "<unused_63743>", ""]


HARD = ["-", ":", "=", "^", "~", "°", "±", '"', "'", "*", "+", " ", "\n", "\r", "\t", "\x00", "\x01", "\x1f",
        "\x7f", "\x85", "\x9f", "\u00ad", "\u200b", "\u200d", "\u2028", "\u2029", "\u2060", "\ufeff", "\u0301",
        "a\u0301", "e\u0300", "\u0301a", "o\u0308\u0304", "\u0327", "c\u0327", "i", "中", "中国", "你好世界", "한국",
        "x中", "и\u0306", "مرحبا", "नमस्ते", "-:", "=-=", "<pad>", "<unused_63743>", "ĠForeign", "-" * 64, "a\nb"]
HARD += [chr(c) for c in range(0x300, 0x370, 7)] + ["a" + chr(c) for c in range(0x300, 0x370, 11)]


def test_bitmaps_equal_an_independent_run_of_the_released_builder():
    from unicode_tokenizer import get_tokenizer
    strings = ge.token_strings_of(get_tokenizer("bvv241-2-3"))[0]
    ids = random.Random(0).sample(range(len(strings)), 2500)
    texts = HARD + [strings[i] for i in ids]
    ours = ge.render_batch(texts, 32, font=font())
    pil = builder_font(32)
    bad = [t for t, bm in zip(texts, ours) if not np.array_equal(bm, builder_render(t, pil))]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:10]!r}"


def test_max_constants_and_64px_cells_equal_the_builder():
    texts = HARD[:40] + ["the", "and", "ing", "tion", "Ωμέγα", "при", "中国"]
    pil = builder_font(64)
    ours = ge.render_batch(texts, 64, font=font(), constants="bvv241-max")
    for t, bm in zip(texts, ours):
        assert np.array_equal(bm, builder_render(t, pil, 64, ge.RECIPES["bvv241-max"])), repr(t)


def test_pillow_placement_facts():
    f = font()
    dash = ge.render("-", recipe="clean", font=f)                  # box (0, 18, 16, 28): ink at rows 11-12
    assert np.flatnonzero(dash.any(axis=1)).tolist() == [11, 12]
    assert ge.render("\x01", recipe="clean", font=f).any(axis=1).all()  # the font's boxed-hex glyph
    for t in (" ", "\n"):
        assert ge.render(t, recipe="clean", font=f).sum() == 0
    assert f.pillow(32).getbbox("\u0301") == (-12, 0, 0, 28)
    own, left, right = f.char_cells([0x301], 32)                   # a zero-advance mark reaches left
    assert left.any() and not right.any()
    both = ge.render("a\u0301", recipe="clean", font=f)             # the mark's ink lands on the 'a'
    assert (both[:, :32] & ~ge.render("a", recipe="clean", font=f)[:, :32]).any() if both.shape[1] > 32 else True
    strip_a_mark = ge.render_batch(["a\u0301", "a "], recipe="clean", font=f)
    assert not np.array_equal(strip_a_mark[0], strip_a_mark[1])


def test_latin_cyrillic_lookalikes_identical():
    assert np.array_equal(ge.render("a"), ge.render("а"))          # U+0061 / U+0430
    assert np.array_equal(ge.render("and"), ge.render("ard"))      # squashed trigrams keep cols 1, 4, 7...


def test_faithful_vs_clean_latin_vs_cjk():
    f = font()
    noise = np.random.RandomState(42).rand(32, 32) < 0.001
    for t in ("中", "好", "あ"):                                     # CJK: only the fixed sparse noise
        assert np.array_equal(ge.render(t, font=f), ge.render(t, recipe="clean", font=f) | noise)
    A, Ac = ge.render("A", font=f), ge.render("A", recipe="clean", font=f)
    assert not np.array_equal(A, Ac)
    assert ge.draws(4, 2, 0.01, (1, 1))[:3] == pytest.approx((1.1154, -2, 0), abs=1e-4)
    assert ge.draws(7, 3, 0.03, (1, 1))[:3] == pytest.approx((1.9520, -3, 2), abs=1e-4)


# --- tables and their substrate key --------------------------------------------------------------

def test_glyph_table_properties():
    V = small_vocab()
    t, info = ge.frozen_table(V, "glyph", 1024)                    # caches the PCA basis too
    assert t.shape == (len(V), 1024) and t.dtype == torch.float32
    assert torch.allclose(t.norm(dim=1), torch.ones(len(V)), atol=1e-5)
    assert set(info) >= set(ge.KEY_FIELDS) - {"unique_eps"} | {"key", "fingerprint"}
    assert info["font_sha256"] == gf.UNIFONT_SHA256 and info["key"] == ge.substrate_key(info)
    idx = {s: i for i, s in enumerate(V)}
    assert torch.equal(t[idx[" "]], t[idx["\n"]]) and torch.equal(t[idx["and"]], t[idx["ard"]])
    assert not torch.equal(t[idx["a"]], t[idx["b"]])

    # PCA: independent float64 recomputation; truncated tables = leading components re-normalised
    X = ge.render_batch(V, font=font()).reshape(len(V), -1).astype(np.float64)
    Xc = X - X.mean(0)
    b = ge.glyph_basis(V, info["tokenizer_fingerprint"], font=font())  # the cached one
    W, ev = b["W"], b["eigvals"]
    live = ev > ge.NULL_VARIANCE * ev[0]
    assert np.allclose(W[:, live].T @ W[:, live], np.eye(live.sum()), atol=1e-8)
    assert not W[:, ~live].any()                                   # null-space axes are zeroed
    assert np.all(np.diff(ev) <= 1e-9)
    big = np.abs(W[:, live]).argmax(axis=0)
    assert np.all(W[big, np.flatnonzero(live)] > 0)                # sign convention
    Y = Xc @ W
    cov = Y[:, :8].T @ Y[:, :8] / (len(V) - 1)
    assert np.allclose(cov, np.diag(ev[:8]), atol=1e-6 * ev[0])
    for d in (16, 64):
        td, infod = ge.frozen_table(V, "glyph", d)
        ref = Y[:, :d] / np.linalg.norm(Y[:, :d], axis=1, keepdims=True)
        assert td.shape == (len(V), d) and infod["dim"] == d and infod["key"] != info["key"]
        assert np.abs(td.numpy() - ref).max() < 1e-6


def test_exact_pixel_counts_and_null_axes_projected_to_zero():
    """The int8 X^T X equals integer arithmetic (several chunks, odd sizes); axes of zero variance
    (a pixel that copies another, one never inked) are zeroed, last, and project to exact zeros,
    the others equal a float64 reference rounded once to float32."""
    rng = np.random.default_rng(0)
    X = (rng.random((1003, 72)) < 0.2).astype(np.uint8)
    X[:, 5], X[:, 9] = X[:, 4], 0
    G = int8_matmul.gram_counts(X, chunk=256)
    assert G.dtype == torch.int64 and np.array_equal(G.numpy(), X.T.astype(np.int64) @ X)
    mu, W, ev = ge.pca(X)
    null = ev <= ge.NULL_VARIANCE * ev[0]
    assert null.sum() == 2 and null[-2:].all() and not W[:, -2:].any()
    t = ge.project(X, mu, W, 72)
    Y = (X - mu) @ W
    ref = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    assert not t[:, -2:].any() and np.abs(t.numpy() - ref).max() < 1e-7


def test_int8_projection_is_the_float64_one():
    """project's integer route (W in 4 int8 digits, exact int32 sums) equals the float64 projection
    to within the rounding to float32 (+1e-9) on random bitmaps and an orthonormal W shaped like a
    real one (1024 axes, the last 100 zeroed), and the digits are W rounded to 2^-30."""
    rng = np.random.default_rng(1)
    X = (rng.random((1500, 1024)) < 0.17).astype(np.uint8)
    W = np.linalg.qr(rng.standard_normal((1024, 1024)))[0]
    W[:, -100:] = 0.0
    mu = X.mean(axis=0)
    digits, w, Wr = int8_matmul.fixed_point_digits(W)
    assert digits.dtype == np.int8 and np.array_equal((digits * w[:, None, :]).sum(axis=0), Wr)
    assert (np.abs(Wr - W) <= 2.0 ** -30 * np.abs(W).max(axis=0)).all()
    for dim in (1024, 1000, 37):
        t = ge.project(X, mu, W, dim).numpy()
        Y = (X - mu) @ W[:, :dim]
        ref = Y / np.linalg.norm(Y, axis=1, keepdims=True)  # float64
        assert t.dtype == np.float32 and not t[:, 924:].any()
        assert (np.abs(t - ref) <= np.spacing(np.abs(ref).astype(np.float32)) / 2 + 1e-9).all()


def test_int8_matmul_pads_to_what_a_gpu_accepts():
    """int_matmul pads every operand to CUDA's int8 shapes (M > 16, K and N multiples of 8) and the
    result is the exact integer product; gram_counts and the projection give the same on a named
    device as on the default one (the GPU where there is one: none here)."""
    rng = np.random.default_rng(2)
    for M, K, N in [(5, 13, 11), (17, 8, 8), (40, 21, 3)]:
        a = torch.from_numpy(rng.integers(-128, 128, (M, K), dtype=np.int8))
        b = torch.from_numpy(rng.integers(-128, 128, (K, N), dtype=np.int8))
        r = int8_matmul.int_matmul(a, b)
        assert r.dtype == torch.int32 and r.shape == (M, N) and torch.equal(r.long(), a.long() @ b.long())
    assert int8_matmul.padded(a, 40, 24).shape == (40, 24) and int8_matmul.padded(a, 40, 21) is a
    X = (rng.random((300, 5)) < 0.5).astype(np.uint8)
    assert np.array_equal(int8_matmul.gram_counts(X, chunk=64, device="cpu").numpy(), X.T.astype(np.int64) @ X)
    mu, W, _ = ge.pca(X)
    assert torch.equal(int8_matmul.centred_unit_rows(X, mu, W, device="cpu"), ge.project(X, mu, W, 5))


def test_two_numerical_paths_give_one_substrate():
    """torch vs numpy LAPACK, float64 vs float32 projection: same key, within SUBSTRATE_TOL."""
    assert ge.SUBSTRATE_TOL == 1e-6
    V = small_vocab()
    a, ia = ge.frozen_table(V, "glyph", 1024, eigh="torch", use_cache=False)
    b, ib = ge.frozen_table(V, "glyph", 1024, eigh="numpy", use_cache=False)
    assert ia["key"] == ib["key"]
    assert ge.check_same_substrate(ia, a, ib, b, "test") <= ge.SUBSTRATE_TOL
    basis = ge.glyph_basis(V, ia["tokenizer_fingerprint"], use_cache=False)
    X = torch.from_numpy(np.unpackbits(basis["packed"], axis=1)).float()
    W = torch.from_numpy(basis["W"]).float()
    y = X @ W - torch.from_numpy(basis["mu"]).float() @ W            # the float32 projection
    f32 = y / y.norm(dim=1, keepdim=True)
    assert 0 < ge.check_same_substrate(ia, a, ia, f32, "test") <= ge.SUBSTRATE_TOL
    with pytest.raises(ValueError, match=r"test: frozen tables \(key .*\) differ by up to 1e-05"):
        ge.check_same_substrate(ia, a, ia, a + torch.where(torch.arange(a.shape[1]) == 3, 1e-5, 0.0), "test")


def test_one_token_with_other_bitmaps_is_another_substrate():
    V = small_vocab()
    W = V[:-2] + ["<unused_63744>", ""]                            # one token's picture differs
    a, ia = ge.frozen_table(V, "glyph", 64)
    b, ib = ge.frozen_table(W, "glyph", 64)
    assert ia["key"] != ib["key"] and ia["bitmaps_sha256"] != ib["bitmaps_sha256"]
    with pytest.raises(ValueError, match=f"where: different frozen tables: substrate key {ia['key']} vs {ib['key']}"
                                         r" \(tokenizer_fingerprint .*bitmaps_sha256"):
        ge.check_same_substrate(ia, a, ib, b, "where")
    with pytest.raises(ValueError, match="trainable"):
        ge.check_same_substrate(ia, a, {}, None, "where")


def test_unique_mode_is_injective_and_close():
    V = small_vocab()
    t, it = ge.frozen_table(V, "glyph", 64)
    u, info = ge.frozen_table(V, "glyph_unique", 64)               # reuses the cached PCA basis
    assert it["key"] != info["key"]
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
    assert b.shape == (300, 16) and info["dim"] == 16 and info.get("font_sha256") is None and info["key"]
    assert b[5].tolist() == [0.0] * 13 + [1.0, 0.0, 1.0]
    r, info = ge.frozen_table(V, "random", 32, use_cache=False)
    assert r.shape == (300, 32) and set(r.unique().tolist()) == {-1.0, 1.0}
    assert len(torch.unique(r, dim=0)) == 300
    assert torch.equal(r, ge.frozen_table(V, "random", 32, use_cache=False)[0])


# --- verified caches ---------------------------------------------------------------------------

def cache_files(part):
    d = os.path.join(os.environ["GLYPHGPT_CACHE"], "glyph")
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if part in f]


def flip_bytes(path, at=0.5, n=16):
    with open(path, "r+b") as fh:
        size = fh.seek(0, 2)
        fh.seek(int(size * at))
        block = fh.read(n)
        fh.seek(int(size * at))
        fh.write(bytes(x ^ 0xFF for x in block))


def test_damaged_cache_entries_are_rebuilt(capsys):
    V = small_vocab()[:3000]
    t, info = ge.frozen_table(V, "glyph", 32)
    [basis] = cache_files("basis_")
    flip_bytes(basis)                                              # inside the stored basis
    os.remove(cache_files("_d32_")[0])                             # so the table is rebuilt from it
    t2, info2 = ge.frozen_table(V, "glyph", 32)
    assert f"cache entry {basis}" in capsys.readouterr().err
    assert torch.isfinite(t2).all() and info2["key"] == info["key"] and torch.equal(t, t2)
    assert gf.cache_load(basis) is not None                        # rewritten, verified

    [table_file] = cache_files("_d32_")
    flip_bytes(table_file, 0.6)
    t3, info3 = ge.frozen_table(V, "glyph", 32)
    assert "rebuilding" in capsys.readouterr().err and torch.equal(t3, t)

    gf.Font(font().path).char_cells([ord("A"), 0x4E2D], 32)        # a fresh Font: writes this cache's entry
    [chars] = cache_files("chars_")
    flip_bytes(chars, 0.7)
    own = gf.Font(font().path).char_cells([ord("A"), 0x4E2D], 32)[0]
    assert f"cache entry {chars}" in capsys.readouterr().err
    assert np.array_equal(own, font().char_cells([ord("A"), 0x4E2D], 32)[0])


def test_non_finite_tables_are_never_saved_or_used(tmp_path):
    V = small_vocab()[:300]
    t, info = ge.frozen_table(V, "glyph", 16, use_cache=False)
    p = str(tmp_path / "t.pt")
    bad = t.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_table(bad, info, p)
    torch.save({"table": bad, "info": dict(info, fingerprint=ge.table_fingerprint(bad))}, p)
    with pytest.raises(ValueError, match="non-finite"):
        load_table(p)


def test_table_file_roundtrip_and_checks(tmp_path):
    V = small_vocab()[:3000]
    t, info = ge.frozen_table(V, "glyph", 32)
    t2, info2 = ge.frozen_table(V, "glyph", 32)                    # from the cache
    assert torch.equal(t, t2) and info == info2
    p = str(tmp_path / "t.pt")
    save_table(t, info, p)
    with pytest.raises(ValueError, match="tokenizer fingerprint"):
        load_table(p, ge.token_strings_of(V[:2999] + ["other"])[1])
    load_table(p, ge.token_strings_of(V)[1])
    bad = t.clone()
    bad[0, 0] += 1
    torch.save({"table": bad, "info": info}, p)
    with pytest.raises(ValueError, match="corrupted"):
        load_table(p)


# --- the pinned font ---------------------------------------------------------------------------

def test_another_font_only_when_asked_and_then_said(tmp_path, capsys):
    other = "/usr/share/fonts/opentype/unifont/unifont_upper.otf"   # a real OTF that is not the pin
    assert font().pinned and gf.find_font() in (gf.DEBIAN_UNIFONT, os.path.join(gf.cache_dir(), "unifont-15.0.01.otf"))
    f = gf.Font(other)
    assert not f.pinned and "not the pinned GNU Unifont 15.0.01" in capsys.readouterr().err
    _, info = ge.frozen_table(["a", "b", "ab"], "glyph", 8, font_path=other, use_cache=False)
    _, pinned = ge.frozen_table(["a", "b", "ab"], "glyph", 8, use_cache=False)
    assert info["font_sha256"] == f.sha256 and info["key"] != pinned["key"] and info["font_pinned"] is False


def test_otf_is_taken_out_of_the_debian_package(tmp_path):
    payload = b"OTTO fake font bytes"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        ti = tarfile.TarInfo(gf.UNIFONT_DEB_MEMBER)
        ti.size = len(payload)
        tar.addfile(ti, io.BytesIO(payload))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"x"), (b"data.tar.xz", tar_bytes.getvalue())]
    deb = b"!<arch>\n"
    for name, data in members:
        deb += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        deb += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    p = tmp_path / "f.deb"
    p.write_bytes(deb)
    assert gf.otf_from_deb(str(p)) == payload


def test_download_error_is_one_line_naming_urls(tmp_path, monkeypatch):
    monkeypatch.setattr(gf, "UNIFONT_OTF_URL", "http://127.0.0.1:9/unifont-15.0.01.otf")  # nothing listens
    monkeypatch.setattr(gf, "UNIFONT_DEB_URL", "http://127.0.0.1:9/fonts-unifont_15.0.01-2_all.deb")
    with pytest.raises(OSError) as e:
        gf.download_unifont(dest=str(tmp_path / "u.otf"))
    msg = str(e.value)
    assert gf.UNIFONT_OTF_URL in msg and gf.UNIFONT_DEB_URL in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "u.otf")


# --- bad input --------------------------------------------------------------------------------

def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="table_dim=2048"):
        ge.frozen_table(["a", "b"], "glyph", 2048, cell=32, use_cache=False)
    with pytest.raises(ValueError, match="kind"):
        ge.frozen_table(["a"], "nope", use_cache=False)
    notfont = tmp_path / "notes.otf"
    notfont.write_text("hello world\n")
    with pytest.raises(ValueError, match="Pillow cannot read it as a font"):
        gf.Font(str(notfont))
    with pytest.raises(FileNotFoundError, match="nowhere.otf"):
        gf.find_font(str(tmp_path / "nowhere.otf"))


def run_cli(argv):
    """glyph_tools.py as a script runs it: -> None, or the one-line error it exits with."""
    try:
        script_main("glyph_tools.py", gt.main, argv)
    except SystemExit as e:
        return str(e.code)


def test_cli_report_and_sheet(tmp_path, capsys):
    import json
    vocab = {s: i for i, s in enumerate(["a", "а", " ", "\n", "the", "中", "and", "ard", "<pad>"])}
    tj = tmp_path / "tokenizer.json"
    tj.write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    out, sheet = tmp_path / "t.pt", tmp_path / "sheet.png"
    assert run_cli([f"--strings_json={tj}", "--table_dim", "8", "--out", str(out), "--report", "--sheet", str(sheet),
                    "--cache=false"]) is None
    printed = capsys.readouterr().out
    assert "collision groups" in printed and "'and' vs 'ard': identical" in printed
    assert "' ' vs '\\n': identical" in printed and Image.open(sheet).size[0] > 100
    table, info = load_table(str(out))
    assert table.shape == (9, 8) and info["dim"] == 8 and "key" in printed
    d = os.path.join(os.environ["GLYPHGPT_CACHE"], "glyph")      # --cache=false: no basis, no table cached
    assert not [f for f in (os.listdir(d) if os.path.isdir(d) else []) if not f.startswith("chars_")]
    for argv, said in ((["--table_dim", "5000", "--cell", "32"], "table_dim=5000 is not possible"),
                       (["--kind=nope"], "kind must be one of glyph, glyph_unique, binary16, random"),
                       (["--constants=x"], "constants must be one of"),
                       (["--dim=8"], "unknown config key 'dim'; did you mean table_dim?")):
        msg = run_cli([f"--strings_json={tj}"] + argv)
        assert msg.startswith("glyph_tools.py: error: ") and said in msg and "\n" not in msg, msg
    tj.write_bytes(b'{"model": {"vocab": {"\xe9t\xe9": 0}}}')          # Latin-1, not UTF-8
    msg = run_cli([f"--strings_json={tj}"])
    assert msg.startswith(f"glyph_tools.py: error: {tj}: ") and "not UTF-8 text" in msg and "\n" not in msg
    tj.write_text(json.dumps({"model": {"vocab": ["a"]}}))
    assert f"{tj}: no model.vocab" in run_cli([f"--strings_json={tj}"])


def test_random_codes_too_narrow_are_refused_at_once():
    """2**width codes cannot give V ids distinct codes quickly below 2**width = 2V (at 2**16 codes
    for 65,536 ids the redrawing would take hours): refused, naming the width and the minimum."""
    import time
    V = [str(i) for i in range(65536)]
    for width in (3, 16):
        t0 = time.time()
        with pytest.raises(ValueError, match=f"table_dim={width} is too narrow for 65,536 distinct random "
                                             r"\+-1 codes; the minimum is table_dim=17"):
            ge.frozen_table(V, "random", width, use_cache=False)
        assert time.time() - t0 < 5
    t, _ = ge.frozen_table(V, "random", 17, use_cache=False)     # the minimum: distinct, and quick
    assert len(torch.unique(t, dim=0)) == 65536
    assert ge.random_table(3, 3).shape == (3, 3)                 # 3 ids: 3 bits suffice (8 >= 6 codes)
    with pytest.raises(ValueError, match="the minimum is table_dim=3"):
        ge.random_table(3, 2)


def test_a_failed_cache_write_warns_naming_the_path_and_goes_on(monkeypatch, capsys):
    """A full disk under $GLYPHGPT_CACHE (/dev/full: ENOSPC on write) costs only the cache: one
    warning line per entry naming its path, and the table is built all the same."""
    import contextlib
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")

    @contextlib.contextmanager
    def full_disk(path, mode="w"):
        with open("/dev/full", mode) as f:
            yield f
            f.flush()
    V = small_vocab()[:500]
    with monkeypatch.context() as m:
        m.setattr(gf, "atomic_write", full_disk)
        t, info = ge.frozen_table(V, "glyph", 16)
    err = capsys.readouterr().err
    d = os.path.join(os.environ["GLYPHGPT_CACHE"], "glyph")
    for entry in ("basis_", f"{info['tokenizer_fingerprint']}_glyph_"):
        [line] = [x for x in err.splitlines() if f"could not write cache entry {d}/{entry}" in x]
        assert "No space left on device" in line and "going on without it" in line
    assert torch.equal(t, ge.frozen_table(V, "glyph", 16, use_cache=False)[0])


# --- the released substrate: constants per tokenizer, layout engine, imported and matched matrices ----

class NamedStrings:
    """A tokenizer as glyph_embed sees one (name, vocab_size, fingerprint, token_strings) over a few
    strings: a real build in a second instead of 131,072 rows."""

    def __init__(self, name, strings):
        self.name, self._strings, self.vocab_size = name, list(strings), len(strings)
        self.fingerprint = ge.token_strings_of(self._strings)[1]

    def token_strings(self):
        return self._strings


def test_constants_follow_the_tokenizer():
    from unicode_tokenizer import get_tokenizer
    for name, want in (("bvv241-2-3", "bvv241-2-3"), ("bvv241-2-3-lossless", "bvv241-2-3"), ("bvv241-max", "bvv241-max"),
                       ("bvv241-max-lossless", "bvv241-max"), ("bvv241-abs", "bvv241-max"),
                       ("hf:Bochkov/bvv241-nemo", "bvv241-max"), ("/d/bvv241-nemo/tokenizer.json", "bvv241-max"),
                       ("gpt2", "bvv241-2-3"), ("bvv241-maximal", "bvv241-2-3"), ("", "bvv241-2-3")):
        assert ge.constants_for(name) == want, name
    assert ge.constants_for(get_tokenizer("bvv241-max")) == "bvv241-max"
    assert ge.constants_for(get_tokenizer("bvv241-2-3")) == "bvv241-2-3"
    assert ge.constants_for(["a", "b"]) == "bvv241-2-3"                  # a plain list: the first paper's

    V = ["a", "b", "e", "the", "and", "中", "\u0301", "a\u0301", "при", "<pad>", ""]
    tok = NamedStrings("bvv241-max", V)
    t, info = ge.frozen_table(tok, kind="glyph", table_dim=16)           # as train.build_model calls it
    assert info["constants"] == [7, 3, 0.03, "bvv241-max"]
    t23, i23 = ge.frozen_table(tok, kind="glyph", table_dim=16, constants="bvv241-2-3")   # explicit wins
    assert i23["constants"] == [4, 2, 0.01, "bvv241-2-3"] and i23["key"] != info["key"]
    with pytest.raises(ValueError, match=r"merge: different frozen tables: substrate key .*constants"):
        ge.check_same_substrate(info, t, i23, t23, "merge")
    assert ge.frozen_table(V, "glyph", 16)[1]["key"] == i23["key"]       # a list: bvv241-2-3's constants
    assert ge.frozen_table(NamedStrings("bvv241-2-3", V), "glyph", 16)[1]["key"] == i23["key"]


def test_cli_constants_follow_the_tokenizer_json(tmp_path, capsys):
    import json
    tj = tmp_path / "bvv241-nemo" / "tokenizer.json"
    tj.parent.mkdir()
    tj.write_text(json.dumps({"model": {"vocab": {s: i for i, s in enumerate(["a", "b", "ab", "中"])}}}))
    assert run_cli([f"--strings_json={tj}", "--table_dim=4", "--cache=false"]) is None
    assert '"constants": [7, 3, 0.03, "bvv241-max"]' in capsys.readouterr().out
    assert run_cli([f"--strings_json={tj}", "--table_dim=4", "--cache=false", "--constants=bvv241-2-3"]) is None
    assert '"constants": [4, 2, 0.01, "bvv241-2-3"]' in capsys.readouterr().out


RAQM_REFUSED = ["\n", "\r", "\x1c", "\x1d", "\x1e", "\x85", "\u2029"]  # raqm_layout() fails: the builder leaves them blank


def have_raqm():
    from PIL import features
    return features.check("raqm")


def test_layout_engine_is_checked_and_named_in_the_key(monkeypatch):
    assert ge.LAYOUT_RECIPES["basic"] == "faithful-pillow-basic-layout"  # today's keys do not move
    with pytest.raises(ValueError, match="layout must be one of basic, raqm; got 'harfbuzz'"):
        ge.frozen_table(["a"], "glyph", 1, layout="harfbuzz", use_cache=False)
    msg = run_cli(["--tokenizer=bvv241-2-3", "--layout=harfbuzz"])
    assert msg == "glyph_tools.py: error: layout must be one of basic, raqm; got 'harfbuzz'", msg
    from PIL import features
    with monkeypatch.context() as m:                                     # a Pillow without libraqm
        m.setattr(features, "check", lambda name: False if name == "raqm" else True)
        with pytest.raises(ValueError) as e:
            ge.frozen_table(["a"], "glyph", 1, layout="raqm", use_cache=False)
        msg = str(e.value)
        assert msg.startswith("layout=raqm: this Pillow has no libraqm support") and "libfribidi0" in msg
        assert "\n" not in msg
        assert "raqm" not in {r["layout"] for r in gt.match_table(torch.ones(2, 1), ["a", "b"], constants=["bvv241-2-3"],
                                                                   use_cache=False)}
    if not have_raqm():
        pytest.skip("this Pillow has no raqm (install libfribidi0)")
    V = ["a", "b", "\u0301", "a\u0301", "\n", "中"]
    t, info = ge.frozen_table(V, "glyph", 4, use_cache=False)
    r, rinfo = ge.frozen_table(V, "glyph", 4, layout="raqm", use_cache=False)
    assert info["recipe"] == "faithful-pillow-basic-layout" and rinfo["recipe"] == "faithful-pillow-raqm-layout"
    with pytest.raises(ValueError, match=r"different frozen tables: .*recipe 'faithful-pillow-basic-layout' vs "
                                         r"'faithful-pillow-raqm-layout'"):
        ge.check_same_substrate(info, t, rinfo, r, "grow")


@pytest.mark.skipif(not have_raqm(), reason="this Pillow has no raqm (install libfribidi0)")
def test_raqm_bitmaps_equal_the_builder_under_raqm():
    from unicode_tokenizer import get_tokenizer
    pil = builder_font(32, "raqm")
    for ch in RAQM_REFUSED:                                              # the builder's try/except: a blank cell
        with pytest.raises(Exception):
            pil.getbbox(ch)
        assert ge.render(ch, recipe="clean", font=font(), layout="raqm").sum() == 0
    strings = ge.token_strings_of(get_tokenizer("bvv241-2-3"))[0]
    marks = [chr(c) for c in range(0x300, 0x370)] + ["a" + chr(c) + "b" for c in range(0x300, 0x370, 5)]
    sample = [strings[i] for i in random.Random(1).sample(range(len(strings)), 600)]
    texts = HARD + RAQM_REFUSED + ["a\nb", "\u2029x"] + marks + sample
    ours = ge.render_batch(texts, 32, font=font(), layout="raqm")
    bad = [t for t, bm in zip(texts, ours) if not np.array_equal(bm, builder_render(t, pil))]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:10]!r}"
    lone = len(HARD) + len(RAQM_REFUSED) + 2
    basic = ge.render_batch(marks[:0x70], 32, font=font())              # where the engines differ: lone marks
    assert sum(not np.array_equal(a, b) for a, b in zip(basic, ours[lone:lone + 0x70])) >= 0.9 * 0x70
    pil64 = builder_font(64, "raqm")
    ours64 = ge.render_batch(marks[:20] + ["the", "\u2029"], 64, font=font(), constants="bvv241-max", layout="raqm")
    for t, bm in zip(marks[:20] + ["the", "\u2029"], ours64):
        assert np.array_equal(bm, builder_render(t, pil64, 64, ge.RECIPES["bvv241-max"])), repr(t)


def match_vocab():
    """~600 strings: Latin, combining marks, the characters raqm refuses, Arabic, CJK, n-grams."""
    cps = list(range(0x20, 0x180)) + list(range(0x300, 0x370)) + list(range(0x620, 0x660)) + list(range(0x4E00, 0x4E60))
    return list(dict.fromkeys([chr(c) for c in cps] + RAQM_REFUSED + ["the", "and", "ing", "a\u0301", "中国", "<pad>"]))


def scrambled(t, seed=0):
    """t after a random orthogonal rotation and random sign flips: what PCA's arbitrary axes could give."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(t.shape[1], t.shape[1], generator=g, dtype=torch.float64))
    signs = torch.where(torch.rand(t.shape[1], generator=g) < 0.5, -1.0, 1.0).double()
    return ((t.double() @ q) * signs).float()


def test_match_finds_the_recipe_of_a_rotated_table(tmp_path, capsys):
    V = match_vocab()
    t, info = ge.frozen_table(V, "glyph", 64)
    p = tmp_path / "released.pt"
    torch.save(scrambled(t), p)                                          # a plain tensor, no info
    res = gt.match_table(gt.read_matrix(str(p)), V)
    best = res[0]
    assert (best["layout"], best["constants"], best["key"]) == ("basic", "bvv241-2-3", info["key"])
    assert best["reproduces"] and not best["rows"] and best["pair_corr"] > 0.999999
    assert not any(r["reproduces"] for r in res[1:])
    wrong = next(r for r in res if (r["layout"], r["constants"]) == ("basic", "bvv241-max"))
    assert wrong["pair_corr"] < 0.99 and wrong["median"] > 10 * gt.MATCH_TOL        # every row moves
    tj = tmp_path / "tokenizer.json"
    import json
    tj.write_text(json.dumps({"model": {"vocab": {s: i for i, s in enumerate(V)}}}))
    assert run_cli([f"--strings_json={tj}", f"--match={p}", "--constants=bvv241-2-3"]) is None
    out = capsys.readouterr().out
    [first] = [x for x in out.splitlines() if x.startswith("layout=")][:1]
    assert first.startswith("layout=basic constants=bvv241-2-3") and first.endswith("REPRODUCES it")


@pytest.mark.skipif(not have_raqm(), reason="this Pillow has no raqm (install libfribidi0)")
def test_match_points_at_the_rows_raqm_draws_differently():
    V = match_vocab()
    r, rinfo = ge.frozen_table(V, "glyph", 64, layout="raqm")
    res = gt.match_table(scrambled(r, 1), V, constants=["bvv241-2-3"])
    assert (res[0]["layout"], res[0]["reproduces"]) == ("raqm", True)
    basic = res[1]
    assert basic["layout"] == "basic" and not basic["reproduces"]
    differ = set(np.flatnonzero((ge.render_batch(V, layout="basic") != ge.render_batch(V, layout="raqm")).any(axis=(1, 2))))
    rows = set(basic["rows"])
    assert rows <= differ and len(rows) >= 0.9 * len(differ), (len(rows), len(differ))
    assert set(basic["groups"]) >= {"combining marks", "format/control characters"}
    assert {V.index(c) for c in RAQM_REFUSED} & differ <= rows and V.index("\r") in rows  # "\n": blank in both


def small_matrix(V, d=8):
    return torch.randn(len(V), d, generator=torch.Generator().manual_seed(3))


def test_import_a_matrix_in_every_format(tmp_path, capsys):
    import hashlib
    from safetensors.torch import save_file
    V = small_vocab()[:300]
    m = small_matrix(V)
    files = {"t.pt": lambda p: torch.save(m, p),
             "sd.pt": lambda p: torch.save({"embed.weight": m, "step": torch.tensor(3)}, p),
             "t.safetensors": lambda p: save_file({"weight": m}, p), "t.npy": lambda p: np.save(p, m.numpy())}
    keys = set()
    for name, write in files.items():
        p = str(tmp_path / name)
        write(p)
        t, info = gt.import_table(p, V)
        assert torch.equal(t, m) and info["recipe"] == "imported" and info["kind"] == "imported" and info["dim"] == 8
        assert info["source_sha256"] == hashlib.sha256(open(p, "rb").read()).hexdigest()
        assert info["row_norms"]["min"] == pytest.approx(m.norm(dim=1).min().item(), rel=1e-6)
        keys.add(info["key"])
        ours = str(tmp_path / (name + ".table.pt"))
        save_table(t, info, ours)
        t2, info2 = load_table(ours, ge.token_strings_of(V)[1])  # what train.py's table_path does
        assert torch.equal(t2, m) and info2 == info
    assert len(keys) == 1                                                # the key names the values, not the file
    np.save(tmp_path / "o.npy", (m + 1).numpy())
    assert gt.import_table(str(tmp_path / "o.npy"), V)[1]["key"] not in keys
    tj = tmp_path / "tokenizer.json"
    import json
    tj.write_text(json.dumps({"model": {"vocab": {s: i for i, s in enumerate(V)}}}))
    out = tmp_path / "imported.pt"
    assert run_cli([f"--strings_json={tj}", f"--import_from={tmp_path / 't.safetensors'}", f"--out={out}"]) is None
    printed = capsys.readouterr().out
    assert "row norms min" in printed and '"recipe": "imported"' in printed
    assert torch.equal(load_table(str(out), ge.token_strings_of(V)[1])[0], m)


def test_malformed_matrices_are_one_line(tmp_path):
    from safetensors.torch import save_file
    V = small_vocab()[:300]
    m = small_matrix(V)
    bad_nan = m.clone()
    bad_nan[7, 1] = float("inf")
    cases = {"rows.pt": (lambda p: torch.save(m[:299], p), "a 299 x 8 matrix, but tokenizer 'list' has 300 ids"),
             "nan.npy": (lambda p: np.save(p, bad_nan.numpy()), "1 rows hold NaN or Inf"),
             "two.safetensors": (lambda p: save_file({"a": m, "b": m.clone()}, p), "holds 2 2-D tensors"),
             "vec.pt": (lambda p: torch.save({"w": m[0]}, p), "holds 0 2-D tensors"),
             "none.pt": (lambda p: torch.save({"note": "hi"}, p), "no tensors"),
             "junk.pt": (lambda p: open(p, "wb").write(b"not a pickle at all"), "unreadable as .pt"),
             "junk.safetensors": (lambda p: open(p, "wb").write(b"\x01\x02"), "unreadable as .safetensors"),
             "obj.npy": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "unreadable as .npy"),
             "cplx.npy": (lambda p: np.save(p, np.ones((300, 2), np.complex64)), "not real numbers"),
             "t.csv": (lambda p: open(p, "w").write("1,2\n"), "not a .pt, .safetensors or .npy file")}
    for name, (write, said) in cases.items():
        p = str(tmp_path / name)
        write(p)
        with pytest.raises(ValueError) as e:
            gt.import_table(p, V)
        msg = str(e.value)
        assert msg.startswith(p) and said in msg and "\n" not in msg, (name, msg)
    with pytest.raises(ValueError, match="nowhere.npy: no such file"):
        gt.import_table(str(tmp_path / "nowhere.npy"), V)
    msg = run_cli([f"--import_from={tmp_path / 'rows.pt'}", "--tokenizer=bvv241-2-3"])
    assert msg.startswith("glyph_tools.py: error: ") and "has 65,536 ids" in msg and "\n" not in msg


def test_ablation_arms_of_the_model_cards():
    """N_BIT: random unique codes with 0/1 components; N_FLOAT: such codes through PCA to N columns,
    each row L2-normalised (the cards of Bochkov/emergent-semantics-model-*); each its own key."""
    V = [str(i) for i in range(300)]
    r, ir = ge.frozen_table(V, "random", 64, use_cache=False)
    b, ib = ge.frozen_table(V, "random_bits", 64, use_cache=False)
    assert torch.equal(b, (r + 1) / 2) and set(b.unique().tolist()) == {0.0, 1.0} and len(torch.unique(b, dim=0)) == 300
    f, i_f = ge.frozen_table(V, "random_float", 1024, use_cache=False)
    codes = ge.random_bits_table(300, 1024).double()
    c = codes - codes.mean(0)
    c = c / c.norm(dim=1, keepdim=True)
    assert torch.allclose(f.norm(dim=1), torch.ones(300), atol=1e-5)
    assert (f.double() @ f.double().T - c @ c.T).abs().max() < 1e-5          # full width: the centred codes, rotated
    f16, i16 = ge.frozen_table(V, "random_float", 16, use_cache=False)
    assert f16.shape == (300, 16) and len(torch.unique(f16, dim=0)) == 300
    assert len({ir["key"], ib["key"], i_f["key"], i16["key"]}) == 4
    assert (ib["recipe"], i_f["recipe"]) == ("random-01-seed1337", "random-01-seed1337-pca-l2")
