"""cardforge's training kernels in plain PyTorch (no Triton version requirements): a Gated DeltaNet forward whose
chunk scan is one matmul per chunk, and a chunked linear cross-entropy that never holds full-sequence logits.

`enable(model)` swaps them into a transformers Qwen3.5 model (`trainer.kernels=cardforge`, the default);
`trainer.kernels=transformers` keeps transformers' own path. Generation with a cache always uses transformers'.
Packed rows (`cardforge.train.packing`) keep samples apart in all three places: `attention` (block-diagonal,
flash varlen on CUDA), `gdn` (`reset`) and the GDN conv1d (`patch.packed_conv`); `offload` keeps checkpointed
layer inputs in pinned host memory.
"""

from cardforge.train.fast.loss import linear_cross_entropy
from cardforge.train.fast.patch import disable, enable, enabled

__all__ = ["enable", "disable", "enabled", "linear_cross_entropy"]
