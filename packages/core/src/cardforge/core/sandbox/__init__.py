"""Run untrusted code (tool calls, coding-eval solutions) in a bubblewrap sandbox.

    from cardforge.core.sandbox import run_sandboxed
    r = run_sandboxed(["python3", "main.py"], files={"main.py": source}, timeout_s=10)
    r.exit_code, r.stdout, r.timed_out, r.files["out.txt"]

Modules: `run` (the call), `seccomp` (the filter, via libseccomp), `cgroup` (per-call memory, pids, kill),
`workspace` (tmpfs workspace, link-free read-back, removal). docs/sandbox.md: what it promises, what not.
The hostile-call suite lives with the tests (tests/support/hostile.py, tests/fixtures/hostile/).
"""

from cardforge.core.sandbox.run import (
    SANDBOX_UID,
    SandboxBreach,
    SandboxResult,
    SandboxUnavailable,
    check_available,
    limits_in_force,
    run_sandboxed,
)

__all__ = ["SANDBOX_UID", "SandboxBreach", "SandboxResult", "SandboxUnavailable", "check_available",
           "limits_in_force", "run_sandboxed"]
