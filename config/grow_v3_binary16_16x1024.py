# The long growth run of "Growing Transformers" v3 (arXiv 2507.07129v3; docs/results.md): 16 layers,
# d_model 1024, 32 heads, grown on a frozen 16-dim binary token-ID code (binary16: each of the 65,536
# ids of bvv241-2-3 is its 16 bits, lifted to d_model), with LoRA-only stages interleaved between the
# growth stages, on FineWeb-Edu + Cosmopedia, ~68.9B tokens. The paper: 269.7M parameters, 28.92% MMLU
# after its last (LoRA) stage, adapters merged. Not published, so our choices: the schedule below (8
# growth stages of 2 layers, a LoRA-only stage after layers 8, 12 and 16), equal tokens per stage,
# one fixed data mixture (the paper's changes across stages), learning rates, LoRA rank. Merged, the
# model has 269.8M parameters: the paper's 269.7M plus our output head's 65,536 biases.
# Data (tokenized with bvv241-2-3; each folder a few hundred GB of parquet read as a stream):
# $ python data/fineweb_edu/prepare.py --subset sample/100BT --max_tokens 45e9 --out_dir data/fineweb_edu
# $ python data/cosmopedia/prepare.py --out_dir data/cosmopedia                     # all of it, ~25B tokens
# $ python grow.py config/grow_v3_binary16_16x1024.py --plan_only   # the stages and their parameter counts
# $ torchrun --standalone --nproc_per_node=8 grow.py config/grow_v3_binary16_16x1024.py
# Then the depth curve: python eval.py --ckpt out-grow-v3-binary16/stage_<i>.pt for each stage, and
# $ python grow.py config/grow_v3_binary16_16x1024.py --curve_only
out_dir = "out-grow-v3-binary16"
datasets = {"fineweb_edu": 0.65, "cosmopedia": 0.35}  # Cosmopedia is the smaller corpus: less of it repeats
tokenizer = "bvv241-2-3"  # 65,536 ids: a 16-bit code per id
embedding = "binary16"
table_dim = 16

growth = [2, 2, 2, 2, 0, 2, 2, 0, 2, 2, 0]  # 16 layers; 0 = a LoRA-only stage over the whole stack
stage_lora = [0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]
new_block_init = "zero_proj"
lora_rank = 16
lora_alpha = 32.0
n_layer = 16
n_head = 32
d_model = 1024
block_size = 1024
dropout = 0.0

# 16 x 1024 x 32 = 524,288 tokens per optimizer step
batch_size = 16
gradient_accumulation_steps = 32
stage_tokens = [6_263_000_000] * 11  # 68.9B tokens over 11 stages, 11,946 iterations each
stage_lr = [3e-4, 3e-4, 3e-4, 3e-4, 1e-4, 3e-4, 3e-4, 1e-4, 3e-4, 3e-4, 1e-4]  # LoRA stages lower
warmup_iters = 500  # per stage
min_lr = 3e-5
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_iters = 50
log_interval = 10
dtype = "bfloat16"
compile = True
