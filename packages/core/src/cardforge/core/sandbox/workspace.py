"""The per-call workspace on the host: a size-capped tmpfs, seeded, read back without following any link,
and always removed.

* `mount_tmpfs`: as root, the workspace is its own tmpfs (`size=`, `nr_inodes=`), so the call's total
  bytes and entries are capped, not only each file (RLIMIT_FSIZE); its pages are charged to the memory
  cgroup of whoever writes them. Without CAP_SYS_ADMIN it stays a plain directory (docs/sandbox.md).
* `read_back`: every entry is opened beneath the workspace with openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) (Linux 5.6+), else one component at a time
  with O_NOFOLLOW relative to the parent's fd: no symlink is followed at any component, so a directory
  swapped for a link (renameat2 RENAME_EXCHANGE) cannot lead the host outside. Iterative, bounded in
  entries, depth, bytes and time; what it skipped is said in `notes`. (run.py only reads back once the
  call's processes are verified gone: this is the second layer.)
* `remove_tree`: iterative, never follows a link, makes chmod-000 directories readable first, flattens
  very deep trees so it never holds more than MAX_DEPTH fds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
import uuid
from dataclasses import dataclass, field

O_PATHLESS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x04, 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}.get(os.uname().machine)
MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
MAX_ENTRIES = 20_000  # read back at most this many entries (the tmpfs's nr_inodes caps creation too)
MAX_DEPTH = 64  # directories deeper than this are not read back (and are flattened when removed)
READ_BACK_S = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


_HAVE_OPENAT2: bool | None = None


def have_openat2() -> bool:
    global _HAVE_OPENAT2
    if _HAVE_OPENAT2 is None:
        if _SYS_OPENAT2 is None or os.environ.get("CARDFORGE_SANDBOX_NO_OPENAT2"):
            _HAVE_OPENAT2 = False
        else:
            try:
                os.close(_openat2(os.open("/", os.O_RDONLY | os.O_DIRECTORY), ".", os.O_RDONLY | os.O_DIRECTORY))
                _HAVE_OPENAT2 = True
            except OSError as e:
                _HAVE_OPENAT2 = e.errno not in (errno.ENOSYS, errno.EPERM)  # EPERM: a filter refused it
    return _HAVE_OPENAT2


def open_beneath(root_fd: int, rel: str, flags: int) -> int:
    """Open `rel` (a relative path of plain names) beneath `root_fd`, never following a symlink at any
    component and never leaving its filesystem."""
    if have_openat2():
        return _openat2(root_fd, rel, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    parts = rel.split("/")
    fd = os.dup(root_fd)
    root_dev = os.fstat(root_fd).st_dev
    try:
        for name in parts[:-1]:
            if name in ("", ".", ".."):
                raise OSError(errno.EXDEV, "path leaves the workspace", rel)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if parts[-1] in ("", ".."):
            raise OSError(errno.EXDEV, "path leaves the workspace", rel)
        out = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        if os.fstat(out).st_dev != root_dev:
            os.close(out)
            raise OSError(errno.EXDEV, "crosses a mount", rel)
        return out
    finally:
        os.close(fd)


@dataclass
class ReadBack:
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, rel: str, why: str) -> None:
        if len(self.notes) < 50:
            self.notes.append(f"not read back: {rel!r}: {why}")
        elif len(self.notes) == 50:
            self.notes.append("not read back: more entries skipped")


def read_back(workdir: str, budget: int, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH,
              time_s: float = READ_BACK_S) -> ReadBack:
    """Regular files beneath `workdir` (relative POSIX names -> bytes), up to `budget` bytes in all."""
    out = ReadBack()
    deadline = time.monotonic() + time_s
    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        stack: list[tuple[str, int]] = [("", 0)]  # (relative dir, depth); iterative, no recursion
        entries = 0
        while stack:
            rel_dir, depth = stack.pop()
            try:
                fd = open_beneath(root, rel_dir, os.O_RDONLY | os.O_DIRECTORY) if rel_dir else os.dup(root)
            except OSError as e:
                out.skip(rel_dir, f"cannot open the directory ({e.strerror})")
                continue
            try:
                names = sorted(os.listdir(fd), reverse=True)
            except OSError as e:
                out.skip(rel_dir, f"cannot list ({e.strerror})")
                continue
            finally:
                os.close(fd)
            for name in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                entries += 1
                if entries > max_entries:
                    out.skip(rel, f"over {max_entries} entries")
                    return out
                if time.monotonic() > deadline:
                    out.skip(rel, f"read-back took over {time_s:g} s")
                    return out
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    out.skip(os.fsencode(rel).decode("utf-8", "backslashreplace"), "name is not UTF-8")
                    continue
                try:
                    fd = open_beneath(root, rel, O_PATHLESS)
                except OSError as e:  # ELOOP: a symlink; EXDEV: a mount; ENXIO: a socket; ...
                    out.skip(rel, "a symbolic link" if e.errno == errno.ELOOP else e.strerror)
                    continue
                try:
                    st = os.fstat(fd)
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 > max_depth:
                            out.skip(rel, f"deeper than {max_depth} directories")
                        else:
                            stack.append((rel, depth + 1))
                    elif not stat.S_ISREG(st.st_mode):
                        out.skip(rel, "not a regular file")
                    elif st.st_size > budget:
                        out.skip(rel, f"{st.st_size} bytes, over the {budget} bytes left to read back")
                    else:
                        data = _read_exact(fd, st.st_size)
                        budget -= len(data)
                        out.files[rel] = data
                finally:
                    os.close(fd)
    finally:
        os.close(root)
    return out


def _read_exact(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def remove_tree(path: str) -> None:
    """Remove `path` and everything beneath it: iterative, never following a link, fixing modes (chmod
    000 directories), flattening directories deeper than MAX_DEPTH into the top so fds stay bounded."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    # one frame per level of the current path: (fd, its name in the parent, names still to remove)
    stack: list[tuple[int, str, list[str]]] = [(root, "", _names(root))]
    try:
        while stack:
            fd, dname, names = stack[-1]
            if names:
                name = names.pop()
                try:
                    os.unlink(name, dir_fd=fd)
                    continue
                except IsADirectoryError:
                    pass
                except FileNotFoundError:
                    continue
                except PermissionError:  # Linux unlink() of a directory is EISDIR; EPERM on some fs
                    if not _is_dir(fd, name):
                        raise
                if len(stack) >= MAX_DEPTH:  # move the subtree to the top: depth, and fds, stay bounded
                    flat = f".cf-flat-{uuid.uuid4().hex}"
                    os.rename(name, flat, src_dir_fd=fd, dst_dir_fd=root)
                    stack[0][2].append(flat)
                    continue
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                stack.append((sub, name, _names(sub)))
                continue
            stack.pop()
            if stack:  # emptied: remove it from its parent
                os.close(fd)
                os.rmdir(dname, dir_fd=stack[-1][0])
            else:
                os.close(fd)
    except BaseException:
        for fd, _, _ in stack:
            os.close(fd)
        raise
    os.rmdir(path)


def _names(fd: int) -> list[str]:
    try:
        os.fchmod(fd, 0o700)  # a chmod-000 directory (left so by the sandbox) cannot be listed otherwise
    except OSError:
        pass
    return os.listdir(fd)


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def mount_tmpfs(path: str, size_bytes: int, max_inodes: int, uid: int) -> bool:
    """Mount a size-capped tmpfs on `path` (owned by `uid`); False when this process may not mount."""
    opts = f"size={size_bytes},nr_inodes={max_inodes},mode=0755,uid={uid},gid={uid}".encode()
    rc = _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), opts)
    return rc == 0


def unmount(path: str) -> None:
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):  # EINVAL: nothing mounted there
            raise OSError(e, os.strerror(e), path)
