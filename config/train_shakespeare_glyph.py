# The quick start: a small frozen-glyph GPT on the works of Shakespeare: about 6 minutes of training on a
# quiet 2-core CPU (6 min 16 s for prepare + train + sample on 2026-12-01, README); more on a busy machine.
# $ python train.py config/train_shakespeare_glyph.py && python sample.py --out_dir=out-shakespeare-glyph
# Only the input embedding differs from config/train_shakespeare_trainable.py.
out_dir = "out-shakespeare-glyph"
datasets = {"shakespeare": 1.0}
embedding = "glyph"  # the frozen Unifont glyph table, PCA-truncated to table_dim columns
table_dim = 0  # 0 = d_model (128 here, the same table and run as table_dim = 128), so --d_model=N just works

# the model: 4 layers x 128 wide; with a 65,536-id vocabulary the output head (8.4M weights)
# is most of the compute, so the body stays small. Wider or deeper, e.g.
# --n_layer=6 --d_model=192 --n_head=6: n_head must divide d_model, and the table follows d_model
n_layer = 4
n_head = 4
d_model = 128
block_size = 128
dropout = 0.0

batch_size = 8
gradient_accumulation_steps = 1
max_iters = 500
learning_rate = 2e-3
warmup_iters = 30
min_lr = 2e-4
weight_decay = 0.1

eval_interval = 100
eval_iters = 10
log_interval = 10
