"""
Print samples from a trained model (a checkpoint of train.py/grow.py, or a merged model of merge.py).

$ python sample.py --out_dir=out-shakespeare-glyph
$ python sample.py --ckpt=path/to/ckpt.pt --start="ROMEO:" --num_samples=3 --max_new_tokens=300
$ python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0.8 --top_k=200
$ python sample.py --help   # every key, its default and meaning
"""
import torch

from checkpoint import load_model, run_checkpoint
from unicode_tokenizer import checkpoint_tokenizer
from common import check_sampling, fail, resolve_device, script_main
from configurator import Config, configure, defaults_from, key_docs

# -----------------------------------------------------------------------------
out_dir = "out"  # samples from out_dir/ckpt.pt ...
ckpt = ""  # ... unless a checkpoint path is given here (e.g. a grow.py stage_3.pt or a merge.py model)
start = "\n"  # prompt text, or FILE:path to read it from a file
num_samples = 2  # samples to draw
max_new_tokens = 300  # tokens generated per sample
temperature = 0.8  # 1.0 = the model's distribution, < 1 more conservative, 0 = greedy
top_k = 200  # keep only the top_k most likely tokens (0 = all)
seed = 1337  # seeds the sampling
device = "auto"  # auto | cpu | cuda | cuda:N
tokenizer = ""  # "" = the tokenizer recorded in the checkpoint
# -----------------------------------------------------------------------------
DEFAULTS = defaults_from(globals())


def sample(cfg):
    cfg = Config(cfg)
    check_values(cfg)
    dev = resolve_device(cfg.device)
    path = cfg.ckpt or run_checkpoint(cfg.out_dir)
    model, ck = load_model(path, dev)
    tok = checkpoint_tokenizer(ck, path, cfg.tokenizer)
    prompt = cfg.start
    if prompt.startswith("FILE:"):
        with open(prompt[5:], encoding="utf-8") as f:
            prompt = f.read()
    ids = tok.encode(prompt) or [tok.eos_id]  # an empty prompt starts a fresh document
    x = torch.tensor([ids], dtype=torch.long, device=dev).repeat(cfg.num_samples, 1)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None, generator=g)
    texts = []
    for row in y.tolist():
        texts.append(tok.decode(row))
        print(texts[-1])
        print("---------------")
    return texts


def check_values(cfg):
    """The sampling values, checked before a model is loaded."""
    for key in ("num_samples", "max_new_tokens"):
        if cfg[key] < 1:
            fail(f"{key}={cfg[key]}: expected a positive whole number")
    if cfg.seed < 0:
        fail(f"seed={cfg.seed}: expected a number >= 0")
    check_sampling(cfg.temperature, cfg.top_k)


if __name__ == "__main__":
    script_main("sample.py", lambda argv: sample(configure(DEFAULTS, argv, verbose=False, docs=key_docs(__file__),
                                                            prog="sample.py")))
