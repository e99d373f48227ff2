"""One-line checks shared by the schemas: a bad value names its key and the allowed values."""

from __future__ import annotations

from typing import Any


# task sources (cardforge.agent.tasks.load_source): builtin | humaneval | bfcl:NAME | proof:SPLIT:N | jsonl:PATH
SOURCE_SYNTAX = "builtin, humaneval, bfcl:NAME (a BFCL set or question file), proof:SPLIT:N or jsonl:PATH"


def check_choice(key: str, value: Any, allowed: Any, what: str = "value") -> None:
    """One line naming the key, the bad value and the allowed ones (ValueError -> ConfigError upstream)."""
    allowed = [getattr(a, "value", a) for a in allowed]
    if value not in allowed:
        raise ValueError(f"{key}: unknown {what} {value!r}; choose one of: {', '.join(map(str, allowed))}")


def check_sources(key: str, sources: Any) -> None:
    for spec in sources:
        kind, colon, arg = str(spec).partition(":")
        ok = (kind in ("builtin", "humaneval") and not colon) or (kind in ("bfcl", "jsonl", "proof") and arg.strip())
        if not ok:
            raise ValueError(f"{key}: unknown source {str(spec)!r}; use {SOURCE_SYNTAX}")
