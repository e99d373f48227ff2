"""Answer-letter parsing for multiple choice, from the ANSWER text only (never the reasoning).

Accepted, last match wins: "Answer: X" / "answer is (X)" / "final answer: **X**", or an answer that is
just the letter ("X", "(X)", "X.", "**X**"). Anything else is a parse failure (None): no guessing from a
stray "(A)" in prose, and a truncated output never reaches here (the harness scores only finish=stop).

Only the keyword is case-insensitive. The letter must be an uppercase standalone letter, so English
words are never read as a choice ("I cannot answer a question like this.", "The answer is a matter of
debate", "As a model..." are all None), and the keyword needs its connector ("is", ":" or "-": "I cannot
answer A or B" is None too). A lowercase letter counts only where it cannot be the article:
in parentheses ("answer is (b)") or alone at the end of a line after "answer:" ("Answer: b").
"""

from __future__ import annotations

import re

LETTERS = "ABCD"
_DECOR = r"(?:\*\*|\$?\\boxed\{)?\s*"  # **X** or \boxed{X}
_EXPLICIT = re.compile(
    r"\b(?i:answer)(?:"
    r"\s*(?:(?i:is)\b\s*[:\-]?|[:\-])\s*" + _DECOR + r"(?:\(([A-Za-z])\)|([A-Z]))(?![A-Za-z])"  # is / : / -
    r"|\s*:\s*" + _DECOR + r"([a-z])(?=[\s.)*}$]*(?:\n|$))"  # "answer: x" with the letter ending the line
    r")")
_BARE = re.compile(r"^\s*(?:\*\*)?\(?([A-Z])\)?(?:\*\*)?[.)]?\s*$")  # the whole answer is one capital


def parse_letter(answer: str, letters: str = LETTERS) -> str | None:
    if not answer:
        return None
    hits = [next(g for g in m.groups() if g).upper() for m in _EXPLICIT.finditer(answer)]
    hits = [h for h in hits if h in letters]
    if hits:
        return hits[-1]
    m = _BARE.match(answer)
    if m and m.group(1) in letters:
        return m.group(1)
    return None


def format_choices(choices: list[str], letters: str = LETTERS) -> str:
    return "\n".join(f"{letters[i]}) {c}" for i, c in enumerate(choices))
