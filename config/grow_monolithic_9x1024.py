# The monolithic baseline of config/grow_9x1024_3stages.py: the same 9-layer 1024-wide model (180.5M
# trainable with the frozen glyph table) trained in one go on identical total tokens: 22,890
# iterations x 131,072 tokens = 3 stages x 7,630 iterations.
# $ python train.py config/grow_monolithic_9x1024.py
out_dir = "out-grow-monolithic-9x1024"
datasets = {"wiki_en_ru": 0.9, "sft_qa": 0.1}
embedding = "glyph"
table_dim = 1024

n_layer = 9
n_head = 32
d_model = 1024
block_size = 1024
dropout = 0.0

batch_size = 16
gradient_accumulation_steps = 8
max_iters = 22890
learning_rate = 6e-4
warmup_iters = 500
lr_decay_iters = 22890
min_lr = 6e-5
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_iters = 100
log_interval = 50
compile = True
