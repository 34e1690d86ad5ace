# The merge demonstration, step 3: average the two experts' logits, then score every expert and the
# merge on each domain's validation set (train.py's fixed validation batches, the same for all).
# $ python data/shakespeare/prepare.py && python data/russian_offline/prepare.py
# $ python train.py config/merge_demo_en.py && python train.py config/merge_demo_ru.py
# $ python merge.py config/merge_demo_merge.py
# $ python sample.py --ckpt=out-merge/merged.pt
# $ python merge.py config/merge_demo_merge.py --mode=logprobs --out=out-merge/merged_logprobs.pt
experts = ["out-merge-en/ckpt.pt", "out-merge-ru/ckpt.pt"]
weights = ""  # equal
mode = "logits"  # the paper's
out = "out-merge/merged.pt"
datasets = "shakespeare,russian_offline"
eval_iters = 40
batch_size = 8
block_size = 64
