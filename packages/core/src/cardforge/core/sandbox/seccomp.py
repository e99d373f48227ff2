"""The seccomp filter every sandboxed command runs under, compiled by libseccomp and handed to bwrap.

Built with Debian's libseccomp (libseccomp.so.2, the library behind systemd's, Docker's and Flatpak's
filters) through ctypes: libseccomp resolves syscall names per architecture, adds the architecture check
and emits the classic BPF program; we never assemble BPF ourselves. bwrap loads it with `--seccomp FD`
just before it executes the command (bwrap's own init is not filtered; it runs no untrusted code).

Policy: allow by default, refuse with EPERM the calls an untrusted program never needs (DENIED), clone()
with a namespace flag, clone3 with ENOSYS (its flags sit behind a pointer no filter can read; libc falls
back to clone), terminal-injection ioctls, and every socket family but AF_UNIX/INET/INET6/NETLINK (AF_VSOCK talks to the
hypervisor, which network namespaces do not isolate; rare families autoload kernel modules). A syscall of a foreign
architecture (i386 `int 0x80`, x32) does not match the native filter and kills the process (libseccomp's
default bad-architecture action), so the list cannot be bypassed through another ABI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

# name -> why nobody's solution or tool call needs it; each is refused with EPERM
DENIED: dict[str, str] = {
    # reading or steering other processes (the escape: PTRACE_ATTACH on the sandbox's own init)
    "ptrace": "trace or inject into another process", "process_vm_readv": "read another process's memory",
    "process_vm_writev": "write another process's memory", "pidfd_getfd": "steal another process's fd",
    "kcmp": "compare kernel objects of other processes", "process_madvise": "advise on another's memory",
    # kernel keyrings, BPF, perf, userfaultfd, io_uring: large kernel attack surface, no use here
    "keyctl": "kernel keyring", "add_key": "kernel keyring", "request_key": "kernel keyring",
    "bpf": "load BPF programs", "perf_event_open": "performance counters (side channels, kernel bugs)",
    "userfaultfd": "stall the kernel at a chosen page (exploit helper)",
    "io_uring_setup": "io_uring (bypasses this filter for the calls it carries)", "io_uring_enter": "io_uring",
    "io_uring_register": "io_uring",
    # mounts and namespaces: the sandbox's filesystem view and namespaces are fixed by bwrap
    "mount": "mount", "umount2": "unmount", "umount": "unmount", "pivot_root": "change the root mount",
    "chroot": "change root", "move_mount": "new mount API", "open_tree": "new mount API", "fsopen": "new mount API",
    "fsconfig": "new mount API", "fsmount": "new mount API", "fspick": "new mount API",
    "mount_setattr": "new mount API", "unshare": "new namespaces", "setns": "join other namespaces",
    # the machine itself
    "kexec_load": "load a new kernel", "kexec_file_load": "load a new kernel", "init_module": "load a module",
    "finit_module": "load a module", "delete_module": "unload a module", "create_module": "load a module",
    "reboot": "reboot", "swapon": "swap", "swapoff": "swap", "acct": "process accounting",
    "settimeofday": "set the clock", "clock_settime": "set the clock", "clock_adjtime": "adjust the clock",
    "adjtimex": "adjust the clock", "syslog": "kernel log", "quotactl": "disk quotas", "quotactl_fd": "disk quotas",
    "nfsservctl": "NFS server", "vhangup": "hang up a terminal", "iopl": "raw I/O ports", "ioperm": "raw I/O ports",
    "lookup_dcookie": "profiling", "uselib": "obsolete loader", "ustat": "obsolete", "sysfs": "obsolete",
    "_sysctl": "obsolete", "get_kernel_syms": "obsolete", "query_module": "obsolete", "vm86": "obsolete",
    "vm86old": "obsolete", "fanotify_init": "watch the whole filesystem",
    # counted per HOST uid, and every sandbox runs as the same one (fs.inotify.max_user_instances, 128 here):
    # one call could take them all and starve concurrent calls (red team #17); tools fall back to polling
    "inotify_init": "instances shared by all sandboxes (per host uid)",
    "inotify_init1": "instances shared by all sandboxes (per host uid)",
    # file handles bypass path-based permission checks (the "shocker" container escape)
    "open_by_handle_at": "open a file by handle, bypassing paths", "name_to_handle_at": "file handles",
    # memory placement of other processes, secret memory the host cannot inspect
    "migrate_pages": "move another process's pages", "move_pages": "move another process's pages",
    "memfd_secret": "memory hidden from the kernel",
}
CLONE_NAMESPACE_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                         "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                         "CLONE_NEWNET": 0x40000000}
DENIED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}  # push input into a terminal; console tricks
# socket()/socketpair() families: only these; every other is refused (AF_VSOCK talks to the hypervisor past the
# network namespace, AF_ALG/AF_KEY are kernel crypto/IPsec, and asking for a rare family loads its kernel
# module: DCCP/RDS/TIPC/CAN-style bugs). The family is an `int` but seccomp sees the 64-bit register: a
# rule on `family == 40` alone let `40 | 1 << 32` through (the kernel truncates it to AF_VSOCK), so the
# filter refuses by exact low 32 bits for 0..AF_MAX and anything numerically above that (high bits set).
ALLOWED_SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
AF_MAX = 46  # families 0..45 exist in Linux 6.x; anything above is refused too
DENIED_SOCKET_FAMILIES = {"AF_KEY": 15, "AF_PACKET": 17, "AF_ALG": 38, "AF_VSOCK": 40}  # examples, for tests/docs

_ACT_ALLOW = 0x7FFF0000
_CMP_GT, _CMP_MASKED_EQ = 6, 7
_NR_ERROR = -1


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(f"libseccomp is not installed ({e}): run `sudo scripts/setup_system.sh` "
                                 "(it apt-installs libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rule(lib, ctx, action: int, nr: int, *cmps: tuple[int, int, int, int]) -> None:
    arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp refused a rule for syscall {nr}: {os.strerror(-rc)}")


@functools.lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The compiled filter (classic BPF, native architecture), built once per process."""
    lib = _lib()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        eperm = _act_errno(errno.EPERM)
        for name in DENIED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_ERROR:
                continue  # a name this libseccomp does not know (older release): nothing to refuse
            _rule(lib, ctx, eperm, nr)  # a syscall absent on this architecture: libseccomp skips it
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in CLONE_NAMESPACE_FLAGS.values():
            _rule(lib, ctx, eperm, clone, (0, _CMP_MASKED_EQ, flag, flag))
        _rule(lib, ctx, _act_errno(errno.ENOSYS), lib.seccomp_syscall_resolve_name(b"clone3"))
        ioctl = lib.seccomp_syscall_resolve_name(b"ioctl")
        for request in DENIED_IOCTLS.values():
            _rule(lib, ctx, eperm, ioctl, (1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        for call in (b"socket", b"socketpair"):
            nr = lib.seccomp_syscall_resolve_name(call)
            for family in sorted(set(range(AF_MAX)) - set(ALLOWED_SOCKET_FAMILIES.values())):
                _rule(lib, ctx, eperm, nr, (0, _CMP_MASKED_EQ, 0xFFFFFFFF, family))
            _rule(lib, ctx, eperm, nr, (0, _CMP_GT, AF_MAX - 1, 0))
        fd = os.memfd_create("cf-seccomp-export", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        program = b"".join(chunks)
        if not program or len(program) % 8:
            raise SeccompUnavailable(f"libseccomp produced no valid BPF program ({len(program)} bytes)")
        return program
    finally:
        lib.seccomp_release(ctx)


def filter_fd() -> int:
    """A fresh memfd holding the filter, at offset 0, for one bwrap `--seccomp FD` (bwrap reads it to EOF).
    The caller closes it once bwrap has started."""
    program = filter_bpf()
    fd = os.memfd_create("cf-sandbox-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
