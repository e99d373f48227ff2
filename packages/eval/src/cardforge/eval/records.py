"""Per-question result records: a JSONL file that survives kill -9, and resume from it.

Written by THE appender, `cardforge.core.chat.jsonl.append_record` (one write() of a whole line under an
flock, then fsync; a torn last line is skipped by readers and cut off by the next append).

A record belongs to the current run's *key*: prompt hash, sampling hash and `model_id` (the identity of the
model being served: the GGUF's sha256, see eval/stage.py model_id()). Among the records of one question
with the current key the newest wins; the question is *finished* when that record carries a server
finish_reason (stop / length). Error records are retried on resume. Records of another key (an older
build of the model, another prompt or sampling) stay in the file, append-only, but are never reused: a
rebuilt model is asked every question again, and switching back to a model whose answers are in the file
reuses them. Records written before model ids existed have none and never match a model id.
"""

from __future__ import annotations

import os
from typing import Any

# ONE appender for the repo (core.chat.jsonl): whole lines under flock + fsync, a torn tail cut off
from cardforge.core.chat.jsonl import append_record, read_records

__all__ = ["FINISHED", "append_record", "read_records", "latest_by_id", "current_by_id", "finished_ids"]

FINISHED = ("stop", "length")


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
