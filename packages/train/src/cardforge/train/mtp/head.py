"""The Qwen3.5/3.6 MTP head as a PyTorch module, computed the way llama.cpp's draft-mtp graph computes it.

transformers has no MTP module for qwen3_5 (it drops `mtp.*` at load), so we build one from its own parts:

    h'   = mtp.norm(layer(fc(cat(pre_fc_norm_embedding(embed(x[t+1])), pre_fc_norm_hidden(h[t])))))
    draft logits for x[t+2] = lm_head(h')

`h[t]` is the trunk's last hidden state AFTER its final norm (llama.cpp's `h_nextn`), `layer` is one gated
full-attention Qwen3.5 decoder block (causal over the positions before it, RoPE at the trunk's positions),
and the embedding and LM head are the trunk's own (shared, frozen). For a chained draft (n-max > 1) llama.cpp
feeds the head's own `h'` back in place of `h` with the drafted token: `unroll` trains that too.
Norms are Qwen3.5's zero-centred RMSNorm (`x * (1 + w)`); the converter adds the 1 when writing GGUF.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PREFIX = "mtp."


class MtpHead(nn.Module):
    def __init__(self, text_config):
        super().__init__()
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm

        cfg = copy.deepcopy(text_config)
        cfg.layer_types = ["full_attention"]  # the MTP block is a full-attention block
        cfg.num_hidden_layers = 1
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(h, eps=eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(h, eps=eps)
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList([Qwen3_5DecoderLayer(cfg, 0)])
        self.norm = Qwen3_5RMSNorm(h, eps=eps)

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """hidden: [B, T, H] (trunk output after its final norm, or this head's previous output);
        next_embeds: [B, T, H] embeddings of the tokens one step ahead. Returns the head's normed output."""
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1))
        # attention_mask=None: sdpa applies a causal mask (right padding never leaks into real positions)
        x = self.layers[0](x, position_embeddings=position_embeddings, attention_mask=None)
        return self.norm(x)

    # -- checkpoint <-> module ------------------------------------------------------------------------------
    def load_mtp_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        own = {PREFIX + k: v for k, v in self.state_dict().items()}
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise ValueError(f"MTP tensors do not fit the head: missing {missing[:4]}, unexpected {extra[:4]} "
                             "(a head with more than one layer or a shared_head is not supported)")
        self.load_state_dict({k[len(PREFIX):]: v for k, v in tensors.items()})

    def mtp_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}


def positions_embeddings(trunk, length: int, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's RoPE (interleaved MRoPE, text positions on every section) for positions 0..length-1."""
    rotary = trunk.model.rotary_emb if hasattr(trunk, "model") else trunk.rotary_emb
    pos = torch.arange(length, device=device).view(1, 1, -1).expand(3, batch, -1)
    probe = torch.empty(0, device=device, dtype=dtype)
    return rotary(probe, pos)
