"""
The output head and its cross-entropy in one pass over row chunks, for training on the CPU.

With a 65,536-id vocabulary the [tokens, vocab] logits dwarf the rest of a small model. The plain
route (lm_head, then F.cross_entropy, then autograd) materialises the logits, then the
log-probabilities, and in backward an [N, V] gradient: three full passes over that tensor. Here each
chunk of rows is multiplied by the head, turned into softmax - onehot in place and multiplied back
while it is still in cache; backward only scales the stored gradients. Same loss and gradients as
F.cross_entropy (mean over targets != -1); tests/test_train.py compares them. model.GPT.forward uses
it on the CPU only: on a GPU, under bf16 autocast and torch.compile, the plain route is already fused.
docs/benchmarks.md has the measured gain.
"""
import torch

CHUNK_ELEMS = 1 << 26  # logits per chunk: 256 MB of float32 (1,024 rows at 65,536 ids)


def head_loss(x, weight, bias, targets):
    """Mean cross-entropy of the head (weight, bias) on x [N, d] against targets [N] (-1 ignored),
    differentiable w.r.t. x, weight and bias."""
    # Smaller chunks fit the cache better but make more, thinner matmuls and re-read the head's
    # gradient once per chunk: measured slower on CPU.
    chunk = max(1, CHUNK_ELEMS // weight.shape[0])
    if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (x, weight, bias)):
        return _HeadLoss.apply(x, weight, bias, targets, chunk)
    return _head_loss(x, weight, bias, targets, chunk)[0]


def _head_loss(x, weight, bias, targets, chunk, want_x=False, want_w=False, want_b=False):
    """Output head + mean cross-entropy (targets == -1 ignored) over row chunks of x [N, d].
    With want_*, also the gradients of that loss w.r.t. x / weight / bias, computed in the same pass.

    Per chunk the [c, V] block is touched only 4 times besides the matmuls (max, subtract, exp, sum):
    the gradient w * (softmax - onehot) is never formed. Its row scale w / sum is applied to the small
    [c, d] side of each matmul instead, and the one-hot part is a gather / index_add of c rows."""
    n_valid = (targets != -1).sum().clamp(min=1)
    gx = torch.empty_like(x) if want_x else None
    gw = torch.empty_like(weight) if want_w else None  # written by the first chunk, then accumulated
    gb = torch.empty_like(bias) if (bias is not None and want_b) else None
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xc, tc = x[s:s + chunk], targets[s:s + chunk]
        logits = (torch.addmm(bias, xc, weight.t()) if bias is not None else xc @ weight.t()).float()
        mask = tc != -1
        tgt = tc.clamp(min=0)
        target_logit = logits.gather(1, tgt.unsqueeze(1))
        mx = logits.amax(dim=-1, keepdim=True)
        e = logits.sub_(mx).exp_()  # unnormalised softmax, in place
        total = e.sum(dim=-1, keepdim=True)
        loss += ((mx + total.log() - target_logit).squeeze(1) * mask).sum()
        if gx is None and gw is None and gb is None:
            continue
        w = (mask.to(x.dtype) / n_valid).unsqueeze(1)  # [c, 1]: d loss / d logits = w * (softmax - onehot)
        scale = w / total.to(x.dtype)  # softmax * w == e * scale
        e = e.to(x.dtype)
        if gx is not None:
            g = gx[s:s + chunk]
            torch.mm(e, weight, out=g)
            g.mul_(scale).sub_(w * weight.index_select(0, tgt))
        if gw is not None:
            torch.mm(e.t(), xc * scale, out=gw) if s == 0 else gw.addmm_(e.t(), xc * scale)
            gw.index_add_(0, tgt, xc * -w)
        if gb is not None:
            torch.mv(e.t(), scale.squeeze(1), out=gb) if s == 0 else gb.add_(torch.mv(e.t(), scale.squeeze(1)))
            gb.index_add_(0, tgt, -w.squeeze(1))
    return loss / n_valid, gx, gw, gb


class _HeadLoss(torch.autograd.Function):
    """Output head + cross-entropy with the gradients computed in the forward pass (_head_loss, see
    the module docstring); backward only scales the stored gradients by the incoming one."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk):
        loss, gx, gw, gb = _head_loss(x, weight, bias, targets, chunk, *ctx.needs_input_grad[:3])
        ctx.save_for_backward(gx, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, g):
        gx, gw, gb = ctx.saved_tensors
        scale = lambda t: None if t is None else t * g.to(t.dtype)
        return scale(gx), scale(gw), scale(gb), None, None
