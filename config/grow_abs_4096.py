# The abs-bvv growth recipe of "Growing Transformers" (docs/design.md §5) at its width: d_model 4096, 32 heads,
# 6 layers grown ONE at a time on a frozen 4096-dim glyph table (64x64 cells, the bvv241-max
# distortion constants) of the 131,072-id bvv241-abs vocabulary (the same token strings as bvv241-max);
# layers 5 and 6 train together with LoRA adapters on all earlier layers, merged into them after the
# stage. 2,281.7M parameters in weight matrices at 6 layers (536.9M frozen table + 536.9M head +
# 1,207.9M blocks). Our choices: the unpublished tokens per stage, learning rates, new-layer init, LoRA rank.
# Data: tokenized with bvv241-abs (= bvv241-max ids), see config/paper_expert_ru_470m.py for the commands.
# $ python glyph_tools.py --tokenizer bvv241-abs --kind glyph --table_dim 4096 --cell 64 --constants bvv241-max --out tables/glyph_c64_d4096.pt
# $ python grow.py config/grow_abs_4096.py --plan_only     # per-stage parameter counts, no GPU needed
# $ torchrun --standalone --nproc_per_node=8 grow.py config/grow_abs_4096.py
out_dir = "out-grow-abs-4096"
datasets = {"wiki_en_ru_max": 0.9, "sft_qa_max": 0.1}  # see config/paper_expert_ru_470m.py for the data commands
tokenizer = "bvv241-abs"  # 131,072 ids, the same ids as bvv241-max
embedding = "glyph"
table_path = "tables/glyph_c64_d4096.pt"
table_dim = 4096

growth = [1, 1, 1, 1, 1, 1]
new_block_init = "zero_proj"
lora_from_stage = 5
lora_rank = 16
lora_alpha = 32.0
n_layer = 6
n_head = 32
d_model = 4096
block_size = 1024
dropout = 0.0

# 8 x 1024 x 64 = 524,288 tokens per optimizer step
batch_size = 8
gradient_accumulation_steps = 64
stage_tokens = [2_000_000_000] * 6  # 3,815 iterations per stage, 12B tokens in all
stage_lr = [3e-4, 3e-4, 3e-4, 3e-4, 2e-4, 2e-4]
warmup_iters = 200  # per stage
min_lr = 3e-5
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 500
eval_iters = 50
log_interval = 10
dtype = "bfloat16"
compile = True
