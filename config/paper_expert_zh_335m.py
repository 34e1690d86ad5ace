# Paper 2's Chinese expert (SPEC §6) at the 335M shape of config/paper_glyph_335m.py: English + Chinese
# Wikipedia with ~10% instruction-format QA, frozen 1024-dim glyph table. The papers' experts used the
# 131,072-id bvv241-max vocabulary (0.5B parameters); this repository builds the 65,536-id bvv241-2-3
# only, hence 335.5M. Data: a budget of 8e9 UTF-8 bytes per language; the run sees ~9B tokens:
# $ python data/wikipedia/prepare.py --langs en,zh --max_bytes 8e9 --sample 0.5 --out_dir data/wiki_en_zh
# $ python data/sft_qa/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_zh_335m.py
# Its twin is config/paper_expert_ru_335m.py (same table, same everything but the data); merge them
# with `python merge.py config/paper_merge_ru_zh.py`.
out_dir = "out-paper-expert-zh"
datasets = {"wiki_en_zh": 0.9, "sft_qa": 0.1}
embedding = "glyph"
table_dim = 1024

n_layer = 16
n_head = 32
d_model = 1024
block_size = 1024
dropout = 0.0
bias = True

# 16 x 1024 x 32 = 524,288 tokens per optimizer step; 17,000 steps = 8.9B tokens
batch_size = 16
gradient_accumulation_steps = 32
max_iters = 17000
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
