"""Every language's harness in the real sandbox: our reference solution passes, a wrong one fails with the
failing tests named, a syntax error is a compile_error; runtime errors, timeouts and hostile answers are
recorded, never raised. HumanEval: the package's canonical solutions pass, a wrong answer fails.

References: tests/fixtures/coding/reference/<language>.<ext>, one `=== <problem> ===` section per problem
plus `sum_evens:wrong` (sums every number) and `sum_evens:broken` (a syntax / type error).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cardforge.core.config.schemas import CODING_LANGUAGES
from cardforge.core.humaneval import check, problems
from cardforge.eval.coding.problems import BY_ID, PROBLEMS
from cardforge.eval.coding.runner import TOOLCHAINS, run_solution, sandbox_limits

REF = Path(__file__).resolve().parents[1] / "fixtures" / "coding" / "reference"
EXT = {"python": "py", "javascript": "js", "typescript": "ts", "java": "java", "cpp": "cpp", "c": "c", "rust": "rs",
       "go": "go", "ruby": "rb", "bash": "sh"}


def references(language: str) -> dict[str, str]:
    parts = re.split(r"^=== (\S+) ===\n", (REF / f"{language}.{EXT[language]}").read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_language_has_a_reference_for_every_problem():
    assert set(EXT) == set(CODING_LANGUAGES)
    for language in CODING_LANGUAGES:
        assert set(references(language)) == {p.id for p in PROBLEMS} | {"sum_evens:wrong", "sum_evens:broken"}


# default tier: one problem per language (a different one each, so every problem runs somewhere)
ONE_EACH = [(lang, PROBLEMS[i].id) for i, lang in enumerate(CODING_LANGUAGES)]


@pytest.mark.parametrize("language, problem", ONE_EACH)
def test_reference_solution_passes(language, problem):
    r = run_solution(language, BY_ID[problem], references(language)[problem])
    assert (r.status, r.passed, r.exit_code) == ("passed", True, 0), r
    assert r.tests_passed == r.tests_total == len(BY_ID[problem].tests)
    assert r.compile_error is None and r.runtime_error is None and r.failures == [] and r.duration_s > 0


@pytest.mark.parametrize("language", CODING_LANGUAGES)
def test_wrong_solution_fails_and_names_the_failing_tests(language):
    r = run_solution(language, BY_ID["sum_evens"], references(language)["sum_evens:wrong"])
    assert (r.status, r.passed, r.tests_passed, r.tests_total) == ("wrong_answer", False, 1, 6), r
    assert r.failures[0] == "test 0: sum_evens([1, 2, 3, 4]) expected 6, got 10"


@pytest.mark.parametrize("language", CODING_LANGUAGES)
def test_syntax_or_type_error_is_a_compile_error(language):
    r = run_solution(language, BY_ID["sum_evens"], references(language)["sum_evens:broken"])
    assert (r.status, r.passed, r.tests_passed) == ("compile_error", False, 0), r
    assert r.compile_error and r.exit_code not in (None, 0)


@pytest.mark.slow  # 100 compiles and runs: about 90 s on 2 idle cores
@pytest.mark.parametrize("language", CODING_LANGUAGES)
def test_all_references_pass(language):
    refs = references(language)
    results = [run_solution(language, p, refs[p.id]) for p in PROBLEMS]
    assert [r.problem for r in results if not r.passed] == [], [r for r in results if not r.passed]


def test_runtime_errors_are_recorded_per_test():
    p = BY_ID["rotate_left"]
    py = "def rotate_left(xs, k):\n    return xs[k:] + xs[:k] if k < len(xs) else 1 / 0\n"
    r = run_solution("python", p, py)
    assert r.status == "runtime_error" and 0 < r.tests_passed < r.tests_total
    assert "ZeroDivisionError" in r.runtime_error and r.exit_code == 0
    # C has no exceptions: a crash ends the run; the results printed before it still count
    c = ("int *rotate_left(const int *xs, int xs_len, int k, int *out_len) {\n"
         "  if (k == 7) { int *p = 0; *p = 1; }\n"
         "  int *o = malloc(sizeof(int) * (xs_len + 1));\n"
         "  for (int i = 0; i < xs_len; i++) o[i] = xs[(i + k) % xs_len];\n"
         "  *out_len = xs_len;\n  return o;\n}\n")
    r = run_solution("c", p, c)
    assert r.status == "runtime_error" and r.tests_passed == 3 and r.exit_code == 139  # SIGSEGV
    assert any("no result" in f for f in r.failures)


def test_endless_answer_times_out_fast():
    t0 = time.monotonic()
    r = run_solution("javascript", BY_ID["sum_evens"], "function sumEvens(xs) { for (;;) {} }", timeout_s=1)
    assert r.status == "timeout" and not r.passed and time.monotonic() - t0 < 10
    assert "stopped after 1 s" in r.runtime_error


def test_hostile_answers_are_contained():
    # a fork bomb and an attempt to reach the network: contained by the sandbox, recorded as a failure
    bomb = "sum_evens() {\n  :(){ :|:& sleep 5; };:\n}\n"
    r = run_solution("bash", BY_ID["sum_evens"], bomb, timeout_s=3)
    assert not r.passed and r.status in ("timeout", "runtime_error", "wrong_answer")
    net = ("import urllib.request\n\ndef sum_evens(xs):\n    urllib.request.urlopen('http://192.0.2.1', timeout=2)\n"
           "    return 0\n")
    r = run_solution("python", BY_ID["sum_evens"], net)
    assert r.status == "runtime_error" and "URLError" in r.runtime_error


@pytest.mark.parametrize("language", ["python", "bash"])
def test_hostile_suite_is_contained_under_the_coding_limits(language):
    """The sandbox's hostile cases, run with the coding runs' limits (512 processes per uid, not 32)."""
    import support.hostile as hostile
    from cardforge.core.sandbox import run_sandboxed

    name = {"python": "main.py", "bash": "main.sh"}[language]

    def runner(source, limits):
        return run_sandboxed([TOOLCHAINS[language].run[0], name], files={name: source},
                             **{**sandbox_limits(language), **limits})

    problems = {c.name: hostile.run_case(c, language, runner)[1] for c in hostile.cases_for(language)}
    assert not any(problems.values()), problems


HUMANEVAL_SAMPLE = [0, 10, 32, 53, 81, 108, 129, 163]


def test_humaneval_canonical_solutions_pass_and_a_wrong_answer_fails():
    probs = problems()
    assert len(probs) == 164
    for i in HUMANEVAL_SAMPLE:
        p = probs[i]
        r = check(p, p["prompt"] + p["canonical_solution"])
        assert r.passed, (p["task_id"], r.detail)
    body_only = check(probs[0], probs[0]["canonical_solution"])  # a bare body goes under the signature
    assert body_only.passed
    wrong = check(probs[0], "def has_close_elements(numbers, threshold):\n    return False\n")
    assert not wrong.passed and "AssertionError" in wrong.detail
    syntax = check(probs[0], "def has_close_elements(numbers, threshold)\n    return False\n")
    assert not syntax.passed and "SyntaxError" in syntax.detail


@pytest.mark.slow  # 164 sandbox runs
def test_humaneval_every_canonical_solution_passes():
    failed = [p["task_id"] for p in problems() if not check(p, p["prompt"] + p["canonical_solution"]).passed]
    assert failed == []
