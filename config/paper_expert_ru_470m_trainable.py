# The trainable twin of config/paper_expert_ru_470m.py (paper 2's Russian expert): every key the same
# except the input embedding, trained here from a random init instead of the frozen glyph table
# (and out_dir). The released pair it targets is best_bvv_ru (frozen) vs best_bvv_unfrozen_ru
# (docs/results.md, "What a full-size run should reproduce"). Same data as the frozen expert:
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_ru_470m_trainable.py
import os

with open(os.path.join(os.path.dirname(__file__), "paper_expert_ru_470m.py")) as _f:
    exec(_f.read())  # the frozen expert's keys, then the two that differ
out_dir = "out-paper-expert-ru-trainable"
embedding = "trainable"
