"""The hostile-call suite (cardforge.core.sandbox.hostile) against the real bubblewrap sandbox: each
attack is contained and the host is unharmed (no leftover uid-65534 process, no file outside, no
connection to a host listener, this test process still fine)."""

from __future__ import annotations

import os
import subprocess

import pytest
from cardforge.core.sandbox import SANDBOX_UID, run_sandboxed
from cardforge.core.sandbox.hostile import cases_for, run_case, uid_processes

PARAMS = [pytest.param(case, lang, id=f"{lang}-{case.name}") for lang in ("python", "bash") for case in cases_for(lang)]


@pytest.mark.parametrize("case,language", PARAMS)
def test_hostile_case_is_contained(case, language, monkeypatch):
    monkeypatch.setenv("CARDFORGE_CANARY", "host-secret")  # read_secrets checks it does not leak in
    pid = os.getpid()
    _, problems = run_case(case, language)
    assert problems == [], f"{case.name} ({case.what}) was not contained:\n" + "\n".join(problems)
    # the test process itself is fine: same pid, can still start processes, no stray children
    assert os.getpid() == pid
    assert subprocess.run(["/bin/true"], check=False).returncode == 0
    assert uid_processes(SANDBOX_UID) == []


def test_sandboxed_code_cannot_see_host_python_or_env(monkeypatch):
    monkeypatch.setenv("CARDFORGE_CANARY", "host-secret")
    code = ("import os, sys, shutil; print(sys.executable, shutil.which('python3'), os.getuid(), "
            "os.path.exists('/root/.pyenv'), 'host-secret' in str(os.environ))")
    r = run_sandboxed(["python3", "-c", code])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == ["/usr/bin/python3", "/usr/bin/python3", str(SANDBOX_UID), "False", "False"]
