"""The sandbox's seccomp filter (cardforge.core.sandbox.seccomp): built by libseccomp, and every denied call
is refused with EPERM from inside a real sandbox (one sandbox run, one test per call)."""

from __future__ import annotations

import errno
import json

import pytest
from cardforge.core.sandbox import run_sandboxed, seccomp

PROBE = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, nr in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0, 0, 0)
    out[name] = 0 if rc >= 0 else ctypes.get_errno()
def errno_of(fn):
    ctypes.set_errno(0)
    return 0 if fn() >= 0 else ctypes.get_errno()
N = json.loads(sys.argv[2])
out["clone(CLONE_NEWUSER)"] = errno_of(lambda: libc.syscall(ctypes.c_long(N["clone"]), 0x10000000 | 17, 0, 0, 0, 0))
out["clone(CLONE_NEWNET)"] = errno_of(lambda: libc.syscall(ctypes.c_long(N["clone"]), 0x40000000 | 17, 0, 0, 0, 0))
out["clone3"] = errno_of(lambda: libc.syscall(ctypes.c_long(N["clone3"]), 0, 0))
out["ioctl(TIOCSTI)"] = errno_of(lambda: libc.ioctl(0, 0x5412, ctypes.c_char_p(b"x")))
out["socket(AF_VSOCK)"] = errno_of(lambda: libc.socket(40, 1, 0))
out["socket(AF_ALG)"] = errno_of(lambda: libc.socket(38, 5, 0))
# the family is an int, the filter sees 64 bits: high bits must not smuggle a refused family past it
sock = lambda fam, typ: errno_of(lambda: libc.syscall(ctypes.c_long(N["socket"]), ctypes.c_long(fam), typ, 0))
out["socket(AF_VSOCK | 1<<32)"] = sock(40 | 1 << 32, 1)
out["socket(AF_ALG | 1<<32)"] = sock(38 | 1 << 32, 5)
out["socket(AF_PACKET)"] = sock(17, 3)
out["socket(AF_RDS)"] = sock(21, 5)
out["socket(AF_TIPC)"] = sock(30, 5)
out["socket(-1)"] = sock(-1, 1)
out["socketpair(AF_VSOCK | 1<<32)"] = errno_of(lambda: libc.syscall(ctypes.c_long(N["socketpair"]),
                                                   ctypes.c_long(40 | 1 << 32), 1, 0, (ctypes.c_int * 2)()))
out["socket(AF_INET)"] = sock(2, 2)
out["socket(AF_INET6)"] = sock(10, 2)
out["socket(AF_NETLINK)"] = sock(16, 3)
out["getpid"] = errno_of(lambda: libc.getpid())  # an allowed call stays allowed
out["socket(AF_UNIX)"] = errno_of(lambda: libc.socket(1, 1, 0))
out["status"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(out))
"""


def _numbers() -> dict[str, int]:
    lib = seccomp._lib()
    nrs = {name: lib.seccomp_syscall_resolve_name(name.encode()) for name in seccomp.DENIED}
    return {k: v for k, v in nrs.items() if v >= 0}  # negative: the call does not exist on this architecture


DENIED_HERE = sorted(_numbers())


@pytest.fixture(scope="module")
def refused() -> dict:
    lib = seccomp._lib()
    extra = {n: lib.seccomp_syscall_resolve_name(n.encode()) for n in ("clone", "clone3", "socket", "socketpair")}
    r = run_sandboxed(["python3", "-c", PROBE, json.dumps(_numbers()), json.dumps(extra)], timeout_s=20)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_the_filter_is_compiled_by_libseccomp():
    program = seccomp.filter_bpf()
    assert len(program) % 8 == 0 and len(program) // 8 > len(DENIED_HERE)  # a rule per call, at least


def test_the_command_runs_under_a_filter(refused):
    assert refused["status"] == "2"  # SECCOMP_MODE_FILTER


@pytest.mark.parametrize("name", DENIED_HERE)
def test_each_denied_call_is_refused_with_eperm(refused, name):
    assert refused[name] == errno.EPERM, f"{name} returned errno {refused[name]} ({seccomp.DENIED[name]})"


@pytest.mark.parametrize("name, code", [("clone(CLONE_NEWUSER)", errno.EPERM), ("clone(CLONE_NEWNET)", errno.EPERM),
                                        ("clone3", errno.ENOSYS), ("ioctl(TIOCSTI)", errno.EPERM),
                                        ("socket(AF_VSOCK)", errno.EPERM), ("socket(AF_ALG)", errno.EPERM),
                                        # red team (#17): 64-bit high bits over the int family, rare families
                                        ("socket(AF_VSOCK | 1<<32)", errno.EPERM), ("socket(AF_ALG | 1<<32)", errno.EPERM),
                                        ("socketpair(AF_VSOCK | 1<<32)", errno.EPERM), ("socket(AF_PACKET)", errno.EPERM),
                                        ("socket(AF_RDS)", errno.EPERM), ("socket(AF_TIPC)", errno.EPERM),
                                        ("socket(-1)", errno.EPERM)])
def test_argument_rules(refused, name, code):
    assert refused[name] == code


def test_ordinary_calls_still_work(refused):
    assert refused["getpid"] == 0 and refused["socket(AF_UNIX)"] == 0
    assert refused["socket(AF_INET)"] == refused["socket(AF_INET6)"] == refused["socket(AF_NETLINK)"] == 0


def test_the_issue_list_is_covered():
    must = {"ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
            "perf_event_open", "userfaultfd", "mount", "umount2", "pivot_root", "unshare", "setns", "kexec_load",
            "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
            "open_by_handle_at", "name_to_handle_at"}
    assert must <= set(DENIED_HERE)
