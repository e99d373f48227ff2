"""Self-distillation of the MTP draft head: the trunk is frozen, only `mtp.*` learns.

    seqs = generate(model, tokenizer, prompts, ...)         # the distilled model's own continuations
    feats = trunk_features(model, seqs)                      # final-normed hidden states, computed once
    before = accept_stats(head, model, feats, n_max=3)       # teacher-forced draft accept, offline
    fit(head, model, feats, steps=..., unroll=3)
    after = accept_stats(head, model, feats_heldout, n_max=3)

Loss: cross-entropy of the head's draft for x[t+2] from (h[t], x[t+1]) over the continuation positions, plus
(`unroll` > 1) the chained drafts llama.cpp makes at n-max > 1: step k takes the head's own output of step
k-1 and the true token x[t+k] (a draft only counts while every earlier one matched) and predicts x[t+k+1].

Accept statistics mirror llama-server's counters for greedy decoding with p-min 0: at every continuation
position the head drafts n_max tokens in a chain; the accepted length is the matching prefix; the accept
rate is sum(accepted) / sum(drafted) (= draft_n_accepted / draft_n).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cardforge.train.mtp.head import MtpHead, positions_embeddings


@dataclass
class Sequence:
    ids: list[int]  # prompt + continuation
    prompt_len: int
    source: str = ""


@dataclass
class Features:
    ids: torch.Tensor  # [L] long
    hidden: torch.Tensor  # [L, H] the trunk's final-normed hidden states (float32)
    prompt_len: int


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
             seed: int, eos_ids: list[int], progress: Callable[[int], None] | None = None) -> list[Sequence]:
    """One continuation per prompt (greedy when temperature == 0), seeded per prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        ids = torch.tensor([prompt])
        kwargs = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "eos_token_id": eos_ids,
                  "pad_token_id": eos_ids[0], "attention_mask": torch.ones_like(ids)}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        full = model.generate(ids, **kwargs)[0].tolist()
        out.append(Sequence(full, len(prompt)))
        if progress:
            progress(1)
    return out


@torch.no_grad()
def trunk_features(model, seqs: list[Sequence]) -> list[Features]:
    feats = []
    for s in seqs:
        ids = torch.tensor([s.ids])
        hidden = model.model(input_ids=ids).last_hidden_state[0].float()
        feats.append(Features(ids[0], hidden, s.prompt_len))
    return feats


def _chain(head: MtpHead, model, f: Features, unroll: int, positions: torch.Tensor | None = None,
           self_targets: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(logits_k, targets_k)] for k = 1..unroll, teacher forced: at every position t ([L-1-k, V]), or only at
    `positions` (the head runs over the whole sequence; the 248k-wide LM head, most of the cost, only there)."""
    ids, L = f.ids, f.ids.shape[0]
    pe = positions_embeddings(model, L, 1, ids.device, f.hidden.dtype)
    hidden = f.hidden.unsqueeze(0)
    out = []
    for k in range(1, unroll + 1):
        n = L - 1 - k  # positions t = 0..n-1: token x[t+k] in, x[t+k+1] out
        if n <= 0:
            break
        hidden = hidden[:, :n]
        pe_k = (pe[0][:, :n], pe[1][:, :n])
        h_out = head(hidden, model.get_input_embeddings()(ids[k:k + n].unsqueeze(0)), pe_k)
        if self_targets:  # the trunk's own greedy choice after x[..t+k]: what verification will accept
            with torch.no_grad():
                sel = positions[positions < n] if positions is not None else torch.arange(n)
                tgt = model.get_output_embeddings()(f.hidden[sel + k].to(h_out.dtype)).argmax(-1)
            target = torch.full((n,), -100, dtype=torch.long)
            target[sel] = tgt
        else:
            target = ids[k + 1:k + 1 + n]
        if positions is None:
            out.append((model.get_output_embeddings()(h_out[0]), target))
        else:
            pos = positions[positions < n]
            out.append((model.get_output_embeddings()(h_out[0, pos]), target[pos]))
        hidden = h_out
    return out


def _valid_from(f: Features) -> int:
    """First position t whose draft targets a generated token: t + 2 >= prompt_len."""
    return max(f.prompt_len - 2, 0)


def fit(head: MtpHead, model, feats: list[Features], *, steps: int, lr: float, weight_decay: float,
        unroll: int, step_weights: list[float] | None, warmup_ratio: float, seed: int, grad_clip: float = 1.0,
        positions_per_step: int | None = 64, self_targets: bool = True, on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Train the head for `steps` sequence steps (one sequence per step, seeded order); returns losses.

    `positions_per_step`: a seeded sample of positions whose drafts enter the loss (the head sees the whole
    sequence; only the LM head's cost scales with it). None: every position.
    `self_targets`: the label of draft k at t is the trunk's own argmax after x[..t+k] (read off the cached
    hidden states), at every position of prompt and continuation: exactly what greedy verification accepts,
    and many more examples per sequence than the generated tokens alone. False: the next tokens of the text,
    continuation positions only."""
    for p in model.parameters():
        p.requires_grad_(False)
    head.train()
    params = [p for p in head.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(steps * warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    weights = list(step_weights or [1.0] * unroll)
    order, rng, losses = [], random.Random(seed), []
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if not order:
            order = list(range(len(feats)))
            rng.shuffle(order)
        f = feats[order.pop()]
        start, L = (0 if self_targets else _valid_from(f)), f.ids.shape[0]
        if L - 2 <= start:
            continue
        pos = torch.arange(start, L - 2)
        if positions_per_step and len(pos) > positions_per_step:
            pos = pos[torch.randperm(len(pos), generator=gen)[:positions_per_step]].sort().values
        total, norm = 0.0, 0.0
        for k, (logits, target) in enumerate(_chain(head, model, f, unroll, pos, self_targets)):
            if logits.shape[0] == 0:
                break
            total = total + weights[k] * F.cross_entropy(logits.float(), target)
            norm += weights[k]
        if norm == 0:
            continue
        loss = total / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, float(loss.detach()), sched.get_last_lr()[0])
    head.eval()
    return losses


@torch.no_grad()
def accept_stats(head: MtpHead, model, feats: list[Features], n_max: int) -> dict[str, float]:
    """Offline draft statistics over the continuation positions (see the module docstring)."""
    head.eval()
    drafted = accepted = 0
    step_hits = [0] * n_max
    step_n = [0] * n_max
    for f in feats:
        chain = _chain(head, model, f, n_max)
        start = _valid_from(f)
        n_pos = chain[0][0].shape[0] if chain else 0
        hits = []  # hits[k][t]: draft k at position t matches
        for logits, target in chain:
            hits.append((logits.argmax(-1) == target).tolist())
        for t in range(start, n_pos):
            run = 0
            for k in range(n_max):
                if k >= len(hits) or t >= len(hits[k]):
                    break
                step_n[k] += 1
                step_hits[k] += hits[k][t]
                if run == k and hits[k][t]:
                    run += 1
            drafted += n_max
            accepted += run
    out = {"accept_rate": accepted / drafted if drafted else 0.0,
           "mean_accept_len": 1 + (accepted / (drafted / n_max) if drafted else 0.0), "positions": drafted / n_max}
    for k in range(n_max):
        out[f"step{k + 1}_acc"] = step_hits[k] / step_n[k] if step_n[k] else 0.0
    return out
