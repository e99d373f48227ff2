"""run_sandboxed: workspace seeding and read-back, exit codes, limits, output cap, the unavailable error."""

from __future__ import annotations

import os
import shutil

import pytest
from cardforge.core.sandbox import SandboxResult, SandboxUnavailable, run_sandboxed
from cardforge.core.sandbox import run as sandbox_run


def test_files_go_in_and_come_back():
    src = "import json\nd = json.load(open('in/data.json'))\nopen('out.txt', 'w').write(str(sum(d)))\nprint('ok')\n"
    r = run_sandboxed(["python3", "main.py"], files={"main.py": src, "in/data.json": b"[1, 2, 3]"})
    assert isinstance(r, SandboxResult)
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.truncated, r.killed_by) == (0, "ok\n", "", False, False, None)
    assert r.files["out.txt"] == b"6"
    assert r.files["in/data.json"] == b"[1, 2, 3]"
    assert 0 < r.duration_s < 10


def test_each_call_gets_a_fresh_workspace():
    run_sandboxed(["sh", "-c", "echo left > leftover.txt"])
    r = run_sandboxed(["sh", "-c", "ls -A /work"])
    assert r.stdout == "" and r.files == {}


def test_exit_code_stderr_and_signal():
    r = run_sandboxed(["sh", "-c", "echo oops >&2; exit 7"])
    assert (r.exit_code, r.stderr, r.killed_by) == (7, "oops\n", None)
    r = run_sandboxed(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert (r.exit_code, r.killed_by) == (137, "signal:SIGKILL")


def test_stdin_and_env():
    r = run_sandboxed(["python3", "-c", "import os, sys; print(sys.stdin.read().upper(), os.environ['MODE'])"],
                      stdin="abc", env={"MODE": "test"})
    assert r.stdout == "ABC test\n"


def test_timeout_kills_within_the_wall_clock():
    r = run_sandboxed(["sleep", "60"], timeout_s=1)
    assert (r.timed_out, r.killed_by, r.exit_code) == (True, "timeout", None)
    assert 0.9 < r.duration_s < 3


def test_output_is_capped_with_a_marker_and_does_not_block():
    # over max_output: kept up to the cap, the rest drained and counted, the command finishes normally
    r = run_sandboxed(["python3", "-c", "import sys; sys.stdout.write('a' * 10_000); sys.stderr.write('b' * 10)"],
                      max_output=1000)
    assert r.truncated and r.exit_code == 0 and r.killed_by is None
    assert r.stdout == "a" * 1000 + "\n[... output truncated by the sandbox: 9000 more bytes ...]\n"
    assert r.stderr == "b" * 10
    # far over (OUTPUT_KILL_FACTOR x the cap): killed, so an endless printer costs no time
    r = run_sandboxed(["python3", "-c", "import sys; sys.stdout.write('a' * 300_000)"], max_output=1000)
    assert (r.truncated, r.killed_by, r.exit_code) == (True, "output_limit", None)
    assert r.stdout.startswith("a" * 1000 + "\n[... output truncated")


def test_usr_is_read_only_and_usr_local_hidden():
    r = run_sandboxed(["sh", "-c", "touch /usr/bin/x 2>&1; ls -A /usr/local"])
    assert "Read-only file system" in r.stdout
    assert r.stdout.strip().endswith("Read-only file system")  # nothing listed under /usr/local


def test_planted_symlink_is_not_followed_on_read_back():
    r = run_sandboxed(["sh", "-c", "ln -s /etc/shadow stolen; ln -s /etc/hostname host; echo x > real"])
    assert r.files == {"real": b"x\n"}


def test_seed_paths_must_stay_inside():
    # a bad input is a result, never an exception: nothing runs, the reason names the fix, good files come back
    r = run_sandboxed(["true"], files={"../evil": "x", "ok.txt": "y"})
    assert (r.exit_code, r.killed_by, r.stdout) == (None, "invalid_input", "")
    assert "outside the workspace" in r.stderr and "use a relative path" in r.stderr
    assert r.files == {"ok.txt": b"y"}


def test_missing_bwrap_says_how_to_fix(monkeypatch):
    sandbox_run.check_available.cache_clear()
    real_which = shutil.which
    monkeypatch.setattr(sandbox_run.shutil, "which", lambda name, path=None: None if name == "bwrap" else real_which(name, path=path))
    try:
        with pytest.raises(SandboxUnavailable, match=r"scripts/setup_system.sh"):
            run_sandboxed(["true"])
    finally:
        sandbox_run.check_available.cache_clear()


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop happens when running as root")
def test_runs_as_nobody_when_root():
    assert run_sandboxed(["id", "-u"]).stdout == "65534\n"
