# The papers' shape (docs/design.md §3): 16 layers x 1024, 32 heads (head dim 32), context 1024, 65,536-id
# bvv241-2-3 vocabulary, trainable input embedding (the baseline): 335.5M parameters in weight matrices (67.1M
# trainable table + 67.1M head + 201.3M blocks; 335.8M with biases and LayerNorms). For GPUs:
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_trainable_335m.py
# $ python train.py config/paper_trainable_335m.py   (one GPU: it runs all 32 accumulation steps itself)
# Identical to config/paper_glyph_335m.py except the embedding. Optimizer, schedule and batch are
# not published (docs/design.md §4): nanoGPT-style defaults, the same for both arms.
out_dir = "out-paper-trainable-335m"
embedding = "trainable"
table_dim = 0  # no frozen table
# data: python data/wikipedia/prepare.py --langs en,ru --out_dir data/wiki_en_ru && python data/sft_qa/prepare.py
datasets = {"wiki_en_ru": 0.9, "sft_qa": 0.1}  # the papers' "ru" models: English + Russian Wikipedia, ~10% QA

n_layer = 16
n_head = 32
d_model = 1024
block_size = 1024
dropout = 0.0
bias = True

# 16 sequences x 1024 tokens x 32 accumulation steps = 524,288 tokens per optimizer step
batch_size = 16
gradient_accumulation_steps = 32
max_iters = 17000  # ~8.9B tokens, the papers' ~9B per model
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 1000
lr_decay_iters = 17000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 500
eval_iters = 50
log_interval = 10
dtype = "bfloat16"
compile = True
