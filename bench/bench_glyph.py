"""
Benchmark of glyph_embed.py: build time and peak memory of the frozen tables, and the speed-up of the
batched renderer over the literal per-token Pillow builder, measured side by side in this run.

    python bench/bench_glyph.py                 # 65,536 x 1024 faithful (bvv241-2-3) + truncations + cache load
    python bench/bench_glyph.py --big           # also 131,072 x 4096 (bvv241-max = -abs vocabulary, 64x64 cells)
    python bench/bench_glyph.py --tokenizer gpt2
    python bench/bench_glyph.py --layout raqm   # the same cases drawn with Pillow's raqm layout
    git show <rev>:glyph_embed.py > /tmp/ge_ref.py && python bench/bench_glyph.py --module /tmp/ge_ref.py
                                          # the same cases with another version, for side-by-side figures
    python bench/bench_glyph.py --big_only --against /tmp/ge_ref.py
                                          # the 131,072 x 4096 table by both versions, one after the other,
                                          # and the max |difference| of their tables (SUBSTRATE_TOL: 1e-6)

Each case runs in a fresh subprocess (no cache: $GLYPHGPT_CACHE points to a temporary directory), so its
peak RSS is its own; its stage times (glyph_embed.TIMINGS: draw, render, gram, eigh, pca, project) are
printed as <stage>_s (wall) and <stage>_cpu_s (process CPU, all threads). The table case builds twice: cold, then again without the basis/table caches but
with the per-character glyph cells already drawn (rebuild_s: what every later build of another table costs).
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the scripts live one level up


ge = None  # glyph_embed, or the version named by --module


def load_module(path):
    global ge
    import importlib.util
    spec = importlib.util.spec_from_file_location("glyph_embed", path or os.path.join(REPO, "glyph_embed.py"))
    ge = importlib.util.module_from_spec(spec)
    sys.modules["glyph_embed"] = ge
    spec.loader.exec_module(ge)


def vocab(name):
    from unicode_tokenizer import get_tokenizer
    return ge.token_strings_of(get_tokenizer(name))[0]


def case(args):
    """One measurement, in this (fresh) process; prints one JSON line."""
    load_module(args.module)
    import torch
    torch.set_num_threads(args.threads)  # the same for every version measured, whatever else runs here
    strings = vocab(args.tokenizer)
    # the tokenizer's own constants unless named; an older glyph_embed (--module) knew only bvv241-2-3's default
    args.constants = args.constants or getattr(ge, "constants_for", lambda name: "bvv241-2-3")(args.tokenizer)
    kw = {"layout": args.layout} if args.layout != "basic" else {}  # older versions take no layout
    out = {"case": args.case, "V": len(strings), "constants": args.constants, "layout": args.layout}
    t0 = time.time()
    font = ge.load_font()
    out["font_s"] = time.time() - t0
    if args.case == "render_ratio":
        # the released builder, one token at a time (tests/released_builder.py) vs the batched path
        from tests.released_builder import builder_font, builder_render
        sample = random.Random(0).sample(strings, 2000)
        pil = builder_font(args.cell, args.layout)
        t0 = time.time()
        for s in sample:
            builder_render(s, pil, cell=args.cell)
        out["pillow_per_token_2000_s"] = time.time() - t0
        t0 = time.time()
        ge.render_batch(sample, args.cell, font=font, **kw)
        out["batched_2000_s"] = time.time() - t0
        t0 = time.time()
        ge.render_batch(strings, args.cell, font=font, **kw)
        out["batched_all_s"] = time.time() - t0
        out["pillow_per_token_all_s_extrapolated"] = out["pillow_per_token_2000_s"] * len(strings) / 2000
        out["speedup_all"] = out["pillow_per_token_all_s_extrapolated"] / out["batched_all_s"]
    else:
        t0, c0 = time.time(), time.process_time()
        table, info = ge.frozen_table(strings, "glyph", args.table_dim, cell=args.cell, constants=args.constants, **kw)
        out["build_s"] = time.time() - t0
        out["build_cpu_s"] = time.process_time() - c0
        for k, (w, c) in ge.TIMINGS.items():
            out[f"{k}_s"], out[f"{k}_cpu_s"] = w, c
        out["shape"] = list(table.shape)
        if args.table_dim <= 1024:  # (the big table: one build is enough)
            t0 = time.time()
            ge.frozen_table(strings, "glyph", args.table_dim, cell=args.cell, constants=args.constants, use_cache=False,
                            **kw)
            out["rebuild_s"] = time.time() - t0
        out["fingerprint"] = info["fingerprint"]
        out["key"] = info.get("key")
        if args.save:
            torch.save(table, args.save)                     # for --against's comparison
        del table  # the truncations below are measured without the full table in memory
        for d in (512, 256, 64, 32):
            if d < args.table_dim:
                t0 = time.time()
                ge.frozen_table(strings, "glyph", d, cell=args.cell, constants=args.constants, **kw)
                out[f"dim{d}_from_cached_basis_s"] = time.time() - t0
        t0 = time.time()
        ge.frozen_table(strings, "glyph", args.table_dim, cell=args.cell, constants=args.constants, **kw)
        out["cache_load_s"] = time.time() - t0
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="bvv241-2-3")
    ap.add_argument("--big", action="store_true", help="also 131,072 x 4096 (a few minutes, ~4 GB)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every case")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--module", default=None, help="glyph_embed.py file to measure (default: this repo's)")
    ap.add_argument("--table_dim", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--cell", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--constants", default="", help=argparse.SUPPRESS)  # "": the tokenizer's own
    ap.add_argument("--layout", default="basic", help="Pillow's layout engine: basic | raqm")
    ap.add_argument("--big_only", action="store_true", help="only the 131,072 x 4096 case")
    ap.add_argument("--against", default=None, help="another glyph_embed.py: every table case is also built by "
                                                     "it, and the max |difference| of the two tables printed")
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)  # where a table case writes its table
    args = ap.parse_args()
    if args.case:
        return case(args)
    load_module(args.module)
    big = ["--tokenizer", "bvv241-max", "--case", "table", "--table_dim", "4096", "--cell", "64"]  # = -abs vocabulary
    cases = [["--case", "table"]] + ([] if args.module or args.against else [["--case", "render_ratio"]])
    cases = [big] if args.big_only else cases + [big] * args.big
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.threads} threads, tokenizer {args.tokenizer}, "
          f"layout {args.layout}, module {args.module or 'glyph_embed.py'}" + (f", against {args.against}" if args.against else ""))
    for c in cases:
        with tempfile.TemporaryDirectory() as d:
            tables = []
            for module in [args.module] + ([args.against] if args.against and "table" in c else []):
                mod = ["--module", module] if module else []
                save = ["--save", os.path.join(d, f"table{len(tables)}.pt")] if args.against else []
                with tempfile.TemporaryDirectory() as cache:     # a cold cache for every build
                    env = dict(os.environ, GLYPHGPT_CACHE=cache)
                    r = subprocess.run([sys.executable, __file__, "--tokenizer", args.tokenizer, "--threads", str(args.threads),
                                        "--layout", args.layout] + mod + save + c, env=env, capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(f"case {c} failed: {r.stderr.strip().splitlines()[-1]}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                print(f"[{module or 'glyph_embed.py'}] "
                      + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
                tables += save[1:]
            if len(tables) == 2:
                import torch
                a, b = (torch.load(t, mmap=True) for t in tables)
                differ = sum(int((a[i:i + 8192] != b[i:i + 8192]).sum()) for i in range(0, len(a), 8192))
                print(f"max |difference| of the two tables: {ge.max_abs_difference(a, b):.3g} "
                      f"(SUBSTRATE_TOL {ge.SUBSTRATE_TOL:g}), {differ / max(a.numel(), 1):.1%} of the values differ")


if __name__ == "__main__":
    main()
