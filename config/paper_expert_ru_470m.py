# Paper 2's Russian expert (docs/design.md §6) at the 16 x 1024 shape of config/paper_glyph_335m.py:
# English + Russian Wikipedia with ~10% instruction-format QA, frozen 1024-dim glyph table, and the
# 131,072-id bvv241-max vocabulary of the released 0.5B experts (their model cards say so). With that
# vocabulary the model has 469.8M parameters in weight matrices (134.2M frozen table + 134.2M head +
# 201.3M blocks; 470.1M with biases and norms).
# Data, tokenized with bvv241-max (a budget of 8e9 UTF-8 bytes per language; the run sees ~9B tokens):
# $ python data/wikipedia/prepare.py --langs en,ru --max_bytes 8e9 --sample 0.5 --tokenizer bvv241-max --out_dir data/wiki_en_ru_max
# $ python data/sft_qa/prepare.py --tokenizer bvv241-max --out_dir data/sft_qa_max
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_ru_470m.py
# Its twin is config/paper_expert_zh_470m.py (same tokenizer, same table, same everything but the
# data); merge them with `python merge.py config/paper_merge_ru_zh.py`.
out_dir = "out-paper-expert-ru"
datasets = {"wiki_en_ru_max": 0.9, "sft_qa_max": 0.1}
tokenizer = "bvv241-max"  # 131,072 ids
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
