"""The sandbox's hostile-call suite (tests/support/hostile.py) through the coding runner of every
language: each case's program is compiled and run by `run_program` (run_solution's script and per-language
limits, compile step included) and must be contained: blocked, killed or stopped within bounds, nothing left
on the host (HostWatch: no process left in the call's pid namespace, no file outside, no connection to a host listener).

Default tier: a smoke set per language (SMOKE: the process limit and the network, ~25 s for all ten);
the whole matrix is `slow` (~2 min: a compile per case; typescript and go alone take ~30 s each).

Found by this matrix and fixed: sandboxed code could read the HOST environment from /proc/1/environ (the
sandbox's pid 1 is bwrap's own init, which kept the caller's environment; --clearenv only cleans the command's).
run_sandboxed now starts setpriv/bwrap with a minimal environment; the read_secrets programs of the new languages
print /proc/1/environ, so the canary check catches a regression (default tier).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from cardforge.core.config.schemas import CODING_LANGUAGES
from cardforge.eval.coding.runner import hostile_runner
from support.hostile import CASES, NEW_LANGUAGES, HostWatch, missing_need, namespace_processes, run_case

# per language, the cases of the default tier: the process limit, the network, the host's secrets
SMOKE = {"fork_bomb", "network_outside", "read_secrets"}
def _param(language, case):
    marks = [] if case.name in SMOKE else [pytest.mark.slow]
    if missing_need(case):
        marks.append(pytest.mark.skip(reason=missing_need(case)))
    elif case.plain_only:
        marks.append(pytest.mark.skip(reason="judged against the plain sandbox's limits: tests/integration/"
                                             "test_sandbox_hostile.py runs it"))
    return pytest.param(language, case, id=f"{language}-{case.name}", marks=marks)


MATRIX = [_param(lang, case) for lang in CODING_LANGUAGES for case in CASES]


@pytest.mark.parametrize("language, case", MATRIX)
def test_hostile_case_is_contained_by_the_coding_runner(language, case, monkeypatch):
    if language not in case.programs:
        pytest.skip(f"no {language} program for {case.name}: {case.unsupported.get(language, 'not written')}")
    monkeypatch.setenv("CARDFORGE_CANARY", "host-secret")  # read_secrets checks it does not leak in
    pid = os.getpid()
    result, problems = run_case(case, language, hostile_runner(language))
    assert result.compiled, f"{language} {case.name} did not compile:\n{result.compile_output[-3000:]}"
    assert problems == [], f"{language} {case.name} ({case.what}) was not contained:\n" + "\n".join(problems)
    assert os.getpid() == pid and subprocess.run(["/bin/true"], check=False).returncode == 0
    assert not namespace_processes({result.pid_ns} if result.pid_ns else set())


def test_every_case_has_a_program_or_a_reason_in_every_new_language():
    for case in CASES:
        for language in NEW_LANGUAGES:
            assert language in case.programs or case.unsupported.get(language), (case.name, language)
        assert set(case.unsupported) <= set(CODING_LANGUAGES), case.name
        for language, note in case.unsupported.items():  # a documented reason, not a placeholder
            assert len(note) > 40, (case.name, language)


def test_new_programs_survive_placeholder_filling():
    # fill() folds "{{" / "}}" (Python's f-string escapes): brace-heavy languages must not contain them
    watch = HostWatch()
    try:
        for case in CASES:
            for language in NEW_LANGUAGES:
                src = case.programs.get(language, "")
                assert "{{" not in src and "}}" not in src, (case.name, language)
                filled = watch.fill(src, case.params)
                for placeholder in ("{token}", "{port}", "{outside}", "{outside_dir}", "{cwd}", *case.params):
                    assert placeholder not in filled, (case.name, language, placeholder)
    finally:
        watch.problems()
