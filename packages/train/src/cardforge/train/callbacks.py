"""Callbacks: atomic "last" checkpoints every N optimizer steps, the loss history (+ its plot), the step bar."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

LAST = "last.ckpt"
DATA_KEY = "data_key"  # beside last.ckpt: the samples it was trained on


class AtomicLastCheckpoint(pl.Callback):
    """Write `<dir>/last.ckpt` every `every_n_steps` optimizer steps: to a temp file, then one rename.

    A SIGKILL at any moment leaves either the previous complete checkpoint or the new one, never half a file.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, data_key: str | None = None):
        self.dirpath, self.every_n_steps = Path(dirpath), max(1, int(every_n_steps))
        self.data_key = data_key  # what the checkpoints were trained on (train.stage.samples_key); None: unstamped
        self._saved_at = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    @property
    def data_key_path(self) -> Path:
        """The stamp beside last.ckpt naming the training samples it was trained on (train.stage.resume_point)."""
        return self.dirpath / DATA_KEY

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._saved_at or step == 0 or step % self.every_n_steps:
            return
        self._saved_at = step
        tmp = self.dirpath / f".{LAST}.{step}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            _remove(tmp)  # a killed run's unfinished write of this step
        trainer.strategy.barrier("cardforge_last_ckpt_start")
        trainer.save_checkpoint(tmp)  # collective under DDP/FSDP; rank 0 writes (FSDP2: every rank, a folder)
        trainer.strategy.barrier("cardforge_last_ckpt_written")
        if trainer.is_global_zero:
            self._publish(tmp)
        trainer.strategy.barrier("cardforge_last_ckpt")

    def _publish(self, tmp: Path) -> None:
        """One file: os.replace. A distributed-checkpoint folder (FSDP2) cannot replace a non-empty folder in one
        rename, so `last.ckpt` is then a symlink to `.ckpt-<step>` and the link is what gets replaced (a new link
        renamed over it); the folder it pointed to before is removed after."""
        last = self.last_path
        if tmp.is_dir():
            target = self.dirpath / f".ckpt-{tmp.name.split('.')[-2]}"
            _remove(target)
            os.replace(tmp, target)
            before = last.resolve() if last.is_symlink() else None
            link = self.dirpath / f".{LAST}.link.tmp"
            _remove(link)
            os.symlink(target.name, link)
            if last.exists() and not last.is_symlink():
                _remove(last)  # a file checkpoint of an older run layout: not resumable as this strategy's
            os.replace(link, last)
            if before is not None and before != target.resolve():
                _remove(before)
        else:
            os.replace(tmp, last)
        if self.data_key is not None:  # after the checkpoint: a kill in between leaves a stamp that refuses it
            from cardforge.core.io import atomic_write_text

            atomic_write_text(self.data_key_path, self.data_key + "\n")


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


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
        loss = pl_module.last_loss
        if trainer.world_size > 1:  # the global batch's loss (mean over the ranks), not rank 0's share of it
            loss = trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        self._pending.append(float(loss))
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


class StepProgressBar(pl.callbacks.ProgressBar):
    """One bar over the whole fit in OPTIMIZER steps: `train r=16: 45%|####  | 36/80 [00:12<00:15, 2.90 step/s,
    loss=1.23, lr=2.00e-04, tokens_per_s=812]`, the total being max_steps (or the epochs' steps) and the ETA
    tqdm's; a resumed run starts at its checkpoint's step. Lightning's own bar counts batches per epoch and shows
    `Epoch 9/-2` under max_steps."""

    def __init__(self, desc: str = "train", mininterval: float = 1.0):
        super().__init__()
        self.desc, self.mininterval = desc, mininterval
        self._enabled, self.bar = True, None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @staticmethod
    def total_steps(trainer: pl.Trainer) -> int:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            return int(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - an unsized loader: no total, the bar still counts
            return 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm

        total = self.total_steps(trainer)
        self.bar = tqdm(total=total or None, initial=trainer.global_step, desc=self.desc, unit="step",
                        dynamic_ncols=True, mininterval=self.mininterval, smoothing=0.1, leave=True)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k.removeprefix("train/"): f"{v:.2e}" if k.endswith("lr") and isinstance(v, float) else
                f"{v:.4g}" if isinstance(v, float) else v for k, v in metrics.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.bar is None:
            return
        step = trainer.global_step
        if step != self.bar.n:
            self.bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self.bar.update(step - self.bar.n)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_exception = lambda self, trainer, pl_module, exc: self.on_train_end(trainer, pl_module)  # noqa: E731


class _Once(logging.Filter):
    """Lets each message matching `patterns` through once per process (the rest: as usual); drops `drop`."""

    def __init__(self, patterns: tuple[str, ...], drop: tuple[str, ...] = ()):
        super().__init__()
        self.patterns, self.drop, self.seen = patterns, drop, set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(d in msg for d in self.drop):
            return False
        for p in self.patterns:
            if p in msg:
                if p in self.seen:
                    return False
                self.seen.add(p)
        return True


# Lightning says this at every checkpoint save (our AtomicLastCheckpoint writes every trainer.ckpt_every_n_steps)
REPEATED = ("`weights_only` was not set",)
NOISE = ("try installing [litlogger]",)  # an advertisement, not a state of the run


def tidy_lightning_logging() -> None:
    """Each Lightning message once, in the app's format: where the app (Hydra) configured the root logger,
    Lightning's own console handler printed every line a second time ("INFO: ..."); a repeated notice is shown
    once. Idempotent."""
    root_has_handlers = bool(logging.getLogger().handlers)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        if root_has_handlers:
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
            lg.propagate = True
    for name in ("lightning.pytorch.trainer.connectors.checkpoint_connector", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _Once) for f in lg.filters):
            lg.addFilter(_Once(REPEATED, NOISE))


def progress_bar(desc: str = "train") -> pl.Callback:
    """The train stage's bar: optimizer steps against max_steps with an ETA, loss, lr (scientific: 2e-4 is not
    "0.000") and tokens/s (`StepProgressBar`). Also tidies Lightning's logging (`tidy_lightning_logging`)."""
    tidy_lightning_logging()
    return StepProgressBar(desc)
