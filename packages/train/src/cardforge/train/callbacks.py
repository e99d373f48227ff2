"""Callbacks: atomic "last" checkpoints every N optimizer steps, and the loss history (+ its plot)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

LAST = "last.ckpt"


class AtomicLastCheckpoint(pl.Callback):
    """Write `<dir>/last.ckpt` every `every_n_steps` optimizer steps: to a temp file, then one rename.

    A SIGKILL at any moment leaves either the previous complete checkpoint or the new one, never half a file.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int):
        self.dirpath, self.every_n_steps = Path(dirpath), max(1, int(every_n_steps))
        self._saved_at = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._saved_at or step == 0 or step % self.every_n_steps:
            return
        self._saved_at = step
        tmp = self.dirpath / f".{LAST}.{step}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # collective under DDP/FSDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
        trainer.strategy.barrier("cardforge_last_ckpt")


class LossHistory(pl.Callback):
    """(optimizer step, mean loss of its micro-batches), kept in checkpoints so a resumed run plots it all."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []
        self._pending: list[float] = []
        self._step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._pending.append(float(pl_module.last_loss))
        if trainer.global_step != self._step:  # an optimizer step happened in this batch
            self._step = trainer.global_step
            self.history.append((self._step, sum(self._pending) / len(self._pending)))
            self._pending = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [tuple(x) for x in state_dict.get("history", [])]


def plot_loss(history: list[tuple[int, float]], path: str | Path, title: str = "train loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training nodes
    import matplotlib.pyplot as plt

    from cardforge.core.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, marker="." if len(steps) < 200 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked CE loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def progress_bar() -> pl.Callback:
    """Lightning's bar (Rich when installed) showing loss, lr (scientific: 2e-4 is not "0.000") and tokens/s."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    class Bar(RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar):
        def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return {k.removeprefix("train/"): f"{v:.2e}" if k.endswith("lr") and isinstance(v, float) else v
                    for k, v in metrics.items()}

    return Bar()
