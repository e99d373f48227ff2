"""Agentic tasks on files and the shell: scaffold a tree, rename by pattern, find, archive, sed across a
tree, split a file, count a log, rank IPs, dedupe, fix a bash script."""

from __future__ import annotations

import ast
import io
import random
import re
import tarfile
from collections import Counter

from cardforge.eval.agentic.task import (
    AgenticTask, Fail, expect, expect_equal, nonblank_lines, load_json, sandboxed, text, under, unchanged)

# --- tree-scaffold ---
SCAFFOLD = ["calc/README.md", "calc/pyproject.toml", "calc/src/calc/__init__.py", "calc/src/calc/core.py",
            "calc/tests/test_core.py"]


def _check_scaffold(files: dict[str, bytes]) -> None:
    expect_equal(sorted(under(files, "calc/")), sorted(SCAFFOLD), "files under calc/")
    expect_equal(text(files, "calc/README.md").splitlines()[:1], ["# calc"], "first line of calc/README.md")
    expect_equal(_project_name(text(files, "calc/pyproject.toml")), "calc", "[project] name in calc/pyproject.toml")
    try:
        tree = ast.parse(text(files, "calc/src/calc/__init__.py"))
    except SyntaxError as e:
        raise Fail(f"calc/src/calc/__init__.py does not parse ({e})") from None
    versions = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets)]
    expect_equal(versions, ["0.1.0"], "__version__ in calc/src/calc/__init__.py")


def _project_name(toml: str) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [project] table's name line is enough here
        table = re.search(r"^\[project\][ \t]*\n(.*?)(?=^\[|\Z)", toml, re.M | re.S)
        name = re.search(r"^name\s*=\s*[\"']([^\"']*)[\"']", table[1], re.M) if table else None
        return name[1] if name else None
    try:
        return tomllib.loads(toml).get("project", {}).get("name")
    except tomllib.TOMLDecodeError as e:
        raise Fail(f"calc/pyproject.toml is not valid TOML ({e})") from None


# --- rename-photos ---
PHOTOS = {f"photos/IMG_{n:04d}.JPG": f"photo {n} pixels\n" for n in (3, 7, 12, 40, 101)}
PHOTOS_OTHER = {"photos/IMG_0200.png": "a png, not a JPG\n", "photos/notes.txt": "holiday 2024\n"}


def _check_rename(files: dict[str, bytes]) -> None:
    want = {f"photos/holiday-{p[11:15]}.jpg": c for p, c in PHOTOS.items()} | PHOTOS_OTHER
    expect_equal(sorted(under(files, "photos/")), sorted(want), "files under photos/")
    for p, c in want.items():
        expect_equal(text(files, p), c, f"content of {p}")


# --- find-large-files ---
SIZES = {"data/a.bin": 1500, "data/b.txt": 200, "data/f.csv": 999, "data/sub/c.log": 1001, "data/sub/d.txt": 1000,
         "data/sub/deep/e.dat": 5000, "data/sub/deep/g.txt": 12, "outside.txt": 3000}
SIZED = {p: ("x" * (n - 1) + "\n") for p, n in SIZES.items()}


def _check_large(files: dict[str, bytes]) -> None:
    want = sorted(p for p, n in SIZES.items() if p.startswith("data/") and n > 1000)
    expect_equal(nonblank_lines(files, "large_files.txt"), want, "lines of large_files.txt")


# --- tar-backup ---
NOTES = {"notes/a.txt": "alpha\n", "notes/b.txt": "beta\n", "notes/sub/c.txt": "gamma\n",
         "notes/draft.tmp": "not this\n", "other.txt": "not this either\n"}


def _check_tar(files: dict[str, bytes]) -> None:
    if "backup.tar.gz" not in files:
        raise Fail("backup.tar.gz does not exist")
    try:
        with tarfile.open(fileobj=io.BytesIO(files["backup.tar.gz"]), mode="r:gz") as tar:
            got = {m.name.removeprefix("./"): tar.extractfile(m).read().decode() for m in tar.getmembers()
                   if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise Fail(f"backup.tar.gz is not a gzip tar archive ({e})") from None
    want = {p: c for p, c in NOTES.items() if p.startswith("notes/") and p.endswith(".txt")}
    expect_equal(got, want, "files in backup.tar.gz")


# --- replace-api-calls ---
API = {
    "src/app.py": "from net import fetch_v1\n\n\ndef main():\n    user = fetch_v1('/user')\n    "
                  "return fetch_v1('/items', user=user)\n",
    "src/util.py": "def cached(key, fetch_v1=None):\n    return key\n",
    "src/pkg/net.py": "def load(client):\n    # retries once\n"
                      "    return client.fetch_v1(  '/x') or client.fetch_v1('/y')\n",
    "vendor/client.py": "def fetch_v1(path):\n    return path\n\n\nprint(fetch_v1('/vendor'))\n",
    "README.md": "Call fetch_v1(path) to load a path.\n",
}


def _check_replace(files: dict[str, bytes]) -> None:
    for p in ("src/app.py", "src/util.py", "src/pkg/net.py"):
        expect_equal(text(files, p), API[p].replace("fetch_v1(", "fetch_v2("), f"content of {p}")
    unchanged(files, API, ["vendor/client.py", "README.md"])


# --- split-csv ---
_rng = random.Random(17)
RECORDS = "id,name,score\n" + "".join(f"{i},user{i:02d},{_rng.randint(0, 100)}\n" for i in range(1, 24))


def _check_split(files: dict[str, bytes]) -> None:
    header, *rows = RECORDS.splitlines()
    want = {f"parts/part_{k + 1}.csv": [header, *rows[10 * k:10 * k + 10]] for k in range(3)}
    expect_equal(sorted(under(files, "parts/")), sorted(want), "files under parts/")
    for p, lines in want.items():
        expect_equal(text(files, p).splitlines(), lines, f"lines of {p}")


# --- log-level-counts ---
def _app_log() -> str:
    rng = random.Random(5)
    msgs = ["cache warmed", "request served", "disk at 81%", "retry after ERROR budget reset",
            "user WARNING banner shown", "connection refused", "slow query 2.3 s", "job done"]
    levels = rng.choices(["DEBUG", "INFO", "WARNING", "ERROR"], weights=[3, 8, 3, 2], k=40)
    return "".join(f"2024-05-01 12:{i // 60:02d}:{i % 60:02d} {lvl} {rng.choice(['api', 'db', 'worker'])}: "
                   f"{rng.choice(msgs)}\n" for i, lvl in enumerate(levels))


APP_LOG = _app_log()


def _check_levels(files: dict[str, bytes]) -> None:
    want = dict(Counter(line.split()[2] for line in APP_LOG.splitlines()))
    want = {k: want.get(k, 0) for k in ("DEBUG", "INFO", "WARNING", "ERROR")}
    got = load_json(files, "counts.json")
    expect_equal(got, want, "counts.json")


# --- top-ips ---
def _access_log() -> str:
    rng = random.Random(9)
    ips = (["10.0.0.7"] * 9 + ["192.168.1.20"] * 7 + ["172.16.0.3"] * 5 + ["10.0.0.8"] * 3 + ["8.8.4.4"] * 3
           + ["203.0.113.9"] * 2 + ["198.51.100.1"])
    rng.shuffle(ips)
    paths = ["/", "/login", "/api/items", "/api/items/7", "/static/app.js"]
    return "".join(f'{ip} - - [01/May/2024:10:{i:02d}:00 +0000] "GET {rng.choice(paths)} HTTP/1.1" '
                   f"{rng.choice([200, 200, 304, 404, 500])} {rng.randint(100, 9000)}\n" for i, ip in enumerate(ips))


ACCESS_LOG = _access_log()


def _check_top_ips(files: dict[str, bytes]) -> None:
    top = Counter(line.split()[0] for line in ACCESS_LOG.splitlines()).most_common(3)
    got = [" ".join(line.split()) for line in nonblank_lines(files, "top_ips.txt")]
    expect_equal(got, [f"{ip} {n}" for ip, n in top], "lines of top_ips.txt")


# --- dedupe-emails ---
EMAILS = ("alice@example.com\nBob@Example.org\n  carol@example.net\nALICE@example.com\n\nbob@example.org  \n"
          "dave@example.com\ncarol@EXAMPLE.net\nerin@example.com\n\nAlice@Example.com\nfrank@example.org\n")


def _check_emails(files: dict[str, bytes]) -> None:
    want = sorted({e.strip().lower() for e in EMAILS.splitlines() if e.strip()})
    expect_equal(text(files, "unique_emails.txt").splitlines(), want, "lines of unique_emails.txt")


# --- fix-shell-script ---
ROTATE = """#!/bin/bash
# copy every .log file to archive/NAME.1 and say how many
count=0
for f in *.log do
    cp "$f" archive/"$f".1
    count=$((count + 1))
done
echo "rotated $count file"
"""


def _check_rotate(files: dict[str, bytes]) -> None:
    fresh = {"rotate.sh": text(files, "rotate.sh"), "x.log": "x1\n", "y.log": "y2\n", "z.log": "z3\n",
             "keep.txt": "no\n"}
    r = sandboxed(fresh, "bash rotate.sh")
    expect(r.exit_code == 0, f"bash rotate.sh exits {r.exit_code}: {r.stderr.strip()[-200:]}")
    expect_equal(r.stdout.strip(), "rotated 3 files", "output of bash rotate.sh on three .log files")
    expect_equal(sorted(under(r.files, "archive/")), ["archive/x.log.1", "archive/y.log.1", "archive/z.log.1"],
                 "archive/ after bash rotate.sh")
    expect_equal(r.files["archive/y.log.1"], b"y2\n", "content of archive/y.log.1")


TASKS = [
    AgenticTask("tree-scaffold", "files",
                "Create the skeleton of a Python project named calc, with exactly these files: calc/README.md, "
                "calc/pyproject.toml, calc/src/calc/__init__.py, calc/src/calc/core.py and calc/tests/test_core.py. "
                "calc/README.md must start with the line `# calc`; calc/pyproject.toml must have a [project] table "
                "with name = \"calc\"; calc/src/calc/__init__.py must set __version__ = \"0.1.0\". The other files "
                "may be empty.", _check_scaffold, max_steps=10),
    AgenticTask("rename-photos", "files",
                "Rename every file photos/IMG_NNNN.JPG (NNNN: four digits) to photos/holiday-NNNN.jpg, keeping the "
                "number and using a lowercase .jpg extension. Leave every other file as it is.",
                _check_rename, files={**PHOTOS, **PHOTOS_OTHER}, max_steps=8),
    AgenticTask("find-large-files", "files",
                "Write large_files.txt listing every file under data/ (recursively) that is larger than 1000 bytes, "
                "one path per line relative to the working directory (like data/sub/x.log), sorted.",
                _check_large, files=SIZED, max_steps=8),
    AgenticTask("tar-backup", "files",
                "Create backup.tar.gz, a gzip-compressed tar archive holding every .txt file under notes/ "
                "(recursively, stored with paths like notes/sub/c.txt) and nothing else.",
                _check_tar, files=NOTES, max_steps=8),
    AgenticTask("replace-api-calls", "files",
                "Replace every occurrence of `fetch_v1(` with `fetch_v2(` in the .py files under src/ "
                "(recursively). Do not change anything else, and do not touch vendor/ or README.md.",
                _check_replace, files=API, max_steps=8),
    AgenticTask("split-csv", "data",
                "Split records.csv into files of at most 10 data rows each, keeping the row order: "
                "parts/part_1.csv, parts/part_2.csv, ... Each part must start with the header line of records.csv.",
                _check_split, files={"records.csv": RECORDS}, max_steps=8),
    AgenticTask("log-level-counts", "shell",
                "Each line of app.log is: date, time, level, component, message. Write counts.json, a JSON object "
                "giving the number of lines of each level, with exactly the keys DEBUG, INFO, WARNING and ERROR.",
                _check_levels, files={"app.log": APP_LOG}, max_steps=8),
    AgenticTask("top-ips", "shell",
                "access.log is a web server log (the client IP is the first field). Write top_ips.txt with the 3 "
                "IPs that made the most requests, most first, one per line as `IP COUNT`.",
                _check_top_ips, files={"access.log": ACCESS_LOG}, max_steps=8),
    AgenticTask("dedupe-emails", "shell",
                "emails.txt has one email address per line, with duplicates that differ only in letter case or "
                "surrounding spaces, and blank lines. Write unique_emails.txt: every address once, lowercased, "
                "without surrounding spaces, sorted alphabetically, no blank lines.",
                _check_emails, files={"emails.txt": EMAILS}, max_steps=8),
    AgenticTask("fix-shell-script", "shell",
                "`bash rotate.sh` should copy every .log file of the working directory to archive/NAME.1 (app.log "
                "-> archive/app.log.1), creating archive/ if needed, and then print exactly `rotated N files` with N "
                "the number of files copied. It is broken: fix rotate.sh.",
                _check_rotate, files={"rotate.sh": ROTATE, "app.log": "started\n", "db.log": "connected\n",
                                      "readme.txt": "logs live here\n"}, max_steps=10),
]
