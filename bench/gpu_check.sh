#!/usr/bin/env bash
# Every GPU figure the README claims, in one command, on a machine with one or more NVIDIA GPUs:
#
#   bash bench/gpu_check.sh          # the paper's shape: 16 x 1024, 32 heads, context 1024, V 65,536, bf16
#   bash bench/gpu_check.sh --cpu    # the same steps at tiny shapes on the CPU (tests/test_gpu_check.py)
#
# In order: training tokens/s, MFU and peak memory (ours vs a nanoGPT reference) without and with
# torch.compile; a growth stage (3 new blocks on 6 frozen) vs its 9-block monolith; the merge's
# overhead over its experts; log-likelihood eval throughput (ours vs lm-evaluation-harness); the glyph
# PCA's exact int8 products (the abs table's shape) on the GPU against the CPU; and,
# with 2 or more GPUs, a 2-process NCCL DDP run of train.py. Sized to finish within ~8 minutes on
# one H100/H200. Each step prints its own table; the whole output is also kept in gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
exec > >(tee gpu_check.log) 2>&1

if [ "${1:-}" = --cpu ]; then
  DEV=cpu
  TRAIN="--shape=quickstart --device=cpu --batch_size=1 --warmup=1 --rounds=1 --steps=1"
  COMPILE=""  # torch.compile costs ~45 s cold on a CPU: the GPU run is where it is measured
  GROW="--device cpu --d_model 64 --n_head 4 --vocab 4096 --block_size 64 --batch_size 2 --steps 1 --no_rss"
  MERGE="--device=cpu --experts=1x64,1x64 --batch_size=2 --seq_len=32 --gen_tokens=2 --reps=1"
  EVAL="--device cpu --arc_items 4 --mmlu_subjects 1 --mmlu_per_subject 2 --d_model 64 --n_layer 1 --block_size 256"
  DDP_ARGS="--device=cpu --n_layer=1 --d_model=64 --n_head=4 --block_size=64 --batch_size=2"
  GLYPH="2048 256 200 cpu"  # rows, pixels, live axes, device
  NGPU=2  # the DDP path runs on two CPU processes with gloo, so it is exercised too
else
  DEV=cuda
  TRAIN="--shape=paper --device=cuda --batch_size=16 --warmup=3 --rounds=4 --steps=5"
  COMPILE="--compile=True"
  GROW="--device cuda --d_model 1024 --n_head 32 --vocab 65536 --block_size 1024 --batch_size 8 --steps 10"
  MERGE="--preset=gpu --device=cuda"
  EVAL="--device cuda --arc_items 570 --mmlu_subjects 8 --mmlu_per_subject 50 --d_model 1024 --n_layer 16 --n_head 32 --block_size 1024 --batch_size 64"
  DDP_ARGS="--device=cuda --n_layer=16 --d_model=1024 --n_head=32 --block_size=1024 --batch_size=8 --table_dim=1024"
  GLYPH="131072 4096 3663 cuda"  # the abs table: 131,072 tokens, 64x64 cells, 3,663 live axes
  NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPUs', torch.cuda.device_count())"

section() { echo; echo "== $1 ($(date +%T))"; }

section "training, eager: tokens/s, MFU, peak memory"
python bench/bench_train.py $TRAIN --compile=False
if [ -n "$COMPILE" ]; then
  section "training, torch.compile"
  python bench/bench_train.py $TRAIN $COMPILE
fi

section "growth: a stage of 3 new blocks on 6 frozen vs the 9-block monolith"
python bench/bench_grow.py $GROW

section "merge: two experts vs their logit-average merge"
python bench/bench_merge.py $MERGE

section "evaluation: log-likelihood scoring, ours vs lm-evaluation-harness"
python bench/bench_eval.py $EVAL

section "glyph PCA: the exact int8 products on $DEV against the CPU"
python bench/int8_products.py $GLYPH

if [ "$NGPU" -ge 2 ]; then
  section "DDP: train.py on 2 processes ($([ $DEV = cuda ] && echo NCCL || echo gloo))"
  tmp=$(mktemp -d)
  # random text in a tiny prepared dataset: the machine needs no corpus and no network
  python - "$tmp/data/random" <<'EOF'
import random, sys
from data.common import write_dataset
from unicode_tokenizer import get_tokenizer
rng = random.Random(0)
docs = [" ".join("".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(2, 9))) for _ in range(400))
        for _ in range(60)]
write_dataset(sys.argv[1], docs[:55], docs[55:], get_tokenizer("bvv241-2-3"), source="random words")
EOF
  torchrun --standalone --nproc_per_node=2 train.py $DDP_ARGS --data_root="$tmp/data" --datasets="{'random': 1.0}" \
    --out_dir="$tmp/out" --max_iters=20 --eval_interval=20 --eval_iters=2 --log_interval=5 \
    --gradient_accumulation_steps=2 --progress=False
  rm -rf "$tmp"
else
  section "DDP: skipped (one GPU; the NCCL run needs two)"
fi
section "done: every figure above; the log is in gpu_check.log"
