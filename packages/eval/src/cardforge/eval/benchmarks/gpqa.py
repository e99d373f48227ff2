"""GPQA-Diamond: 198 graduate-level 4-way multiple choice questions, thinking-on, answer letter.

Source: `eval.gpqa_source` = the HF id (Idavidrein/gpqa:gpqa_diamond, gated, needs network) or a local
file in the same schema (columns Question, Correct Answer, Incorrect Answer 1..3, optional Record ID).
The four choices are shuffled per question with a seed derived from eval.seed and the question id, so
the correct letter is spread evenly and the same question gets the same order in every run and model.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from cardforge.eval.benchmarks.letters import LETTERS, format_choices, parse_letter
from cardforge.eval.benchmarks.tables import is_local, load_hf, read_table
from cardforge.eval.harness import Question

PROMPT = ("Answer the following multiple choice question. Think step by step, then give the final answer "
          "on the last line in the form 'Answer: X' where X is one of A, B, C, D.\n\n{question}\n\n{choices}")
REQUIRED = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def rows(source: str, root: str | Path | None = None) -> list[dict]:
    local = is_local(source, root)
    data = read_table(local) if local else load_hf(source, "train")
    missing = [c for c in REQUIRED if data and c not in data[0]]
    if missing:
        raise ValueError(f"eval.gpqa_source={source}: missing GPQA columns {missing}")
    return data


def question_id(row: dict) -> str:
    rid = str(row.get("Record ID") or "").strip()
    return rid or "gpqa-" + hashlib.sha256(row["Question"].encode()).hexdigest()[:12]


def to_question(row: dict, seed: int) -> Question:
    qid = question_id(row)
    correct = row["Correct Answer"].strip()
    choices = [correct] + [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    random.Random(f"{seed}:{qid}").shuffle(choices)
    gold = LETTERS[choices.index(correct)]
    text = PROMPT.format(question=row["Question"].strip(), choices=format_choices(choices))
    return Question(qid, [{"role": "user", "content": text}], gold, {"choices": choices})


def load(ev: Any, root: str | Path | None = None) -> list[Question]:
    qs = [to_question(r, int(ev.seed)) for r in rows(str(ev.gpqa_source), root)]
    return qs[: ev.limit] if ev.limit else qs


def parse(answer: str) -> str | None:
    return parse_letter(answer)
