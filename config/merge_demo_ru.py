# The merge demonstration (docs/benchmarks.md, "Merge"), expert 2 of 2: Russian fortunes only (Debian fortunes-ru).
# $ python data/russian_offline/prepare.py && python train.py config/merge_demo_ru.py   (after config/merge_demo_en.py)
# then `python merge.py config/merge_demo_merge.py` (all steps: README, "Merging").
# Both experts use the same tokenizer and the same frozen glyph table (kind and table_dim), the
# prerequisite of a logit-average merge; they differ in data and depth.
out_dir = "out-merge-ru"
datasets = {"russian_offline": 1.0}
embedding = "glyph"
table_dim = 64  # set, not 0 (= d_model): the experts share one table whatever their widths (d_model: a multiple of it)

n_layer = 3
n_head = 2
d_model = 64
block_size = 64
dropout = 0.0

batch_size = 8
max_iters = 200
learning_rate = 3e-3
warmup_iters = 20
min_lr = 3e-4

eval_interval = 200
eval_iters = 10
log_interval = 50
progress = False
