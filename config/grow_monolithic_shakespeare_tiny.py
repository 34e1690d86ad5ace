# The monolithic baseline of config/grow_shakespeare_tiny.py: the same 6-layer model trained in one
# go, all blocks at once, on identical total tokens (300 iterations x 8 x 128 = 3 x 100 stage iterations).
# $ python train.py config/grow_monolithic_shakespeare_tiny.py
out_dir = "out-grow-monolithic-shakespeare-tiny"
datasets = {"shakespeare": 1.0}
embedding = "glyph"
table_dim = 128

n_layer = 6
n_head = 4
d_model = 128
block_size = 128
dropout = 0.0

batch_size = 8
gradient_accumulation_steps = 1
max_iters = 300
learning_rate = 2e-3
warmup_iters = 10
lr_decay_iters = 300
min_lr = 2e-4
weight_decay = 0.1

eval_interval = 50
eval_iters = 10
log_interval = 10
