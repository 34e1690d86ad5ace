"""
Where do the semantics live? The papers' claim is that with a frozen, meaning-free input table
(pictures of glyphs) the meaning of words is built by the transformer layers. This script looks at a
trained model level by level:

  table     the input embedding rows (frozen glyph table, or the trainable baseline's nn.Embedding)
  layer i   the residual stream after block i (before the final LayerNorm)
  head      the output head's rows (lm_head.weight: the direction that predicts each token)

and measures three things:

  neighbours  a word's nearest neighbours (cosine) among a word list, at every level; and, over the
              whole list, the share of each word's nearest neighbours of its own language that have
              its part of speech (noun, verb, adjective), with the chance level
  translate   cross-lingual retrieval: precision@1 and @5 of finding a word's translation among all
              candidate words of the other language, en-ru and en-zh (data/probe/words.tsv), with the
              chance level (1/N and 5/N) beside every figure
  cka         linear CKA (Kornblith et al. 2019) between the hidden states of two checkpoints on the
              same held-out text, layer by layer, and of one checkpoint against itself (layer x layer)

$ python probe.py neighbours out-shakespeare-glyph/ckpt.pt --words=king,water,вода,水
$ python probe.py translate out-shakespeare-glyph/ckpt.pt out-shakespeare-trainable/ckpt.pt --out_png=tr.png
$ python probe.py cka out-shakespeare-glyph/ckpt.pt out-shakespeare-trainable/ckpt.pt --text=data/shakespeare
$ python probe.py all a.pt b.pt --labels=glyph,trainable --out_md=probe.md --out_png=probe.png
$ python probe.py --help   # every key, its default and meaning

How a word becomes one vector. Each word is run on its own, in a fixed neutral context: the
document-start token (the token sample.py starts an empty prompt with), then `context` (empty by
default), then the word's tokens. No language is favoured by the context, and the same context is used
for every word and every checkpoint. A word is usually several tokens (the bvv241 tokenizers cut
"king" into "k" + "ing"); its vector is the MEAN over its tokens' vectors (pool=mean), at every level.
The mean is the default because it is the one pooling that means the same thing at every level: the
table and the head have no context, so "last token" there would compare words by their last piece
only ("king" and "sing" alike). pool=last (the last token, the only one that has seen the whole word
through causal attention) is there to compare.

Cosines are taken after subtracting the mean vector of the word list (neighbours) or of each language
(translate): without it every pair of hidden states has a cosine near 1 (they share a large common
direction) and rankings are dominated by it.

Merged models (merge.py) are several complete experts that only meet at the logits: there is no
shared hidden state to probe. Each expert is probed as its own model, labelled "<label>/expert<i>".
Grown models (grow.py stage_N.pt) are plain GPT checkpoints.
"""
import os

import torch

from checkpoint import atomic_write, check_output, load_model, write_json
from common import fail, resolve_device, script_main, shown
from configurator import configure, defaults_from, key_docs
from model import MergedGPT
from unicode_tokenizer import checkpoint_tokenizer

# -----------------------------------------------------------------------------
ckpts = []  # the checkpoints to probe (positional arguments after the command)
labels = ""  # comma-separated names for the checkpoints in tables and plots; "" = their folder/file names
words = "king,water,red,вода,水"  # neighbours: the words to look up (comma-separated)
word_list = "data/probe/words.tsv"  # pos, en, ru, zh per line (data/probe/README.md); relative to here or the repo
k = 5  # neighbours: how many neighbours to show per level
pairs = "en-ru,en-zh"  # translate: language pairs, source-target (columns of word_list)
context = ""  # text placed between the document-start token and each word ("" = none)
pool = "mean"  # how a multi-token word becomes one vector: mean (over its tokens) | last (its last token)
text = "data/probe/heldout.txt"  # cka: held-out text (.txt), or a dataset folder (its val split)
max_tokens = 4096  # cka: tokens of `text` used (fewer if the text is shorter)
window = 256  # cka: tokens per forward pass (at most the smallest block_size)
out_md = ""  # also write the tables here (markdown)
out_png = ""  # also draw the measures by layer here (one figure, all checkpoints)
out_json = ""  # also write every number here
device = "auto"  # auto | cpu | cuda | cuda:N
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())  # only the keys above: the constants below are not options

REPO = os.path.dirname(os.path.abspath(__file__))
COMMANDS = ("neighbours", "translate", "cka", "all")


def repo_path(path):
    """A relative path as given when it exists from here, else under the repository (the defaults
    name the repository's own files, wherever the script is started from)."""
    if not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
        return os.path.join(REPO, path)
    return path


# -----------------------------------------------------------------------------
# models and their levels

def default_label(path):
    """out-x/ckpt.pt -> out-x; run/stage_2.pt -> stage_2."""
    name = os.path.basename(path)
    if name == "ckpt.pt" and os.path.basename(os.path.dirname(os.path.abspath(path))):
        return os.path.basename(os.path.dirname(os.path.abspath(path)))
    return os.path.splitext(name)[0]


def load_probed(paths, names, dev):
    """-> [(label, GPT, tokenizer)]: each checkpoint's model, or each expert of a merge file."""
    if not paths:
        fail("no checkpoint given: probe.py COMMAND ckpt.pt [ckpt2.pt ...] (--help lists the keys)")
    if names and len(names) != len(paths):
        fail(f"labels: {len(names)} given for {len(paths)} checkpoints")
    out = []
    for path, label in zip(paths, names or [default_label(p) for p in paths]):
        model, ck = load_model(path, dev)
        tok = checkpoint_tokenizer(ck, path)
        if isinstance(model, MergedGPT):
            out += [(f"{label}/expert{i}", e, tok) for i, e in enumerate(model.experts)]
        else:
            out.append((label, model, tok))
    return out


def level_names(model):
    """table, layer 1 .. layer L, head: the levels a word vector is read at."""
    return ["table"] + [f"layer {i}" for i in range(1, model.config.n_layer + 1)] + ["head"]


@torch.no_grad()
def layer_states(model, idx):
    """[input embedding, after block 1, ..., after block L], each [B, T, d]: GPT.hidden_states' loop,
    keeping every block's output (the residual stream; the final LayerNorm is applied only by
    hidden_states, so ln_f(states[-1]) is what the head reads)."""
    T = idx.size(1)
    if T > model.config.block_size:
        fail(f"a sequence of {T} tokens exceeds the model's block_size {model.config.block_size}")
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    x = model.transformer.wte(idx)
    states = [x]
    for block in model.transformer.h:
        x = block(x, cos, sin)
        states.append(x)
    return states


def word_ids(tok, word):
    ids = tok.encode(word)
    if not ids:
        fail(f"word {word!r} encodes to no tokens")
    return ids


@torch.no_grad()
def word_vectors(model, tok, word_seq, context="", pool="mean", batch=64):
    """-> {level: [N, d] float32 on the CPU}, one row per word: the word's tokens, after the
    document-start token and `context`, pooled (mean or last) at every level of level_names(model)."""
    check_pool(pool)
    dev = model.lm_head.weight.device
    prefix = [tok.eos_id] + (tok.encode(context) if context else [])
    seqs = [(prefix, word_ids(tok, w)) for w in word_seq]
    names = level_names(model)
    rows = {n: [] for n in names}
    for s in range(0, len(seqs), batch):
        chunk = seqs[s:s + batch]
        T = max(len(p) + len(w) for p, w in chunk)
        # padding on the right: causal attention never lets a word's tokens see the padding after them
        idx = torch.full((len(chunk), T), tok.eos_id, dtype=torch.long)
        for i, (p, w) in enumerate(chunk):
            idx[i, :len(p) + len(w)] = torch.tensor(p + w)
        states = layer_states(model, idx.to(dev))
        for i, (p, w) in enumerate(chunk):
            span = slice(len(p), len(p) + len(w)) if pool == "mean" else slice(len(p) + len(w) - 1, len(p) + len(w))
            for n, h in zip(names, states):
                rows[n].append(h[i, span].float().mean(0).cpu())
            head = model.lm_head.weight[torch.tensor(w[span.start - len(p):span.stop - len(p)], device=dev)]
            rows["head"].append(head.float().mean(0).cpu())
    return {n: torch.stack(r) for n, r in rows.items()}


def check_pool(pool):
    if pool not in ("mean", "last"):
        fail(f"pool={pool!r}: expected mean or last")


def unit_rows(x, mean=None):
    """Rows centred (on `mean`, default their own mean) and scaled to length 1, for cosines."""
    x = x.double() - (x.double().mean(0) if mean is None else mean.double())
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


# -----------------------------------------------------------------------------
# the word list

def read_word_list(path):
    """-> {language: [words]} from a TSV whose first line is '# pos<TAB>en<TAB>ru<TAB>zh': row i of
    every language is one meaning, so row i of 'ru' is the translation of row i of 'en'."""
    if not os.path.isfile(path):
        fail(f"word_list={shown(path)}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    if not lines or not lines[0].startswith("#"):
        fail(f"word_list={shown(path)}: the first line must name the columns, e.g. '# pos<TAB>en<TAB>ru<TAB>zh'")
    cols = lines[0].lstrip("#").split()
    table = {c: [] for c in cols}
    for n, ln in enumerate(lines[1:], 2):
        parts = ln.split("\t")
        if len(parts) != len(cols):
            fail(f"word_list={shown(path)} line {n}: {len(parts)} columns, the header names {len(cols)}")
        for c, w in zip(cols, parts):
            table[c].append(w.strip())
    return table


def languages(table):
    return [c for c in table if c != "pos"]


def all_words(table):
    """Every word of every language once, in file order."""
    return list(dict.fromkeys(w for c in languages(table) for w in table[c]))


# -----------------------------------------------------------------------------
# 1. nearest neighbours

def nearest(query_vecs, list_vecs, list_words, k, skip=None):
    """-> for each query row, the k nearest words of the list by cosine (list-mean centred), as
    [(word, cosine)], leaving out the word skip[i] itself."""
    mean = list_vecs.double().mean(0)
    sims = unit_rows(query_vecs, mean) @ unit_rows(list_vecs, mean).T
    out = []
    for i, row in enumerate(sims):
        order = [j for j in row.argsort(descending=True).tolist() if not skip or list_words[j] != skip[i]]
        out.append([(list_words[j], float(row[j])) for j in order[:k]])
    return out


def neighbours(model, tok, queries, word_seq, k=5, context="", pool="mean"):
    """-> {query word: {level: [(neighbour, cosine)] * k}}."""
    lv = word_vectors(model, tok, word_seq, context, pool)
    qv = word_vectors(model, tok, queries, context, pool)
    out = {q: {} for q in queries}
    for level in lv:
        for q, near in zip(queries, nearest(qv[level], lv[level], word_seq, k, skip=queries)):
            out[q][level] = near
    return out


def pos_agreement(vecs, pos, k=5):
    """Share of each word's k nearest neighbours (cosine, list-mean centred, the word itself left out)
    that have its part of speech; and the chance level, the share for neighbours drawn at random."""
    u = unit_rows(vecs)
    sims = u @ u.T
    sims.fill_diagonal_(-float("inf"))
    near = sims.topk(k, dim=1).indices
    same = [sum(pos[j] == pos[i] for j in row) / k for i, row in enumerate(near.tolist())]
    n = len(pos)
    counts = {p: pos.count(p) for p in set(pos)}
    chance = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
    return sum(same) / n, chance


def pos_by_level(model, tok, table, k=5, context="", pool="mean"):
    """-> {language: {"chance": c, level: share}}: part-of-speech agreement of the k nearest
    neighbours within one language's words, at every level. A model that has learnt what words do
    (nouns, verbs, adjectives) groups them by it; the glyph table groups them by spelling only."""
    out = {}
    if "pos" not in table:
        return out
    for lang in languages(table):
        vecs = word_vectors(model, tok, table[lang], context, pool)
        res = {}
        for level, v in vecs.items():
            res[level], res["chance"] = pos_agreement(v, table["pos"], k)
        out[lang] = res
    return out


def pos_md(results, k):
    lines = []
    labels_ = list(results)
    for lang in next(iter(results.values())):
        ch = results[labels_[0]][lang]["chance"]
        lines += [f"**{lang}**: share of each word's {k} nearest {lang} neighbours with its part of speech "
                  f"(noun/verb/adjective; chance {100 * ch:.1f}%)", "",
                  "| level | " + " | ".join(labels_) + " |", "|---|" + "---:|" * len(labels_)]
        for level in ordered_levels(results[lb][lang] for lb in labels_):
            cells = [f"{100 * results[lb][lang][level]:.1f}%" if level in results[lb][lang] else "" for lb in labels_]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def neighbours_md(label, result):
    lines = []
    for q, per in result.items():
        lines += [f"**{q}** in {label} (nearest by cosine, word-list mean removed)", "",
                  "| level | " + " | ".join(f"{i}" for i in range(1, len(next(iter(per.values()))) + 1)) + " |",
                  "|---|" + "---|" * len(next(iter(per.values())))]
        for level, near in per.items():
            lines.append(f"| {level} | " + " | ".join(f"{w} {c:.2f}" for w, c in near) + " |")
        lines.append("")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 2. cross-lingual retrieval

def retrieval_precision(src, tgt, ks=(1, 5)):
    """Row i of src should find row i of tgt: -> {k: share of rows whose match is among the k most
    similar rows of tgt}. Each side is centred on its own mean (per language) before the cosine, so a
    language's common offset does not decide the ranking."""
    sims = unit_rows(src) @ unit_rows(tgt).T
    truth = sims.diagonal().unsqueeze(1)
    rank = (sims > truth).sum(1)  # how many candidates beat the right one (ties count for the right one)
    return {kk: float((rank < kk).double().mean()) for kk in ks}


def translate(model, tok, table, pair_list, context="", pool="mean"):
    """-> {pair: {"n": N, "chance@1", "chance@5", level: {"p@1", "p@5"}}} for each 'src-tgt' pair."""
    out = {}
    for pair in pair_list:
        src, tgt = pair.split("-")
        sv = word_vectors(model, tok, table[src], context, pool)
        tv = word_vectors(model, tok, table[tgt], context, pool)
        n = len(table[src])
        res = {"n": n, "chance@1": 1 / n, "chance@5": min(5, n) / n}
        for level in sv:
            p = retrieval_precision(sv[level], tv[level])
            res[level] = {"p@1": p[1], "p@5": p[5]}
        out[pair] = res
    return out


def check_pairs(pair_list, table, path):
    for pair in pair_list:
        langs = pair.split("-")
        if len(langs) != 2 or any(x not in languages(table) for x in langs) or langs[0] == langs[1]:
            fail(f"pairs: {pair!r} is not two different language columns of {shown(path)} "
                 f"({', '.join(languages(table))}), e.g. en-ru")


def translate_md(results):
    """One table per pair: rows = levels, columns = checkpoints, cells 'p@1 / p@5'."""
    lines = []
    labels_ = list(results)
    for pair in next(iter(results.values())):
        n = results[labels_[0]][pair]["n"]
        ch = results[labels_[0]][pair]
        lines += [f"**{pair}**: precision@1 / @5 of the translation among {n} candidates "
                  f"(chance {100 * ch['chance@1']:.2f}% / {100 * ch['chance@5']:.2f}%)", "",
                  "| level | " + " | ".join(labels_) + " |", "|---|" + "---:|" * len(labels_)]
        for level in ordered_levels(results[lb][pair] for lb in labels_):
            cells = []
            for lb in labels_:
                r = results[lb][pair].get(level)
                cells.append(f"{100 * r['p@1']:.1f}% / {100 * r['p@5']:.1f}%" if r else "")
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def ordered_levels(dicts):
    """table, layer 1 .. layer max, head over models of different depth."""
    depth = max(sum(1 for key in d if key.startswith("layer ")) for d in dicts)
    return ["table"] + [f"layer {i}" for i in range(1, depth + 1)] + ["head"]


# -----------------------------------------------------------------------------
# 3. linear CKA

def centred(x):
    """x [n, d] in float64, its columns centred."""
    return x.double() - x.double().mean(0)


def gram_norm(x):
    """||Xc^T Xc||_F: one side's normaliser in linear_cka."""
    x = centred(x)
    return (x.T @ x).norm()


def linear_cka(x, y, x_norm=None, y_norm=None):
    """Linear CKA of two sets of representations of the same n inputs, x [n, d1], y [n, d2]:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with columns centred. 1 = the same representation
    up to a rotation and a uniform scale; near 0 = unrelated. x_norm, y_norm: gram_norm(x), gram_norm(y)
    when already known (a level x level matrix needs each level's once, not once per pair)."""
    num = (centred(y).T @ centred(x)).norm() ** 2
    den = (gram_norm(x) if x_norm is None else x_norm) * (gram_norm(y) if y_norm is None else y_norm)
    return float(num / den) if den > 0 else 0.0


def text_tokens(path, tok, n):
    """The first n tokens of a text file, or of a prepared dataset folder's validation split (val.bin:
    text the models of that dataset never trained on)."""
    if os.path.isdir(path):
        from data.common import open_split
        ids = [int(i) for i in open_split(path, "val", tok)[:n]]
    elif os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            ids = tok.encode(f.read())[:n]
    else:
        fail(f"text={shown(path)}: no such file or dataset folder")
    if len(ids) < 2:
        fail(f"text={shown(path)}: needs at least 2 tokens, has {len(ids)}")
    return ids


@torch.no_grad()
def text_states(model, ids, window_):
    """-> [levels][n, d]: every level's state at every token of ids, read in windows of window_ tokens
    (the last, shorter window included)."""
    dev = model.lm_head.weight.device
    windows = [[h[0].float().cpu() for h in layer_states(model, torch.tensor([ids[s:s + window_]], device=dev))]
               for s in range(0, len(ids), window_)]
    return [torch.cat(level) for level in zip(*windows)]


def cka_matrix(xs, ys):
    """[len(xs) x len(ys)] linear CKA of every pair of levels."""
    x_norms = [gram_norm(x) for x in xs]
    y_norms = x_norms if ys is xs else [gram_norm(y) for y in ys]
    return [[linear_cka(x, y, a, b) for y, b in zip(ys, y_norms)] for x, a in zip(xs, x_norms)]


def cka(probed, path, n_tokens, window_):
    """-> {"tokens": n, "self": {label: matrix}, "pairs": {"a vs b": matrix}}: rows are levels
    0 (input table) .. L (after block L) of the first model, columns those of the second."""
    fps = {tok.fingerprint for _, _, tok in probed}
    if len(fps) > 1:
        fail("cka compares hidden states on the same tokens: the checkpoints use different tokenizers")
    tok = probed[0][2]
    ids = text_tokens(path, tok, n_tokens)
    w = min([window_] + [m.config.block_size for _, m, _ in probed])
    states = {label: text_states(m, ids, w) for label, m, _ in probed}
    out = {"tokens": len(ids), "window": w, "self": {}, "pairs": {}}
    labels_ = list(states)
    for a in labels_:
        out["self"][a] = cka_matrix(states[a], states[a])
    for i, a in enumerate(labels_):
        for b in labels_[i + 1:]:
            out["pairs"][f"{a} vs {b}"] = cka_matrix(states[a], states[b])
    return out


def cka_md(res):
    lines = [f"Linear CKA on {res['tokens']} tokens of held-out text (windows of {res['window']}); "
             f"level 0 = input table, i = after block i.", ""]
    for name, m in res["pairs"].items():
        d = min(len(m), len(m[0]))
        lines += [f"**{name}**, same level in both (the diagonal of the level x level matrix):", "",
                  "| level | " + " | ".join(str(i) for i in range(d)) + " |", "|---|" + "---:|" * d,
                  "| CKA | " + " | ".join(f"{m[i][i]:.3f}" for i in range(d)) + " |", ""]
    for name, m in list(res["self"].items()) + list(res["pairs"].items()):
        lines += [f"**{name}**{'' if ' vs ' in name else ' against itself'}: level x level", "",
                  "| | " + " | ".join(str(j) for j in range(len(m[0]))) + " |", "|---|" + "---:|" * len(m[0])]
        lines += [f"| {i} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for i, row in enumerate(m)]
        lines.append("")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# plots

def plot_levels(ax, label, per_level, scale=100):
    """One checkpoint's values at table (0), layer i (i) and head (a star one step past the last layer)."""
    depth = sum(1 for key in per_level if key.startswith("layer "))
    ys = [per_level["table"]] + [per_level[f"layer {i}"] for i in range(1, depth + 1)]
    line, = ax.plot(range(depth + 1), [scale * y for y in ys], marker="o", label=label)
    ax.plot([depth + 1], [scale * per_level["head"]], marker="*", markersize=12, color=line.get_color())


def plot(out_png, trans=None, cka_res=None, pos=None):
    """One figure, every checkpoint on each panel: part-of-speech agreement of neighbours by level,
    translation precision@1 by level (one panel per pair), chance dashed; CKA between checkpoints at
    the same level, and each checkpoint's CKA between neighbouring levels."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    level_axis = "level (0 = input table, i = after block i, * = output head)"
    panels = []
    if pos and any(pos.values()):
        lang = next(iter(next(iter(pos.values()))))
        panels.append(("pos", lang))
    panels += [("translate", pair) for pair in (next(iter(trans.values())) if trans else [])]
    panels += [("cka pairs", None), ("cka self", None)] if cka_res else []
    if not panels:
        return
    cols = min(len(panels), 2)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (kind, what) in zip(axes, panels):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # levels are whole numbers
        if kind == "pos":
            for label, per in pos.items():
                plot_levels(ax, label, {key: v for key, v in per[what].items() if key != "chance"})
            ch = next(iter(pos.values()))[what]["chance"]
            ax.axhline(100 * ch, ls="--", color="grey", label=f"chance {100 * ch:.1f}%")
            ax.set_title(f"same part of speech among the nearest {what} words")
            ax.set_xlabel(level_axis)
            ax.set_ylabel("neighbours with the word's part of speech (%)")
            ax.set_ylim(0, 100)
        elif kind == "translate":
            for label, per in trans.items():
                levels = {key: v["p@1"] for key, v in per[what].items() if isinstance(v, dict)}
                plot_levels(ax, label, levels)
            ch = next(iter(trans.values()))[what]
            ax.axhline(100 * ch["chance@1"], ls="--", color="grey", label=f"chance {100 * ch['chance@1']:.2f}%")
            ax.set_title(f"{what} translation retrieval among {ch['n']} words")
            ax.set_xlabel(level_axis)
            ax.set_ylabel("precision@1 (%)")
            ax.set_ylim(0, max(ax.get_ylim()[1], 10))  # near chance, a 0.3% step is one word: not a trend
        elif kind == "cka pairs":
            for name, m in cka_res["pairs"].items():
                d = min(len(m), len(m[0]))
                ax.plot(range(d), [m[i][i] for i in range(d)], marker="o", label=name)
            ax.set_title("CKA between checkpoints, same level")
            ax.set_xlabel("level (0 = input table, i = after block i)")
            ax.set_ylabel("linear CKA (0 to 1)")
            ax.set_ylim(0, 1.05)
        else:
            for name, m in cka_res["self"].items():
                ax.plot(range(1, len(m)), [m[i - 1][i] for i in range(1, len(m))], marker="o", label=name)
            ax.set_title("CKA of a checkpoint's neighbouring levels")
            ax.set_xlabel("level i (CKA of level i-1 with level i)")
            ax.set_ylabel("linear CKA (0 to 1)")
            ax.set_ylim(0, 1.05)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# the commands

def run_probe(command, cfg):
    """-> (results dict, markdown) of one command (or all three) on cfg's checkpoints."""
    dev = resolve_device(cfg["device"])
    for key, least in (("k", 1), ("max_tokens", 2), ("window", 1)):
        if cfg[key] < least:
            fail(f"{key}={cfg[key]}: expected a whole number >= {least}")
    check_pool(cfg["pool"])
    cfg = dict(cfg, word_list=repo_path(cfg["word_list"]), text=repo_path(cfg["text"]))
    table = read_word_list(cfg["word_list"]) if command in ("neighbours", "translate", "all") else None
    pair_list = [p for p in cfg["pairs"].split(",") if p]
    if table is not None:
        check_pairs(pair_list, table, cfg["word_list"])
    queries = [w.strip() for w in cfg["words"].split(",") if w.strip()]
    if command in ("neighbours", "all") and not queries:
        fail("words: give at least one word, e.g. --words=king,вода")
    for what, path in (("out_md", cfg["out_md"]), ("out_png", cfg["out_png"]), ("out_json", cfg["out_json"])):
        if path:
            check_output(path, [("checkpoint", p) for p in cfg["ckpts"]], what)
    names = [s.strip() for s in cfg["labels"].split(",")] if cfg["labels"] else []
    probed = load_probed(list(cfg["ckpts"]), names, dev)
    results, md = {}, []
    if command in ("neighbours", "all"):
        word_seq = all_words(table)
        results["neighbours"] = {}
        for label, m, tok in probed:
            r = neighbours(m, tok, queries, word_seq, cfg["k"], cfg["context"], cfg["pool"])
            results["neighbours"][label] = r
            md.append(neighbours_md(label, r))
        results["pos"] = {label: pos_by_level(m, tok, table, cfg["k"], cfg["context"], cfg["pool"])
                          for label, m, tok in probed}
        if any(results["pos"].values()):
            md.append(pos_md(results["pos"], cfg["k"]))
    if command in ("translate", "all"):
        results["translate"] = {label: translate(m, tok, table, pair_list, cfg["context"], cfg["pool"])
                                for label, m, tok in probed}
        md.append(translate_md(results["translate"]))
    if command in ("cka", "all"):
        results["cka"] = cka(probed, cfg["text"], cfg["max_tokens"], cfg["window"])
        md.append(cka_md(results["cka"]))
    return results, "\n".join(md)


def save_outputs(results, md, cfg):
    if cfg["out_md"]:
        with atomic_write(cfg["out_md"]) as f:
            f.write(md + "\n")
    if cfg["out_json"]:
        write_json(cfg["out_json"], results)
    if cfg["out_png"]:
        plot(cfg["out_png"], results.get("translate"), results.get("cka"), results.get("pos"))


def semantics_report(checkpoints, text_path, out_md, out_png, device_="auto", out_json_=""):
    """The whole experiment of docs/results.md "Where the semantics live": neighbours, translation
    retrieval and CKA for checkpoints {label: path}, on held-out text_path; tables to out_md, the
    figure to out_png. -> the results dict."""
    cfg = dict(DEFAULTS, ckpts=list(checkpoints.values()), labels=",".join(checkpoints), text=text_path,
               out_md=out_md, out_png=out_png, out_json=out_json_, device=device_)
    results, md = run_probe("all", cfg)
    save_outputs(results, md, cfg)
    return results


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(f"probe.py COMMAND ckpt.pt [ckpt.pt ...] [--key=value ...]   COMMAND: {' | '.join(COMMANDS)}")
        configure(DEFAULTS, [a for a in argv if a not in COMMANDS], docs=key_docs(__file__), prog="probe.py",
                  positional="ckpts")
    if not argv or argv[0] not in COMMANDS:
        fail(f"the first argument must be a command: {', '.join(COMMANDS)} (got {shown(argv[0]) if argv else 'none'})")
    command = argv[0]
    cfg = configure(DEFAULTS, argv[1:], verbose=False, docs=key_docs(__file__), prog=f"probe.py {command}",
                    positional="ckpts")
    results, md = run_probe(command, cfg)
    print(md)
    save_outputs(results, md, cfg)
    for key in ("out_md", "out_png", "out_json"):
        if cfg[key]:
            print(f"wrote {cfg[key]}")
    return results


if __name__ == "__main__":
    script_main("probe.py", main)
