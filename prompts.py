"""
The prompt formats of the papers' evaluation (docs/design.md §7), in ONE place: eval.py builds its prompts
with these functions and data/sft_qa/prepare.py writes its training items with the very same ones,
so the two can never drift apart by a byte.

Every prompt ends with "Answer:". A training item is prompt + ANSWER_SEP + answer, where
ANSWER_SEP = "" : the answer follows the colon directly ("Answer:B", "Answer:Denver Broncos").
Why no space: under bvv241 the space is a token of its own, and the paper protocol gives MMLU one
single new token, so a model trained to write "Answer: B" would spend that token on the space and be
marked wrong every time (the "known weakness" of docs/design.md §7). The paper's scoring takes the first
non-space character, so a model that does emit " B" is still scored right; log-likelihood scoring
should score the continuation ANSWER_SEP + answer, i.e. "B".

Fields are inserted exactly as the datasets store them (no stripping, no re-casing), so prompts are
byte-identical to what the original evaluation script builds from the same rows.
"""

ANSWER_SEP = ""
LETTERS = "ABCDEFGHIJ"
LANGUAGE_NAMES = {"en": "English", "ru": "Russian", "zh": "Chinese"}


def mmlu_prompt(question, choices):
    """MMLU: options on ONE line, lettered A), B), ... in the given order."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"mmlu_prompt: expected 2-{len(LETTERS)} choices, got {len(choices)}")
    options = " ".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"Question: {question}\nOptions: {options}\nAnswer:"


def arc_prompt(question, labels, texts):
    """ARC-Easy / ARC-Challenge / CommonsenseQA: one option per line, with the dataset's own labels
    (ARC has a few items labelled 1-4 instead of A-D; they are kept as they are)."""
    if len(labels) != len(texts) or not labels:
        raise ValueError(f"arc_prompt: {len(labels)} labels for {len(texts)} option texts")
    options = "".join(f"\n{label}) {text}" for label, text in zip(labels, texts))
    return f"Question: {question}\nOptions:{options}\nAnswer:"


def squad_prompt(context, question):
    """SQuAD v2 (extractive): the answer is a span of the context."""
    return f"Context: {context}\nQuestion: {question}\nAnswer:"


def boolq_prompt(passage, question):
    """BoolQ (yes/no). Not in the papers' evaluation table; we use the SQuAD layout. BoolQ stores its
    questions lower-case without a question mark ("is france the same timezone as the uk"): one "?"
    is appended when missing, nothing else changes. Answers: "yes" / "no" (see boolq_answer)."""
    q = question if question.rstrip().endswith("?") else question + "?"
    return squad_prompt(passage, q)


def boolq_answer(value):
    return "yes" if value else "no"


def qa_prompt(question):
    """Closed-book QA (TriviaQA, NQ-Open): no context, the answer text follows."""
    return f"Question: {question}\nAnswer:"


def translate_prompt(src_lang, tgt_lang, src):
    """OPUS-100 translation. src_lang / tgt_lang: a code in LANGUAGE_NAMES ("en") or a full name
    ("English")."""
    names = [LANGUAGE_NAMES.get(lang, lang) for lang in (src_lang, tgt_lang)]
    for lang, name in zip((src_lang, tgt_lang), names):
        if name not in LANGUAGE_NAMES.values():
            raise ValueError(f"translate_prompt: unknown language {lang!r}; expected one of "
                             f"{sorted(LANGUAGE_NAMES)} or {sorted(LANGUAGE_NAMES.values())}")
    return f"Translate from {names[0]} to {names[1]}:\n{src}\nAnswer:"


def with_answer(prompt, answer):
    """A training item: the prompt, then the answer right after "Answer:" (see ANSWER_SEP)."""
    if not prompt.endswith("Answer:"):
        raise ValueError(f"with_answer: prompt must end with 'Answer:', got ...{prompt[-20:]!r}")
    return prompt + ANSWER_SEP + answer
