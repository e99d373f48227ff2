"""The workspace's read-back and removal (cardforge.core.sandbox.workspace) against a live attacker on the
host side: a thread swaps a directory with a symlink to a host directory (renameat2 RENAME_EXCHANGE) in a
tight loop while the read-back runs. No host file may come back, through openat2 or the O_NOFOLLOW walk."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest
from cardforge.core.sandbox import workspace

libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2


def _swapper(base: str, stop: threading.Event, swaps: list[int]) -> None:
    a, b = os.fsencode(f"{base}/d"), os.fsencode(f"{base}/x")
    n = 0
    while not stop.is_set():
        if libc.renameat2(-100, a, -100, b, RENAME_EXCHANGE) == 0:
            n += 1
    swaps.append(n)


@pytest.fixture(params=["openat2", "nofollow-walk"])
def walk(request, monkeypatch):
    if request.param == "openat2":
        if not workspace.have_openat2():
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(workspace, "have_openat2", lambda: False)
    return request.param


def test_a_swapped_symlink_never_leads_the_read_back_outside(tmp_path, walk):
    secret = tmp_path / "host"
    secret.mkdir()
    base = tmp_path / "ws"
    (base / "d" / "sub").mkdir(parents=True)
    (secret / "sub").mkdir()
    for i in range(100):
        (base / "d" / f"s{i:03d}").write_text("inside\n")
        (secret / f"s{i:03d}").write_text("HOSTSECRET\n")
        (secret / "sub" / f"t{i:03d}").write_text("HOSTSECRET\n")
        (base / "d" / "sub" / f"t{i:03d}").write_text("inside\n")
    os.symlink(secret, base / "x")
    stop, swaps = threading.Event(), []
    t = threading.Thread(target=_swapper, args=(str(base), stop, swaps))
    t.start()
    try:
        seen = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            rb = workspace.read_back(str(base), 1 << 20)
            seen += len(rb.files)
            leaked = [k for k, v in rb.files.items() if b"HOSTSECRET" in v]
            assert not leaked, f"{walk}: host files read back through a swapped link: {leaked[:5]}"
    finally:
        stop.set()
        t.join()
    assert swaps[0] > 100 and seen > 0  # the race really ran, and the read-back still read the inside


def test_the_naive_walk_does_leak_under_the_same_race(tmp_path):
    """Control: O_NOFOLLOW on the last component only (the old read-back) loses this race, so the test
    above is able to fail."""
    secret = tmp_path / "host"
    secret.mkdir()
    base = tmp_path / "ws"
    (base / "d").mkdir(parents=True)
    for i in range(200):
        (base / "d" / f"s{i:03d}").write_text("inside\n")
        (secret / f"s{i:03d}").write_text("HOSTSECRET\n")
    os.symlink(secret, base / "x")
    stop, swaps = threading.Event(), []
    t = threading.Thread(target=_swapper, args=(str(base), stop, swaps))
    t.start()
    leaked = 0
    try:
        deadline = time.monotonic() + 5
        while not leaked and time.monotonic() < deadline:
            for name in os.listdir(base / "d") if (base / "d").is_dir() else []:
                try:
                    fd = os.open(base / "d" / name, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as f:
                    leaked += b"HOSTSECRET" in f.read()
    finally:
        stop.set()
        t.join()
    assert leaked


def test_read_back_is_bounded(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i:02d}").write_bytes(b"x" * 1000)
    rb = workspace.read_back(str(tmp_path), 10_500, max_entries=20)
    assert sum(map(len, rb.files.values())) <= 10_500 and len(rb.files) == 10
    assert any("over 20 entries" in n for n in rb.notes) and any("bytes left" in n for n in rb.notes)


def test_remove_tree_handles_modes_depth_and_links(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(300):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    os.symlink(outside, root / "link")
    (root / "locked").mkdir()
    (root / "locked" / "f").write_text("x")
    os.chmod(root / "locked", 0)
    workspace.remove_tree(str(root))
    assert not root.exists() and (outside / "keep").read_text() == "keep"
