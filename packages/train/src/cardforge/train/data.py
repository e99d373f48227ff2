"""Training samples -> padded batches, with an exact-resume sampler.

A sample is `(input_ids, loss_mask)`: the mask is 1 exactly on the tokens the model must learn to emit (its
own reasoning, tool calls, answer and end-of-turn); tool results and prompts are context only.

Batching is right padding + attention_mask by default (one sample per row; right padding cannot leak into a causal
model's real tokens, and the GDN layer zeroes padded states itself). `TrainDataModule(pack_length=N)` packs several
samples per row instead (`cardforge.train.packing`: exact sample boundaries in attention, the Gated DeltaNet state
and its conv1d, through cardforge's kernels; transformers' own PyTorch GDN path would carry state across samples).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and loss_mask ({len(self.loss_mask)}) differ in length")


class SampleDataset(Dataset):
    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def padded_length(n: int, multiple: int) -> int:
    """`n` rounded up to `multiple`; multiple 0 = geometric buckets: to a multiple of 512 up to 4096 tokens, then
    of an eighth of the next power of two (1024 up to 8k, 2048 up to 16k, 4096 up to 32k): under 512 pad tokens
    up to 4k, under 25% above (~12% on average), and 20 distinct lengths up to 32k (compiled layers compile
    once per length)."""
    if multiple == 0:
        multiple = max(512, (1 << max(n - 1, 1).bit_length()) // 8)
    return -(-n // multiple) * multiple


def collate(samples: Sequence[Sample], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample, rounded up by `padded_length(width, multiple)` (compiled layers: one compile
    per padded length). `labels_mask[t]` says whether token t is a training target."""
    width = padded_length(max(len(s.input_ids) for s in samples), multiple)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attn[row, :n] = 1
        mask[row, :n] = torch.tensor(s.loss_mask, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask * attn}


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle, this rank's share only, that can start mid-epoch.

    Lightning restarts the epoch's iterator after a resume; `skip_batches(epoch, n)` makes that iterator
    begin where the checkpointed run stopped, so the resumed run sees exactly the batches the uninterrupted
    run would have. `__len__` stays the full epoch so Lightning's batch counters (restored to n) line up.
    """

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, epoch: int, batches: int) -> None:
        self._skip = (epoch, batches)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: len(self) * self.world_size - self.n]  # pad so every rank gets the same count
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] * self.batch_size :]
            self._skip = None  # only the resumed epoch starts late
        return iter(order)


class TrainDataModule(pl.LightningDataModule):
    """Train (and optional validation) loaders over in-memory samples; its state is the resume point."""

    def __init__(self, train: Sequence[Sample], pad_id: int, batch_size: int = 1, seed: int = 0,
                 val: Sequence[Sample] = (), num_workers: int = 0, pad_multiple: int = 1, pack_length: int = 0):
        super().__init__()
        self.pack_length = pack_length  # > 0: items are packed rows of this many tokens (train/packing.py)
        if pack_length:
            from cardforge.train.packing import pack_rows

            train, val = pack_rows(train, pack_length), pack_rows(val, pack_length) if len(val) else ()
        self.train_set, self.val_set = SampleDataset(train), SampleDataset(val)
        self.pad_id, self.batch_size, self.seed, self.num_workers = pad_id, batch_size, seed, num_workers
        self.pad_multiple = pad_multiple
        self._resume: dict[str, int] | None = None

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        meta = batch.pop("attn_meta", None) if isinstance(batch, dict) else None
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        if meta is not None:  # packed batches: stays on the CPU (read by the varlen kernel without a device sync)
            batch["attn_meta"] = meta
        return batch

    def _collate(self):
        if self.pack_length:
            from cardforge.train.packing import collate_packed

            return functools.partial(collate_packed, pad_id=self.pad_id, row_len=self.pack_length)
        return functools.partial(collate, pad_id=self.pad_id, multiple=self.pad_multiple)

    def _loader(self, dataset: SampleDataset, sampler: Sampler) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=self._collate(),
            # its own generator: DataLoader.__iter__ would otherwise draw from the global RNG, so a resumed run's
            # dropout stream would differ from the uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = ResumableSampler(len(self.train_set), self.seed, self.batch_size, rank, world)
        if self._resume:
            sampler.skip_batches(self._resume["epoch"], self._resume["batches"])
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if not len(self.val_set):
            return []
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return self._loader(self.val_set, ResumableSampler(len(self.val_set), 0, self.batch_size, rank, world, False))

    def state_dict(self) -> dict[str, Any]:
        # Saved from on_train_batch_end: `processed` counts the batch just trained, `completed` not yet.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)


# --- the data stage's output -> samples ---


def _bad(bad: list[str], where: str, why: str, strict: bool) -> None:
    from cardforge.core.errors import UserError

    if strict:
        raise UserError(f"{where}: {why}; fix or delete the line, or set trainer.skip_bad_lines=true to skip it")
    bad.append(f"{where}: {why}")


def _trajectories(path: Path, rows: list[tuple[int, dict]], bad: list[str], strict: bool,
                  stats: LoadStats | None = None) -> Iterator[Any]:
    """The rows as validated trajectories; a row that is not one is skipped and counted (or refused: strict)."""
    from cardforge.core.chat import Trajectory, TrajectoryError

    for n, row in rows:
        try:
            yield Trajectory.from_dict(row, f"{path}:{n}")
        except (TrajectoryError, ValueError, TypeError, KeyError) as e:
            why = " ".join(str(e).split()).removeprefix(f"{path}:{n}: ")  # the error names the line itself
            _bad(bad, f"{path}:{n}", why[:200], strict)
            if stats is not None:
                stats.skip("bad_record", f"{path}:{n}", str(e))


@dataclass
class LoadStats:
    """What load_samples kept and left out, per reason: logged as MLflow metrics (`metrics()`) and written into
    the train stage's summary (train_result.json "data"). Reasons: `bad_line` (not JSON / not a trajectory),
    a `cardforge.core.chat.REASONS` code (the chat contract refused the sample), `no_trained_token`."""

    rows: int = 0  # records read (good lines)
    trajectories: int = 0  # trajectories that gave at least one sample
    samples: int = 0  # training sequences (a trajectory may train as several: see core.chat.mask)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records skipped
    truncated: int = 0  # records with at least one assistant turn (or pre-tokenized tail) left out for max_len
    dropped_turns: int = 0  # assistant turns left out for max_len
    examples: list[str] = field(default_factory=list)  # the first few skips, FILE:LINE: reason: detail

    def skip(self, reason: str, where: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}: {' '.join(detail.split())[:200]}")

    def metrics(self) -> dict[str, float]:
        out = {"data/records": self.rows, "data/trajectories": self.trajectories, "data/samples": self.samples,
               "data/skipped": sum(self.skipped.values()), "data/truncated": self.truncated,
               "data/dropped_turns": self.dropped_turns}
        out.update({f"data/skipped_{reason}": n for reason, n in sorted(self.skipped.items())})
        return {k: float(v) for k, v in out.items()}

    def summary(self) -> str:
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"{self.samples} samples from {self.trajectories or self.samples} of {self.rows} records; skipped: "
                f"{skipped}; truncated records: {self.truncated} ({self.dropped_turns} turns left out)")


def load_samples(path: str | Path, tokenizer, max_len: int | None = None, skip_bad_lines: bool = True, *,
                 train_format: str = "template", mask_tool_results: bool = True,
                 stats: LoadStats | None = None) -> list[Sample]:
    """Samples from a JSONL file: pre-tokenized rows ({"input_ids", "loss_mask"}) are used as they are;
    trajectories (the data stage's accepted set) go through `cardforge.core.chat.encode_all` (one or more
    sequences each, every trained turn in its serving context).
    `train_format="react_wire"` (data.train_format): each trajectory is first turned into the ReAct wire
    (cardforge.agent.wire: what the eval actor sends), then rendered by the student's template.
    `mask_tool_results=False` (data.mask_tool_results): the tool-result turns are trained on too.
    One bad record never aborts the load: it is skipped and counted per reason in `stats` (a bad LINE is
    refused instead with skip_bad_lines=False); truncations are counted too."""
    from cardforge.core.io import read_jsonl_rows

    stats = stats if stats is not None else LoadStats()
    # the one tolerant reader: a torn last line or a bad line is skipped and counted with FILE:LINE (or refused:
    # trainer.skip_bad_lines=false)
    path = Path(path)
    read = read_jsonl_rows(path, strict=not skip_bad_lines)
    rows, bad = read.rows, list(read.bad)
    for b in bad:
        stats.skip("bad_line", str(b).split(": ", 1)[0], str(b).split(": ", 1)[-1])
    stats.rows = len(rows)
    samples = []
    if rows and all("input_ids" in r and "loss_mask" in r for _, r in rows):
        for n, r in rows:
            try:
                sample = Sample(r["input_ids"][:max_len] if max_len else r["input_ids"],
                                r["loss_mask"][:max_len] if max_len else r["loss_mask"])
            except (ValueError, TypeError) as e:
                _bad(bad, f"{path}:{n}", str(e), not skip_bad_lines)
                stats.skip("bad_line", f"{path}:{n}", str(e))
                continue
            stats.truncated += bool(max_len and len(r["input_ids"]) > max_len)
            samples.append(sample)
    else:
        try:
            from cardforge.core import chat
        except ImportError:
            raise RuntimeError(f"{path} holds trajectories but cardforge.core.chat (the chat encoder) is not "
                               "installed; install packages/core or pass pre-tokenized rows") from None
        for traj in _trajectories(path, rows, bad, not skip_bad_lines, stats):
            conv: Any = traj
            try:
                if train_format == "react_wire":
                    from cardforge.agent.wire import react_wire

                    conv = react_wire(traj)
                enc = chat.encode_all(conv, tokenizer, max_len=max_len, wire=train_format == "react_wire")
            except chat.EncodeError as e:
                stats.skip(e.reason, traj.task_id, str(e))
                continue
            stats.trajectories += 1
            stats.truncated += enc.truncated
            stats.dropped_turns += enc.dropped_spans
            for seq in enc.sequences:
                mask = list(seq.loss_mask)
                if not mask_tool_results:
                    mask = unmask_tool_results(seq, conv, tokenizer, traj.tools if train_format == "template" else None)
                samples.append(Sample(list(seq.input_ids), mask))
    if bad:
        import logging

        logging.getLogger("cardforge.train").warning(
            "%s: skipped %d bad line(s) of %d, e.g. %s (trainer.skip_bad_lines=false refuses them)", path, len(bad),
            len(bad) + len(rows), bad[0])
    kept = [s for s in samples if sum(s.loss_mask[1:]) > 0]  # position 0 is never a target
    if len(kept) < len(samples):
        stats.skipped["no_trained_token"] = stats.skipped.get("no_trained_token", 0) + len(samples) - len(kept)
    stats.samples = len(kept)
    if not kept:
        from cardforge.core.errors import UserError

        raise UserError(f"{path}: no sample has a trained token ({stats.summary()}"
                        + (f"; e.g. {stats.examples[0]}" if stats.examples else "")
                        + "); check the data stage's output or point trainer.data_file at another file")
    return kept


def unmask_tool_results(enc, conversation, tokenizer, tools: list[dict] | None) -> list[int]:
    """enc.loss_mask with 1 on every token of a tool-result turn as the template renders it (from the end of
    the conversation before it to the end of the turn): the card's 'train on tool results too' choice. `enc` is
    one sequence of encode_all: only turns its text renders as the conversation prefix does are unmasked (a
    sequence whose context renders earlier turns differently, e.g. the Qwen3.5 template after a later user
    query, left them in the sequence of their own query)."""
    from cardforge.core.chat.mask import as_template_messages
    from cardforge.core.chat.parse import nfc
    from cardforge.agent.wire import is_tool_result

    msgs = nfc(as_template_messages(conversation))
    tools = nfc(tools) if tools else None

    def render(upto: int) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tools=tools or None, tokenize=False,
                                             add_generation_prompt=False)

    def common(a: str, b: str) -> int:
        n = min(len(a), len(b))
        return next((k for k in range(n) if a[k] != b[k]), n)

    spans = []
    for i, m in enumerate(msgs[:enc.n_messages]):
        if is_tool_result(m):
            before = render(i)
            if enc.text.startswith(before):
                spans.append((len(before), common(enc.text, render(i + 1))))
    mask = list(enc.loss_mask)
    for t, (a, b) in enumerate(enc.offsets):
        if any(a < hi and b > lo for lo, hi in spans):
            mask[t] = 1
    return mask
