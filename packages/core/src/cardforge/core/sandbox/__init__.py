"""Run untrusted code (tool calls, coding-eval solutions) in a bubblewrap sandbox.

    from cardforge.core.sandbox import run_sandboxed
    r = run_sandboxed(["python3", "main.py"], files={"main.py": source}, timeout_s=10)
    r.exit_code, r.stdout, r.timed_out, r.files["out.txt"]

`hostile` holds the hostile-call suite (fork bomb, network, escapes, hogs) every language runner reuses.
"""

from cardforge.core.sandbox.run import (
    SANDBOX_UID,
    SandboxResult,
    SandboxUnavailable,
    check_available,
    run_sandboxed,
)

__all__ = ["SANDBOX_UID", "SandboxResult", "SandboxUnavailable", "check_available", "run_sandboxed"]
