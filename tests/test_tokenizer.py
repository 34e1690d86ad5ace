"""Tests of unicode_tokenizer.py: layout, exact parity with HF `tokenizers`, lossless mode, tiktoken,
building from text files, fingerprints, downloads (from a local server) and bad input."""
import functools
import http.server
import json
import os
import random
import threading
import time

import pytest

import unicode_tokenizer as ut
from unicode_tokenizer import UnicodeTokenizer, get_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "bvv241-2-3", "tokenizer.json")  # the released layout, see its NOTICE.md

MULTILINGUAL = (
    "Hello world, the quick brown fox jumps over the lazy dog. Don't stop believin'!\n"
    "Привет мир, съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка и ЁЖИК.\n"
    "你好世界。中华人民共和国成立于1949年，今天天气很好！「引号」（括号）\n"
    "日本語のテキストとカタカナ、한국어 문장입니다.\n"
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇷🇺 private use \ue000\ue003\uf8ff \U000F0000 \uffff and \ufffd\n"
    "combining: e\u0301 a\u0308 n\u0303 Z\u0336a\u0337l\u0338g\u0335o\u0334, Hangul jamo \u1100\u1161\n"
    "tabs\tand\r\nCRLF\r\n  spaces   digits 0123456789 3.14159 ١٢٣ ①②\n"
    "literal specials: <s>Hi</s><pad><unk>[INST] q [/INST]<think>x</think> <s <\\s> <special_token_57367> <unused_65535>\n"
    "Ελληνικά, العربية, עברית, हिन्दी, ไทย, Tiếng Việt, Ænima ßtraße œuvre — “quotes” … ,,, ... ---\n"
)


@functools.lru_cache
def fixture_pair():
    import tokenizers
    return UnicodeTokenizer.from_hf_json(FIXTURE), tokenizers.Tokenizer.from_file(FIXTURE)


def big_text(tok, n_chars=400_000, seed=0):
    """A large multilingual text: the sample above, words glued from the tokenizer's own n-grams
    (so merges fire in every order), random BMP characters and characters from all planes."""
    rng = random.Random(seed)
    ngrams = [s for s in tok.tokens[0xD800:0xE000] + tok.tokens[0xE100:0xF900] if not s.startswith("<")]
    parts, size = [], 0
    while size < n_chars:
        r = rng.random()
        if r < 0.1:
            p = MULTILINGUAL
        elif r < 0.8:
            p = "".join(rng.choice(ngrams) for _ in range(rng.randint(1, 4))) + rng.choice(" \n,.")
        elif r < 0.9:
            p = "".join(chr(rng.randrange(0x20, 0xD800)) for _ in range(rng.randint(1, 8)))
        else:
            p = "".join(random_char(rng) for _ in range(rng.randint(1, 8)))
        parts.append(p)
        size += len(p)
    return "".join(parts)


def random_char(rng):
    plane = rng.choice([0, 0, 0, 1, 2, 3, 14, 15, 16])
    cp = rng.randrange(plane << 16, (plane + 1) << 16)
    return chr(cp) if not 0xD800 <= cp < 0xE000 else "x"


# -----------------------------------------------------------------------------
# layout

def test_default_layout_ids():
    tok = get_tokenizer("bvv241-2-3")
    assert tok.vocab_size == 65536 and tok.name == "bvv241-2-3"
    assert tok.encode("A") == [65] and tok.encode("я") == [0x44F] and tok.encode("\ufffd") == [0xFFFD]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (57344, 57345, 57346, 57347)
    assert tok.encode("<pad></s><unk>") == [57344, 57346, 57347]
    assert tok.encode("😀\ue000") == [57347, 57347]  # no id: <unk>
    assert tok.encode("1 2\n") == [49, 32, 50, 10]  # digits and whitespace are single tokens
    s = tok.token_strings()
    assert len(s) == 65536 and s[65] == "A" and s[0xE016] == "[FILE_SEP]"
    assert s[0xE017] == "<special_token_57367>" and s[0xFFFF] == "<unused_65535>" and s[0xF900] == "\uf900"
    ngrams = ut.released_ngrams("bvv241-2-3")
    assert len(ngrams) == 8177 and s[0xD800:0xE000] + s[0xE100:0xE100 + 8177 - 2048] == ngrams
    assert ngrams == sorted(ngrams, key=lambda g: (-len(g), g)) and all(2 <= len(g) <= 3 for g in ngrams)
    assert tok.encode("the") == [tok.tokens.index("the")]


def test_default_is_the_released_tokenizer():
    """Built from the released n-gram list: every token string and every merge of the fixture."""
    tok, _ = fixture_pair()
    default = get_tokenizer("bvv241-2-3")
    assert len(default.tokens) == 65536 and default.tokens == tok.tokens
    assert len(default.merges) == 12224 and default.merges == tok.merges
    assert default.fingerprint == tok.fingerprint  # the same ids, so the same fingerprint
    assert default.engine.kind == "tiktoken"
    local = get_tokenizer("bvv241-2-3-local")  # our own n-gram counts: a different tokenizer, by name
    assert local.vocab_size == 65536 and local.fingerprint != default.fingerprint


def test_fixture_notice_example():
    tok, _ = fixture_pair()
    text = "Hello world, привет мир, 你好世界"
    ids = [60506, 56703, 32, 61333, 57304, 44, 32, 58680, 58484, 32, 1084, 61848, 44, 32, 20320, 22909, 63197]
    assert tok.encode(text) == get_tokenizer("bvv241-2-3").encode(text) == ids
    assert tok.decode(ids) == text
    assert len(tok.merges) == 12224 and tok.engine.kind == "tiktoken"


# -----------------------------------------------------------------------------
# parity with HF tokenizers

def test_parity_with_tokenizers_multilingual():
    _, hf = fixture_pair()
    tok = get_tokenizer("bvv241-2-3")  # the default, built from the released list
    for line in MULTILINGUAL.splitlines(keepends=True) + [MULTILINGUAL]:
        assert tok.encode(line) == hf.encode(line).ids, line
    text = big_text(tok)
    assert tok.encode(text) == hf.encode(text).ids
    docs = text.split("\n")
    assert len(docs) > 5000
    assert tok.encode_batch(docs) == [e.ids for e in hf.encode_batch(docs)]


def test_parity_adversarial_fuzz():
    """Short strings over tiny alphabets taken from n-grams (repeated letters like '...', 'EEE'), where
    merge order and tie-breaking matter most."""
    tok, hf = fixture_pair()
    rng = random.Random(1)
    ngrams = [s for s in tok.tokens[0xD800:0xE000] + tok.tokens[0xE100:0xF900] if not s.startswith("<")]
    repeated = [g for g in ngrams if len(set(g)) < len(g)]
    texts = []
    for _ in range(5000):
        pool = rng.sample(ngrams, rng.randint(1, 5)) + rng.sample(repeated, 2)
        alphabet = sorted(set("".join(pool))) + [" ", "😀", "<s>"]
        texts.append("".join(rng.choice(alphabet) if rng.random() < 0.5 else rng.choice(pool)
                             for _ in range(rng.randint(1, 30))))
    assert [tok.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts)]
    # every string of length <= 7 over {x, y} for trigrams xyx / xxx, where tie-breaking between the
    # two splits of one trigram differs between HF and tiktoken (see _tiktoken_engine)
    import itertools
    periodic = [t for t in ngrams if len(t) == 3 and t[0] == t[2]][:60]
    texts = ["".join(p) for t in periodic for n in range(3, 8) for p in itertools.product(sorted(set(t)), repeat=n)]
    assert len(texts) > 1000
    assert [tok.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts)]


def test_python_engine_matches_tokenizers():
    tok, hf = fixture_pair()
    slow = UnicodeTokenizer.from_hf_json(FIXTURE)
    slow._engine = slow._python_engine()
    text = big_text(tok, 40_000, seed=3)
    assert slow.encode(text) == hf.encode(text).ids == tok.encode(text)


# -----------------------------------------------------------------------------
# bvv241-max / bvv241-abs (131,072 ids)

def test_max_layout_from_the_released_lists(tmp_path):
    tok = get_tokenizer("bvv241-max")
    assert tok.vocab_size == 131072 and tok.name == "bvv241-max"
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (57344, 57345, 57346, 57347)
    s = tok.token_strings()
    assert s[0xE000:0xE017] == ut.SPECIAL_TOKENS and s[0xE017] == "<special_token_57367>" and s[65] == "A"
    assert s[0xFFFF] == "<unused_65535>" and s[0x1FFFF] == "<unused_131071>"
    ngrams = ut.released_ngrams("bvv241-max")  # 73,768 candidates cut to the 73,727 slots, as the builder does
    assert len(ngrams) == 2048 + 6144 + 65535 and max(map(len, ngrams)) == 72
    assert s[0xD800:0xE000] + s[0xE100:0xF900] + s[0x10000:0x1FFFF] == ngrams
    assert len(tok.merges) == 182678 and tok.engine.kind == "tiktoken"  # see test_max_tiktoken_route_is_exact
    assert get_tokenizer("bvv241-abs").tokens == s  # the abs builder notebook makes the same vocabulary
    assert get_tokenizer("bvv241-abs").fingerprint == tok.fingerprint
    import tokenizers
    tok.save(str(tmp_path / "max.json"))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "max.json"))
    text = big_text(get_tokenizer("bvv241-2-3"), 60_000, seed=5)
    lines = text.split("\n") + MULTILINGUAL.splitlines()
    assert [tok.encode(x) for x in lines] == [e.ids for e in hf.encode_batch(lines)]
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.decode(tok.encode("Hello world, привет мир, 你好世界 <s>")) == "Hello world, привет мир, 你好世界 <s>"


def test_max_tiktoken_route_is_exact(tmp_path):
    """bvv241-max through tiktoken (_tiktoken_engine) against the heap BPE in Python and `tokenizers`,
    on the strings its argument is about: the n-grams BPE never builds (whole, and as whole pieces),
    the n-grams with a border (t[:k] == t[-k:]) as L+N+R and repeated, long runs of one character,
    n-gram boundaries (two n-grams glued, cut inside), mixed scripts without spaces, long runs."""
    import copy
    import itertools
    import tokenizers
    tok = get_tokenizer("bvv241-max")
    assert tok.engine.kind == "tiktoken"
    ref = copy.copy(tok)
    ref._engine = slow = tok._python_engine()
    tok.save(str(tmp_path / "max.json"))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "max.json"))
    rng = random.Random(7)
    targets = list(dict.fromkeys(a + b for a, b in tok.merges))
    unbuilt = [t for t in targets if len(t) > 3 and slow(t) != [tok.vocab[t]]]
    assert len(unbuilt) == 1811 and "documentation" in unbuilt
    texts = unbuilt + [f" {t}." for t in unbuilt[::7]] + [f"{t}{t}" for t in unbuilt[::13]]
    bordered = [(t, k) for t in targets for k in range(2, (len(t) + 1) // 2) if t[:k] == t[-k:]]
    for t, k in bordered:
        texts += [t[:-k] + t + t[k:], t * 3, "x" + t + t[k:], t[k:] + t + " " + t[:-k]]
    texts += [c * n for c in "-=.#*─~_!aяé你" for n in range(1, 140)]
    texts += [a + b for a, b in itertools.product(["-" * 8, "=" * 10, ". . ", "...", "ing", "ff"], repeat=2)]
    for _ in range(3000):
        a, b = rng.choice(targets), rng.choice(targets)
        texts += [a + b, a[1:] + b[:-1], a + b + a]
    mixed = [t for t in targets if len(t) <= 5]
    texts += ["".join(rng.choice(mixed) for _ in range(rng.randint(5, 60))) for _ in range(300)]
    texts.append("".join(rng.choice(mixed) for _ in range(5000)))  # one long run (tiktoken's heap path)
    texts.append(MULTILINGUAL * 3)
    assert len(texts) > 14_000
    ours = [tok.encode(x) for x in texts]
    assert ours == [ref.encode(x) for x in texts]
    assert ours == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def test_tiktoken_route_on_random_small_tokenizers():
    """The conditions of _tiktoken_engine on many random tokenizers over 2-4 letters (n-grams up to
    9 characters, longer first: many with a border, as (3) is about): wherever the tiktoken route is
    taken, it equals the heap BPE on random strings; a bigram ranked before a longer n-gram, or
    merges that are not every split of the n-grams, fall back to the heap BPE."""
    rng = random.Random(11)
    taken = 0
    for _ in range(300):
        alphabet = "abcd"[:rng.randint(2, 4)]
        cands = {"".join(rng.choice(alphabet) for _ in range(rng.randint(2, rng.choice([5, 7, 9]))))
                 for _ in range(rng.randint(3, 30))}
        order = sorted(cands, key=lambda g: (-len(g), rng.random()))
        tokens = list(alphabet + " ") + order
        merges = ut.generate_merges(order, {s: i for i, s in enumerate(tokens)})
        tok = UnicodeTokenizer(tokens, merges, added=[])
        slow = tok._python_engine()
        taken += tok.engine.kind == "tiktoken"
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(60)]
        texts += [g * 3 for g in order] + [g + " " + g + g[::-1] for g in order]
        assert [tok.engine(x) for x in texts] == [slow(x) for x in texts], merges
    assert taken == 300  # (3) held for all of them
    tok = UnicodeTokenizer(list("ab") + ["ab", "aba"], [("a", "b"), ("ab", "a")], added=[])
    assert tok.engine.kind == "python"  # the bigram ab ranks before the trigram aba: (2) fails
    tok = UnicodeTokenizer(list("ab") + ["aba", "ab", "ba"], [("ab", "a"), ("a", "b"), ("b", "a")], added=[])
    assert tok.engine.kind == "python"  # (a, ba) is a split of aba but not a merge: (1) fails
    merges = [("a", "ba"), ("ab", "a"), ("a", "b"), ("b", "a")]
    tok = UnicodeTokenizer(list("ab") + ["aba", "ab", "ba"], merges, added=[])
    assert tok.engine.kind == "tiktoken" and tok.encode("ababa") == tok._python_engine()("ababa")
    place = {"abab": 0, "ab": 1}
    assert tok._reaches("abab", ["ab", "ab"], place) and not tok._reaches("abab", ["a", "bab"], place)


def cpu_seconds(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


@pytest.mark.parametrize("name", ["bvv241-max", "bvv241-2-3"])
def test_encoding_is_near_linear(name):
    """One long run of merging characters (no space: nothing cuts it), 4x longer takes < 10x the
    CPU time (a quadratic BPE takes 16x)."""
    tok = get_tokenizer(name)
    rng = random.Random(2)
    ngrams = [g for g in tok.tokens[0xD800:0xE000] if not any(c.isspace() for c in g)]
    long = "".join(rng.choice(ngrams) for _ in range(40_000))[:80_000]
    tok.encode(long[:1000])  # engine built outside the timing
    short_s = cpu_seconds(lambda: tok.encode(long[:20_000]))
    long_s = cpu_seconds(lambda: tok.encode(long))
    assert long_s < 10 * max(short_s, 1e-3), (short_s, long_s)


# -----------------------------------------------------------------------------
# lossless

def test_lossless_round_trip_all_planes():
    tok = get_tokenizer("bvv241-2-3-lossless")
    base = get_tokenizer("bvv241-2-3")
    assert tok.fingerprint != base.fingerprint
    rng = random.Random(0)
    for _ in range(300):
        s = "".join(random_char(rng) if rng.random() < 0.7 else rng.choice(["the ", "при", "中国", "<s>", "\n"])
                    for _ in range(rng.randint(0, 60)))
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        # identical to the default ids, except that each <unk> (from a character) became 3 escape ids
        unknown = iter([ord(c) for c in s if ord(c) not in base.char_ids])
        expect = []
        for i in base.encode(s):
            if i == base.unk_id:
                cp = next(unknown)
                i = [0xE017 + (cp >> 14), 0xE05B + ((cp >> 7) & 127), 0xE05B + (cp & 127)]
            expect += i if isinstance(i, list) else [i]
        assert ids == expect
    assert tok.encode("a\U0010FFFFb") == [97, 0xE017 + 0x43, 0xE05B + 127, 0xE05B + 127, 98]
    assert tok.decode([0xE017]) == "\ufffd"  # a truncated escape decodes to U+FFFD, never raises
    assert tok.encode("<unk>") == [57347] and tok.decode([57347]) == "<unk>"


def test_lossless_hypothesis():
    import hypothesis
    from hypothesis import strategies as st
    tok = get_tokenizer("bvv241-2-3-lossless")

    @hypothesis.settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ folder in the repo
    @hypothesis.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
    def round_trip(s):
        assert tok.decode(tok.encode(s)) == s
    round_trip()


# -----------------------------------------------------------------------------
# other tokenizers

def test_tiktoken_gpt2_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache: nothing to download from
    tok = get_tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL
    assert tok.encode_batch(["Hello world", "hi"]) == [[15496, 995], [5303]]
    strings = tok.token_strings()
    assert len(strings) == 50257 and strings[15496] == "Hello" and strings[50256] == "<|endoftext|>"
    tok.save(tmp_path / "gpt2.json")
    again = get_tokenizer(str(tmp_path / "gpt2.json"))
    assert again.fingerprint == tok.fingerprint and again.name == "gpt2"


def test_general_hf_json_through_tokenizers(tmp_path):
    import tokenizers
    from tokenizers import models, pre_tokenizers
    hf = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2, "</s>": 3}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path / "wl.json")
    hf.save(path)
    with pytest.raises(ValueError, match="expected 'BPE'"):
        UnicodeTokenizer.from_hf_json(path)
    tok = get_tokenizer(path)
    assert tok.encode("hello world foo") == [1, 2, 0] and tok.eos_id == 3 and tok.unk_id == 0
    tok.save(str(tmp_path / "again.json"))
    assert get_tokenizer(str(tmp_path / "again.json")).fingerprint == tok.fingerprint


# -----------------------------------------------------------------------------
# building, saving, fingerprints

CORPUS = {
    "en": "The cat sat on the mat. Don't the other cats sit there too?\n\nThe end, 2024.",
    "ru": "Кошка сидела на ковре. Другие кошки тоже сидели.\n\nКонец.",
    "zh": "中国人民银行今天宣布，中国经济增长。\n\n人民生活水平提高。",
}


def write_corpus(tmp_path):
    specs = []
    for lang, text in CORPUS.items():
        (tmp_path / f"{lang}.txt").write_text(text, encoding="utf-8")
        specs.append(f"{lang}={tmp_path / f'{lang}.txt'}")
    return specs


def test_build_from_text_files(tmp_path):
    out = str(tmp_path / "tok.json")
    ut.main(["build", *write_corpus(tmp_path), "--top_k", "20", "--out", out, "--ngrams_out", str(tmp_path / "ng.txt")])
    tok = get_tokenizer(out)
    ngrams = ut.read_ngrams(str(tmp_path / "ng.txt"))
    assert tok.vocab_size == 65536 and tok.eos_id == 57346 and tok.encode("A") == [65]
    assert tok.tokens[0xD800:0xD800 + len(ngrams)] == ngrams and tok.tokens[0xD800 + len(ngrams)].startswith("<unused_")
    assert "the" in ngrams and "he" in ngrams and "ко" in ngrams and "人民" in ngrams and "中国人" in ngrams
    assert not any(c in "0123456789 \n" for g in ngrams for c in g)  # digits, whitespace never inside
    assert "ta" not in ngrams  # within-word counting for Latin: 'sat on' gives no 'to'/'ta' across words
    assert tok.encode("the") == [tok.vocab["the"]] and tok.decode(tok.encode("the cat 中国人")) == "the cat 中国人"
    import tokenizers  # the saved file is a valid HF tokenizer.json
    hf = tokenizers.Tokenizer.from_file(out)
    text = MULTILINGUAL + "".join(CORPUS.values())
    assert tok.encode(text) == hf.encode(text).ids


def test_build_max_layout(tmp_path):
    out = str(tmp_path / "max.json")
    ut.main(["build", *write_corpus(tmp_path), "--layout", "bvv241-max", "--top_k", "15", "--out", out])
    tok = get_tokenizer(out)
    assert tok.vocab_size == 131072 and max(len(a + b) for a, b in tok.merges) == 5
    assert tok.engine.kind == "tiktoken"  # 4/5-grams too: see _tiktoken_engine
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(out)
    text = MULTILINGUAL + "".join(CORPUS.values()) * 3
    assert tok.encode(text) == hf.encode(text).ids
    docs = text.split("\n")
    assert tok.encode_batch(docs) == [e.ids for e in hf.encode_batch(docs)]  # threads around tiktoken
    tok._engine = tok._python_engine()
    assert tok.encode_batch(docs) == [e.ids for e in hf.encode_batch(docs)]  # worker processes
    many = [f"{chr(0x4E00 + i // 100)}{chr(0x4E00 + i % 100)}" for i in range(9000)]
    layout = ut.build_layout(many, 131072)  # 9000 > 8192 slots below 0x10000: the rest go from 0x10000
    assert layout[0xD800] == many[0] and layout[0xE100] == many[2048] and layout[0x10000] == many[8192]
    assert layout[0x10000 + 9000 - 8192].startswith("<unused_") and layout[0x1FFFF] == "<unused_131071>"


def test_fingerprint_stable_and_distinct(tmp_path):
    tok = get_tokenizer("bvv241-2-3")
    assert len(tok.fingerprint) == 16 and tok.fingerprint == get_tokenizer("bvv241-2-3").fingerprint
    tok.save(str(tmp_path / "t.json"))
    again = get_tokenizer(str(tmp_path / "t.json"))
    assert again.fingerprint == tok.fingerprint and again.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    lossless = get_tokenizer("bvv241-2-3-lossless")
    lossless.save(str(tmp_path / "l.json"))
    assert get_tokenizer(str(tmp_path / "l.json")).fingerprint == lossless.fingerprint != tok.fingerprint
    other = UnicodeTokenizer.from_ngrams(ut.released_ngrams("bvv241-2-3")[1:])
    assert other.fingerprint != tok.fingerprint


def test_encode_batch_matches_encode():
    tok = get_tokenizer("bvv241-2-3")
    docs = [MULTILINGUAL[i:] for i in range(0, 400, 7)]
    assert tok.encode_batch(docs) == [tok.encode(d) for d in docs]
    assert tok.encode_batch([]) == [] and tok.encode("") == []


# -----------------------------------------------------------------------------
# hub download (served from a local HTTP server: the hub itself is unreachable here)

def test_download_from_hub_is_cached_and_checked(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    (root / "Bochkov" / "bvv241-2-3" / "resolve" / "main").mkdir(parents=True)
    with open(FIXTURE, "rb") as f:
        (root / "Bochkov" / "bvv241-2-3" / "resolve" / "main" / "tokenizer.json").write_bytes(f.read())
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path / "cache"))
    try:
        with pytest.raises(ValueError, match="could not download"):
            get_tokenizer("hf:Nobody/missing")
        tok = get_tokenizer("hf:bvv241-2-3")
    finally:
        server.shutdown()
    assert tok.name == "hf:bvv241-2-3" and tok.encode("Hello") == [60506, 56703]
    assert get_tokenizer("hf:bvv241-2-3").fingerprint == tok.fingerprint  # second time: from the cache
    cached = tmp_path / "cache" / "hf" / "Bochkov--bvv241-2-3" / "tokenizer.json"
    cached.write_bytes(cached.read_bytes().replace(b'"<pad>"', b'"<PAD>"'))
    with pytest.raises(ValueError, match="does not match"):
        get_tokenizer("hf:bvv241-2-3")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# -----------------------------------------------------------------------------
# bad input

def test_bad_input(tmp_path):
    tok = get_tokenizer("bvv241-2-3")
    with pytest.raises(ValueError, match="lone surrogate U\\+D800"):
        tok.encode("ab\ud800c")
    with pytest.raises(ValueError, match="lone surrogate"):
        get_tokenizer("bvv241-2-3-lossless").encode("\udfff")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([65, 65536])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="missing.json: cannot read it \\(No such file or directory\\), so not a tokenizer.json"):
        UnicodeTokenizer.from_hf_json(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}')
    with pytest.raises(ValueError, match="bad.json: not JSON \\(.*\\), so not a tokenizer file"):
        get_tokenizer(str(bad))
    bad.write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(ValueError, match="expected 'BPE'"):
        UnicodeTokenizer.from_hf_json(str(bad))
    bad.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 5}, "merges": []}}))
    with pytest.raises(ValueError, match="without gaps"):
        get_tokenizer(str(bad))
    bad.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}}))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        get_tokenizer(str(bad))
    with pytest.raises(ValueError, match="LANG=PATH"):
        ut.main(["build", "en=" + str(tmp_path / "nope.txt")])
    latin1 = tmp_path / "ngrams.txt"
    latin1.write_bytes("été\nthe\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{latin1}: not UTF-8 text"):
        ut.read_ngrams(str(latin1))


def run_cli(argv):
    """unicode_tokenizer.py as a script runs it: -> None, or the one-line error it exits with."""
    from common import script_main
    try:
        script_main("unicode_tokenizer.py", ut.main, argv)
    except SystemExit as e:
        return str(e.code)


def test_cli_refuses_bad_arguments_in_one_line(tmp_path):
    specs = write_corpus(tmp_path)
    out = tmp_path / "tok.json"
    for argv, said in ((["build", *specs, "--top_k", "-1"], "top_k=-1: expected at least 1 n-gram"),
                       (["build", *specs, "--top_k=-5"], "top_k=-5"),
                       ([*specs], "the first argument is the command (build), got en="),
                       ([], "the first argument is the command (build), got none"),
                       (["encode", *specs], "got encode"),
                       (["build"], "build needs at least one LANG=PATH"),
                       (["build", *specs, "--layout=bvv241-huge"], "layout='bvv241-huge': expected one of"),
                       (["build", *specs, "--topk=3"], "unknown config key 'topk'; did you mean top_k?")):
        msg = run_cli(argv + [f"--out={out}"])
        assert msg.startswith("unicode_tokenizer.py: error: ") and said in msg and "\n" not in msg, (argv, msg)
        assert not out.exists()
    assert run_cli(["build", *specs, "--top_k=1", f"--out={out}"]) is None and get_tokenizer(str(out)).vocab_size == 65536
    with pytest.raises(ValueError, match="top_k=0"):                  # the library refuses it too
        ut.count_ngrams({"en": [specs[0][3:]]}, top_k=0)


def test_malformed_tokenizer_json_gives_one_line(tmp_path):
    """Issue 13: integer merges, an added token without content, ... name the file, no traceback."""
    path = str(tmp_path / "tokenizer.json")
    good = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]},
            "added_tokens": [{"id": 3, "content": "<s>"}]}
    cases = [([1, 2], "expected a JSON object"),
             ({"model": {**good["model"], "merges": [[0, 1]]}}, "merge \\[0, 1\\] is not a pair of token strings"),
             ({"model": {**good["model"], "merges": ["ab"]}}, "is not a pair of token strings"),
             ({"model": {**good["model"], "merges": {"a": "b"}}}, "model.merges must be a list"),
             ({**good, "added_tokens": [{"id": 1}]}, "added token .* string 'content'"),
             ({**good, "added_tokens": ["b"]}, "added token 'b' is not an object"),
             ({"model": {**good["model"], "vocab": ["a", "b"]}}, "model.vocab must map"),
             ({"model": {**good["model"], "vocab": {"a": "0"}}}, "model.vocab must map"),
             ({"model": {**good["model"], "unk_token": 3}}, "unk_token 3 is not in the vocab"),
             ({"model": {**good["model"], "merges": ["b a"]}}, "not in the vocabulary")]
    for doc, expected in cases:
        with open(path, "w") as f:
            json.dump(doc, f)
        for load in (UnicodeTokenizer.from_hf_json, get_tokenizer):
            with pytest.raises(ValueError, match=expected) as e:
                load(path)
            assert str(e.value).startswith(path) and "\n" not in str(e.value)
    with open(path, "w") as f:
        json.dump(good, f)
    assert get_tokenizer(path).encode("ab<s>") == [2, 3]


def _json_values():
    from hypothesis import strategies as st
    scalars = st.none() | st.booleans() | st.integers(-3, 5) | st.text(max_size=4)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


def test_tokenizer_file_loader_any_input_gives_a_tokenizer_or_one_line(tmp_path):
    """Property (issue 13): any file handed to the tokenizer.json loader gives a tokenizer or our
    one-line ValueError naming the file, never another exception."""
    import hypothesis
    from hypothesis import strategies as st
    values = _json_values()
    token = st.sampled_from(["a", "b", "ab", "c", "<s>", ""]) | st.text(max_size=3)
    bpe = st.fixed_dictionaries({"type": st.sampled_from(["BPE", "BPE", "WordPiece"]) | values},
                                optional={"vocab": st.dictionaries(token, st.integers(0, 4), max_size=4) | values,
                                          "merges": st.lists(st.sampled_from(["a b", "b a", "ab"]) | st.lists(token | values,
                                                                                                              max_size=3) | values, max_size=3) | values,
                                          "unk_token": token | values, "byte_fallback": values})
    added = st.lists(st.fixed_dictionaries({}, optional={"id": st.integers(0, 4) | values, "content": token | values,
                                                         "lstrip": values}) | values, max_size=2)
    doc = st.fixed_dictionaries({}, optional={"model": bpe | values, "added_tokens": added | values,
                                              "normalizer": st.none() | values, "pre_tokenizer": st.none()})
    path = str(tmp_path / "tokenizer.json")

    @hypothesis.settings(max_examples=50, deadline=None, database=None)
    @hypothesis.given(doc | values, st.booleans())
    def check(d, raw):
        with open(path, "wb" if raw else "w") as f:
            f.write(json.dumps(d).encode()[::-1] if raw else json.dumps(d))  # raw: bytes that are rarely JSON
        for load in (UnicodeTokenizer.from_hf_json, get_tokenizer):
            try:
                tok = load(path)
            except ValueError as e:
                assert str(e).startswith(path) and "\n" not in str(e), str(e)
                continue
            assert tok.decode(tok.encode("ab")) is not None

    check()


def test_released_ngrams_are_parsed_once_and_cached_verified(tmp_path, monkeypatch, capsys):
    """The parsed lists are cached on disk with the sha256 of the lists' bytes: the cached list is
    the parsed one; an entry of other source bytes, or a damaged one, is rebuilt with one warning."""
    monkeypatch.setenv("GLYPHGPT_CACHE", str(tmp_path))
    args = ut.RELEASED["bvv241-2-3"]
    parsed = ut.parse_released_ngrams(*args)
    calls = []
    monkeypatch.setattr(ut, "parse_released_ngrams", lambda *a: calls.append(a) or parsed)

    def fresh():  # as a new process sees it
        ut._released_ngrams.cache_clear()
        return ut._released_ngrams(*args)

    try:
        assert fresh() == parsed and len(calls) == 1  # cold: parsed and written
        entry = next((tmp_path / "tokenizer").glob("ngrams_bvv241-2-3_*.json"))
        assert fresh() == parsed and len(calls) == 1 and capsys.readouterr().err == ""  # from the cache
        data = json.loads(entry.read_text(encoding="utf-8"))
        for damaged, why in ((json.dumps(dict(data, source_sha256="0" * 64)), "other bytes of the released n-gram lists"),
                             (json.dumps(dict(data, ngrams=data["ngrams"][1:])), "does not match its recorded digest"),
                             ('{"ngrams": [', "unreadable")):
            entry.write_text(damaged, encoding="utf-8")
            n = len(calls)
            assert fresh() == parsed and len(calls) == n + 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and why in err[0] and "rebuilding it" in err[0], err
            assert fresh() == parsed and len(calls) == n + 1  # rewritten: good again
    finally:
        ut._released_ngrams.cache_clear()
