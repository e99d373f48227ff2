"""JSONL files that survive kill -9: whole lines or nothing. THE appender of the repo: trajectories (data
stage), eval records, MTP sequences and the teacher spend ledger all go through `append_record`.

* `append_record` writes one JSON object as ONE write() of the whole line (newline included) on an
  O_APPEND descriptor under an exclusive flock, then fsyncs. A crash can leave at most a torn LAST line
  (no trailing newline); the next append cuts it off first, so a resumed run never glues a record onto it.
  `read_records` gives every whole record of such a file (a torn last line skipped).
* `append_jsonl` is `append_record` for a `Trajectory` (validated first).
* `read_jsonl` / `load_jsonl` skip a torn last line and report it (the `TornLine` / a `TornLineWarning`);
  a bad line anywhere else is corruption and raises `BadLineError` (a `TrajectoryError` and a `UserError`:
  one line from a stage's CLI) naming the line and the fix.
* `write_jsonl` replaces a whole file atomically (temp file + rename).
* `completed_task_ids` gives the ids already on disk, so a re-run skips them: no duplicates.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cardforge.core.chat.schema import Trajectory, TrajectoryError
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_bytes


class BadLineError(TrajectoryError, UserError):
    """A line of a trajectories file that is not a valid record (not the torn last line): a user-fixable file, so
    a stage reports it in one line (cardforge.core.cli) naming FILE line N and what to do."""

    FIX = "; fix or delete that line (only a torn last line, from a killed writer, is skipped by itself)"

    def __init__(self, e: TrajectoryError):
        super().__init__(e.where, e.path, e.problem + self.FIX)


class TornLineWarning(UserWarning):
    """The file ends in a partial line (a writer died mid-write); it was skipped."""


@dataclass
class TornLine:
    path: Path
    offset: int  # byte offset where the partial line starts
    size: int  # its length in bytes

    def __str__(self) -> str:
        return (f"{self.path}: torn last line ({self.size} bytes at byte {self.offset}, no trailing newline: a "
                "writer was interrupted); readers ignore it, the next append_jsonl cuts it off")


def _dump(d: dict) -> bytes:
    # ensure_ascii=False keeps the file readable; json never emits a raw newline inside a string
    return (json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8")


def _line(record: Trajectory | dict) -> bytes:
    return _dump(record.to_dict() if isinstance(record, Trajectory) else Trajectory.from_dict(record).to_dict())


def _cut_torn_tail(fd: int, path: Path) -> TornLine | None:
    """If the file does not end in a newline, truncate it back to just after its last newline."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    pos, chunk = size, 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        block = os.pread(fd, pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            keep = start + nl + 1
            break
        pos = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    return TornLine(path, keep, size - keep)


def _append_line(path: str | os.PathLike, data: bytes) -> TornLine | None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # concurrent writers (threads or processes) take turns
        torn = _cut_torn_tail(fd, path)
        view = memoryview(data)
        while view:  # a regular-file write is whole in practice; loop anyway rather than assume
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return torn


def append_record(path: str | os.PathLike, record: dict) -> TornLine | None:
    """Append one JSON object as one whole line, durably (any dict; `append_jsonl` for trajectories).
    Returns the torn tail it removed, if any (a writer that died mid-line before)."""
    if not isinstance(record, dict):
        raise TypeError(f"append_record needs a dict, got {type(record).__name__}")
    return _append_line(path, _dump(record))  # serialise before touching the file


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every whole record of a JSONL file in file order (a torn last line is skipped; [] if no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def append_jsonl(path: str | os.PathLike, record: Trajectory | dict) -> TornLine | None:
    """Append one validated trajectory as one whole line, durably. Returns the torn tail it removed, if any."""
    torn = _append_line(path, _line(record))  # validate and serialise before touching the file
    if torn is not None:
        warnings.warn(str(torn), TornLineWarning, stacklevel=2)
    return torn


def write_jsonl(path: str | os.PathLike, records: Iterable[Trajectory | dict]) -> Path:
    """Replace `path` with these records, atomically."""
    return atomic_write_bytes(path, b"".join(_line(r) for r in records))


def read_jsonl(path: str | os.PathLike) -> tuple[list[Trajectory], TornLine | None]:
    """All records, validated; a torn last line is skipped and returned, never raised."""
    path = Path(path)
    raw = path.read_bytes()
    torn = None
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        torn, raw = TornLine(path, keep, len(raw) - keep), raw[:keep]
    records = []
    for n, line in enumerate(raw.split(b"\n")[:-1] if raw else [], start=1):
        where = f"{path} line {n}"
        if not line.strip():
            continue
        try:
            try:
                d = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TrajectoryError(where, "", f"not valid JSON ({e})") from None
            records.append(Trajectory.from_dict(d, where))
        except TrajectoryError as e:
            raise BadLineError(e) from None
    return records, torn


def load_jsonl(path: str | os.PathLike) -> list[Trajectory]:
    """`read_jsonl`, reporting a torn last line as a `TornLineWarning`."""
    records, torn = read_jsonl(path)
    if torn is not None:
        warnings.warn(str(torn), TornLineWarning, stacklevel=2)
    return records


def completed_task_ids(path: str | os.PathLike) -> set[str]:
    """Task ids already recorded in `path` (empty if it does not exist): what a resumed run skips."""
    if not Path(path).exists():
        return set()
    return {r.task_id for r in read_jsonl(path)[0]}
