"""
Speed benchmark: eval.py's log-likelihood scoring vs lm-evaluation-harness through lm_eval_adapter,
same model, same items, in one run. Checks that both pick the same option for every item and
reports the wall-clock ratio.

    pip install lm_eval==0.4.13
    python bench/bench_eval.py                                 # synthetic items in ARC / MMLU file formats
    python bench/bench_eval.py --data_dir ~/.cache/glyphgpt/eval/data --arc_items 570 --mmlu_per_subject 20

Without --data_dir the items are generated (seeded) in the original ARC-Easy JSONL and MMLU CSV
formats, with question/option lengths like the real sets; timing depends on lengths, not on wording.
The model is a randomly initialised small GPT (or --ckpt). Both sides run `--batch_size` rows per
forward pass. Three timings per task:
  ours            eval.evaluate(..., "loglik"): grouped rows, one pass per prompt for letter options,
                  output head only at the scored positions (our GPT)
  ours, generic   the same scorer on a wrapper that only offers model(idx) (full logits): the path
                  merged models take, so the gain of grouping alone
  lm-eval         lm_eval.simple_evaluate(model=GlyphLM(...), tasks=[a local task of the same items])
"""
import argparse
import csv
import json
import os
import sys
import random
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live one level up
from unicode_tokenizer import checkpoint_tokenizer
import eval as E
from data.benchmarks import MMLU_SUBJECTS
from model import GPT, GPTConfig

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or has had "
         "not first one their its new after but who they two her she been other when there all during into "
         "school time may years more most only over city some world would where later up such used many can "
         "state about national out known university united then made north south water energy plant animal "
         "earth light heat force cell rock moon sun planet student teacher experiment measure change process "
         "law market price theory model number equation function value system data group study").split()


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize()


def synthesize(data_dir, arc_items, mmlu_subjects, mmlu_per_subject, seed=0):
    """Items in the original formats, lengths like the real sets (ARC question ~20 words, options 1-6;
    MMLU question ~10-60 words, options 1-12)."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(data_dir, "arc", "ARC-Easy"), exist_ok=True)
    with open(os.path.join(data_dir, "arc", "ARC-Easy", "ARC-Easy-Dev.jsonl"), "w") as f:
        for i in range(arc_items):
            labels = "ABCD" if rng.random() < 0.95 else "ABCDE"
            choices = [dict(text=sentence(rng, 1, 6).lower(), label=lab) for lab in labels]
            f.write(json.dumps(dict(id=f"synthetic_{i}", question=dict(stem=sentence(rng, 8, 35) + "?", choices=choices),
                                    answerKey=rng.choice(labels))) + "\n")
    os.makedirs(os.path.join(data_dir, "mmlu", "test"), exist_ok=True)
    for subject in MMLU_SUBJECTS[:mmlu_subjects]:
        with open(os.path.join(data_dir, "mmlu", "test", f"{subject}_test.csv"), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            for _ in range(mmlu_per_subject):
                w.writerow([sentence(rng, 10, 60) + "?"] + [sentence(rng, 1, 12) for _ in range(4)] + [rng.choice("ABCD")])


class FullLogitsOnly(torch.nn.Module):
    """Only the generic model interface (what a merged model offers): model(idx) -> full logits."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, idx, targets=None):
        return self.inner(idx)


def run_ours(model, tok, task, data_dir, batch_size, limit):
    t0 = time.perf_counter()
    res = E.evaluate(model, tok, [task], "loglik", data_dir, limit=limit, batch_size=batch_size, max_tokens=1 << 30,
                     dtype="float32", log_samples=True)[task]
    return time.perf_counter() - t0, res


def run_lm_eval(model, tok, task, items, batch_size, workdir):
    import lm_eval
    from lm_eval_adapter import GlyphLM
    path = os.path.join(workdir, f"{task}.jsonl")
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps(dict(query=it["ll_context"], choices=it["ll_choices"], gold=it["gold"])) + "\n")
    # the request strings are ours verbatim: context = prompt, continuation = option (no extra delimiter)
    cfg = dict(task=f"glyph_{task}", dataset_path="json", dataset_kwargs=dict(data_files={"test": path}),
               test_split="test", output_type="multiple_choice", doc_to_text="{{query}}", doc_to_choice="{{choices}}",
               doc_to_target="{{gold}}", target_delimiter="",
               metric_list=[dict(metric="acc", aggregation="mean", higher_is_better=True),
                            dict(metric="acc_norm", aggregation="mean", higher_is_better=True)])
    lm = GlyphLM(model=model, tokenizer=tok, batch_size=batch_size)
    inner = {"s": 0.0}
    scorer = lm._loglikelihood_tokens

    def timed(requests, disable_tqdm=False):
        t = time.perf_counter()
        out = scorer(requests, disable_tqdm=True)
        inner["s"] += time.perf_counter() - t
        return out
    lm._loglikelihood_tokens = timed
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=[cfg], log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    total = time.perf_counter() - t0
    samples = sorted(res["samples"][f"glyph_{task}"], key=lambda s: s["doc_id"])
    lls = [[r[0] for r in s["filtered_resps"]] for s in samples]
    return total, inner["s"], lls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", help="real benchmark files (eval.py layout); default: synthetic items")
    ap.add_argument("--arc_items", type=int, default=300)
    ap.add_argument("--mmlu_subjects", type=int, default=8)
    ap.add_argument("--mmlu_per_subject", type=int, default=25)
    ap.add_argument("--ckpt", help="checkpoint to use instead of a random small GPT")
    ap.add_argument("--d_model", type=int, default=128)
    ap.add_argument("--n_layer", type=int, default=2)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--block_size", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass, both sides")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the lm-eval task reads a local JSONL file

    from unicode_tokenizer import get_tokenizer
    if args.ckpt:
        model, ckpt = E.open_model(args.ckpt, args.device)
        tok = checkpoint_tokenizer(ckpt, args.ckpt)
    else:
        tok = get_tokenizer("bvv241-2-3")
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                              n_head=args.n_head, d_model=args.d_model, embedding="trainable")).to(args.device).eval()
    workdir = tempfile.mkdtemp(prefix="bench_eval_")
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = os.path.join(workdir, "data")
        synthesize(data_dir, args.arc_items, args.mmlu_subjects, args.mmlu_per_subject)
    limit = dict(arc_easy=args.arc_items, mmlu=args.mmlu_per_subject)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, block_size "
          f"{model.config.block_size}, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"batch_size {args.batch_size}")
    with torch.no_grad():  # warm-up: first-call allocations out of the timings
        model(torch.zeros((2, 8), dtype=torch.long, device=args.device))
    figures = {}
    for task in ("arc_easy", "mmlu"):
        items = E.load_task(task, data_dir, limit[task])
        t_ours, res = run_ours(model, tok, task, data_dir, args.batch_size, limit[task])
        t_gen, res_gen = run_ours(FullLogitsOnly(model), tok, task, data_dir, args.batch_size, limit[task])
        t_lm, t_lm_inner, lls = run_lm_eval(model, tok, task, items, args.batch_size, workdir)
        ours_picks = [s["pick"] for s in res["samples"]]
        lm_picks = [max(range(len(l)), key=l.__getitem__) for l in lls]
        max_diff = max(abs(a - b) for s, l in zip(res["samples"], lls) for a, b in zip(s["loglik"], l))
        same = sum(a == b for a, b in zip(ours_picks, lm_picks))
        gen_same = sum(a["pick"] == b["pick"] for a, b in zip(res["samples"], res_gen["samples"]))
        figures[task] = dict(items=len(items), requests=sum(len(it["ll_choices"]) for it in items),
                             identical_choices=same, identical_choices_generic=gen_same, max_abs_loglik_diff=max_diff,
                             ours_s=round(t_ours, 3), ours_generic_s=round(t_gen, 3), lm_eval_s=round(t_lm, 3),
                             lm_eval_scoring_s=round(t_lm_inner, 3), speedup=round(t_lm / t_ours, 2),
                             speedup_generic=round(t_lm / t_gen, 2), speedup_vs_scoring_only=round(t_lm_inner / t_ours, 2),
                             acc_ours=res["mean"])
        f = figures[task]
        print(f"{task:>9}: {f['items']} items / {f['requests']} requests | same choice {same}/{len(items)} "
              f"(max |Δ loglik| {max_diff:.1e}) | ours {t_ours:.2f}s, ours generic path {t_gen:.2f}s, "
              f"lm-eval {t_lm:.2f}s (of which scoring {t_lm_inner:.2f}s) | speedup {f['speedup']:.1f}x "
              f"(generic path {f['speedup_generic']:.1f}x; vs lm-eval's scoring alone {f['speedup_vs_scoring_only']:.1f}x)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(args=vars(args), figures=figures), fh, indent=1)
    return figures


if __name__ == "__main__":
    main()
