"""The two programs a HumanEval check runs in its sandbox: a judge that holds the hidden tests and a
candidate process that holds the answer. (Issue #17 follow-up: the answer used to run in the same process
as the tests, and "passed" meant exit status 0: `sys.exit(0)`, `os._exit(0)` or an atexit hook passed
every problem, and the answer could read the expected values from its own file.)

    judge (python3 cf_judge.py)                       candidate (python3 cf_candidate.py R W)
    1. makes itself non-dumpable (PR_SET_DUMPABLE 0)
    2. reads nonce, prompt and tests from stdin to EOF
       (they are never in a file, argv or environ)
    3. starts the candidate: a fresh interpreter ---->  imports solution.py (its prints go to stderr)
    4. runs the problem's `check(candidate)`; each  ---->  calls the entry point, answers with the value
       call of `candidate` is a request on a pipe   <----  (a tagged JSON value: tuple, set, dict, inf/nan kept;
       and the value comes back decoded                  any other type is an error, never an object
                                                         whose __eq__ the judge would run)
    5. prints `<nonce> PASS`, or `<nonce> FAIL <why>`

The answer can print anything, exit with any status, kill the judge or lie about what its function returns
(which is just a wrong answer); it cannot print the nonce it never saw, read the tests (the judge is
non-dumpable, so /proc/PID/mem, fd and environ are closed to it; ptrace is refused by seccomp), nor make
the judge run its code. The host counts a pass only on the judge's nonce line (`judge`, used by
core/humaneval.py and by the agentic suite's function checkers).
"""

from __future__ import annotations

import json
import secrets

# the value codec, shared by both programs (each is a standalone script: this text is part of both)
CODEC = r'''
import json as _json
import math as _math

MAX_LINE = 8 << 20
REFS = None  # the candidate's object table (id -> object); None in the judge, which never resolves a ref


def enc(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(v)
    if t.__name__ == "Remote" and t.__module__ == "__main__" and REFS is None:  # the judge's proxy of a candidate object
        return {"$": "ref", "v": object.__getattribute__(v, "_cf_ref")}
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return v
    if t is float:
        return v if _math.isfinite(v) else {"$": "float", "v": repr(v)}
    if t is list:
        return [enc(x, depth + 1) for x in v]
    if t is tuple:
        return {"$": "tuple", "v": [enc(x, depth + 1) for x in v]}
    if t is dict:
        return {"$": "dict", "v": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
    if t in (set, frozenset):
        return {"$": t.__name__, "v": [enc(x, depth + 1) for x in v]}
    if t is complex:
        return {"$": "complex", "v": [enc(v.real), enc(v.imag)]}
    if t is bytes:
        return {"$": "bytes", "v": v.hex()}
    raise TypeError(f"returned a value of type {t.__name__}, which the judge does not accept")


def dec(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [dec(x, depth + 1) for x in v]
    if isinstance(v, dict) and set(v) == {"$", "v"}:
        tag, body = v["$"], v["v"]
        if tag == "float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag in ("tuple", "set", "frozenset") and isinstance(body, list):
            items = [dec(x, depth + 1) for x in body]
            return tuple(items) if tag == "tuple" else set(items) if tag == "set" else frozenset(items)
        if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
            return {dec(k, depth + 1): dec(x, depth + 1) for k, x in body}
        if tag == "complex" and isinstance(body, list) and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if tag == "bytes" and isinstance(body, str):
            return bytes.fromhex(body)
        if tag == "ref" and REFS is not None and isinstance(body, int) and body in REFS:
            return REFS[body]
    raise ValueError("malformed value")


def send(f, obj):
    f.write(_json.dumps(obj, allow_nan=False) + "\n")
    f.flush()


def recv(f):
    line = f.readline(MAX_LINE + 1)
    if not line:
        raise EOFError("the candidate process ended")
    if len(line) > MAX_LINE:
        raise ValueError("answer too large")
    return _json.loads(line)
'''

CANDIDATE = CODEC + r'''
import os
import sys

os.dup2(2, 1)  # the answer's prints go to stderr: stdout is the judge's alone
_r, _w, _name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
_rf, _wf = os.fdopen(_r, "r"), os.fdopen(_w, "w")
sys.argv = ["solution.py"]
try:
    import solution as _solution
    _fn = getattr(_solution, _name) if _name != "*" else None  # "*": the whole module, objects by reference
except BaseException as e:  # noqa: BLE001 - whatever stops the import is the answer's failure
    send(_wf, {"import_error": f"{type(e).__name__}: {e}"[:500]})
    raise
send(_wf, {"ready": True})
while True:
    try:
        req = recv(_rf)
    except EOFError:
        break
    try:
        if _fn is not None:
            out = {"value": enc(_fn(*dec(req["args"])))}
        else:
            REFS = REFS if REFS is not None else {0: _solution}
            obj = REFS[req["ref"]]
            v = getattr(obj, req["name"]) if req["op"] == "get" else obj(*dec(req["args"]))
            try:
                out = {"value": enc(v)}
            except (TypeError, ValueError):
                REFS[len(REFS)] = v
                out = {"ref": len(REFS) - 1}
    except BaseException as e:  # noqa: BLE001
        out = {"error": f"{type(e).__name__}: {e}"[:500], "type": type(e).__name__}
    send(_wf, out)
'''

JUDGE = CODEC + r'''
import ctypes
import os
import subprocess
import sys

_libc = ctypes.CDLL(None)
_libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/PID/mem, fd, environ for the answer
if _libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_GET_DUMPABLE: never read the secrets while still readable
    sys.exit("cf_judge: cannot make itself non-dumpable; refusing to judge")
spec = _json.loads(sys.stdin.buffer.read())
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the stdin pipe is done with (not closed: fd 0 must stay taken)
nonce = spec.pop("nonce")


def verdict(ok, why=""):
    sys.stdout.write(f"\n{nonce} {'PASS' if ok else 'FAIL ' + why.splitlines()[0][:300] if why else 'FAIL'}\n")
    sys.stdout.flush()
    os._exit(0)


class CandidateError(Exception):
    pass


to_r, to_w = os.pipe()
from_r, from_w = os.pipe()
child = subprocess.Popen([sys.executable, "cf_candidate.py", str(to_r), str(from_w), spec["entry_point"]],
                         pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL, stdout=2)
os.close(to_r)
os.close(from_w)
to_f, from_f = os.fdopen(to_w, "w"), os.fdopen(from_r, "r")
try:
    first = recv(from_f)
except Exception as e:  # noqa: BLE001
    verdict(False, f"RuntimeError: the answer did not load ({type(e).__name__})")
if not isinstance(first, dict) or "import_error" in first or first.get("ready") is not True:
    verdict(False, str(first.get("import_error", "RuntimeError: bad handshake")) if isinstance(first, dict) else
            "RuntimeError: bad handshake")


def candidate(*args, **kwargs):
    if kwargs:
        raise CandidateError("keyword arguments are not supported")
    try:
        send(to_f, {"args": enc(list(args))})
        out = recv(from_f)
    except (OSError, EOFError, ValueError) as e:
        raise CandidateError(f"the answer stopped answering ({type(e).__name__})") from None
    if not isinstance(out, dict):
        raise CandidateError("malformed answer")
    if "error" in out:
        raise CandidateError(str(out["error"])[:300])
    try:
        return dec(out["value"])
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise CandidateError(f"malformed answer ({type(e).__name__})") from None


def remote(req):
    """One request of the object mode: a value, or a Remote proxy of an object that cannot cross."""
    try:
        send(to_f, req)
        out = recv(from_f)
    except (OSError, EOFError, ValueError) as e:
        raise CandidateError(f"the answer stopped answering ({type(e).__name__})") from None
    if not isinstance(out, dict):
        raise CandidateError("malformed answer")
    if "error" in out:
        name = out.get("type")
        exc = getattr(__builtins__, name, None) if isinstance(name, str) else None
        if isinstance(exc, type) and issubclass(exc, Exception):  # builtin exceptions only (assertRaises)
            raise exc(str(out["error"])[:300])
        raise CandidateError(str(out["error"])[:300])
    if isinstance(out.get("ref"), int):
        return Remote(out["ref"])
    try:
        return dec(out["value"])
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise CandidateError(f"malformed answer ({type(e).__name__})") from None


class Remote:
    """An object of the answer's, held by the candidate process: attributes and calls are requests."""

    def __init__(self, ref):
        object.__setattr__(self, "_cf_ref", ref)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return remote({"op": "get", "ref": object.__getattribute__(self, "_cf_ref"), "name": name})

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise CandidateError("keyword arguments are not supported")
        return remote({"op": "call", "ref": object.__getattribute__(self, "_cf_ref"), "args": enc(list(args))})


if "unittest" in spec:  # unit tests importing the answer's module (by name) run here, against Remote objects
    import types
    import unittest

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return remote({"op": "get", "ref": 0, "name": name})

    sys.modules[spec["unittest"]["module"]] = _Module(spec["unittest"]["module"])
    suite = unittest.TestSuite()
    for name, source in spec["unittest"]["tests"].items():
        mod = types.ModuleType(name)
        sys.modules[name] = mod
        try:
            exec(compile(source, name + ".py", "exec"), mod.__dict__)
        except CandidateError as e:
            verdict(False, f"RuntimeError: {e}")
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(mod))
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
    if result.wasSuccessful() and result.testsRun == spec["unittest"]["count"]:
        verdict(True)
    bad = (result.failures + result.errors)[:1]
    verdict(False, f"{len(result.failures)} failed, {len(result.errors)} errors of {result.testsRun}: " +
            (bad[0][0].id() + ": " + bad[0][1].strip().splitlines()[-1] if bad else "tests did not all run"))

ns = {"__name__": "cf_judge_ns"}
try:
    exec(compile(spec["prompt"], "prompt.py", "exec"), ns)  # the problem's helpers (e.g. poly for find_zero)
except Exception:  # noqa: BLE001 - a prompt that does not run alone: its helpers are not needed then
    pass
ns[spec["entry_point"]] = candidate
try:
    exec(compile(spec["test"], "tests.py", "exec"), ns)
    ns["check"](candidate)
except AssertionError as e:
    verdict(False, f"AssertionError: {e}" if str(e) else "AssertionError")
except CandidateError as e:
    verdict(False, str(e) if ":" in str(e) else f"RuntimeError: {e}")
except BaseException as e:  # noqa: BLE001
    verdict(False, f"{type(e).__name__}: {e}")
verdict(True)
'''


def judge(module: str, entry_point: str, test: str, prompt: str = "", *, timeout_s: float = 10.0,
          mem_mb: int = 512, unittest: dict | None = None):
    """Run `test` (Python defining `check(candidate)`, HumanEval style) against `entry_point` of `module`
    (the untrusted source) in one sandbox call: (passed, detail, SandboxResult). `prompt`: trusted code run
    in the judge first (helpers the tests use). `unittest={"module": NAME, "tests": {name: source},
    "count": N}` instead (entry_point "*", test ""): unittest modules that import NAME run in the judge,
    every object of the answer's a proxy served by the candidate; passed when all N tests ran and passed.
    Blocking."""
    from cardforge.core.sandbox import run_sandboxed

    nonce = f"CF_HE_{secrets.token_hex(16)}"
    spec = json.dumps({"nonce": nonce, "prompt": prompt, "test": test, "entry_point": entry_point,
                       **({"unittest": unittest} if unittest else {})})
    r = run_sandboxed(["python3", "cf_judge.py"], stdin=spec, timeout_s=timeout_s, mem_mb=mem_mb, read_back=False,
                      files={"solution.py": module, "cf_judge.py": JUDGE, "cf_candidate.py": CANDIDATE})
    verdicts = [line[len(nonce) + 1:] for line in r.stdout.splitlines() if line.startswith(nonce + " ")]
    if verdicts == ["PASS"] and not r.timed_out:
        return True, "tests passed", r
    if verdicts and verdicts[0].startswith("FAIL "):
        return False, verdicts[0][5:][:300], r
    tail = "timeout" if r.timed_out else (r.stderr.strip().splitlines() or [f"exit {r.exit_code}"])[-1]
    return False, (tail if r.timed_out else f"no verdict from the judge ({tail})")[:300], r
