"""coding-100: our 10 problems x 10 languages, each answer compiled and run against hidden tests in the sandbox.

Languages: python, javascript, typescript, java, cpp (C++17), c, rust, go, ruby, bash (`eval.coding_languages`);
problems: cardforge.eval.coding.problems (the first `eval.coding_problems`, null: all 10). The prompt gives
the description and the language's signature (languages.py); `score` takes the code from the answer
(extract.py), runs it (runner.py) and records per question: language, problem, status (passed /
wrong_answer / compile_error / runtime_error / timeout / no_code / not_run), tests_passed / tests_total,
compile_error, runtime_error, exit_code, duration_s, failures. `group` = language, so the summary has
pass@1 per language (95% Wilson CIs) next to the overall one, and MLflow `<label>.coding.<lang>.pass_at_1`.

Questions are ordered problem-major (p1 in every language, then p2, ...) so `eval.limit` keeps languages
balanced. Every configured language's toolchain is checked at load: one error naming what is missing and
the setup command, before the model is asked anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardforge.eval.harness import Question

TITLE = {"python": "Python 3", "javascript": "JavaScript (Node.js)", "typescript": "TypeScript", "java": "Java",
         "cpp": "C++17", "c": "C", "rust": "Rust", "go": "Go", "ruby": "Ruby", "bash": "Bash"}

PROMPT = """Write a {title} function that solves this problem.

{description}

Use exactly this signature:
```{fence}
{signature}
```
{notes}Reply with the complete code (the function with any imports or helpers it needs) in one ```{fence} code \
block. No tests, no example usage, no main function: hidden tests will call the function."""


def prompt(language: str, problem) -> str:
    from cardforge.eval.coding.languages import LANGUAGES

    lang = LANGUAGES[language]
    notes = f"{lang.notes}\n" if lang.notes else ""
    return PROMPT.format(title=TITLE[language], description=problem.description, fence=lang.fences[0],
                         signature=lang.signature(problem), notes=notes)


def questions(languages: list[str], n_problems: int | None = None,
              timeouts: dict[str, float] | None = None, compile_timeout_s: float | None = None) -> list[Question]:
    from cardforge.eval.coding.problems import PROBLEMS

    out = []
    for p in PROBLEMS[:n_problems]:
        for lang in languages:
            meta = {"language": lang, "problem": p.id, "timeout_s": (timeouts or {}).get(lang),
                    "compile_timeout_s": compile_timeout_s}
            out.append(Question(f"{lang}/{p.id}", [{"role": "user", "content": prompt(lang, p)}], "pass", meta))
    return out


def load(ev: Any, root: str | Path | None = None) -> list[Question]:
    from cardforge.eval.benchmarks.humaneval import _sandbox_ready
    from cardforge.eval.coding.runner import require_toolchains

    languages = list(ev.coding_languages)
    require_toolchains(languages)
    _sandbox_ready()
    qs = questions(languages, ev.coding_problems, {k: float(v) for k, v in dict(ev.coding_timeout_s).items()},
                   float(ev.coding_compile_timeout_s))
    return qs[: ev.limit] if ev.limit else qs


def parse(answer: str) -> str | None:
    """Language-blind (the harness's default parse); `score` extracts with the question's language."""
    from cardforge.eval.coding.extract import extract_code

    return extract_code(answer or "", ())


def score(q: Question, c) -> dict:
    """Extract, compile and run the answer against the hidden tests (blocking: called in a thread)."""
    from cardforge.eval.coding.extract import extract_code
    from cardforge.eval.coding.languages import LANGUAGES
    from cardforge.eval.coding.problems import BY_ID
    from cardforge.eval.coding.runner import COMPILE_TIMEOUT_S, run_solution

    language, problem = q.meta["language"], BY_ID[q.meta["problem"]]
    fields: dict[str, Any] = {"language": language, "group": language, "problem": problem.id, "status": "not_run",
                              "tests_passed": 0, "tests_total": len(problem.tests), "compile_error": None,
                              "runtime_error": None, "exit_code": None, "duration_s": None, "failures": []}
    lang = LANGUAGES[language]
    code = extract_code(c.content, lang.fences, lang.fn(problem)) if c.finish_reason == "stop" else None
    if code is None:
        return {**fields, "parsed": None, "correct": False,
                "status": "no_code" if c.finish_reason == "stop" else "not_run"}
    r = run_solution(language, problem, code, timeout_s=q.meta.get("timeout_s"),
                     compile_timeout_s=q.meta.get("compile_timeout_s") or COMPILE_TIMEOUT_S)
    res = r.to_dict()
    res.pop("language"), res.pop("problem"), res.pop("passed")
    return {**fields, **res, "parsed": code, "correct": r.passed}


def note(ev: Any, n: int) -> str | None:
    from cardforge.eval.coding.problems import PROBLEMS

    total = len(PROBLEMS) * len(TITLE)
    what = "pass@1 (one sample per problem); per language in the rows below"
    return what if n >= total else f"{what}; {n} of the {total} questions (a subset: not the card's coding-100)"
