"""The hostile-call suite: programs that try to break out or bring the host down, with what must happen.

Every language runner runs the same cases: Python and bash here (RUNNERS), and every coding-eval language
through its compile-and-run script (cardforge.eval.coding.runner.hostile_runner; tests/integration/
test_coding_hostile.py). A case carries one program per language and a check on the `SandboxResult`
(`checks` replaces it for a language whose runtime reacts differently, e.g. Go dies on a failed allocation);
`unsupported` documents, per language, why the attack cannot be written as such and what the program does
instead (no fork in the JVM, node or Go: they spawn processes). `HostWatch` checks the host afterwards (no
process of the sandbox uid left, nothing written outside the workspace, no connection reached a host
listener). Reuse:

    for case in cases_for("python"):
        result, problems = run_case(case, "python", my_runner)   # my_runner(source, limits) -> SandboxResult
        assert not problems

Placeholders in programs: {token} (unique per run: names escape files), {port} (a host listener on
127.0.0.1), {outside} (an address outside: TEST-NET-1 192.0.2.1, reserved, never routed, so even a
sandbox failure would send nothing to a real host).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cardforge.core.sandbox.run import SANDBOX_UID, SandboxResult, run_sandboxed

OUTSIDE = "192.0.2.1"
Runner = Callable[[str, dict], SandboxResult]  # (program source, run_sandboxed limits) -> result
Check = Callable[[SandboxResult], list[str]]


@dataclass(frozen=True)
class HostileCase:
    name: str
    what: str  # the attack, in words
    programs: dict[str, str]  # language -> source, with {token}/{port}/{outside} placeholders
    check: Callable[[SandboxResult], list[str]]  # problems with the result (empty = contained)
    limits: dict = field(default_factory=dict)  # run_sandboxed keyword overrides
    max_duration_s: float = 8.0
    checks: dict[str, Check] = field(default_factory=dict)  # language -> a check replacing `check` for it
    # language -> why it cannot express the attack as written: its program is then the nearest equivalent
    # (say, spawning processes where the runtime has no fork), or it has none
    unsupported: dict[str, str] = field(default_factory=dict)

    def check_for(self, language: str) -> Check:
        return self.checks.get(language, self.check)


def _expect(*, out: tuple[str, ...] = (), not_out: tuple[str, ...] = (), timed_out: bool | None = None,
            killed_by: str | None = None, max_s: float | None = None, extra=None):
    def check(r: SandboxResult) -> list[str]:
        text = r.stdout + r.stderr
        problems = [f"expected {s!r} in the output" for s in out if s not in text]
        problems += [f"{s!r} must not appear in the output" for s in not_out if s in text]
        if timed_out is not None and r.timed_out != timed_out:
            problems.append(f"timed_out is {r.timed_out}, expected {timed_out}")
        if killed_by is not None and r.killed_by != killed_by:
            problems.append(f"killed_by is {r.killed_by!r}, expected {killed_by!r}")
        if max_s is not None and r.duration_s > max_s:
            problems.append(f"took {r.duration_s:.1f} s, expected under {max_s} s (must fail fast)")
        if extra:
            problems += extra(r)
        return [f"{p} (stdout={r.stdout[-300:]!r}, stderr={r.stderr[-300:]!r})" for p in problems]
    return check


PY_TRY = """
import os, socket, sys
def attempt(label, fn):
    try:
        fn()
        print("ESCAPED", label, flush=True)
    except BaseException as e:
        print("BLOCKED", label, type(e).__name__, e, flush=True)
"""

CASES: list[HostileCase] = [
    HostileCase(
        "fork_bomb", "fork until the process limit; children sleep so they pile up",
        {"python": "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n"
                   "        print('fork refused after', n, type(e).__name__, flush=True)\n        break\n"
                   "    if pid == 0:\n        time.sleep(1000)\n    n += 1\n",
         # each call sleeps after forking so the processes pile up; the classic form lets its first shell
         # exit at once, and the sandbox (pid namespace) ended before the limit was ever reached: a flaky test
         "bash": ":(){ :|:& sleep 10; };:\n"},
        # contained = the process limit refused forks (python reports it, bash retries and says so)
        # (or the wall clock ended it first: a slow runtime on a loaded machine may not reach the limit in time)
        _expect(extra=lambda r: [] if "fork refused" in r.stdout or "Resource temporarily unavailable" in r.stderr
                or r.timed_out else [f"no sign that the process limit refused a fork (killed_by={r.killed_by}, "
                                     f"{r.duration_s:.1f} s)"]),
        limits={"timeout_s": 4}),
    HostileCase(
        "network_loopback", "connect to a port the host listens on at 127.0.0.1",
        {"python": PY_TRY + "s = socket.socket(); s.settimeout(3)\n"
                            "attempt('loopback', lambda: s.connect(('127.0.0.1', {port})))\n",
         "bash": "exec 3<>/dev/tcp/127.0.0.1/{port} && echo ESCAPED loopback || echo BLOCKED loopback\n"},
        _expect(out=("BLOCKED loopback",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "network_outside", "connect to an outside address and resolve a name",
        {"python": PY_TRY + "s = socket.socket(); s.settimeout(3)\n"
                            "attempt('outside', lambda: s.connect(('{outside}', 80)))\n"
                            "attempt('dns', lambda: socket.getaddrinfo('pypi.org', 443))\n"
                            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                            "attempt('udp', lambda: u.sendto(b'x', ('{outside}', 53)))\n",
         "bash": "exec 3<>/dev/tcp/{outside}/80 && echo ESCAPED outside || echo BLOCKED outside\n"},
        _expect(out=("BLOCKED outside",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "write_outside", "write files outside the workspace (host /tmp, /root, /usr, /etc, the repo)",
        {"python": PY_TRY + "for p in ['/tmp/../cf-escape-{token}', '/root/cf-escape-{token}', "
                            "'/usr/cf-escape-{token}', '/etc/cf-escape-{token}', '/cf-escape-{token}', "
                            "'/work/../cf-escape-{token}', '{cwd}/cf-escape-{token}']:\n"
                            "    attempt(p, lambda: open(p, 'w').write('x'))\n"},
        _expect(not_out=("ESCAPED /root", "ESCAPED /usr", "ESCAPED /etc", "ESCAPED /cf-", "ESCAPED /work/..")),
        ),
    HostileCase(
        "read_secrets", "read /etc/shadow, /root, the host python and the host environment",
        {"python": PY_TRY + "attempt('/etc/shadow', lambda: open('/etc/shadow').read())\n"
                            "attempt('/root', lambda: os.listdir('/root'))\n"
                            "attempt('/root/.pyenv', lambda: os.listdir('/root/.pyenv'))\n"
                            "attempt('/home', lambda: os.listdir('/home'))\n"
                            "attempt('/proc/1/environ', lambda: open('/proc/1/environ').read())\n"
                            "print('executable', sys.executable, 'uid', os.getuid(), flush=True)\n"
                            "print('env', sorted(os.environ), flush=True)\n"},
        _expect(out=("BLOCKED /etc/shadow", "BLOCKED /root", "executable /usr/bin/python3", f"uid {SANDBOX_UID}"),
                not_out=("ESCAPED /etc", "ESCAPED /root", "ESCAPED /home", "CARDFORGE_CANARY"))),
    HostileCase(
        "memory_hog", "allocate 2 GB at once, then grow a list until memory runs out",
        {"python": "try:\n    b = bytearray(2 * 1024**3)\n    print('ALLOCATED 2GB', flush=True)\n"
                   "except MemoryError:\n    print('BLOCKED big alloc', flush=True)\nx = []\ntry:\n"
                   "    while True:\n        x.append(bytearray(10**7))\nexcept MemoryError:\n"
                   "    print('BLOCKED growth at', len(x) * 10, 'MB', flush=True)\n"},
        _expect(out=("BLOCKED big alloc", "BLOCKED growth"), not_out=("ALLOCATED",)),
        limits={"mem_mb": 256}),
    HostileCase(
        "infinite_loop", "spin the CPU forever",
        {"python": "while True:\n    pass\n", "bash": "while :; do :; done\n"},
        _expect(timed_out=True, killed_by="timeout", max_s=4.0), limits={"timeout_s": 2}),
    HostileCase(
        "huge_output", "print without end",
        {"python": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "bash": "yes xxxxxxxx\n"},
        _expect(max_s=5.0, extra=lambda r: ([] if r.truncated and len(r.stdout) < 64_000 + 200
                                            else [f"stdout not capped: {len(r.stdout)} chars"]))),
    HostileCase(
        "escape_setsid", "a child that setsid()s, double-forks and sleeps forever while the parent exits",
        {"python": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                   "        time.sleep(1000)\n    os._exit(0)\nprint('parent done', flush=True)\n",
         "bash": "setsid sh -c 'sleep 1000 & sleep 1000' &\necho parent done\n"},
        _expect(out=("parent done",), timed_out=False, max_s=3.0)),
    HostileCase(
        "disk_filler", "write a 100 MB file in the workspace and fill /tmp",
        {"python": PY_TRY + "def big(p):\n    with open(p, 'wb') as f:\n        for _ in range(100):\n"
                            "            f.write(b'x' * 2**20)\n"
                            "attempt('/work/big', lambda: big('/work/big'))\n"
                            "attempt('/tmp/fill', lambda: [big(f'/tmp/f{{i}}') for i in range(8)])\n"},
        _expect(out=("BLOCKED /work/big", "BLOCKED /tmp/fill"),
                extra=lambda r: [] if len(r.files.get("big", b"")) <= 16 << 20 else ["/work/big exceeds the cap"])),
]


# ---- the other coding languages (issue #8 item 5) ----------------------------------------------------
# Compiled and run through the coding runner (cardforge.eval.coding.runner.hostile_runner). Each mirrors the
# Python program's intent and prints the same markers. No "{{" or "}}" in these sources: fill() would fold
# them (a test checks). C++ reuses C's programs where they are valid C++.

_C_HEAD = r"""#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
extern char **environ;
static void say(const char *what, const char *label, int ok) {
  if (ok) printf("ESCAPED %s\n", label);
  else printf("BLOCKED %s %s %s\n", label, what, strerror(errno));
  fflush(stdout);
}
static int tcp(const char *ip, int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct timeval tv;
  tv.tv_sec = 3;
  tv.tv_usec = 0;
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0;
}
"""

_C = {
    "fork_bomb": _C_HEAD + r"""int main(void) {
  int n = 0;
  for (;;) {
    pid_t pid = fork();
    if (pid < 0) {
      printf("fork refused after %d %s\n", n, strerror(errno));
      fflush(stdout);
      return 0;
    }
    if (pid == 0) {
      sleep(1000);
      _exit(0);
    }
    n++;
  }
}
""",
    "network_loopback": _C_HEAD + r"""int main(void) {
  say("connect", "loopback", tcp("127.0.0.1", {port}));
  return 0;
}
""",
    "network_outside": _C_HEAD + r"""int main(void) {
  say("connect", "outside", tcp("{outside}", 80));
  struct addrinfo *res = NULL;
  int rc = getaddrinfo("pypi.org", "443", NULL, &res);
  say(gai_strerror(rc), "dns", rc == 0);
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(53);
  inet_pton(AF_INET, "{outside}", &a.sin_addr);
  say("sendto", "udp", sendto(u, "x", 1, 0, (struct sockaddr *)&a, sizeof a) == 1);
  return 0;
}
""",
    "write_outside": _C_HEAD + r"""int main(void) {
  const char *paths[] = {"/tmp/../cf-escape-{token}", "/root/cf-escape-{token}", "/usr/cf-escape-{token}",
                         "/etc/cf-escape-{token}", "/cf-escape-{token}", "/work/../cf-escape-{token}",
                         "{cwd}/cf-escape-{token}"};
  for (int i = 0; i < 7; i++) {
    FILE *f = fopen(paths[i], "w");
    int ok = f != NULL && fputs("x", f) >= 0;
    if (f != NULL && fclose(f) != 0) ok = 0;
    say("open", paths[i], ok);
  }
  return 0;
}
""",
    "read_secrets": _C_HEAD + r"""static void rd(const char *p) {
  FILE *f = fopen(p, "r");
  say("open", p, f != NULL && (fgetc(f) != EOF || !ferror(f)));
}
static void ls(const char *p) {
  DIR *d = opendir(p);
  say("opendir", p, d != NULL);
}
int main(void) {
  rd("/etc/shadow");
  ls("/root");
  ls("/root/.pyenv");
  ls("/home");
  FILE *f = fopen("/proc/1/environ", "r"); /* pid 1 of the sandbox: what environment does it show? */
  char env1[4096];
  size_t got = f ? fread(env1, 1, sizeof env1 - 1, f) : 0;
  for (size_t i = 0; i < got; i++) if (env1[i] == 0) env1[i] = ' ';
  env1[got] = 0;
  say("open", "/proc/1/environ", f != NULL);
  printf("pid 1 environ: %s\n", env1);
  char exe[512] = "";
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) exe[n] = 0;
  printf("executable %s uid %d\nenv", exe, (int)getuid());
  for (char **e = environ; *e; e++) printf(" %.*s", (int)strcspn(*e, "="), *e);
  printf("\n");
  return 0;
}
""",
    "memory_hog": _C_HEAD + r"""static char *keep[100000];
int main(void) {
  size_t big = (size_t)2 << 30;
  char *b = (char *)malloc(big);
  if (b != NULL) {
    memset(b, 1, big);
    keep[0] = b;
    printf("ALLOCATED 2GB\n");
  } else {
    printf("BLOCKED big alloc\n");
  }
  fflush(stdout);
  size_t n = 1;
  for (; n < 100000; n++) {
    char *p = (char *)malloc(10000000);
    if (p == NULL) break;
    memset(p, 1, 10000000);
    keep[n] = p;
  }
  printf("BLOCKED growth at %zu MB\n", (n - 1) * 10);
  return 0;
}
""",
    "infinite_loop": "int main(void) {\n  volatile unsigned long x = 0;\n  for (;;) x++;\n}\n",
    "huge_output": r"""#include <stdio.h>
#include <string.h>
static char buf[65536];
int main(void) {
  memset(buf, 'x', sizeof buf);
  for (;;) fwrite(buf, 1, sizeof buf, stdout);
}
""",
    "escape_setsid": _C_HEAD + r"""int main(void) {
  if (fork() == 0) {
    setsid();
    if (fork() == 0) {
      sleep(1000);
      _exit(0);
    }
    _exit(0);
  }
  printf("parent done\n");
  fflush(stdout);
  return 0;
}
""",
    "disk_filler": _C_HEAD + r"""static char mb[1 << 20];
static int big(const char *p) {
  FILE *f = fopen(p, "wb");
  if (f == NULL) return 0;
  for (int i = 0; i < 100; i++) {
    if (fwrite(mb, 1, sizeof mb, f) != sizeof mb) {
      fclose(f);
      return 0;
    }
  }
  return fclose(f) == 0;
}
int main(void) {
  signal(SIGXFSZ, SIG_IGN); /* as Python does: a write past RLIMIT_FSIZE then fails with EFBIG */
  memset(mb, 'x', sizeof mb);
  say("write", "/work/big", big("/work/big"));
  int ok = 1;
  char p[64];
  for (int i = 0; i < 8 && ok; i++) {
    snprintf(p, sizeof p, "/tmp/f%d", i);
    ok = big(p);
  }
  say("write", "/tmp/fill", ok);
  return 0;
}
""",
}

_CPP = {**_C,
        "memory_hog": r"""#include <cstdio>
#include <cstring>
#include <new>
#include <vector>
int main() {
  std::vector<char *> keep;
  keep.reserve(100000);
  try {
    char *b = new char[std::size_t(2) << 30];
    std::memset(b, 1, std::size_t(2) << 30);
    keep.push_back(b);
    std::printf("ALLOCATED 2GB\n");
  } catch (const std::bad_alloc &e) {
    std::printf("BLOCKED big alloc %s\n", e.what());
  }
  std::fflush(stdout);
  std::size_t n = 0;
  try {
    for (; n < 99999; n++) {
      char *p = new char[10000000];
      std::memset(p, 1, 10000000);
      keep.push_back(p);
    }
  } catch (const std::bad_alloc &e) {
    std::printf("BLOCKED growth at %zu MB %s\n", n * 10, e.what());
  }
  return 0;
}
""",
        "huge_output": r"""#include <iostream>
#include <string>
int main() {
  std::string s(65536, 'x');
  for (;;) std::cout << s;
}
"""}

_RS_FFI = """#![allow(dead_code)]
use std::io::Write;
extern "C" {
    fn fork() -> i32;
    fn setsid() -> i32;
    fn sleep(s: u32) -> u32;
    fn _exit(code: i32) -> !;
    fn getuid() -> u32;
    fn signal(sig: i32, handler: usize) -> usize;
}
fn say<T, E: std::fmt::Display>(label: &str, r: Result<T, E>) {
    match r {
        Ok(_) => println!("ESCAPED {}", label),
        Err(e) => println!("BLOCKED {} {}", label, e),
    }
    let _ = std::io::stdout().flush();
}
"""

_RUST = {
    "fork_bomb": _RS_FFI + """fn main() {
    let mut n = 0;
    loop {
        let pid = unsafe { fork() };
        if pid < 0 {
            println!("fork refused after {} {}", n, std::io::Error::last_os_error());
            return;
        }
        if pid == 0 {
            unsafe { sleep(1000); _exit(0) }
        }
        n += 1;
    }
}
""",
    "network_loopback": _RS_FFI + """fn main() {
    let addr = "127.0.0.1:{port}".parse().unwrap();
    say("loopback", std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)));
}
""",
    "network_outside": _RS_FFI + """use std::net::ToSocketAddrs;
fn main() {
    let addr = "{outside}:80".parse().unwrap();
    say("outside", std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)));
    say("dns", ("pypi.org", 443).to_socket_addrs());
    let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    say("udp", u.send_to(b"x", "{outside}:53"));
}
""",
    "write_outside": _RS_FFI + """fn main() {
    for p in ["/tmp/../cf-escape-{token}", "/root/cf-escape-{token}", "/usr/cf-escape-{token}",
              "/etc/cf-escape-{token}", "/cf-escape-{token}", "/work/../cf-escape-{token}",
              "{cwd}/cf-escape-{token}"] {
        say(p, std::fs::write(p, "x"));
    }
}
""",
    "read_secrets": _RS_FFI + """fn main() {
    say("/etc/shadow", std::fs::read("/etc/shadow"));
    say("/root", std::fs::read_dir("/root"));
    say("/root/.pyenv", std::fs::read_dir("/root/.pyenv"));
    say("/home", std::fs::read_dir("/home"));
    let env1 = std::fs::read("/proc/1/environ");
    if let Ok(b) = &env1 {
        println!("pid 1 environ: {}", String::from_utf8_lossy(b).replace('\\0', " "));
    }
    say("/proc/1/environ", env1);
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
    println!("executable {} uid {}", exe, unsafe { getuid() });
    let mut names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    names.sort();
    println!("env {:?}", names);
}
""",
    # Rust aborts on a failed allocation: try_reserve is how a Rust program sees the limit and goes on
    "memory_hog": _RS_FFI + """fn main() {
    let mut keep: Vec<Vec<u8>> = Vec::with_capacity(100000);
    let mut b: Vec<u8> = Vec::new();
    match b.try_reserve_exact(2usize << 30) {
        Ok(()) => {
            b.resize(2usize << 30, 1);
            println!("ALLOCATED 2GB");
            keep.push(b);
        }
        Err(e) => println!("BLOCKED big alloc {}", e),
    }
    loop {
        let mut v: Vec<u8> = Vec::new();
        if let Err(e) = v.try_reserve_exact(10_000_000) {
            println!("BLOCKED growth at {} MB {}", keep.len() * 10, e);
            break;
        }
        v.resize(10_000_000, 1);
        keep.push(v);
    }
}
""",
    "infinite_loop": ("fn main() {\n    let mut x: u64 = 0;\n    loop {\n"
                      "        unsafe { std::ptr::write_volatile(&mut x, x + 1) };\n    }\n}\n"),
    "huge_output": """use std::io::Write;
fn main() {
    let buf = vec![b'x'; 65536];
    let mut out = std::io::stdout().lock();
    while out.write_all(&buf).is_ok() {
    }
}
""",
    "escape_setsid": _RS_FFI + """fn main() {
    unsafe {
        if fork() == 0 {
            setsid();
            if fork() == 0 {
                sleep(1000);
                _exit(0);
            }
            _exit(0);
        }
    }
    println!("parent done");
}
""",
    "disk_filler": _RS_FFI + """fn big(p: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(p)?;
    let mb = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&mb)?;
    }
    Ok(())
}
fn main() {
    unsafe { signal(25, 1); } // SIGXFSZ -> SIG_IGN, as Python does: writes past the cap fail with EFBIG
    say("/work/big", big("/work/big"));
    say("/tmp/fill", (0..8).try_for_each(|i| big(&format!("/tmp/f{}", i))));
}
""",
}

_GO_HEAD = """package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

var _ = []interface{}{net.Dial, os.Getpid, exec.Command, signal.Ignore, sort.Strings, strings.Split,
	syscall.Getuid, time.Now}

func say(label string, err error) {
	if err == nil {
		fmt.Println("ESCAPED", label)
	} else {
		fmt.Println("BLOCKED", label, err)
	}
}

"""

_GO = {
    # the Go runtime cannot fork (a forked child of a multi-threaded runtime is unusable): os/exec it is
    "fork_bomb": _GO_HEAD + """func main() {
	n := 0
	for {
		if err := exec.Command("sleep", "1000").Start(); err != nil {
			fmt.Println("fork refused after", n, err)
			return
		}
		n++
	}
}
""",
    "network_loopback": _GO_HEAD + """func main() {
	_, err := net.DialTimeout("tcp", "127.0.0.1:{port}", 3*time.Second)
	say("loopback", err)
}
""",
    "network_outside": _GO_HEAD + """func main() {
	_, err := net.DialTimeout("tcp", "{outside}:80", 3*time.Second)
	say("outside", err)
	_, err = net.LookupHost("pypi.org")
	say("dns", err)
	u, err := net.Dial("udp", "{outside}:53")
	if err == nil {
		_, err = u.Write([]byte("x"))
	}
	say("udp", err)
}
""",
    "write_outside": _GO_HEAD + """func main() {
	for _, p := range []string{"/tmp/../cf-escape-{token}", "/root/cf-escape-{token}", "/usr/cf-escape-{token}",
		"/etc/cf-escape-{token}", "/cf-escape-{token}", "/work/../cf-escape-{token}", "{cwd}/cf-escape-{token}"} {
		say(p, os.WriteFile(p, []byte("x"), 0o644))
	}
}
""",
    "read_secrets": _GO_HEAD + """func main() {
	_, err := os.ReadFile("/etc/shadow")
	say("/etc/shadow", err)
	for _, d := range []string{"/root", "/root/.pyenv", "/home"} {
		_, err = os.ReadDir(d)
		say(d, err)
	}
	env1, err := os.ReadFile("/proc/1/environ")
	fmt.Println("pid 1 environ:", strings.ReplaceAll(string(env1), "\\x00", " "))
	say("/proc/1/environ", err)
	exe, _ := os.Executable()
	fmt.Println("executable", exe, "uid", os.Getuid())
	var names []string
	for _, kv := range os.Environ() {
		names = append(names, strings.SplitN(kv, "=", 2)[0])
	}
	sort.Strings(names)
	fmt.Println("env", names)
}
""",
    # the Go runtime treats a failed allocation as fatal (not recoverable): the 2 GB make must kill it
    "memory_hog": _GO_HEAD + """func main() {
	b := make([]byte, 2<<30)
	for i := range b {
		b[i] = 1
	}
	fmt.Println("ALLOCATED 2GB")
	var keep [][]byte
	for {
		keep = append(keep, make([]byte, 10000000))
	}
}
""",
    "infinite_loop": "package main\n\nfunc main() {\n\tx := 0\n\tfor {\n\t\tx++\n\t}\n}\n",
    "huge_output": _GO_HEAD + """func main() {
	buf := []byte(strings.Repeat("x", 65536))
	for {
		if _, err := os.Stdout.Write(buf); err != nil {
			return
		}
	}
}
""",
    # no fork in Go: a child in a new session (setsid) that leaves a grandchild behind, the parent exits
    "escape_setsid": _GO_HEAD + """func main() {
	cmd := exec.Command("sh", "-c", "sleep 1000 & sleep 1000")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Println("start failed", err)
	}
	fmt.Println("parent done")
}
""",
    "disk_filler": _GO_HEAD + """func big(p string) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	mb := []byte(strings.Repeat("x", 1<<20))
	for i := 0; i < 100; i++ {
		if _, err := f.Write(mb); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	signal.Ignore(syscall.SIGXFSZ)
	say("/work/big", big("/work/big"))
	var err error
	for i := 0; i < 8 && err == nil; i++ {
		err = big(fmt.Sprintf("/tmp/f%d", i))
	}
	say("/tmp/fill", err)
}
""",
}

_JAVA_HEAD = """import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.util.*;

public class Main {
    interface Act {
        void run() throws Throwable;
    }

    static void attempt(String label, Act a) {
        try {
            a.run();
            System.out.println("ESCAPED " + label);
        } catch (Throwable e) {
            System.out.println("BLOCKED " + label + " " + e);
        }
        System.out.flush();
    }

"""

_JAVA = {
    # the JVM cannot fork: ProcessBuilder (posix_spawn) is its way to make processes
    "fork_bomb": _JAVA_HEAD + """    public static void main(String[] args) {
        int n = 0;
        List<Process> keep = new ArrayList<>();
        while (true) {
            try {
                keep.add(new ProcessBuilder("sleep", "1000").redirectInput(new File("/dev/null"))
                         .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                         .redirectError(ProcessBuilder.Redirect.DISCARD).start());
            } catch (Throwable e) {
                System.out.println("fork refused after " + n + " " + e);
                System.out.flush();
                Runtime.getRuntime().halt(0);
            }
            n++;
        }
    }
}
""",
    "network_loopback": _JAVA_HEAD + """    public static void main(String[] args) {
        attempt("loopback", () -> new Socket().connect(new InetSocketAddress("127.0.0.1", {port}), 3000));
    }
}
""",
    "network_outside": _JAVA_HEAD + """    public static void main(String[] args) {
        attempt("outside", () -> new Socket().connect(new InetSocketAddress("{outside}", 80), 3000));
        attempt("dns", () -> InetAddress.getByName("pypi.org"));
        attempt("udp", () -> new DatagramSocket().send(
            new DatagramPacket(new byte[] {1}, 1, InetAddress.getByName("{outside}"), 53)));
    }
}
""",
    "write_outside": _JAVA_HEAD + """    public static void main(String[] args) {
        for (String p : new String[] {"/tmp/../cf-escape-{token}", "/root/cf-escape-{token}",
                "/usr/cf-escape-{token}", "/etc/cf-escape-{token}", "/cf-escape-{token}",
                "/work/../cf-escape-{token}", "{cwd}/cf-escape-{token}"}) {
            attempt(p, () -> Files.writeString(Paths.get(p), "x"));
        }
    }
}
""",
    "read_secrets": _JAVA_HEAD + """    public static void main(String[] args) throws Exception {
        attempt("/etc/shadow", () -> Files.readAllBytes(Paths.get("/etc/shadow")));
        for (String d : new String[] {"/root", "/root/.pyenv", "/home"}) {
            attempt(d, () -> Files.list(Paths.get(d)).count());
        }
        attempt("/proc/1/environ", () -> System.out.println("pid 1 environ: "
            + new String(Files.readAllBytes(Paths.get("/proc/1/environ"))).replace('\\0', ' ')));
        String uid = "?";
        for (String line : Files.readAllLines(Paths.get("/proc/self/status"))) {
            if (line.startsWith("Uid:")) uid = line.split("\\\\s+")[1];
        }
        System.out.println("executable " + ProcessHandle.current().info().command().orElse("?") + " uid " + uid);
        System.out.println("env " + new TreeSet<>(System.getenv().keySet()));
    }
}
""",
    "memory_hog": _JAVA_HEAD + """    public static void main(String[] args) {
        try {
            long[] b = new long[1 << 28];
            Arrays.fill(b, 1);
            System.out.println("ALLOCATED 2GB " + b.length);
        } catch (OutOfMemoryError e) {
            System.out.println("BLOCKED big alloc " + e);
        }
        List<byte[]> keep = new ArrayList<>();
        try {
            while (true) {
                byte[] x = new byte[10_000_000];
                Arrays.fill(x, (byte) 1);
                keep.add(x);
            }
        } catch (OutOfMemoryError e) {
            int n = keep.size();
            keep.clear();
            System.out.println("BLOCKED growth at " + n * 10 + " MB " + e);
        }
    }
}
""",
    "infinite_loop": _JAVA_HEAD + """    static volatile long x;

    public static void main(String[] args) {
        while (true) x++;
    }
}
""",
    "huge_output": _JAVA_HEAD + """    public static void main(String[] args) {
        byte[] buf = new byte[65536];
        Arrays.fill(buf, (byte) 'x');
        while (!System.out.checkError()) System.out.write(buf, 0, buf.length);
    }
}
""",
    # no fork in the JVM: a child that setsid()s (util-linux setsid) and leaves a grandchild behind
    "escape_setsid": _JAVA_HEAD + """    public static void main(String[] args) throws Exception {
        new ProcessBuilder("setsid", "sh", "-c", "sleep 1000 & sleep 1000").inheritIO().start();
        System.out.println("parent done");
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }
}
""",
    "disk_filler": _JAVA_HEAD + """    static void big(String p) throws IOException {
        byte[] mb = new byte[1 << 20];
        try (OutputStream f = new FileOutputStream(p)) {
            for (int i = 0; i < 100; i++) f.write(mb);
        }
    }

    public static void main(String[] args) {
        attempt("/work/big", () -> big("/work/big"));
        attempt("/tmp/fill", () -> {
            for (int i = 0; i < 8; i++) big("/tmp/f" + i);
        });
    }
}
""",
}

_JS_HEAD = """const fs = require('fs');
const net = require('net');
const cp = require('child_process');
function attempt(label, fn) {
  try {
    fn();
    console.log('ESCAPED', label);
  } catch (e) {
    console.log('BLOCKED', label, String(e));
  }
}
function connect(label, host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: host, port: port });
    const t = setTimeout(() => {
      console.log('BLOCKED', label, 'timed out');
      s.destroy();
      resolve(0);
    }, 3000);
    s.on('connect', () => {
      console.log('ESCAPED', label);
      clearTimeout(t);
      s.destroy();
      resolve(0);
    });
    s.on('error', (e) => {
      console.log('BLOCKED', label, String(e));
      clearTimeout(t);
      resolve(0);
    });
  });
}
"""

_JS = {
    # node cannot fork (one process, one event loop): child_process.spawn is its way to make processes
    "fork_bomb": _JS_HEAD + """let n = 0;
function refused(e) {
  console.log('fork refused after', n, String(e));
  process.exit(0);
}
function next() {
  try {
    const c = cp.spawn('sleep', ['1000'], { stdio: 'ignore' });
    c.on('error', refused);
    c.on('spawn', () => {
      n++;
      next();
    });
  } catch (e) {
    refused(e);
  }
}
next();
""",
    "network_loopback": _JS_HEAD + "connect('loopback', '127.0.0.1', {port});\n",
    "network_outside": _JS_HEAD + """async function main() {
  await connect('outside', '{outside}', 80);
  try {
    await require('dns').promises.lookup('pypi.org');
    console.log('ESCAPED dns');
  } catch (e) {
    console.log('BLOCKED dns', String(e));
  }
  const u = require('dgram').createSocket('udp4');
  u.send('x', 53, '{outside}', (e) => {
    console.log(e ? 'BLOCKED udp ' + String(e) : 'ESCAPED udp');
    u.close();
  });
}
main();
""",
    "write_outside": _JS_HEAD + """for (const p of ['/tmp/../cf-escape-{token}', '/root/cf-escape-{token}',
  '/usr/cf-escape-{token}', '/etc/cf-escape-{token}', '/cf-escape-{token}', '/work/../cf-escape-{token}',
  '{cwd}/cf-escape-{token}']) {
  attempt(p, () => fs.writeFileSync(p, 'x'));
}
""",
    "read_secrets": _JS_HEAD + """attempt('/etc/shadow', () => fs.readFileSync('/etc/shadow'));
attempt('/root', () => fs.readdirSync('/root'));
attempt('/root/.pyenv', () => fs.readdirSync('/root/.pyenv'));
attempt('/home', () => fs.readdirSync('/home'));
attempt('/proc/1/environ', () => console.log('pid 1 environ:',
  fs.readFileSync('/proc/1/environ', 'latin1').split('\\0').join(' ')));
console.log('executable', process.execPath, 'uid', process.getuid());
console.log('env', Object.keys(process.env).sort().join(' '));
""",
    # Buffers live outside the V8 heap: the address-space limit, not --max-old-space-size, stops them
    "memory_hog": _JS_HEAD + """const keep = [];
try {
  keep.push(Buffer.alloc(2 * 1024 ** 3, 1));
  console.log('ALLOCATED 2GB');
} catch (e) {
  console.log('BLOCKED big alloc', String(e));
}
keep.length = 0;
try {
  for (;;) keep.push(Buffer.alloc(1e7, 1));
} catch (e) {
  const n = keep.length;
  keep.length = 0;
  console.log('BLOCKED growth at', n * 10, 'MB', String(e));
}
""",
    "infinite_loop": "let x = 0;\nfor (;;) x++;\n",
    "huge_output": "const s = 'x'.repeat(65536);\nfor (;;) process.stdout.write(s);\n",
    # no fork in node: a detached child (setsid) that leaves a grandchild behind, the parent exits
    "escape_setsid": _JS_HEAD + """cp.spawn('sh', ['-c', 'sleep 1000 & sleep 1000'],
  { detached: true, stdio: 'inherit' }).unref();
console.log('parent done');
""",
    "disk_filler": _JS_HEAD + """function big(p) {
  const fd = fs.openSync(p, 'w');
  const mb = Buffer.alloc(1 << 20, 120);
  try {
    for (let i = 0; i < 100; i++) fs.writeSync(fd, mb);
  } finally {
    fs.closeSync(fd);
  }
}
attempt('/work/big', () => big('/work/big'));
attempt('/tmp/fill', () => {
  for (let i = 0; i < 8; i++) big('/tmp/f' + i);
});
""",
}

# TypeScript: the same programs under tsc --strict with no Node typings (as the coding runner compiles it):
# the Node globals are declared `any`, every parameter is typed
_TS_PRELUDE = ("declare const require: any;\ndeclare const process: any;\ndeclare const Buffer: any;\n"
               "declare const console: any;\ndeclare function setTimeout(f: () => void, ms: number): any;\n"
               "declare function clearTimeout(t: any): void;\n")


def _ts(js: str) -> str:
    import re

    def typed(params: str) -> str:
        return ", ".join(f"{p.strip()}: any" for p in params.split(",") if p.strip())

    ts = re.sub(r"function (\w+)\(([^)]*)\)", lambda m: f"function {m[1]}({typed(m[2])})", js)
    ts = re.sub(r"\((\w+)\) =>", lambda m: f"({typed(m[1])}) =>", ts)
    ts = ts.replace("const keep = [];", "const keep: any[] = [];")
    return _TS_PRELUDE + ts


_TS = {name: _ts(src) for name, src in _JS.items()}

_RB_HEAD = """$stdout.sync = true
def attempt(label)
  yield
  puts "ESCAPED #{label}"
rescue Exception => e
  puts "BLOCKED #{label} #{e.class} #{e.message}"
end
"""

_RUBY = {
    "fork_bomb": _RB_HEAD + """n = 0
loop do
  begin
    pid = Process.fork
  rescue SystemCallError => e
    puts "fork refused after #{n} #{e.class} #{e.message}"
    exit!(0)
  end
  if pid.nil?
    sleep 1000
    exit!(0)
  end
  n += 1
end
""",
    "network_loopback": _RB_HEAD + """require 'socket'
attempt('loopback') { Socket.tcp('127.0.0.1', {port}, connect_timeout: 3).close }
""",
    "network_outside": _RB_HEAD + """require 'socket'
attempt('outside') { Socket.tcp('{outside}', 80, connect_timeout: 3).close }
attempt('dns') { Addrinfo.getaddrinfo('pypi.org', 443) }
attempt('udp') { UDPSocket.new.send('x', 0, '{outside}', 53) }
""",
    "write_outside": _RB_HEAD + """['/tmp/../cf-escape-{token}', '/root/cf-escape-{token}', '/usr/cf-escape-{token}',
 '/etc/cf-escape-{token}', '/cf-escape-{token}', '/work/../cf-escape-{token}', '{cwd}/cf-escape-{token}'].each do |p|
  attempt(p) { File.write(p, 'x') }
end
""",
    "read_secrets": _RB_HEAD + """require 'rbconfig'
attempt('/etc/shadow') { File.read('/etc/shadow') }
attempt('/root') { Dir.children('/root') }
attempt('/root/.pyenv') { Dir.children('/root/.pyenv') }
attempt('/home') { Dir.children('/home') }
attempt('/proc/1/environ') { puts "pid 1 environ: #{File.read('/proc/1/environ').tr("\\0", ' ')}" }
puts "executable #{RbConfig.ruby} uid #{Process.uid}"
puts "env #{ENV.keys.sort.join(' ')}"
""",
    "memory_hog": _RB_HEAD + """begin
  b = 'x' * (2 * 1024**3)
  puts "ALLOCATED 2GB #{b.size}"
rescue NoMemoryError => e
  puts "BLOCKED big alloc #{e.message}"
end
b = nil
x = []
begin
  loop do
    x << ('x' * 10**7)
  end
rescue NoMemoryError => e
  n = x.size
  x = nil
  puts "BLOCKED growth at #{n * 10} MB #{e.message}"
end
""",
    "infinite_loop": "x = 0\nloop do\n  x += 1\nend\n",
    "huge_output": "s = 'x' * 65536\nloop do\n  $stdout.write(s)\nend\n",
    "escape_setsid": """fork do
  Process.setsid
  fork do
    sleep 1000
  end
  exit!(0)
end
puts 'parent done'
$stdout.flush
""",
    "disk_filler": _RB_HEAD + """trap('XFSZ', 'IGNORE') # as Python does: a write past the file cap fails (EFBIG)
def big(p)
  mb = 'x' * 2**20
  File.open(p, 'wb') do |f|
    100.times { f.write(mb) }
  end
end
attempt('/work/big') { big('/work/big') }
attempt('/tmp/fill') { 8.times { |i| big("/tmp/f#{i}") } }
""",
}

NEW_LANGUAGES = ("javascript", "typescript", "java", "cpp", "c", "rust", "go", "ruby")
_NEW = {"javascript": _JS, "typescript": _TS, "java": _JAVA, "cpp": _CPP, "c": _C, "rust": _RUST, "go": _GO,
        "ruby": _RUBY}

_NO_FORK = ("no fork: the runtime has one process (and threads) it cannot duplicate safely; the program spawns "
            "`sleep` children through {api} until the process limit refuses one (the same limit a fork hits)")
_NO_SETSID = ("no fork/setsid in the language: the program starts a child in a new session ({api}) that leaves "
              "a grandchild behind and exits")
_UNSUPPORTED = {
    "fork_bomb": {"javascript": _NO_FORK.format(api="child_process.spawn"),
                  "typescript": _NO_FORK.format(api="child_process.spawn"),
                  "java": _NO_FORK.format(api="ProcessBuilder"), "go": _NO_FORK.format(api="os/exec")},
    "escape_setsid": {"javascript": _NO_SETSID.format(api="spawn detached"),
                      "typescript": _NO_SETSID.format(api="spawn detached"),
                      "java": _NO_SETSID.format(api="ProcessBuilder of util-linux setsid"),
                      "go": _NO_SETSID.format(api="os/exec with SysProcAttr.Setsid")},
    "memory_hog": {"go": "the Go runtime treats a failed allocation as fatal: the 2 GB make kills the program "
                         "(contained) and it never reaches the growth part"},
}

# read_secrets: only Python can say which interpreter ran (the host's pyenv one must not): the rest print
# their uid and environment
_SECRETS = _expect(out=("BLOCKED /etc/shadow", "BLOCKED /root", f"uid {SANDBOX_UID}"),
                   not_out=("ESCAPED /etc", "ESCAPED /root", "ESCAPED /home", "CARDFORGE_CANARY"))


def _go_oom(r: SandboxResult) -> list[str]:
    text = r.stdout + r.stderr
    return [] if "out of memory" in r.stderr and r.exit_code not in (0, None) and "ALLOCATED" not in text else [
        f"expected the Go runtime to die out of memory (exit {r.exit_code}, stdout={r.stdout[-300:]!r}, "
        f"stderr={r.stderr[-300:]!r})"]


_CHECKS = {"read_secrets": {lang: _SECRETS for lang in NEW_LANGUAGES}, "memory_hog": {"go": _go_oom}}


def _with_new_languages(case: HostileCase) -> HostileCase:
    from dataclasses import replace

    programs = {**case.programs, **{lang: progs[case.name] for lang, progs in _NEW.items() if case.name in progs}}
    return replace(case, programs=programs, checks={**case.checks, **_CHECKS.get(case.name, {})},
                   unsupported={**case.unsupported, **_UNSUPPORTED.get(case.name, {})})


CASES = [_with_new_languages(c) for c in CASES]


def cases_for(language: str) -> list[HostileCase]:
    return [c for c in CASES if language in c.programs]


class HostWatch:
    """Host-side evidence that a case did no harm: listener untouched, no escape files, no leftovers."""

    def __init__(self):
        self.token = uuid.uuid4().hex[:12]
        self.cwd = os.getcwd()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def fill(self, program: str) -> str:
        return (program.replace("{token}", self.token).replace("{port}", str(self.port))
                .replace("{outside}", OUTSIDE).replace("{cwd}", self.cwd).replace("{{", "{").replace("}}", "}"))

    def escape_paths(self) -> list[Path]:
        name = f"cf-escape-{self.token}"
        return [Path("/tmp") / name, Path("/root") / name, Path("/") / name, Path("/usr") / name,
                Path("/etc") / name, Path(self.cwd) / name]

    def problems(self, settle_s: float = 3.0) -> list[str]:
        out = []
        try:
            self.listener.accept()
            out.append("a connection reached the host listener on 127.0.0.1")
        except BlockingIOError:
            pass
        finally:
            self.listener.close()
        out += [f"file written outside the sandbox: {p}" for p in self.escape_paths() if p.exists()]
        deadline = time.monotonic() + settle_s  # the kernel tears a pid namespace down asynchronously
        while (left := uid_processes(SANDBOX_UID)) and time.monotonic() < deadline:
            time.sleep(0.05)
        out += [f"process of uid {SANDBOX_UID} left running: pid {pid} {cmd!r}" for pid, cmd in left]
        return out


def uid_processes(uid: int) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose real uid is `uid` (zombies are dead: not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, KeyError, ValueError):
            continue  # it exited while we looked
    return found


def python_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/python3", "main.py"], files={"main.py": source}, **limits)


def bash_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/bash", "main.sh"], files={"main.sh": source}, **limits)


RUNNERS: dict[str, Runner] = {"python": python_runner, "bash": bash_runner}


def run_case(case: HostileCase, language: str, runner: Runner | None = None) -> tuple[SandboxResult, list[str]]:
    """Run one case; returns the result and every problem found (in the result or on the host)."""
    watch = HostWatch()
    result = (runner or RUNNERS[language])(watch.fill(case.programs[language]), dict(case.limits))
    problems = case.check_for(language)(result)
    if result.duration_s > case.max_duration_s:
        problems.append(f"took {result.duration_s:.1f} s (limit {case.max_duration_s} s)")
    return result, problems + watch.problems()
