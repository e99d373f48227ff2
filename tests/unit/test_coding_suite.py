"""The coding suites without running code: problem data, per-language rendering, answer extraction, the
host-side comparison of driver output, toolchain detection and the config keys."""

from __future__ import annotations

import base64
import json

import pytest

from cardforge.core.config.compose import ConfigError, compose
from cardforge.core.config.schemas import CODING_LANGUAGES
from cardforge.core.errors import UserError
from cardforge.eval.benchmarks import coding
from cardforge.eval.coding import runner
from cardforge.eval.coding.extract import extract_code
from cardforge.eval.coding.languages import LANGUAGES
from cardforge.eval.coding.problems import BY_ID, PROBLEMS, Param, Problem
from cardforge.eval.coding.runner import TOOLCHAINS, compare, require_toolchains


def test_ten_problems_ten_languages_and_the_config_list_agree():
    assert len(PROBLEMS) == 10 and len({p.id for p in PROBLEMS}) == 10
    assert list(LANGUAGES) == list(TOOLCHAINS) == list(CODING_LANGUAGES)
    assert all(len(p.tests) >= 5 for p in PROBLEMS)
    types = {p.returns for p in PROBLEMS} | {a.type for p in PROBLEMS for a in p.params}
    assert types == {"int", "str", "bool", "list[int]", "list[str]"}  # every type is exercised


def test_bad_problem_data_is_refused():
    with pytest.raises(ValueError, match="at least 5"):
        Problem("x", "x", "d", (Param("n", "int"),), "int", (((1,), 1),))
    with pytest.raises(ValueError, match="not a valid str"):  # a quote could not be printed the same everywhere
        Problem("x", "x", "d", (Param("s", "str"),), "str", tuple(((f'a"{i}',), "a") for i in range(5)))
    with pytest.raises(ValueError, match="not a valid int"):
        Problem("x", "x", "d", (Param("n", "int"),), "int", tuple(((2**40,), 1) for _ in range(5)))


@pytest.mark.parametrize("language", CODING_LANGUAGES)
def test_prompt_shows_the_signature_but_never_the_hidden_tests(language):
    for p in PROBLEMS:
        text = coding.prompt(language, p)
        lang = LANGUAGES[language]
        assert lang.signature(p) in text and lang.fn(p) in text and f"```{lang.fences[0]}" in text
        for args, expected in p.tests:
            for value in (*args, expected):
                shown = json.dumps(value)
                if isinstance(value, (list, str)) and len(shown) > 6:
                    assert shown not in text, f"{language}/{p.id}: test value {shown} leaked into the prompt"


def test_signatures_per_language():
    p = BY_ID["rotate_left"]
    assert LANGUAGES["python"].signature(p) == "def rotate_left(xs: list[int], k: int) -> list[int]:"
    assert LANGUAGES["typescript"].signature(p) == "function rotateLeft(xs: number[], k: number): number[]"
    assert LANGUAGES["c"].signature(p) == "int *rotate_left(const int *xs, int xs_len, int k, int *out_len)"
    assert LANGUAGES["cpp"].signature(p) == "std::vector<int> rotate_left(const std::vector<int>& xs, int k)"
    assert LANGUAGES["rust"].signature(p) == "fn rotate_left(xs: &[i64], k: i64) -> Vec<i64>"
    assert LANGUAGES["go"].signature(p) == "func rotateLeft(xs []int, k int) []int"
    assert "public static int[] rotateLeft(int[] xs, int k)" in LANGUAGES["java"].signature(p)
    assert "rotate_left() {" in LANGUAGES["bash"].signature(p) and "# $2: k (integer)" in LANGUAGES["bash"].signature(p)


def test_driver_embeds_every_test_and_the_run_marker():
    p = BY_ID["common_prefix"]
    for language, lang in LANGUAGES.items():
        files = lang.program(p, "SOLUTION", "CF_abc123")
        text = "\n".join(files.values())
        assert "SOLUTION" in text and "CF_abc123" in text
        assert text.count("flower") == 1, language  # each test's input once, in the driver
    assert LANGUAGES["bash"].literal(["it's", "a b"], "list[str]") == "$'it\\'s\\na b'"
    assert LANGUAGES["c"].literal([], "list[int]") == "NULL, 0"


def test_answers_own_main_and_package_are_neutralised():
    assert "cf_answer_main(" in LANGUAGES["c"].prepare("int main(void) { return 0; }")
    assert "fn cf_answer_main(" in LANGUAGES["rust"].prepare("fn main() {}")
    go = LANGUAGES["go"].prepare("package solution\n\nfunc main() {}\n")
    assert go.startswith("package main") and "func cfAnswerMain()" in go
    assert LANGUAGES["go"].prepare("func f() int { return 1 }").startswith("package main\n")
    assert LANGUAGES["javascript"].prepare("export function f() {}") == "function f() {}"


@pytest.mark.parametrize("answer, fences, name, expected", [
    ("```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```", ("python",), "f",
     "def f(x):\n    return x\n"),  # the defining block, not the usage example after it
    ("```bash\nmake\n```\n```rust\nfn f() -> i64 { 1 }\n```", ("rust",), "f", "fn f() -> i64 { 1 }\n"),
    ("```\nint f(int a) {\n  return a;\n}\n```", ("c",), "f", "int f(int a) {\n  return a;\n}\n"),  # untagged
    ("def f():\n    return 1", ("python",), "f", "def f():\n    return 1\n"),  # no fence: the whole answer
    ("```go\nfunc f() int {\n\treturn 1", ("go",), "f", "func f() int {\n\treturn 1"),  # cut off mid-block
    ("first try:\n```js\nfunction f() { return 0 }\n```\nfixed:\n```js\nfunction f() { return 1 }\n```",
     ("js",), "f", "function f() { return 1 }\n"),  # the last definition wins
    ("   ", ("python",), "f", None),
    ("```python\n```", ("python",), "f", None),
])
def test_extract_code(answer, fences, name, expected):
    assert extract_code(answer, fences, name) == expected


def test_compare_is_strict_and_ignores_forged_lines():
    p = BY_ID["balanced"]  # returns bool, 7 tests
    want = [json.dumps(e) for _, e in p.tests]
    lines = ["CF_x 0 " + want[0], "CF_fake 1 " + want[1], "CF_x 1 1", "CF_x 2 ! ValueError: boom"]
    lines += [f"CF_x {i} {want[i]}" for i in range(3, 6)]  # test 6 never printed (a crash)
    passed, failures, errors = compare("python", p, "\n".join(["noise"] + lines), "CF_x")
    assert passed == 4 and len(failures) == 3 and errors == ["test 2: ValueError: boom"]
    assert "expected false, got 1" in failures[0]  # 1 is not false: JSON types are compared, not truthiness
    assert "no result" in failures[-1]


def test_compare_bash_decodes_printed_output():
    p = BY_ID["fizzbuzz"]
    out = []
    for i, (_, expected) in enumerate(p.tests):
        raw = "\n".join(expected) if i != 1 else "1\n2\nfizz"
        out.append(f"CF_x {i} 0 {base64.b64encode(raw.encode()).decode()}")
    passed, failures, _ = compare("bash", p, "\n".join(out), "CF_x")
    assert passed == len(p.tests) - 1 and "expected [\"1\", \"2\", \"Fizz\"]" in failures[0]
    q = BY_ID["has_pair_sum"]
    lines = [f"CF_x {i} 0 {base64.b64encode(json.dumps(e).encode()).decode()}" for i, (_, e) in enumerate(q.tests)]
    lines[0] = "CF_x 0 1 "  # the function failed (status 1, no output)
    passed, failures, _ = compare("bash", q, "\n".join(lines), "CF_x")
    assert passed == len(q.tests) - 1 and "exited with status 1" in failures[0]


def test_missing_toolchain_is_one_error_naming_the_setup(monkeypatch):
    monkeypatch.setattr(runner, "missing_tools", lambda lang: {"go": ["go"], "ruby": ["ruby"]}.get(lang, []))
    with pytest.raises(UserError) as e:
        require_toolchains(["python", "go", "ruby"])
    msg = str(e.value)
    assert "go: /usr/bin/go (Debian golang-go)" in msg and "ruby: /usr/bin/ruby (Debian ruby)" in msg
    assert "scripts/setup_toolchains.sh" in msg and "make toolchains" in msg and "python" not in msg
    require_toolchains(["python", "c"])  # present: no error
    with pytest.raises(UserError, match="unknown"):
        require_toolchains(["cobol"])


def test_questions_are_problem_major_with_run_settings():
    qs = coding.questions(["rust", "bash"], 2, {"rust": 3.0}, 30.0)
    assert [q.id for q in qs] == ["rust/sum_evens", "bash/sum_evens", "rust/is_palindrome", "bash/is_palindrome"]
    assert qs[0].meta == {"language": "rust", "problem": "sum_evens", "timeout_s": 3.0, "compile_timeout_s": 30.0}
    assert qs[1].meta["timeout_s"] is None  # the runner's default


def test_config_keys_are_typed_and_checked():
    cfg = compose("eval", ["experiment=qwen36_27b_card"])
    assert {"humaneval", "coding"} <= set(cfg.eval.suites)
    assert list(cfg.eval.coding_languages) == list(CODING_LANGUAGES) and cfg.eval.coding_problems is None
    assert cfg.eval.coding_timeout_s.java == 10.0
    cfg = compose("eval", ["eval.coding_languages=[go,c]", "eval.coding_problems=3", "eval.coding_timeout_s.go=5"])
    assert list(cfg.eval.coding_languages) == ["go", "c"] and cfg.eval.coding_timeout_s.go == 5.0
    with pytest.raises(ConfigError, match="cobol"):
        compose("eval", ["eval.coding_languages=[python,cobol]"])
    with pytest.raises(ConfigError, match="coding_problems"):
        compose("eval", ["eval.coding_problems=0"])
