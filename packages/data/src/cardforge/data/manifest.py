"""The dataset manifest: what the accepted set is (content hash), how it was made, what it costs in tokens.

Token statistics use the STUDENT's tokenizer and chat template through `cardforge.core.chat.encode_all`, so
`trained_fraction` is exactly the share of tokens the train stage's loss sees (its own reasoning + tool
calls + answers; system, user and tool-result tokens are context).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from cardforge.core.chat import EncodeError, Trajectory, encode_all
from cardforge.core.io import sha256_file


def reason_of(t: Trajectory) -> str:
    return t.extra.get("reason") or t.verdict.reason.split(":", 1)[0] or "unknown"


def token_stats(accepted: list[Trajectory], tokenizer, max_seq_len: int) -> dict[str, Any]:
    """Token counts with the student's tokenizer and template (`encode_all`: the train stage's samples, before
    max_seq_len), the samples the chat contract refuses per reason (the train stage skips them), and which
    chat template rendered them (name + sha256)."""
    from cardforge.core.chat.template import template_identity

    lengths, trained, failed, refused = [], 0, [], Counter()
    for t in accepted:
        try:
            enc = encode_all(t, tokenizer)
        except EncodeError as e:
            refused[e.reason] += 1
            failed.append(f"{t.task_id}: {e.reason}: {e}")
            continue
        for seq in enc.sequences:
            lengths.append(len(seq))
            trained += sum(seq.loss_mask)
    total = sum(lengths)
    return {"samples": len(lengths), "total_tokens": total, "trained_tokens": trained,
            "trained_fraction": round(trained / total, 4) if total else 0.0,
            "mean_tokens": round(total / len(lengths), 1) if lengths else 0.0, "max_tokens": max(lengths, default=0),
            "over_max_seq_len": sum(n > max_seq_len for n in lengths), "encode_refused": dict(refused.most_common()),
            "encode_failures": failed[:20], **template_identity(getattr(tokenizer, "chat_template", None))}


def build_manifest(accepted_path: Path, accepted: list[Trajectory], rejected: list[Trajectory], *,
                   tokens: dict[str, Any] | None, info: dict[str, Any]) -> dict[str, Any]:
    by_source: dict[str, Counter] = defaultdict(Counter)
    for t in accepted:
        by_source[t.source]["accepted"] += 1
    for t in rejected:
        by_source[t.source]["rejected"] += 1
    tasks_ok = {t.extra.get("task_id") for t in accepted}
    tasks_all = tasks_ok | {t.extra.get("task_id") for t in rejected}
    n = len(accepted) + len(rejected)
    return {
        "trajectories": str(accepted_path),
        "sha256": sha256_file(accepted_path) if accepted_path.exists() else None,
        "counts": {"samples": n, "accepted": len(accepted), "rejected": len(rejected),
                   "acceptance_rate": round(len(accepted) / n, 4) if n else 0.0,
                   "tasks": len(tasks_all), "tasks_with_an_accepted_sample": len(tasks_ok)},
        "rejections": dict(Counter(reason_of(t) for t in rejected).most_common()),
        "by_source": {s: dict(c) for s, c in sorted(by_source.items())},
        "finish_reasons": dict(Counter(t.finish_reason for t in accepted + rejected).most_common()),
        "tokens": tokens,
        **info,
    }


def table(manifest: dict[str, Any]) -> str:
    """Markdown: acceptance by source and rejections by reason (logged next to the JSONL)."""
    c = manifest["counts"]
    lines = [f"accepted {c['accepted']} / {c['samples']} samples ({c['acceptance_rate']:.0%}) over {c['tasks']} tasks",
             "", "| source | accepted | rejected |", "|---|---|---|"]
    lines += [f"| {s} | {v.get('accepted', 0)} | {v.get('rejected', 0)} |" for s, v in manifest["by_source"].items()]
    lines += ["", "| rejection reason | samples |", "|---|---|"]
    lines += [f"| {r} | {n} |" for r, n in manifest["rejections"].items()] or ["| (none) | 0 |"]
    tok = manifest.get("tokens") or {}
    if tok.get("samples"):
        lines += ["", f"tokens (student tokenizer): {tok['total_tokens']} total, {tok['trained_tokens']} trained "
                      f"({tok['trained_fraction']:.1%}), mean {tok['mean_tokens']}, max {tok['max_tokens']}"]
    if tok.get("encode_refused"):
        lines += ["", "| refused by the chat contract (train skips) | samples |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in tok["encode_refused"].items()]
    if tok.get("chat_template"):
        lines += ["", f"chat template: {tok['chat_template']} (sha256 {tok['chat_template_sha256'][:12]})"]
    return "\n".join(lines) + "\n"
