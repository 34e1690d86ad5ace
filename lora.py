"""
LoRA for growth (grow.py): a low-rank update trained next to a frozen nn.Linear of an earlier block,
folded into that linear's weight at the end of the stage, so the saved model is a plain GPT again.
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

# the linears of a block that can take an adapter (grow.py's lora_targets names some of them)
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * x A^T B^T with base frozen. B starts at zero, so wrapping a
    layer does not change the model; after training, merge() folds B A into base.weight."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default, as in peft

    def forward(self, x):
        # in place on the base output (its backward does not need it): one [B, T, out] tensor less
        return self.base(x).add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    @torch.no_grad()
    def merge(self):
        """-> the base nn.Linear with the adapter folded in (computed in float32)."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
        self.base.weight.copy_((self.base.weight.float() + delta).to(self.base.weight.dtype))
        return self.base


def attach(model, blocks, targets, rank, alpha):
    """Wrap the target linears of the given blocks (their base weights stay frozen)."""
    for i in blocks:
        for t in targets:
            parent_name, name = t.split(".")
            parent = getattr(model.transformer.h[i], parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha))


def merge(model):
    """Replace every LoRALinear by its merged base: the model is a plain GPT again."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merge())
    return model


@torch.no_grad()
def merge_and_check(model, X):
    """Merge the adapters; the merged model's logits must equal the unmerged ones (float32, no TF32)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    was_training = model.training
    model.eval()
    try:
        before = model(X)[0].float()
        merge(model)
        after = model(X)[0].float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model.train(was_training)
    diff = (after - before).abs().max().item()
    if diff > 1e-4 * max(1.0, before.abs().max().item()):
        raise RuntimeError(f"LoRA merge changed the logits by up to {diff:.3g}")
    return diff
