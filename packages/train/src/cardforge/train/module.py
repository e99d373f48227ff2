"""The LightningModule: masked next-token loss on a PEFT-wrapped causal LM.

Logits are computed only at trained positions: the tiny model's vocabulary (248320) makes full-sequence
logits the largest tensor of a step by far, and positions outside the loss mask would be thrown away anyway.
"""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from cardforge.train import fast, optim, packing
from cardforge.train.fast.loss import linear_cross_entropy


def masked_lm_loss(backbone: torch.nn.Module, batch: dict[str, torch.Tensor],
                   chunked_ce: bool = False) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over tokens whose loss_mask is 1 (predicted from the previous position).

    `chunked_ce`: cardforge's linear cross-entropy (logits of 1024 tokens at a time, never all of them).
    A right-padded batch (every row: ones, then zeros) runs without its attention mask: in a causal model the pads
    come after every real token and cannot reach them, and no mask keeps attention on the fused causal kernels
    (a padded [T, T] mask would cost T^2 memory and the flash path)."""
    if packing.is_packed(batch):  # several samples per row (train/packing.py): boundaries as positions/offsets
        if not fast.enabled(backbone):
            raise RuntimeError("a packed batch needs cardforge's kernels (trainer.kernels=cardforge): transformers' "
                               "own layers would let samples of one row see each other")
        kwargs = packing.model_kwargs(batch)
    else:
        mask = batch["attention_mask"]
        if mask.shape[1] > 1 and bool((mask[:, 1:] <= mask[:, :-1]).all()):
            mask = None
        kwargs = {"attention_mask": mask}
    hidden = backbone.get_decoder()(input_ids=batch["input_ids"], use_cache=False, **kwargs).last_hidden_state
    target = batch["loss_mask"][:, 1:].bool()
    h = hidden[:, :-1][target]
    labels = batch["input_ids"][:, 1:][target]
    head = backbone.get_output_embeddings()
    if getattr(head, "_cf_loss_forward", False):  # FSDP2 (train/fsdp2.py): the head's own call gathers its weight
        return head(h, labels), int(target.sum())
    if chunked_ce and type(head) is torch.nn.Linear and head.bias is None:
        return linear_cross_entropy(h, head.weight, labels), int(target.sum())
    logits = head(h).float()
    return F.cross_entropy(logits, labels), int(target.sum())


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DistillModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, trainer_cfg: Any, total_steps: int, shard: Any = None):
        """`shard`: trainer=fsdp (FSDP2): called once from `configure_model` with this module, it shards and loads
        the meta `model` and returns the root module whose forward is the step's loss (`fsdp2.shard_and_load`)."""
        super().__init__()
        self.model = model  # peft.PeftModel
        self._shard = shard
        self.__dict__["_sharded_loss"] = None  # not a registered submodule: its parameters are self.model's
        self.tcfg = trainer_cfg
        self._chunked_ce = str(trainer_cfg.kernels) == "cardforge"
        self.total_steps = total_steps
        self.optimizer_name = ""  # what actually runs (after the CPU fallback)
        self._rng_to_restore: dict[str, Any] | None = None
        self._t_last: float | None = None
        # throughput counters (this process, this fit): tokens incl. context, trained tokens, seconds
        self.tokens_total, self.target_total, self.train_seconds = 0, 0, 0.0
        self.last_loss = torch.tensor(float("nan"))  # read by callbacks.LossHistory
        self.grad_norms: list[float] = []  # global L2 norm of the LoRA gradients at each optimizer step (this fit)

    def configure_model(self) -> None:
        if self._shard is not None and self._sharded_loss is None:
            self.__dict__["_sharded_loss"] = self._shard(self)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if self._sharded_loss is not None:
            return self._sharded_loss(batch)
        return masked_lm_loss(self.model.get_base_model(), batch, chunked_ce=self._chunked_ce)

    # -- training --

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # resumed: continue the checkpointed run's dropout stream
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._t_last is None:
            self._t_last = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_target = self._loss(batch)
        self.last_loss = loss.detach()
        tokens = int(batch["attention_mask"].sum())
        now = time.perf_counter()
        # time since the previous step's forward: includes its backward and optimizer step
        tok_s = tokens / max(now - self._t_last, 1e-9)
        self.train_seconds += now - self._t_last
        self._t_last = now
        self.tokens_total += tokens
        self.target_total += n_target
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        self.log("train/tokens_per_s", tok_s, prog_bar=True, batch_size=bs)
        self.log("train/trained_token_fraction", n_target / max(tokens, 1), batch_size=bs)
        self.log("train/tokens", float(tokens), reduce_fx="sum", batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The LoRA gradients' global L2 norm (`train/grad_norm`): over all ranks' shards under FSDP2 (a collective
        on every rank), of the accumulated gradient under grad accumulation."""
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if hasattr(norm, "full_tensor"):  # a DTensor (FSDP2): partial norms summed over the ranks
            norm = norm.full_tensor()
        self.grad_norms.append(float(norm))
        self.log("train/grad_norm", float(norm), batch_size=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        t = self.tcfg
        opt, self.optimizer_name = optim.build_optimizer(
            self.model.parameters(), str(getattr(t.optimizer, "value", t.optimizer)), t.lr, t.weight_decay,
            on_cuda=self.device.type == "cuda", flat=bool(t.get("flat_optimizer", True)),
            # FSDP1 (use_orig_params) points each parameter's data at its own flat parameter at every forward
            share=str(t.get("strategy", "auto")) != "fsdp1")
        kind = str(getattr(t.scheduler, "value", t.scheduler))
        fn = optim.lr_lambda(kind, self.total_steps, optim.warmup_steps(self.total_steps, t.warmup_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints hold only what training changes: the adapter weights (+ optimizer, handled by Lightning) --

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        full = super().state_dict(*args, **kwargs)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in trainable}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, **kwargs: Any):
        # the frozen base is not in the checkpoint (it is rebuilt from model.path); every trained tensor must be
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(state_dict)
        if strict and missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        return super().load_state_dict(state_dict, strict=False, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every rank's RNG (LoRA dropout): rank 0 alone writes the checkpoint's metadata (one file, or FSDP2's
        # meta.pt), and each rank's stream has moved differently (its own samples' lengths)
        checkpoint["cardforge_rng"] = _rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, checkpoint["cardforge_rng"])
            checkpoint["cardforge_rng_ranks"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        ranks = checkpoint.get("cardforge_rng_ranks")  # this rank's own stream when the world size is the same
        self._rng_to_restore = ranks[rank] if ranks and len(ranks) == world else checkpoint.get("cardforge_rng")
