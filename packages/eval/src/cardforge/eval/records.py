"""Per-question result records: a JSONL file that survives kill -9, and resume from it.

Each record is ONE write() of a whole line on an O_APPEND descriptor under an flock, then fsync, so a
crash leaves at most a torn last line; readers skip it and the next append cuts it off.

A record belongs to the current run's *key*: prompt hash, sampling hash and `model_id` (the identity of the
model being served: the GGUF's sha256, see eval/stage.py model_id()). Among the records of one question
with the current key the newest wins; the question is *finished* when that record carries a server
finish_reason (stop / length). Error records are retried on resume. Records of another key (an older
build of the model, another prompt or sampling) stay in the file, append-only, but are never reused: a
rebuilt model is asked every question again, and switching back to a model whose answers are in the file
reuses them. Records written before model ids existed have none and never match a model id.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

FINISHED = ("stop", "length")


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer died mid-line: drop that partial line
            data = os.pread(fd, size, 0)
            os.ftruncate(fd, data.rfind(b"\n") + 1)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All whole records in file order (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def latest_by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records}


def current_by_id(path: str | os.PathLike, prompt_hashes: dict[str, str], sampling_hash: str,
                  model_id: str | None = None) -> dict[str, dict[str, Any]]:
    """The newest record of each id whose prompt, sampling AND model match (records of other keys ignored)."""
    return latest_by_id([r for r in read_records(path)
                         if r.get("prompt_hash") == prompt_hashes.get(r.get("id"))
                         and r.get("sampling_hash") == sampling_hash and r.get("model_id") == model_id])


def finished_ids(path: str | os.PathLike, prompt_hashes: dict[str, str], sampling_hash: str,
                 model_id: str | None = None) -> set[str]:
    """Ids whose newest record for the same prompt, sampling and served model finished (else: ask again)."""
    return {qid for qid, r in current_by_id(path, prompt_hashes, sampling_hash, model_id).items()
            if r.get("finish_reason") in FINISHED}
