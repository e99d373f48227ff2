"""Show which tokens of a trajectory the loss trains on.

Run as: python -m cardforge.data.show_mask FILE [--index N] [--html OUT.html] [--model tiny-qwen36-vl-mtp]
        (or `cardforge show-mask FILE ...`, `make show-mask FILE=... ARGS="--index N"`)

The terminal view prints the rendered sample with trained tokens (loss_mask 1) in green and the rest
dimmed (without colors, e.g. piped, trained runs are wrapped in ⟦ ⟧); `--html` writes the same view as one self-contained page (each token a span whose tooltip gives
its position and id). The rendering is `cardforge.core.chat.encode_all`, the exact ids the train stage sees: a
record may train as several sequences (each turn in its serving context), shown one after the other. A record
the chat contract refuses prints its reason and exits 1.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from cardforge.core.chat import Encoded, EncodeError, encode_all, load_jsonl, load_tokenizer
from cardforge.core.io import atomic_write_text

TRAINED_STYLE, CONTEXT_STYLE = "bold black on green3", "grey50"
CSS = """body{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:2em;line-height:1.5}
.t{background:#c8f7c5;outline:1px solid #7fd67a}.c{color:#777}.t:hover,.c:hover{background:#ffe08a}
.special{font-weight:bold}header{white-space:normal;font-family:sans-serif;margin-bottom:1em}"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cardforge.data.show_mask", description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path, help="trajectory JSONL")
    p.add_argument("--index", type=int, default=0, help="which record (0-based; default 0)")
    p.add_argument("--html", type=Path, help="also write an HTML view here")
    p.add_argument("--model", default="tiny-qwen36-vl-mtp",
                   help="embedded model name or tokenizer dir (default: the tiny default, the base's Qwen3.5 template)")
    p.add_argument("--max-len", type=int, default=None, help="truncate as training would")
    return p.parse_args(argv)


def pieces(enc: Encoded) -> list[tuple[str, bool, int]]:
    """(text, trained, token index) per token, from the character offsets (exact for multi-byte text)."""
    out, pos = [], 0
    for i, ((start, end), flag) in enumerate(zip(enc.offsets, enc.loss_mask)):
        start = max(start, pos)  # byte-level BPE splits of one character share it: show it once
        out.append((enc.text[start:end], bool(flag), i))
        pos = max(pos, end)
    return out


def summary(enc: Encoded, title: str) -> str:
    trained = sum(enc.loss_mask)
    turns = ", ".join(f"msg {s.message_index}: tokens {s.token_start}-{s.token_end - 1}" for s in enc.spans)
    return (f"{title}: {len(enc)} tokens, {trained} trained ({trained / max(len(enc), 1):.0%}) in "
            f"{len(enc.spans)} assistant turns [{turns}]" + (" (truncated)" if enc.truncated else ""))


def to_html(encs: list[Encoded], titles: list[str]) -> str:
    sections = []
    for enc, title in zip(encs, titles):
        spans = []
        for text, trained, i in pieces(enc):
            special = " special" if text.startswith("<") and text.endswith(">") and len(text) > 2 else ""
            spans.append(f'<span class="{"t" if trained else "c"}{special}" title="#{i} id {enc.input_ids[i]}">'
                         f"{html.escape(text)}</span>")
        sections.append(f"<header><b>{html.escape(summary(enc, title))}</b><br>green = trained (loss_mask 1), grey = "
                        f"context</header>{''.join(spans)}\n")
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(titles[0])}</title><style>{CSS}</style>"
            + "<hr>".join(sections))


def print_terminal(enc: Encoded, title: str) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    plain = console.color_system is None  # piped or NO_COLOR: mark trained runs with brackets instead
    body, in_run = Text(), False
    for text, trained, _ in pieces(enc):
        if plain and trained != in_run:
            body.append("⟦" if trained else "⟧")
            in_run = trained
        body.append(text, style=TRAINED_STYLE if trained else CONTEXT_STYLE)
    if plain and in_run:
        body.append("⟧")
    # soft_wrap: never insert line breaks of our own into the rendered sample
    console.print(Text(summary(enc, title), style="bold"), soft_wrap=True)
    console.print(body, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    records = load_jsonl(args.file)
    if not 0 <= args.index < len(records):
        print(f"show-mask: --index {args.index} is out of range: {args.file} has {len(records)} records",
              file=sys.stderr)
        return 2
    traj = records[args.index]
    title = f"{args.file.name} #{args.index} task {traj.task_id}"
    try:
        encoding = encode_all(traj, load_tokenizer(args.model), max_len=args.max_len)
    except EncodeError as e:
        print(f"show-mask: {title}: refused by the chat contract ({e.reason}): {e}", file=sys.stderr)
        return 1
    n = len(encoding.sequences)
    titles = [title + (f" sequence {k + 1}/{n}" if n > 1 else "") for k in range(n)]
    for enc, t in zip(encoding.sequences, titles):
        print_terminal(enc, t)
    if args.html:
        atomic_write_text(args.html, to_html(encoding.sequences, titles))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
