"""Answer-letter parsing for multiple choice, from the ANSWER text only (never the reasoning).

Accepted, last match wins: "Answer: X" / "answer is (X)" / "final answer: **X**", or an answer that is
just the letter ("X", "(X)", "X.", "**X**"). Anything else is a parse failure (None): no guessing from a
stray "(A)" in prose, and a truncated output never reaches here (the harness scores only finish=stop).
"""

from __future__ import annotations

import re

LETTERS = "ABCD"
_EXPLICIT = re.compile(
    r"answer\s*(?:is|:)?\s*[:\-]?\s*(?:\*\*|\$\\boxed\{|\\boxed\{)?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_BARE = re.compile(r"^\s*(?:\*\*)?\(?([A-Z])\)?(?:\*\*)?[.)]?\s*$")


def parse_letter(answer: str, letters: str = LETTERS) -> str | None:
    if not answer:
        return None
    hits = [m.group(1).upper() for m in _EXPLICIT.finditer(answer)]
    hits = [h for h in hits if h in letters]
    if hits:
        return hits[-1]
    m = _BARE.match(answer)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


def format_choices(choices: list[str], letters: str = LETTERS) -> str:
    return "\n".join(f"{letters[i]}) {c}" for i, c in enumerate(choices))
