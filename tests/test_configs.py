"""Configs that come in pairs: a trainable twin differs from its frozen config in the embedding (and
out_dir) only, so the frozen-vs-trainable comparison is one command each at the same shape."""
import os

import pytest

import grow as G
import train as T
from configurator import configure, read_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWINS = [("config/paper_expert_ru_470m.py", "config/paper_expert_ru_470m_trainable.py"),
         ("config/paper_expert_zh_470m.py", "config/paper_expert_zh_470m_trainable.py")]


@pytest.mark.parametrize("frozen,twin", TWINS, ids=[t[1] for t in TWINS])
def test_trainable_twin_differs_only_in_embedding_and_out_dir(frozen, twin):
    a, b = (read_config_file(os.path.join(REPO, p)) for p in (frozen, twin))
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} == {"embedding", "out_dir"}
    assert (a["embedding"], b["embedding"]) == ("glyph", "trainable") and b["out_dir"] == a["out_dir"] + "-trainable"
    # train.py takes it as it is, and the twin is the same model with its 131,072 x 1024 table trainable
    cfgs = [configure(T.DEFAULTS, [os.path.join(REPO, p)], verbose=False) for p in (frozen, twin)]
    counts = [T.meta_model(c, 131072, c["n_layer"]).param_counts() for c in cfgs]
    assert counts[0]["total"] == counts[1]["total"] and counts[1]["trainable"] - counts[0]["trainable"] == 131072 * 1024
