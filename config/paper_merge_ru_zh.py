# Paper 2's merge (docs/design.md §6) of the two 16 x 1024 experts (bvv241-max, 131,072 ids, 469.8M
# parameters each): average their logits, no further training, then score both experts and the merge
# on each domain's validation set (the same fixed batches for all).
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_ru_470m.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/paper_expert_zh_470m.py
# $ python merge.py config/paper_merge_ru_zh.py
# $ python eval.py --ckpt out-paper-merge-ru-zh/merged.pt --tasks paper,translation --protocol paper
experts = ["out-paper-expert-ru/ckpt.pt", "out-paper-expert-zh/ckpt.pt"]
weights = ""  # equal, as in the paper
mode = "logits"  # the paper's: average of raw logits
out = "out-paper-merge-ru-zh/merged.pt"
datasets = "wiki_en_ru_max,wiki_en_zh_max,sft_qa_max"  # prepared with bvv241-max (see the expert configs)
eval_iters = 100
batch_size = 8
block_size = 1024
