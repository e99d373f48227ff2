"""Cross-entropy over a 248k vocabulary without full-sequence logits.

`F.cross_entropy(lm_head(h).float(), labels)` keeps bf16 logits, their fp32 copy and the softmax for the backward:
about 10 GB at 4096 tokens x 248320. Here the logits of `chunk` tokens at a time live only inside the forward,
which also computes the gradient with respect to the hidden states right away (the LM head is frozen under LoRA,
so that is the only gradient needed): one extra [N, H] tensor is all that is kept for the backward, and the
logits are never recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        valid_all = labels != IGNORE
        count = valid_all.sum().clamp_min(1)
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        for s in range(0, n, chunk):
            h, lab, valid = hidden[s:s + chunk], labels[s:s + chunk], valid_all[s:s + chunk]
            logits = (h @ w.t()).to(total.dtype)
            lse = torch.logsumexp(logits, dim=-1)
            safe = lab.clamp_min(0)
            target = logits.gather(1, safe[:, None]).squeeze(1)
            total += ((lse - target) * valid).sum()
            if grad is not None:
                prob = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                prob[torch.arange(prob.shape[0], device=prob.device), safe] -= 1.0
                prob.mul_(valid[:, None])
                grad[s:s + chunk] = (prob.to(w.dtype) @ w).to(grad.dtype)
            del logits
        ctx.save_for_backward(grad, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad, count = ctx.saved_tensors
        return (grad * (grad_out / count).to(grad.dtype), None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Mean CE of `hidden @ weight.T` against `labels` (IGNORE = -100 skipped). hidden [N, H], weight [V, H].

    The LM head must be frozen (LoRA never trains it); a trainable one falls back to the plain computation.
    """
    if weight.requires_grad:
        return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE)
    if torch.is_autocast_enabled(hidden.device.type):  # what autocast would have done to the matmul
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden = hidden.to(dtype)
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk)
