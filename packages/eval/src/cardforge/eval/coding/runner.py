"""Compile and run an answer against a problem's hidden tests, in the sandbox (cardforge.core.sandbox).

    result = run_solution("rust", BY_ID["caesar"], answer_code)
    result.passed, result.status, result.compile_error, result.failures

One `run_sandboxed` call per answer runs a small bash script: compile (if the language needs it) under
`timeout`, its output to stderr behind a sentinel, then the program under its own `timeout` and a lower
address-space limit (prlimit may only lower limits: the compile step gets the larger one). The host then
reads the driver's marker lines (languages.py) and compares each result with the expected value as JSON,
so `1` never equals `true` and `[1, 2]` never equals `[2, 1]`.

Limits are per language (`LIMITS`): the JVM, node and the Go runtime reserve far more address space than
they use, and javac / go build / rustc spawn threads. RLIMIT_NPROC counts every process and thread of
the sandbox uid on the host, across concurrent sandboxes, so it is set well above one JVM's threads and
`MAX_PARALLEL` caps how many runs share it. Toolchains must be in /usr/bin: the sandbox shows /usr only
(/usr/local, /root and a rustup install stay hidden). `require_toolchains` names the setup command.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cardforge.core.errors import UserError
from cardforge.core.sandbox import run_sandboxed
from cardforge.core.sandbox.run import SandboxResult
from cardforge.eval.coding.languages import LANGUAGES
from cardforge.eval.coding.problems import Problem

SETUP = "run `sudo scripts/setup_toolchains.sh` (or `make toolchains`)"
# sandbox runs at once in this process: each compile is CPU-heavy, and all share the uid's process limit
MAX_PARALLEL = max(1, min(4, (os.cpu_count() or 2) // 2))
SLOTS = threading.BoundedSemaphore(MAX_PARALLEL)  # every coding sandbox run (humaneval too) holds one
MAX_PROCS = 512  # per uid, shared by MAX_PARALLEL runs: a JVM and javac take ~30 threads each
COMPILE_EXIT = 97  # the script's exit status when the compile step failed
DEFAULT_TIMEOUT_S = {"python": 10.0, "javascript": 10.0, "typescript": 10.0, "java": 10.0, "cpp": 10.0, "c": 10.0,
                     "rust": 10.0, "go": 10.0, "ruby": 10.0, "bash": 10.0}
COMPILE_TIMEOUT_S = 60.0
# the host's own limit on the run step, from the script's "<sentinel> run" line: its `timeout -k 2` plus a
# second. The program can stop `timeout` (`kill -STOP -1`: same uid) but not the host (red team, #17)
RUN_GRACE_S = 3.0

_JVM = ["-Xmx256m", "-Xss16m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CompressedClassSpaceSize=64m",
        "-XX:ReservedCodeCacheSize=64m"]
_NODE = ["node", "--max-old-space-size=256", "--stack-size=8000"]


@dataclass(frozen=True)
class Toolchain:
    tools: tuple[str, ...]  # executables that must exist in /usr/bin (what the sandbox sees)
    package: str  # the Debian package that provides them (scripts/setup_toolchains.sh)
    run: tuple[str, ...]
    compile: tuple[str, ...] = ()
    compile_mem_mb: int = 1024
    run_mem_mb: int = 512
    env: dict[str, str] = field(default_factory=dict)


TOOLCHAINS: dict[str, Toolchain] = {
    # interpreted languages: a syntax check is the compile step, so a syntax error is a compile_error everywhere
    "python": Toolchain(("python3",), "python3", ("python3", "main.py"), ("python3", "-m", "py_compile", "main.py")),
    "javascript": Toolchain(("node",), "nodejs", (*_NODE, "main.js"), (*_NODE, "--check", "main.js"),
                            compile_mem_mb=2048, run_mem_mb=2048),
    "typescript": Toolchain(("node", "tsc"), "node-typescript", (*_NODE, "out/main.js"),
                            ("tsc", "--strict", "--target", "es2020", "--lib", "es2020", "--module", "commonjs",
                             "--outDir", "out", "main.ts"), compile_mem_mb=2048, run_mem_mb=2048),
    "java": Toolchain(("javac", "java"), "openjdk-17-jdk-headless", ("java", *_JVM, "-cp", ".", "Main"),
                      ("javac", *(f"-J{f}" for f in _JVM), "-encoding", "UTF-8", "-d", ".", "Solution.java",
                       "Main.java"), compile_mem_mb=2048, run_mem_mb=2048),
    "cpp": Toolchain(("g++",), "g++", ("./prog",), ("g++", "-std=c++17", "-O1", "-o", "prog", "main.cpp")),
    "c": Toolchain(("gcc",), "gcc", ("./prog",), ("gcc", "-std=gnu11", "-O1", "-o", "prog", "main.c", "-lm")),
    "rust": Toolchain(("rustc", "cc"), "rustc", ("./prog",),
                      ("rustc", "--edition", "2021", "-C", "opt-level=1", "-C", "debuginfo=0", "-C", "strip=debuginfo",
                       "-o", "prog", "main.rs"), compile_mem_mb=2048),  # stripped: ~0.5 MB, not 12 (the file cap)
    "go": Toolchain(("go",), "golang-go", ("./prog",), ("go", "build", "-o", "prog", "main.go", "solution.go"),
                    compile_mem_mb=2048, run_mem_mb=1024,
                    env={"GOCACHE": "/tmp/go-cache", "GOPATH": "/tmp/go", "GO111MODULE": "off", "CGO_ENABLED": "0"}),
    "ruby": Toolchain(("ruby",), "ruby", ("ruby", "main.rb"), ("ruby", "-c", "main.rb")),
    "bash": Toolchain(("bash", "base64"), "bash", ("bash", "main.sh"), ("bash", "-n", "main.sh")),
}


def missing_tools(language: str) -> list[str]:
    return [t for t in TOOLCHAINS[language].tools if not os.access(f"/usr/bin/{t}", os.X_OK)]


def require_toolchains(languages: list[str]) -> None:
    """One error naming every missing toolchain and the setup command; never a silent skip."""
    unknown = [lang for lang in languages if lang not in TOOLCHAINS]
    if unknown:
        raise UserError(f"eval.coding_languages: unknown {unknown}; known: {sorted(TOOLCHAINS)}")
    missing = {lang: missing_tools(lang) for lang in languages}
    missing = {lang: tools for lang, tools in missing.items() if tools}
    if missing:
        what = "; ".join(f"{lang}: /usr/bin/{', /usr/bin/'.join(tools)} (Debian {TOOLCHAINS[lang].package})"
                         for lang, tools in missing.items())
        raise UserError(f"coding eval toolchains missing ({what}): {SETUP}")


@functools.lru_cache(maxsize=1)
def _java_binds() -> tuple[str, ...]:
    """Debian's JDK keeps its conf/ as symlinks into /etc/java-N-openjdk, which the sandbox hides."""
    javac = Path("/usr/bin/javac")
    if not javac.exists():
        return ()
    conf = javac.resolve().parents[1] / "conf"
    found = set()
    for root, _, names in os.walk(conf):
        for name in names:
            p = Path(root) / name
            if p.is_symlink() and (target := p.resolve()).is_relative_to("/etc"):
                found.add(str(Path(*target.parts[:3])))  # /etc/java-17-openjdk
    return tuple(sorted(d for d in found if Path(d).is_dir()))


def sandbox_limits(language: str) -> dict:
    """`run_sandboxed` keywords of one coding run (the compile step's memory; the run lowers it itself)."""
    tc = TOOLCHAINS[language]
    return {"mem_mb": max(tc.compile_mem_mb, tc.run_mem_mb), "max_procs": MAX_PROCS, "env": tc.env,
            "ro_binds": list(_java_binds()) if language == "java" else None}


@dataclass
class RunResult:
    language: str
    problem: str
    passed: bool
    status: str  # passed | wrong_answer | compile_error | runtime_error | timeout
    tests_passed: int = 0
    tests_total: int = 0
    compile_error: str | None = None  # the compiler's output when compiling failed
    runtime_error: str | None = None  # stderr of the run / per-test exceptions, when it did not pass cleanly
    exit_code: int | None = None  # of the program (or of the compiler when it failed)
    duration_s: float = 0.0  # the whole sandbox run, compile included
    failures: list[str] = field(default_factory=list)  # the first few failing tests, in words

    def to_dict(self) -> dict:
        return asdict(self)


def _script(tc: Toolchain, sentinel: str, timeout_s: float, compile_timeout_s: float, stamp: bool = False) -> str:
    q = " ".join  # every argv word here is ours and needs no quoting
    lines = ["#!/bin/bash"]
    if tc.compile:
        lines += [f"timeout -k 2 {compile_timeout_s:g} {q(tc.compile)} 1>&2",
                  f"rc=$?; if [ $rc -ne 0 ]; then echo '{sentinel} compile-exit' $rc >&2; exit {COMPILE_EXIT}; fi"]
    if stamp:  # when the run step starts (wall clock, bash's builtin: no extra process), for run_program
        lines.append(f'echo "{sentinel} start $EPOCHREALTIME" >&2')
    lines += [f"echo '{sentinel} run' >&2",
              f"exec prlimit --as={tc.run_mem_mb << 20} -- timeout -k 2 {timeout_s:g} {q(tc.run)}"]
    return "\n".join(lines) + "\n"


# run_program: the file each language's compile/run command expects, and the companions it names too
SOURCE_FILE = {"python": "main.py", "javascript": "main.js", "typescript": "main.ts", "java": "Main.java",
               "cpp": "main.cpp", "c": "main.c", "rust": "main.rs", "go": "main.go", "ruby": "main.rb",
               "bash": "main.sh"}
_COMPANIONS = {"java": {"Solution.java": "class Solution {\n}\n"}, "go": {"solution.go": "package main\n"}}


@dataclass
class ProgramRun(SandboxResult):
    """`run_program`'s result: the SandboxResult fields describe the run step (stderr after the compile
    output, duration_s from the run step's start, timed_out/killed_by "timeout" also when the script's own
    `timeout` stopped the program: exit 124, or 137 after its -k grace)."""
    compiled: bool = True
    compile_output: str = ""
    compile_s: float = 0.0


def run_program(language: str, source: str, *, timeout_s: float | None = None,
                compile_timeout_s: float = COMPILE_TIMEOUT_S, read_back: bool = True) -> ProgramRun:
    """A whole program (its own main, no driver) through exactly run_solution's compile-and-run script and
    per-language limits: one sandbox run, compile step included. The hostile-call suite runs through this
    (`hostile_runner`). Blocking."""
    tc = TOOLCHAINS[language]
    timeout_s = float(timeout_s or DEFAULT_TIMEOUT_S[language])
    sentinel = f"CF_{secrets.token_hex(8)}_STEP"
    files = {**_COMPANIONS.get(language, {}), SOURCE_FILE[language]: source,
             "cf_run.sh": _script(tc, sentinel, timeout_s, compile_timeout_s, stamp=True)}
    total = timeout_s + (compile_timeout_s if tc.compile else 0) + 10
    with SLOTS:
        t0 = time.time()
        r = run_sandboxed(["bash", "cf_run.sh"], files=files, timeout_s=total, read_back=read_back,
                          max_read_back=64 << 20, deadline_after=(f"{sentinel} run", timeout_s + RUN_GRACE_S),
                          **sandbox_limits(language))
        t_end = time.time()
    compile_out, found, rest = r.stderr.partition(f"{sentinel} start ")
    if not found:  # the compile step failed (or the sandbox was stopped during it)
        return ProgramRun(**{**asdict(r), "duration_s": t_end - t0}, compiled=False, compile_output=compile_out)
    stamp, _, rest = rest.partition("\n")
    _, _, run_err = rest.partition(f"{sentinel} run\n")
    start = float(stamp) if stamp.replace(".", "", 1).isdigit() else t0
    out = ProgramRun(**{**asdict(r), "stderr": run_err, "duration_s": t_end - start},
                     compile_output=compile_out, compile_s=start - t0)
    if not r.timed_out and r.exit_code in (124, 137):  # the script's `timeout` stopped the program
        out.timed_out, out.killed_by, out.exit_code = True, "timeout", None
    return out


def hostile_runner(language: str):
    """A hostile-suite Runner (tests/support/hostile.py) that compiles and runs each case's program with the coding
    limits of `language` (run_program). A case's `timeout_s` becomes the run step's timeout (run_solution
    takes one too); its other limits (e.g. mem_mb, written for the plain sandbox) are not applied: the coding
    run's own per-language limits (TOOLCHAINS run_mem_mb, MAX_PROCS, ...) are what is under test."""
    def runner(source: str, limits: dict) -> ProgramRun:
        return run_program(language, source, timeout_s=limits.get("timeout_s"))
    return runner


def _tail(text: str, n: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def _decode_bash(rest: str, returns: str):
    """`<status> <base64 stdout>` -> the value the function printed, as the return type."""
    status, _, b64 = rest.partition(" ")
    try:
        raw = base64.b64decode(b64.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        raise ValueError("undecodable output") from None
    if status != "0":
        raise ValueError(f"the function exited with status {status}")
    lines = raw.split("\n") if raw else []
    if returns == "int":
        return int(raw.strip())
    if returns == "bool":
        if raw.strip() not in ("true", "false"):
            raise ValueError(f"printed {raw!r}, not true/false")
        return raw.strip() == "true"
    if returns == "list[int]":
        return [int(x) for x in lines]
    return lines if returns == "list[str]" else raw


def compare(language: str, p: Problem, stdout: str, marker: str) -> tuple[int, list[str], list[str]]:
    """(tests passed, failures in words, per-test errors) from the driver's marker lines."""
    got: dict[int, str] = {}
    for line in stdout.splitlines():
        if line.startswith(marker + " "):
            idx, _, rest = line[len(marker) + 1:].partition(" ")
            if idx.isdigit() and int(idx) not in got:
                got[int(idx)] = rest
    passed, failures, errors = 0, [], []
    for i, (args, expected) in enumerate(p.tests):
        want = json.dumps(expected)
        if i not in got:
            failures.append(f"test {i}: no result (the program stopped before it)")
            continue
        rest = got[i]
        if language != "bash" and rest.startswith("! "):
            errors.append(f"test {i}: {rest[2:]}")
            failures.append(f"test {i}: raised {rest[2:][:200]}")
            continue
        try:
            value = _decode_bash(rest, p.returns) if language == "bash" else json.loads(rest)
            shown = json.dumps(value)
        except ValueError as e:
            failures.append(f"test {i}: unreadable result {rest[:200]!r} ({e})")
            continue
        if shown == want:
            passed += 1
        else:
            call = f"{p.function}({', '.join(json.dumps(a) for a in args)})"
            failures.append(f"test {i}: {call} expected {want}, got {shown[:200]}")
    return passed, failures, errors


def run_solution(language: str, p: Problem, solution: str, *, timeout_s: float | None = None,
                 compile_timeout_s: float = COMPILE_TIMEOUT_S) -> RunResult:
    """Blocking (a sandbox run, compile included): call from a thread in async code."""
    lang, tc = LANGUAGES[language], TOOLCHAINS[language]
    timeout_s = float(timeout_s or DEFAULT_TIMEOUT_S[language])
    nonce = secrets.token_hex(8)
    marker, sentinel = f"CF_{nonce}", f"CF_{nonce}_STEP"
    files = lang.program(p, lang.prepare(solution), marker)
    files["cf_run.sh"] = _script(tc, sentinel, timeout_s, compile_timeout_s)
    total = timeout_s + (compile_timeout_s if tc.compile else 0) + 10
    t0 = time.monotonic()
    with SLOTS:
        r = run_sandboxed(["bash", "cf_run.sh"], files=files, timeout_s=total, read_back=False,
                          deadline_after=(f"{sentinel} run", timeout_s + RUN_GRACE_S), **sandbox_limits(language))
    out = RunResult(language, p.id, False, "runtime_error", tests_total=len(p.tests),
                    duration_s=round(time.monotonic() - t0, 3), exit_code=r.exit_code)
    compile_out, _, run_err = r.stderr.partition(f"{sentinel} run\n")
    if f"{sentinel} compile-exit" in compile_out or (tc.compile and not run_err and r.exit_code == COMPILE_EXIT):
        text, found, code = compile_out.rpartition(f"{sentinel} compile-exit ")
        if not found:  # the sentinel was past the output cap: a huge error listing
            text, code = compile_out, ""
        out.status, out.compile_error = "compile_error", _tail(text) or "(no compiler output)"
        out.exit_code = int(code.strip()) if code.strip().isdigit() else None
        if out.exit_code in (124, 137):
            out.compile_error += f"\n[compile step killed after {compile_timeout_s:g} s]"
        return out
    if r.timed_out:
        out.status, out.runtime_error = "timeout", (f"the sandbox killed the run (limits: {timeout_s:g} s to run, "
                                                    f"{total:g} s in all)")
        return out
    out.tests_passed, out.failures, errors = compare(language, p, r.stdout, marker)
    out.failures = out.failures[:5]
    if r.exit_code in (124, 137) and out.tests_passed < out.tests_total:
        out.status = "timeout"
        errors.append(f"the program was stopped after {timeout_s:g} s (exit {r.exit_code})")
    elif out.tests_passed == out.tests_total and r.exit_code == 0:
        out.passed, out.status = True, "passed"
    elif r.exit_code == 0 and not errors:
        out.status = "wrong_answer"
    if not out.passed and (run_err.strip() or errors):
        out.runtime_error = _tail("\n".join(errors[:5] + ([run_err.strip()] if run_err.strip() else [])))
    return out
