"""run_sandboxed: workspace seeding and read-back, exit codes, limits, output cap, the unavailable error."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
def test_runs_as_a_uid_of_its_own_when_root():
    from cardforge.core.sandbox.uids import in_pool

    uid = int(run_sandboxed(["id", "-u"]).stdout)
    assert in_pool(uid) and uid != os.geteuid()


# ---- issue #17: every bad input is an observation; the workspace never outlives the call ----

@pytest.mark.parametrize("cmd, files, env, fragment", [
    (["sh", "-c", "echo a\0b"], None, None, "NUL byte"),
    (["sh", "-c", "echo " + "x" * 200_000], None, None, "write it to a file in the workspace"),
    (["true"], {"a\0b.txt": "x"}, None, "NUL byte"),
    (["true"], {"bad-\udcff.txt": "x"}, None, "not valid UTF-8"),
    (["true"], {"/etc/passwd": "x"}, None, "outside the workspace"),
    (["true"], {"a/../../b": "x"}, None, "outside the workspace"),
    (["true"], {"x" * 300: "x"}, None, "too long"),
    (["true"], None, {"A\0": "1"}, "NUL byte"),
    (["true"], None, {"A=B": "1"}, "'=' in the name"),
    ([], None, None, "non-empty list"),
])
def test_bad_inputs_come_back_as_a_result_not_an_exception(cmd, files, env, fragment):
    r = run_sandboxed(cmd, files=files, env=env)
    assert (r.exit_code, r.killed_by, r.stdout) == (None, "invalid_input", ""), r
    assert r.stderr.startswith("sandbox: refused, nothing ran:") and fragment in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_a_file_and_a_directory_of_the_same_name_is_a_result():
    r = run_sandboxed(["true"], files={"a": "x", "a/b": "y"})
    assert r.killed_by == "invalid_input" and "cannot be laid out" in r.stderr


def test_huge_stdin_a_program_never_reads_does_not_block_or_overrun():
    t0 = time.monotonic()
    r = run_sandboxed(["true"], stdin=b"x" * (64 << 20), timeout_s=5)
    assert (r.exit_code, r.timed_out) == (0, False) and time.monotonic() - t0 < 4
    # one that reads slowly and never finishes: the deadline still holds while stdin is unwritten
    t0 = time.monotonic()
    r = run_sandboxed(["sh", "-c", "head -c 10 >/dev/null; sleep 30"], stdin=b"y" * (64 << 20), timeout_s=1)
    assert r.timed_out and time.monotonic() - t0 < 4
    # and stdin that is read arrives whole
    r = run_sandboxed(["wc", "-c"], stdin=b"z" * (3 << 20))
    assert r.stdout.strip() == str(3 << 20)


def test_terminal_escapes_in_output_are_shown_not_obeyed():
    r = run_sandboxed(["printf", "a\\033[2Jb\\033]0;t\\007c\\r\\nd\\re\\000f\\302\\233g\\n"])
    assert r.stdout == "a\\x1b[2Jb\\x1b]0;t\\x07c\nd\\x0de\\x00f\\x9bg\n"


def _record_workdirs(monkeypatch) -> list[str]:
    made = []
    real = sandbox_run.tempfile.mkdtemp

    def mkdtemp(*a, **k):
        made.append(real(*a, **k))
        return made[-1]
    monkeypatch.setattr(sandbox_run.tempfile, "mkdtemp", mkdtemp)
    return made


DEEP_TREE = ("import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(1200):\n    os.mkdir('d', dir_fd=fd)\n"
             "    n = os.open('d', os.O_RDONLY, dir_fd=fd)\n    os.close(fd)\n    fd = n\n"
             "os.mkdir('locked'); open('locked/f', 'w').write('x'); os.chmod('locked', 0)\n"
             "open(b'bad-\\xff', 'w').write('x'); os.symlink('/etc', 'etc'); os.mkfifo('fifo')\n"
             "open('ok.txt', 'w').write('ok')\n")


@pytest.mark.parametrize("tmpfs", [True, False], ids=["tmpfs-workspace", "plain-directory"])
def test_deep_trees_and_odd_entries_come_back_bounded_and_leave_nothing(monkeypatch, tmpfs):
    made = _record_workdirs(monkeypatch)
    if not tmpfs:  # the non-root fallback: a plain directory, removed by the iterative remove_tree
        monkeypatch.setattr(sandbox_run.workspace, "mount_tmpfs", lambda *a: False)
    r = run_sandboxed(["python3", "-c", DEEP_TREE], timeout_s=20)
    assert r.exit_code == 0, r.stderr
    assert r.files["ok.txt"] == b"ok" and r.files["locked/f"] == b"x"
    assert not any(k.startswith(("etc", "fifo", "bad-")) for k in r.files) and max(k.count("/") for k in r.files) <= 64
    assert any("deeper than 64" in n for n in r.notes) and any("not UTF-8" in n for n in r.notes)
    assert made and not os.path.exists(made[0])


def test_execute_turns_bad_tool_calls_into_observations():
    from cardforge.core.chat import ToolCall
    from cardforge.agent.tools import Workspace, execute

    ws = Workspace({"keep.txt": b"kept"})
    for call in (ToolCall("shell", {"command": "echo a\0b"}), ToolCall("shell", {"command": "echo " + "x" * 200_000}),
                 ToolCall("python", {"code": "print('\\x1b[2Jhi')"}),
                 ToolCall("python", {"code": DEEP_TREE + "print('made')"})):
        obs = execute(call, ws)
        assert isinstance(obs, str) and "\x1b" not in obs and "[exit code" in obs, obs
        assert ws.files.get("keep.txt") == b"kept"
    assert "made" in obs and "[exit code 0]" in obs


def test_coding_runner_survives_a_program_that_leaves_a_deep_tree():
    from cardforge.eval.coding.runner import run_program

    r = run_program("python", DEEP_TREE + "print('made', flush=True)\n", timeout_s=20)
    assert r.compiled and r.exit_code == 0 and "made" in r.stdout, r


def test_each_call_is_its_own_cgroup_with_the_whole_call_memory_limit():
    from cardforge.core.sandbox.cgroup import Layout

    if Layout.probe().memory is None:
        pytest.skip("no writable memory cgroup here (docs/sandbox.md: the per-process budget applies)")
    # three processes of 120 MB each: every one under mem_mb, together over total_mem_mb
    src = ("import os, time\nfor i in range(3):\n    if os.fork() == 0:\n        b = bytearray(120 << 20)\n"
           "        b[::4096] = b'x' * len(b[::4096])\n        print('held', flush=True)\n        time.sleep(5)\n"
           "        os._exit(0)\nfor i in range(3):\n    os.wait()\n")  # waits: under load a child may take seconds
    r = run_sandboxed(["python3", "-c", src], mem_mb=256, total_mem_mb=300, tmp_mb=8, timeout_s=15)
    # each process alone is under mem_mb, so only the whole-call limit can kill. How many print "held" is not
    # a witness: cgroup v1 OOM-kills one process at a time, so a later child may get the room an earlier one
    # held; cgroup v2 (memory.oom.group) ends them all.
    assert r.killed_by == "memory_limit", r
    r = run_sandboxed(["python3", "-c", src], mem_mb=256, total_mem_mb=600, tmp_mb=8, timeout_s=15)
    assert r.killed_by is None and r.stdout.count("held") == 3, r


def test_limits_in_force_names_the_mechanisms():
    text = sandbox_run.limits_in_force()
    assert "seccomp" in text and "read-back" in text and "workspace" in text


# open-ended inputs: whatever the names, arguments and output, a result comes back and nothing raw escapes
_names = st.lists(st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\0", "/", "\udcff", "\x1b"]),
                          max_size=12) | st.sampled_from(["..", ".", ""]), min_size=1, max_size=4).map("/".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_names, st.binary(max_size=64), max_size=4), arg=_names)
def test_any_names_and_arguments_give_a_result(files, arg):
    r = run_sandboxed(["printf", "%s", arg], files=files, timeout_s=10)
    assert isinstance(r, SandboxResult)
    if r.killed_by == "invalid_input":
        assert r.stderr.startswith("sandbox: refused") and set(r.files) <= set(files)
    else:
        assert r.exit_code == 0 and set(r.files) == set(files), r
        assert all(r.files[k] == v for k, v in files.items())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_no_raw_control_character_reaches_the_output(data):
    r = run_sandboxed(["cat"], stdin=data)
    assert not [c for c in r.stdout if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


def test_an_error_on_our_side_mid_call_still_ends_the_call(monkeypatch):
    seen = {}
    real = sandbox_run._collect

    def broken(call, *a, **k):
        deadline = time.monotonic() + 5
        while call.pid_ns is None and time.monotonic() < deadline:
            call.read_status()
            time.sleep(0.01)
        seen["ns"] = call.pid_ns
        raise KeyboardInterrupt  # say, Ctrl-C while the command runs
    monkeypatch.setattr(sandbox_run, "_collect", broken)
    made = _record_workdirs(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_sandboxed(["sh", "-c", "setsid sleep 100 & sleep 100"])
    monkeypatch.setattr(sandbox_run, "_collect", real)
    left = [p for p in os.listdir("/proc") if p.isdigit() and _in_ns(p, seen["ns"])]
    assert seen["ns"] and not left and not os.path.exists(made[0])


def _in_ns(pid: str, ns: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return os.stat(f"/proc/{pid}/ns/pid").st_ino == ns and state != "Z"
    except OSError:
        return False


def test_cgroups_of_a_dead_host_process_are_swept():
    from cardforge.core.sandbox.cgroup import PREFIX, Layout

    layout = Layout.probe()
    if not layout.kill:
        pytest.skip("no writable cgroup here")
    stale = [layout.v2_parent / "call-4999999-dead"] if layout.v2_parent else []
    stale += [p / f"{PREFIX}-call-4999999-dead" for p in layout.v1_parents.values()]
    live = (layout.v2_parent or next(iter(layout.v1_parents.values()))) / f"{'' if layout.v2_parent else PREFIX + '-'}call-{os.getpid()}-live"
    for d in [*stale, live]:
        d.mkdir()
    try:
        layout.sweep()
        assert not any(d.exists() for d in stale) and live.exists()  # only a dead pid's cgroups go
    finally:
        for d in [*stale, live]:
            if d.exists():
                d.rmdir()


def test_the_command_inherits_no_host_fd():
    # bwrap's status pipe and the seccomp memfd stay with bwrap: the command holds stdin/out/err only
    r = run_sandboxed(["sh", "-c", "ls /proc/self/fd; for f in /proc/1/fd/*; do readlink $f; done"], stdin="x")
    fds = [x for x in r.stdout.split() if x.isdigit()]
    assert fds == ["0", "1", "2", "3"], r.stdout  # 3: ls's own directory fd
    assert not any("memfd" in line or "seccomp" in line for line in r.stdout.splitlines()), r.stdout


def test_a_pure_cgroup_v2_host_gets_memory_max_pids_max_and_kill(tmp_path, monkeypatch):
    """This machine binds memory/pids to cgroup v1, so the v2 controller path runs here against a stand-in
    tree: controllers already delegated, as a v2 root holds them (the files the kernel would create)."""
    from cardforge.core.sandbox import cgroup

    root = tmp_path / "cg"
    parent = root / cgroup.PREFIX
    parent.mkdir(parents=True)
    for d in (root, parent):
        (d / "cgroup.controllers").write_text("cpu memory pids\n")
        (d / "cgroup.subtree_control").write_text("memory pids\n")
    (parent / "cgroup.procs").write_text("")
    (parent / "cgroup.kill").write_text("")
    monkeypatch.setattr(cgroup, "_mounts", lambda: [(str(root), "cgroup2", set())])
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/"})
    layout = cgroup.Layout.probe.__wrapped__()
    assert layout.v2_parent == parent and layout.v2_controllers == {"memory", "pids"} and not layout.v1_parents
    assert layout.describe() == "cgroup v2 cgroup.kill; cgroup v2 memory.max; cgroup v2 pids.max"
    cg = cgroup.CallCgroup(layout, 300 << 20, 7)
    leaf = cg.v2
    assert {f: (leaf / f).read_text() for f in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max")} == {
        "memory.max": str(300 << 20), "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "7"}
    assert cg.procs_files() == [str(leaf / "cgroup.procs")]
    cg.kill()
    assert (leaf / "cgroup.kill").read_text() == "1"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()


def test_deadline_after_a_marker_ends_a_step_its_own_supervisor_cannot():
    # red team (#17): a step supervised inside the sandbox (`timeout`) can stop its supervisor with
    # `kill -STOP -1`; the host's deadline_after cannot be signalled. The marker comes split across two
    # writes (and after output past the cap), and only ever moves the deadline earlier.
    script = ("head -c 200000 /dev/zero | tr '\\0' x >&2; printf 'CF_ST' >&2; sleep 0.2; printf 'EP run\\n' >&2; "
              "timeout 1 sh -c 'kill -STOP -1; sleep 100'")
    t = time.monotonic()
    r = run_sandboxed(["bash", "-c", script], timeout_s=30, deadline_after=("CF_STEP run", 1.5))
    assert r.timed_out and r.killed_by == "timeout" and r.exit_code is None
    assert time.monotonic() - t < 8, r
    r = run_sandboxed(["bash", "-c", "echo 'CF_STEP run' >&2; sleep 0.5; echo fine"], timeout_s=10,
                      deadline_after=("CF_STEP run", 60))
    assert not r.timed_out and r.stdout == "fine\n"
    r = run_sandboxed(["bash", "-c", "sleep 30"], timeout_s=1, deadline_after=("CF_STEP run", 60))
    assert r.timed_out and r.duration_s < 5  # never later than timeout_s


def test_coding_runner_ends_a_program_that_stops_its_timeout():
    from cardforge.eval.coding.runner import run_program

    src = "import os, signal, time\nos.kill(-1, signal.SIGSTOP)\nwhile True:\n    time.sleep(1)\n"
    r = run_program("python", src, timeout_s=1, read_back=False)
    assert r.compiled and r.timed_out and r.killed_by == "timeout"
    assert r.duration_s < 1 + 3 + 3, r  # the run step: its limit + the grace; was compile + run + 10 s = 71 s


# ---- red team (#17): attacks that were already contained, kept as regression checks ----

def test_an_escape_sequence_split_across_writes_is_still_escaped():
    # ESC in one write, the rest 0.2 s later (two reads on the host): escaping works on the whole stream
    r = run_sandboxed(["bash", "-c", "printf '\\033'; sleep 0.2; printf '[2Jcleared\\033]0;t'; sleep 0.2; "
                                     "printf '\\007\\r'; sleep 0.1; printf '\\n' >&2"], timeout_s=10)
    assert "\\x1b[2Jcleared\\x1b]0;t\\x07\\x0d" == r.stdout, r.stdout
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout


def test_sparse_files_claiming_huge_sizes_stay_within_the_read_back_budget():
    # 40 sparse files of 15 MiB each claim 600 MiB but occupy nothing; a 1 TiB one is over RLIMIT_FSIZE
    script = "for i in $(seq 40); do truncate -s 15M s$i; done; truncate -s 1T huge 2>&1 | head -c 60; echo; ls | wc -l"
    r = run_sandboxed(["bash", "-c", script], timeout_s=20, max_read_back=1 << 20)
    assert r.exit_code == 0 and r.stdout.strip().endswith("41"), r
    assert sum(map(len, r.files.values())) <= 1 << 20 and any("over the" in n for n in r.notes), r.notes


@pytest.mark.skipif(os.geteuid() != 0, reason="the tmpfs workspace needs root (else it is a plain directory)")
def test_host_files_cannot_be_hard_linked_into_the_workspace():
    r = run_sandboxed(["bash", "-c", "ln /usr/bin/env /work/env && echo LINKED; ln /usr/bin/env /tmp/env && "
                                     "echo LINKED_TMP; true"], timeout_s=10)
    assert "LINKED" not in r.stdout and "env" not in r.files, r


def test_no_cgroupfs_sysfs_or_host_processes_inside():
    # a process could leave the call's cgroup only by writing cgroup.procs: no /sys, and mounting is refused
    script = ("ls /sys 2>&1 | head -c 80; echo; cat /proc/self/cgroup; mkdir -p /tmp/cg; "
              "mount -t cgroup2 none /tmp/cg 2>&1 | head -c 80; echo; ls /tmp/cg | wc -l; "
              "ls -d /proc/[0-9]* | wc -l")
    r = run_sandboxed(["bash", "-c", script], timeout_s=10)
    lines = r.stdout.splitlines()
    cgroups = [line for line in lines if re.match(r"\d+:[\w,=]*:", line)]
    assert "No such file" in lines[0] and "0::/" in cgroups, r.stdout  # no sysfs; the cgroup namespace's root
    assert all(line.endswith(":/") for line in cgroups), cgroups  # nothing of the host's cgroup paths
    assert lines[-2] == "0" and int(lines[-1]) <= 6, r.stdout  # nothing mounted; only the call's processes
