"""Take the code out of a model's answer (never its reasoning): a fenced block, else the whole answer.

Which block, when there are several: those tagged with the language (```rust) win over untagged ones,
untagged over other languages' (an answer often adds a usage example in another language, or a shell
line); among those, the last one that defines the function (a keyword before its name, or `name(...) {`),
else the last one. An answer with no fence
is taken whole. An empty answer is None: a parse failure, never run.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*)\Z", re.S | re.M)


def blocks(answer: str) -> list[tuple[str, str]]:
    """(tag, code) of every fenced block, in order; an unclosed last fence counts (a model stopped early)."""
    found = [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(answer)]
    tail = answer[max((m.end() for m in _FENCE.finditer(answer)), default=0):]
    if (m := _OPEN.search(tail)) is not None:
        found.append((m.group(2).lower(), m.group(3)))
    return found


def extract_code(answer: str, fences: tuple[str, ...], name: str | None = None) -> str | None:
    """The code to run: see the module doc. `fences`: the language's tags; `name`: the function's name."""
    if not answer or not answer.strip():
        return None
    found = blocks(answer)
    if not found:
        return answer.strip() + "\n"
    tagged = [code for tag, code in found if tag in fences]
    untagged = [code for tag, code in found if not tag]
    pool = tagged or untagged or [code for _, code in found]
    if name:
        n = re.escape(name)
        # a definition: a keyword before the name, or C-like `name(params) ... {` (a call has no brace after it)
        defines = re.compile(rf"\b(?:def|function|fn|func)\s+{n}\b|\b{n}\s*\([^;{{}}]*\)[^;{{}}\n]*\{{")
        pool = [c for c in pool if defines.search(c)] or pool
    code = pool[-1]
    return code if code.strip() else None
