# The trainable twin of config/paper_expert_zh_470m.py (paper 2's Chinese expert): every key the same
# except the input embedding, trained here from a random init instead of the frozen glyph table
# (and out_dir). The released pair it targets is best_bvv_zh (frozen) vs best_bvv_unfrozen_zh
# (docs/results.md, "What a full-size run should reproduce"). Same data as the frozen expert:
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_zh_470m_trainable.py
# tests/test_configs.py checks that the two files differ in those two keys only.
out_dir = "out-paper-expert-zh-trainable"
datasets = {"wiki_en_zh_max": 0.9, "sft_qa_max": 0.1}
tokenizer = "bvv241-max"  # 131,072 ids
embedding = "trainable"
table_dim = 1024  # unused by a trainable embedding; kept so the two files differ in embedding and out_dir only

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
