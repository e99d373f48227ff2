"""Per-question result records: a JSONL file that survives kill -9, and resume from it.

Each record is ONE write() of a whole line on an O_APPEND descriptor under an flock, then fsync, so a
crash leaves at most a torn last line; readers skip it and the next append cuts it off. A question is
*finished* when its record carries a server finish_reason (stop / length) for the same prompt and
sampling; error records are retried on resume and the newest record of an id wins.
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


def finished_ids(path: str | os.PathLike, prompt_hashes: dict[str, str], sampling_hash: str) -> set[str]:
    """Ids whose latest record finished with the same prompt and sampling (a changed prompt reruns)."""
    done = set()
    for qid, r in latest_by_id(read_records(path)).items():
        if (r.get("finish_reason") in FINISHED and r.get("prompt_hash") == prompt_hashes.get(qid)
                and r.get("sampling_hash") == sampling_hash):
            done.add(qid)
    return done
