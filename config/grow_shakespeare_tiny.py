# Layer-wise growth on CPU in minutes: 3 stages of 2 blocks (6 layers, 128 wide) on Shakespeare.
# $ python data/shakespeare/prepare.py && python grow.py config/grow_shakespeare_tiny.py
# $ python sample.py --ckpt=out-grow-shakespeare-tiny/stage_3.pt   # the grown model: stage_N.pt after stage N
# The monolithic 6-layer baseline with identical total tokens (3 x 100 iterations x 1,024 tokens):
# $ python train.py config/grow_monolithic_shakespeare_tiny.py
out_dir = "out-grow-shakespeare-tiny"
datasets = {"shakespeare": 1.0}
embedding = "glyph"
table_dim = 0  # 0 = d_model (128 here, the same table as table_dim = 128), so --d_model=N just works

growth = [2, 2, 2]
new_block_init = "zero_proj"  # each stage starts exactly where the previous one ended
n_layer = 6  # the schedule must add up to this
n_head = 4
d_model = 128
block_size = 128
dropout = 0.0

batch_size = 8
gradient_accumulation_steps = 1
stage_iters = [100, 100, 100]
stage_lr = [2e-3, 2e-3, 2e-3]
warmup_iters = 10  # per stage (each stage has its own warmup + cosine decay)
min_lr = 2e-4
weight_decay = 0.1

eval_interval = 50
eval_iters = 10
log_interval = 10
