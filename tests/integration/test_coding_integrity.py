"""Issue #17 follow-up: a solution cannot read what judges it, nor pass without solving.

HumanEval (core/humaneval.py, the eval's pass@1 and the data engine's verifier) used to run the answer in
the same process as the hidden tests and count exit status 0 as a pass: `sys.exit(0)` passed every
problem, and the answer could read the expected values from its own file. Now a non-dumpable judge holds
the tests and a nonce it got on stdin; the answer runs in another process (humaneval_judge.py). The
coding runner judges on the host: the expected values never enter the sandbox (only the arguments and
a per-run marker do), so a solution that finds the marker can still only report values it computed.

Every hostile answer here searches everything it can reach (the workspace, /tmp, environ, argv, every
/proc/PID/{cmdline,environ,fd,mem} it can open) for the nonce and the tests, and reports what it found."""

from __future__ import annotations

import json

import pytest
from cardforge.core.humaneval import check, problems
from cardforge.core.sandbox import SandboxUnavailable, check_available

try:
    check_available()
except SandboxUnavailable as e:  # pragma: no cover
    pytest.skip(str(e), allow_module_level=True)

SNOOP = r'''
import os, re, sys
_blob = [repr(dict(os.environ)).encode(), repr(sys.argv).encode()]
def _grab(path, n=1 << 20):
    try:  # non-blocking: a pipe (its own request pipe, /proc/1/fd/0) must not hang the search
        _f = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            _blob.append(os.read(_f, n))
        finally:
            os.close(_f)
    except Exception:
        pass
for _root in ("/work", "/tmp", "/dev/shm"):
    for _dp, _dn, _fn in os.walk(_root):
        for _n in _fn:
            _grab(os.path.join(_dp, _n))
for _pid in [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]:
    for _what in ("cmdline", "environ", "fd/0", "fd/3", "fd/4", "fd/5", "fd/6"):
        _grab(f"/proc/{_pid}/{_what}", 1 << 16)
    try:
        _fd = os.open(f"/proc/{_pid}/mem", os.O_RDONLY)
        for _line in open(f"/proc/{_pid}/maps"):
            _a, _b = (int(x, 16) for x in _line.split()[0].split("-"))
            try:
                _blob.append(os.pread(_fd, min(_b - _a, 1 << 22), _a))
            except (OSError, OverflowError):  # unreadable regions, [vsyscall] past the signed offset
                pass
    except OSError:
        pass
_all = b"".join(_blob)
_nonce = re.search(rb"CF_HE_[0-9a-f]{32}", _all)
sys.stderr.write(f"SNOOP nonce={_nonce.group().decode() if _nonce else None} "
                 f"tests={(b'assert ' + b'candidate') in _all or (b'def ' + b'check(') in _all}\n")
if _nonce:
    print(_nonce.group().decode() + " PASS", flush=True)
'''

ENTRY = "has_close_elements"
CHEATS = {
    "exit0": "import sys\nsys.exit(0)\n",
    "os_exit0": "import os\nos._exit(0)\n",
    "atexit": f"import atexit, os\natexit.register(lambda: os._exit(0))\ndef {ENTRY}(*a):\n    return None\n",
    "always_equal": (f"class Yes:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda s, o: False\n"
                     f"def {ENTRY}(*a):\n    return Yes()\n"),
    "kill_judge": f"import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('PASS')\ndef {ENTRY}(*a):\n    return True\n",
    "fake_verdict": (f"import os\nfor fd in ('/proc/1/fd/1', '/proc/%d/fd/1' % os.getppid()):\n    try:\n"
                     "        open(fd, 'w').write('\\nCF_HE_' + '0' * 32 + ' PASS\\n')\n    except OSError:\n        pass\n"
                     f"def {ENTRY}(*a):\n    return False\n"),
    "stop_judge": (f"import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\ndef {ENTRY}(*a):\n    return True\n"),
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_a_humaneval_answer_cannot_pass_without_solving(name):
    p = problems()[0]
    r = check(p, SNOOP + CHEATS[name], timeout_s=4)
    assert not r.passed, (name, r.detail, r.sandbox.stdout, r.sandbox.stderr[-500:])
    snoop = [line for line in r.sandbox.stderr.splitlines() if line.startswith("SNOOP ")]
    if snoop:  # the answer's import ran (stop_judge and kill_judge may end the call before it reports)
        assert snoop[0] == "SNOOP nonce=None tests=False", (name, snoop)


def test_humaneval_verdicts_keep_their_kinds():
    p = problems()[0]
    ok = check(p, SNOOP + p["prompt"] + p["canonical_solution"])
    assert ok.passed and "SNOOP nonce=None tests=False" in ok.sandbox.stderr, ok.sandbox.stderr
    wrong = check(p, f"def {ENTRY}(numbers, threshold):\n    return False\n")
    assert not wrong.passed and wrong.detail.startswith("AssertionError"), wrong.detail
    syntax = check(p, f"def {ENTRY}(numbers, threshold)\n    return False\n")
    assert not syntax.passed and syntax.detail.startswith("SyntaxError"), syntax.detail
    raises = check(p, f"def {ENTRY}(numbers, threshold):\n    raise KeyError('x')\n")
    assert not raises.passed and raises.detail.startswith("KeyError"), raises.detail
    slow = check(p, f"def {ENTRY}(numbers, threshold):\n    while True:\n        pass\n", timeout_s=2)
    assert not slow.passed and slow.detail == "timeout" and slow.sandbox.timed_out
    # tuples, sets, dicts, inf/nan and None come back as themselves (problems compare them with ==)
    tup = next(q for q in problems() if q["entry_point"] == "sum_product")
    assert check(tup, tup["prompt"] + tup["canonical_solution"]).passed
    lst = check(tup, "def sum_product(numbers):\n    return [sum(numbers), 0]\n")
    assert not lst.passed  # a list is not the tuple the tests compare with


def test_the_coding_runner_never_puts_expected_values_in_the_sandbox():
    """Every language's files (driver, script) hold the arguments and the marker, never an expected value:
    the host compares (runner.compare)."""
    from cardforge.eval.coding.languages import LANGUAGES
    from cardforge.eval.coding.problems import Param, Problem
    from cardforge.eval.coding.runner import TOOLCHAINS, _script

    secret = [f"zq{i}expectedvalue" for i in range(5)]
    prob = Problem("t", "echo_word", "d", (Param("word", "str"),), "str",
                   tuple(((f"arg{i}",), secret[i]) for i in range(5)))
    for name, lang in LANGUAGES.items():
        files = lang.program(prob, "solution", "CF_marker")
        files["cf_run.sh"] = _script(TOOLCHAINS[name], "CF_marker_STEP", 10, 60)
        blob = json.dumps(files)
        assert "arg0" in blob and not any(s in blob for s in secret), name


def test_a_coding_solution_that_reads_the_marker_still_cannot_pass():
    """It finds the marker (it is in main.py) and prints a result line for every test before the driver
    does (the first line per test counts); without the expected values it can only claim wrong ones."""
    from cardforge.eval.coding.problems import PROBLEMS
    from cardforge.eval.coding.runner import run_solution

    p = next(q for q in PROBLEMS if q.returns == "int")
    forge = (SNOOP.replace("CF_HE_[0-9a-f]{32}", "CF_[0-9a-f]{16}") +
             "import re as _re\n_m = _re.search(r'CF_[0-9a-f]{16}', open('/work/main.py').read()).group()\n"
             f"for _i in range({len(p.tests)}):\n    print(_m, _i, 7, flush=True)\n"
             f"def {p.function}(*a):\n    return 7\n")
    r = run_solution("python", p, forge)
    assert not r.passed and r.status == "wrong_answer" and r.tests_passed < r.tests_total, r


def test_the_agentic_slugify_checker_cannot_be_passed_by_printing_or_exiting():
    from cardforge.eval.agentic.task import run_check
    from cardforge.eval.agentic import BY_ID

    task = BY_ID["implement-slugify"]
    cheat = "import os, sys\nprint('ok\\n' * 7, end='', flush=True)\nos._exit(0)\n"
    assert "hidden tests" in (run_check(task, {"text_utils.py": cheat.encode()}) or "passed")
    snoop = SNOOP + "def slugify(text):\n    return 'x'\n"
    why = run_check(task, {"text_utils.py": snoop.encode()})
    assert why and "hidden tests" in why, why
    oracle = ("import re\n\n\ndef slugify(text: str) -> str:\n"
              "    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')\n")
    assert run_check(task, {"text_utils.py": oracle.encode()}) is None


def test_the_agentic_unittest_checker_cannot_be_passed_by_exiting_or_printing():
    """fix-failing-tests ran unittest in the process that imported the model's module and trusted its exit
    status: os._exit(0) at import passed. Now the tests run in the judge against proxies."""
    from cardforge.eval.agentic import BY_ID
    from cardforge.eval.agentic.code import INVENTORY
    from cardforge.eval.agentic.task import run_check

    task = BY_ID["fix-failing-tests"]
    cheats = ["import os\nos._exit(0)\n", "import sys\nprint('Ran 5 tests\\n\\nOK')\nsys.exit(0)\n",
              SNOOP + INVENTORY]
    for cheat in cheats:
        why = run_check(task, {"inventory.py": cheat.encode()})
        assert why and "tests fail" in why, (cheat[:40], why)
    fixed = INVENTORY.replace("self.items[name] = (qty, price)\n        else", "self.items[name] = (old_qty + qty, price)\n"
                              "        else").replace("self.items[name] = (have - qty, price)",
                                                    "self.items[name] = (have - qty, price)\n"
                                                    "        if have == qty:\n            del self.items[name]")
    assert run_check(task, {"inventory.py": fixed.encode()}) is None
