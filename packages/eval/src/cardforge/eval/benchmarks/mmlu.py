"""MMLU-500: a seeded subset of the MMLU test split, 5-shot, generative with thinking.

The card's MMLU is generative (the model thinks, then answers), so nothing stops at a newline (lm-eval's
mmlu_generative sends `until: "\\n"`, which cuts a thinking model off). The k shots are the first k dev
questions of the same subject, written as worked examples inside one user turn.
Source: `eval.mmlu_source` = the HF id (cais/mmlu:all, splits dev/test) or a local folder holding
dev.{jsonl,csv,json,parquet} and test.* in the same schema (question, subject, choices[4], answer 0-3).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from cardforge.eval.benchmarks.letters import LETTERS, format_choices, parse_letter
from cardforge.eval.benchmarks.tables import is_local, load_hf, read_table
from cardforge.eval.harness import Question

INSTRUCTION = ("The following are multiple choice questions (with answers) about {subject}. Think about the "
               "last question, then give the final answer on the last line in the form 'Answer: X' where X "
               "is one of A, B, C, D.")


def _split(source: str, split: str, root: str | Path | None) -> list[dict]:
    local = is_local(source, root)
    if local is None:
        return load_hf(source, split)
    hits = sorted(p for p in Path(local).glob(f"{split}.*") if p.suffix in (".jsonl", ".csv", ".json", ".parquet"))
    if not hits:
        raise FileNotFoundError(f"eval.mmlu_source={source}: no {split}.jsonl/.csv/.json/.parquet in {local}")
    return read_table(hits[0])


def _choices(row: dict) -> list[str]:
    ch = row["choices"]
    return list(ch) if not isinstance(ch, str) else json.loads(ch)


def _block(row: dict, with_answer: bool) -> str:
    text = f"Question: {row['question'].strip()}\n{format_choices(_choices(row))}\n"
    return text + (f"Answer: {LETTERS[int(row['answer'])]}\n" if with_answer else "")


def question_id(row: dict) -> str:
    return "mmlu-" + hashlib.sha256((row["subject"] + "\n" + row["question"]).encode()).hexdigest()[:12]


def load(ev: Any, root: str | Path | None = None) -> list[Question]:
    test, dev = _split(str(ev.mmlu_source), "test", root), _split(str(ev.mmlu_source), "dev", root)
    # sort by id first so the subset depends only on the data and the seed, not on file order
    test = sorted(test, key=question_id)
    subset = random.Random(int(ev.seed)).sample(test, min(int(ev.mmlu_subset), len(test)))
    shots_by_subject: dict[str, list[dict]] = {}
    for r in dev:
        shots_by_subject.setdefault(r["subject"], []).append(r)
    out = []
    for row in subset:
        shots = shots_by_subject.get(row["subject"], [])[: int(ev.mmlu_shots)]
        subject = row["subject"].replace("_", " ")
        text = "\n".join([INSTRUCTION.format(subject=subject), *(_block(s, True) for s in shots), _block(row, False)])
        out.append(Question(question_id(row), [{"role": "user", "content": text}], LETTERS[int(row["answer"])],
                            {"subject": row["subject"], "shots": len(shots)}))
    return out[: ev.limit] if ev.limit else out


def parse(answer: str) -> str | None:
    return parse_letter(answer)
