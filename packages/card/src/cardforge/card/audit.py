"""The exact audit of a card: every number it prints is, as rendered, one value its cited run recorded.

`audit(text, values, client)` checks a card (`README.md`) against its ledger (`card.json` "values", written by
render.py: for each printed value its line, columns, run, kind, key and format) and against MLflow itself:

1. every ledger span holds exactly what MLflow's value renders to (`render.fmt_value`), read again from the
   store by run id, or "not measured" where the run has no such key (and only then);
2. the line a value sits on cites its run (`[run xxxxxxxx]`);
3. every number in the text lies inside a ledger span. Not audited: fenced code (the inference commands),
   inline code (identifiers, file names, run ids), the `[run ...]` refs, the front matter, headings, the
   attribution list (citations: authors, years, arXiv ids) and the method constants in `FIXED`.

A number changed, added or moved in the text fails it (tests/integration/test_card_chain.py mutates every
number of a real chain's card in turn). Run by the card stage on every card it writes.
"""

from __future__ import annotations

import re
from typing import Any

from cardforge.card.collect import MTP_METRIC
from cardforge.card.render import NOT_MEASURED, fmt_value

# method constants in the fixed prose (CI level, unit definitions): not measurements, allowed as written
FIXED = ("Wilson 95% CI", "bootstrap 95% CI", "Wilson 95% 置信区间", "bootstrap 95% 区间", "10⁹", "2³⁰")
NUMBER = re.compile(r"(?<![A-Za-z0-9_])(?<![0-9]\.)[+-]?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?[⁰¹²³⁴⁵⁶⁷⁸⁹]*"
                    r"(?![A-Za-z0-9_]|\.[0-9])")
REF = re.compile(r"\[run ([0-9a-f]{8})\]")
MASKS = (re.compile(r"`[^`]*`"), REF, re.compile(r"\]\([^)]*\)"))
ATTRIBUTION = ("### Attribution", "### 方法非自创")


class AuditError(AssertionError):
    """The card prints something its runs did not record (one line: where and what)."""


def _masked(line: str) -> str:
    for pat in MASKS:
        line = pat.sub(lambda m: " " * len(m[0]), line)
    for fixed in FIXED:
        line = line.replace(fixed, " " * len(fixed))
    return line


def numbers(text: str) -> list[tuple[int, int, int, str]]:
    """(line, start, end, token) of every audited number in the card, in order."""
    out, in_code, front, section = [], False, False, ""
    for i, line in enumerate(text.split("\n")):
        if i == 0 and line == "---":
            front = True
            continue
        if front:
            front = line != "---"
            continue
        if line.startswith("```"):
            in_code = not in_code
            continue
        if line.startswith("#"):
            section = line
            continue
        if in_code or section.startswith(ATTRIBUTION):
            continue
        out += [(i, m.start(), m.end(), m[0]) for m in NUMBER.finditer(_masked(line))]
    return out


def expected(value: dict[str, Any], run: Any) -> str:
    """What MLflow's record renders to for this ledger entry."""
    kind, key, fmt = value["kind"], value["key"], value["fmt"]
    if kind == "key_n":
        m = MTP_METRIC.match(key)
        if key not in run.data.metrics or m is None:
            raise AuditError(f"n-max from metric {key!r}: run {run.info.run_id[:8]} logged no such metric")
        return fmt_value(int(m["n"]), "int")
    store = {"metric": run.data.metrics, "param": run.data.params, "tag": run.data.tags}[kind]
    if key not in store:
        return NOT_MEASURED[value.get("lang", "en")]
    return fmt_value(store[key], fmt)


def audit(text: str, values: list[dict[str, Any]], client: Any) -> int:
    """Raise AuditError naming the first disagreement; return how many numbers were checked."""
    lines = text.split("\n")
    runs: dict[str, Any] = {}
    spans: dict[int, list[tuple[int, int]]] = {}
    for v in values:
        rid = v["run_id"]
        if rid not in runs:
            runs[rid] = client.get_run(rid)
        if v["line"] >= len(lines):
            raise AuditError(f"ledger value {v['kind']} {v['key']!r} points past the card's end (line {v['line'] + 1})")
        line = lines[v["line"]]
        got, want = line[v["start"]:v["end"]], expected(v, runs[rid])
        where = f"line {v['line'] + 1}"
        if got != want:
            raise AuditError(f"{where}: {got!r} is not run {rid[:8]}'s {v['kind']} {v['key']!r}, which renders "
                             f"{want!r}: {line.strip()[:200]}")
        if rid[:8] not in REF.findall(line):
            raise AuditError(f"{where}: {v['kind']} {v['key']!r} of run {rid[:8]} on a line that does not cite it: "
                             f"{line.strip()[:200]}")
        spans.setdefault(v["line"], []).append((v["start"], v["end"]))
    checked = 0
    for i, start, end, tok in numbers(text):
        if not any(s <= start and end <= e for s, e in spans.get(i, [])):
            raise AuditError(f"line {i + 1}: {tok!r} is not a value any cited run recorded: {lines[i].strip()[:200]}")
        checked += 1
    return checked
