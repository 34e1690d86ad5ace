"""Shared pytest fixtures: a tiny prepared corpus that the training tests learn in a few steps, the
default tokenizer, and one torch thread for modules of tiny models."""
import random

import pytest
import torch


def make_text(seed, n_lines):
    """A small repetitive language: learnable within a few dozen steps."""
    rng = random.Random(seed)
    who = ["the king", "a fool", "my lord", "the queen", "sweet romeo"]
    verbs = ["doth speak", "shall go", "will weep", "hath slept"]
    return "\n".join(f"{rng.choice(who)} {rng.choice(verbs)} to {rng.choice(who)}." for _ in range(n_lines))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """data_root/tiny (the corpus), /short (3 tokens per split), /zzz (a second domain)."""
    from data.common import write_dataset
    from unicode_tokenizer import get_tokenizer
    root = tmp_path_factory.mktemp("data")
    tok = get_tokenizer("bvv241-2-3")
    docs = [make_text(i, 40) for i in range(40)]
    write_dataset(str(root / "tiny"), docs[:36], docs[36:], tok, source="test")
    write_dataset(str(root / "short"), ["ab"], ["cd"], tok, source="test")
    write_dataset(str(root / "zzz"), ["z" * 3000], ["z" * 500], tok, source="test")
    return str(root)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: torch's second thread only spins waiting for the
    first (generation ran ~50x slower with 2 threads under load). Modules opt in with
    pytestmark = pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    from unicode_tokenizer import get_tokenizer
    return get_tokenizer("bvv241-2-3")
