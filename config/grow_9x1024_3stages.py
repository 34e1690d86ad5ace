# The controlled growth study of "Growing Transformers" (docs/design.md §5), one GPU:
# d_model 1024, 32 heads, 65,536-id bvv241 vocabulary, frozen glyph table, 9 layers grown in three
# stages of three (1-3 -> freeze -> 4-6 -> freeze -> 7-9). Trainable per stage: 3 blocks + head +
# final norm = 105.0M (check without a GPU: python grow.py config/grow_9x1024_3stages.py --plan_only).
# $ python grow.py config/grow_9x1024_3stages.py
# Other arms of the study: --embedding=binary16 --table_dim=16, or --embedding=trainable (trained in
# stage 1 only, frozen after). Monolithic baseline, identical total tokens:
# $ python train.py config/grow_monolithic_9x1024.py
# Tokens per stage, learning rates and the new-block init are not published: our choices below.
out_dir = "out-grow-9x1024"
datasets = {"wiki_en_ru": 0.9, "sft_qa": 0.1}  # docs/design.md §4: about 10% of batches in SFT format
embedding = "glyph"
table_dim = 1024

growth = [3, 3, 3]
new_block_init = "zero_proj"
n_layer = 9
n_head = 32
d_model = 1024
block_size = 1024
dropout = 0.0

batch_size = 16
gradient_accumulation_steps = 8  # 131,072 tokens per iteration
stage_tokens = [1_000_000_000, 1_000_000_000, 1_000_000_000]  # 7,630 iterations each
stage_lr = [6e-4, 6e-4, 6e-4]
warmup_iters = 500  # per stage
min_lr = 6e-5
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_iters = 100
log_interval = 50
compile = True
