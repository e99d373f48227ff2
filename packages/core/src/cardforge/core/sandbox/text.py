"""Text that came out of a sandbox, made safe to show: to a terminal, and to a model as a tool observation.

* `escape_controls`: C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), a CR not
  followed by LF, and the Unicode controls that reorder or hide text (bidi embeddings, overrides and
  isolates, U+2028/U+2029 line/paragraph separators, zero-width space, BOM) become visible escapes
  (ESC -> `\\x1b`, U+202E -> `\\u202e`): a terminal or a transcript shows them, never obeys them. run.py
  applies it to every stdout/stderr it returns.
* `neutralise_markup`: chat-template markup in text a model will read as a tool result (special tokens such as
  `<|im_end|>`, `<tool_call>`, `</tool_response>`, `<function=`, `<parameter=`, `<think>`) loses its `<`,
  written `\\x3c` in the escape style above: a file or a program's output can never close the tool
  response, open a turn or spell a call in the transcript (issue #17 follow-up).
* `observation`: both, for whatever the data engine's and the eval's tools return to a model.

The escapes are one-way: a file that literally holds the four characters `\\x1b` reads the same as one
holding ESC. That is the price of keeping the text readable; the bytes themselves stay in the workspace.
"""

from __future__ import annotations

import re

# C0 controls but \t and \n, DEL, C1 controls; Unicode bidi embeddings/overrides/isolates ("Trojan Source"),
# line and paragraph separators, zero-width space, BOM (ZWJ/ZWNJ and the LRM/RLM marks stay: real text needs them)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028-\u202e\u2066-\u2069\ufeff]")
# `<` of: any special-token spelling `<|...|>`, and the Qwen3 XML tool/think tags (open or close)
_MARKUP = re.compile(r"<(?=\|[^<>|\s]{1,64}\|>|/?(?:tool_call|tool_response|function|parameter|think)\b)",
                     re.IGNORECASE)


def _hex(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape_controls(text: str) -> str:
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(lambda m: _hex(m.group()), text)


def neutralise_markup(text: str) -> str:
    return _MARKUP.sub(r"\\x3c", text)


def observation(text: str) -> str:
    """Text from a sandbox (a file, a program's output) as a model may read it: controls escaped, markup
    neutralised. Idempotent."""
    return neutralise_markup(escape_controls(text))
