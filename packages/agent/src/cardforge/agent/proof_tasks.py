"""The proof task family (issue 19): verifiable agentic tasks a tool answers exactly and a 135M model cannot
answer in its head, with train and held-out splits that share no value.

Four kinds, each answered by ONE tool call that prints an integer, then "Final answer: N":

  mul    the exact product of two 12-digit integers                       (python)
  count  how many of the 300 integers in values.txt exceed a threshold   (python, file in the workspace)
  sum    the total of the qty column of a 200-row sales.csv               (python, file in the workspace)
  grep   how many lines of a 300-line server.log mention a log level      (shell: grep -c)

Splits (`proof_split(name, n)`), seeded and stable:
  train     surface form A, values from the "train" stream: what the data stage's teacher solves.
  heldout   NEW values (thresholds of the other parity, other operands and file contents; checked disjoint
            from train), half in surface form A and half in surface form B, a rephrasing of every question
            that no training sample uses. The eval's `proof` suite runs this split.

`data.sources: [proof:train:N]` gives the data stage N training tasks; `eval.suites: [proof]` with
`eval.proof_tasks: N` runs N held-out tasks (cardforge.eval.benchmarks.proof). Every task carries its
answer as an `integer` verifier (exact, no float rounding: a 24-digit product must match every digit).
The scripted teacher (cardforge.agent.scripted_teacher) reads the question text, never the answer key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cardforge.core.errors import UserError
from cardforge.agent.tasks import Task
from cardforge.agent.tools import tool_schemas

KINDS = ("mul", "count", "sum", "grep")
FORMS = ("A", "B")
SPLITS = ("train", "heldout")
TOOLS = ("python", "shell")  # + finish: the same list (and order) the eval runner offers
SYSTEM = ("You are a careful assistant that solves tasks with tools. Think briefly, then call ONE tool; you will "
          "see its result. When you know the answer, reply with: Final answer: <the number>.")
LEVELS = ("INFO", "WARN", "ERROR", "DEBUG")
_WORDS = ("request", "served", "cache", "miss", "user", "login", "timeout", "retry", "disk", "queue", "worker",
          "started", "stopped", "payment", "order", "session", "token", "refresh", "upload", "page")
_ITEMS = ("widget", "gadget", "gizmo", "doohickey", "sprocket")

# surface forms: A is what training sees; B only appears in the held-out split
PROMPTS = {
    ("mul", "A"): "What is {a} * {b}? Give the exact integer.",
    ("mul", "B"): "Compute the exact product of {a} and {b}.",
    ("count", "A"): "The file values.txt holds one integer per line. How many of them are greater than {t}?",
    ("count", "B"): "Count the lines of values.txt whose number exceeds {t}.",
    ("sum", "A"): "sales.csv has the columns item, qty and price. What is the total of the qty column?",
    ("sum", "B"): "Add up every qty value in the CSV file sales.csv. What total do you get?",
    ("grep", "A"): "How many lines of server.log contain the word {level}?",
    ("grep", "B"): "In the log file server.log, count the lines that mention {level}.",
}


@dataclass(frozen=True)
class ProofItem:
    """One task: its kind, surface form, split, parameters, seeded files and the exact answer."""

    id: str
    kind: str
    form: str
    split: str
    prompt: str
    answer: int
    files: dict
    params: dict

    def task(self) -> Task:
        """The data stage's Task (the teacher's input, checked by the `integer` verifier)."""
        return Task(self.id, "proof", self.prompt, {"type": "integer", "value": str(self.answer)},
                    tools=tool_schemas([*TOOLS, "finish"]), files=dict(self.files), system=SYSTEM)


def _values(rng: random.Random) -> str:
    return "".join(f"{rng.randint(0, 9999)}\n" for _ in range(300))


def _sales(rng: random.Random) -> str:
    rows = [f"{rng.choice(_ITEMS)},{rng.randint(1, 250)},{rng.randint(100, 9999) / 100:.2f}\n" for _ in range(200)]
    return "item,qty,price\n" + "".join(rows)


def _log(rng: random.Random) -> str:
    lines = []
    for i in range(300):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))
        lines.append(f"2026-11-{1 + i // 60:02d}T{i % 24:02d}:{i % 60:02d}:00 {rng.choice(LEVELS)} {words}\n")
    return "".join(lines)


def _make(kind: str, form: str, split: str, k: int, rng: random.Random) -> ProofItem:
    tid = f"proof/{split}/{kind}-{form}-{k:04d}"
    if kind == "mul":
        a, b = rng.randint(10**11, 10**12 - 1), rng.randint(10**11, 10**12 - 1)
        return ProofItem(tid, kind, form, split, PROMPTS[kind, form].format(a=a, b=b), a * b, {}, {"a": a, "b": b})
    if kind == "count":
        # split by value: train thresholds are even, held-out thresholds odd (and every file is new)
        t = rng.randrange(1000, 9000, 2) + (split == "heldout")
        text = _values(rng)
        answer = sum(1 for line in text.splitlines() if int(line) > t)
        return ProofItem(tid, kind, form, split, PROMPTS[kind, form].format(t=t), answer, {"values.txt": text},
                         {"t": t})
    if kind == "sum":
        text = _sales(rng)
        answer = sum(int(line.split(",")[1]) for line in text.splitlines()[1:])
        return ProofItem(tid, kind, form, split, PROMPTS[kind, form], answer, {"sales.csv": text}, {})
    if kind == "grep":
        level = rng.choice(LEVELS)
        text = _log(rng)
        answer = sum(1 for line in text.splitlines() if level in line.split())
        return ProofItem(tid, kind, form, split, PROMPTS[kind, form].format(level=level), answer,
                         {"server.log": text}, {"level": level})
    raise ValueError(f"unknown proof kind {kind!r}")


def _fingerprint(item: ProofItem) -> tuple:
    """What a held-out item must not share with any training item."""
    return (item.kind, tuple(sorted(item.params.items())), tuple(sorted(item.files.items())))


def proof_split(split: str, n: int, seed: int = 0) -> list[ProofItem]:
    """`n` items of `split`, kinds in turn (mul, count, sum, grep, mul, ...); held-out alternates forms A/B
    per kind. Same (split, n, seed) -> the same items; a larger n extends a smaller one's list."""
    if split not in SPLITS:
        raise UserError(f"proof split {split!r}: use one of {', '.join(SPLITS)}")
    if n < 1:
        raise UserError(f"proof:{split}:{n}: the task count must be >= 1")
    rng = random.Random(f"cardforge-proof-{split}-{seed}")
    items = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        form = "A" if split == "train" else FORMS[(i // len(KINDS)) % 2]
        items.append(_make(kind, form, split, i, rng))
    if split == "heldout":  # split by value: no held-out item may repeat a training item's inputs
        train = {_fingerprint(t) for t in proof_split("train", max(n, 512), seed)}
        clash = [t.id for t in items if _fingerprint(t) in train]
        assert not clash, f"held-out items repeat training values: {clash[:3]}"
    return items


def proof_tasks(spec: str) -> list[Task]:
    """`data.sources` entry proof:SPLIT:N[:SEED] -> the data stage's tasks."""
    parts = spec.split(":")
    try:
        split, n = parts[0], int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise UserError(f"data.sources: proof:{spec} - write proof:SPLIT:N[:SEED], e.g. proof:train:200") from None
    return [item.task() for item in proof_split(split, n, seed)]
