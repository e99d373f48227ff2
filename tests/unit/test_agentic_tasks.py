"""Every agentic task: its checker rejects the untouched seed workspace and accepts the workspace that a
reference ("oracle") action sequence leaves, the actions run for real through the data engine's tools in
the sandbox. The oracles are also what the scripted server plays in tests/integration/test_agentic_runner.py."""

from __future__ import annotations

import pytest

from cardforge.core.chat import ToolCall
from cardforge.agent.tools import TOOLS, Workspace, execute
from cardforge.eval.agentic import BY_ID, TASKS, run_check
from cardforge.eval.agentic.runner import data_task, task_hash


def sh(command: str) -> ToolCall:
    return ToolCall("shell", {"command": command})


def py(code: str) -> ToolCall:
    return ToolCall("python", {"code": code})


def write(path: str, content: str) -> ToolCall:
    return ToolCall("write_file", {"path": path, "content": content})


def read(path: str) -> ToolCall:
    return ToolCall("read_file", {"path": path})


ORACLES: dict[str, list[ToolCall]] = {
    "tree-scaffold": [
        sh("mkdir -p calc/src/calc calc/tests && touch calc/src/calc/core.py calc/tests/test_core.py"),
        write("calc/README.md", "# calc\n\nA calculator.\n"),
        write("calc/pyproject.toml", '[project]\nname = "calc"\nversion = "0.1.0"\n'),
        write("calc/src/calc/__init__.py", '__version__ = "0.1.0"\n'),
    ],
    "rename-photos": [
        sh('cd photos && for f in IMG_*.JPG; do n=${f#IMG_}; mv "$f" "holiday-${n%.JPG}.jpg"; done && ls'),
    ],
    "find-large-files": [sh("find data -type f -size +1000c | sort > large_files.txt && cat large_files.txt")],
    "tar-backup": [sh("find notes -name '*.txt' | sort | tar czf backup.tar.gz -T - && tar tzf backup.tar.gz")],
    "replace-api-calls": [sh("grep -rl 'fetch_v1(' src | xargs sed -i 's/fetch_v1(/fetch_v2(/g' && grep -rn fetch_ src")],
    "split-csv": [py("import os\nrows = open('records.csv').read().splitlines()\nos.makedirs('parts', exist_ok=True)\n"
                     "for k in range(0, len(rows) - 1, 10):\n"
                     "    open(f'parts/part_{k // 10 + 1}.csv', 'w').write('\\n'.join([rows[0]] + rows[1 + k:11 + k]) + '\\n')\n")],
    "log-level-counts": [read("app.log"),
                         py("import json, collections\nc = collections.Counter(l.split()[2] for l in open('app.log'))\n"
                            "json.dump({k: c[k] for k in ['DEBUG', 'INFO', 'WARNING', 'ERROR']}, open('counts.json', 'w'))\n")],
    "top-ips": [sh("awk '{print $1}' access.log | sort | uniq -c | sort -rn | head -3 | awk '{print $2, $1}' > top_ips.txt")],
    "dedupe-emails": [sh("sed 's/^[[:space:]]*//;s/[[:space:]]*$//' emails.txt | tr A-Z a-z | grep -v '^$' | sort -u "
                         "> unique_emails.txt")],
    "fix-shell-script": [
        sh("bash rotate.sh"),
        write("rotate.sh", '#!/bin/bash\nmkdir -p archive\ncount=0\nfor f in *.log; do\n    cp "$f" "archive/$f.1"\n'
                           '    count=$((count + 1))\ndone\necho "rotated $count files"\n'),
        sh("bash rotate.sh && ls archive"),
    ],
    "sales-by-region": [py("import csv, json\nt = {}\nfor r in csv.DictReader(open('sales.csv')):\n"
                           "    t[r['region']] = t.get(r['region'], 0) + int(r['units']) * float(r['unit_price'])\n"
                           "json.dump({k: round(t[k], 2) for k in sorted(t)}, open('totals.json', 'w'), indent=1)\n")],
    "word-frequency": [py("import re, collections\nc = collections.Counter(re.findall('[a-z]+', open('essay.txt').read().lower()))\n"
                          "top = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:5]\n"
                          "open('top_words.txt', 'w').write(''.join(f'{w} {n}\\n' for w, n in top))\n")],
    "json-to-csv": [py("import json\nus = sorted((u for u in json.load(open('users.json')) if u['age'] >= 18), "
                       "key=lambda u: u['name'])\nopen('adults.csv', 'w').write('name,age\\n' + "
                       "''.join(f\"{u['name']},{u['age']}\\n\" for u in us))\n")],
    "join-orders": [py("import csv\nnames = {r['id']: r['name'] for r in csv.DictReader(open('customers.csv'))}\n"
                       "agg = {i: [0, 0.0] for i in names}\nfor o in csv.DictReader(open('orders.csv')):\n"
                       "    agg[o['customer_id']][0] += 1\n    agg[o['customer_id']][1] += float(o['amount'])\n"
                       "rows = sorted(agg.items(), key=lambda kv: (-kv[1][1], names[kv[0]]))\n"
                       "with open('report.csv', 'w') as f:\n    f.write('name,orders,total\\n')\n"
                       "    for i, (n, t) in rows:\n        f.write(f'{names[i]},{n},{t:.2f}\\n')\n")],
    "loc-report": [py("import json, pathlib\nloc = {str(p): p.read_text().count('\\n') for p in sorted(pathlib.Path('pkg').rglob('*.py'))}\n"
                      "loc['total'] = sum(loc.values())\njson.dump(loc, open('loc.json', 'w'))\n")],
    "normalize-dates": [py("import datetime\nout = []\nfor line in open('events.txt'):\n"
                           "    d, e = [x.strip() for x in line.split('|')]\n"
                           "    for fmt in ('%Y-%m-%d', '%d/%m/%Y', '%B %d, %Y'):\n"
                           "        try:\n            d = datetime.datetime.strptime(d, fmt).date(); break\n"
                           "        except ValueError:\n            pass\n    out.append((d, e))\n"
                           "out.sort(key=lambda x: x[0])\n"
                           "open('events_sorted.txt', 'w').write(''.join(f'{d.isoformat()} | {e}\\n' for d, e in out))\n")],
    "jsonl-summary": [py("import json, collections\nev = [json.loads(l) for l in open('events.jsonl')]\n"
                         "json.dump({'users': len({e['user'] for e in ev}), "
                         "'by_type': dict(collections.Counter(e['type'] for e in ev)), "
                         "'revenue': round(sum(e.get('amount', 0) for e in ev if e['type'] == 'purchase'), 2)}, "
                         "open('summary.json', 'w'))\n")],
    "ini-edit": [sh("sed -i 's/^port = 8000$/port = 8080/' settings.ini && printf '\\n[logging]\\nlevel = debug\\n' "
                    ">> settings.ini && cat settings.ini")],
    "fix-mean-script": [
        sh("python3 mean.py numbers.txt"),
        write("mean.py", "import sys\n\n\ndef mean(values):\n    return sum(values) / len(values) if values else 0.0\n\n\n"
                         "def main(path):\n    numbers = [float(x) for x in open(path).read().split()]\n"
                         "    print(f\"{mean(numbers):.2f}\")\n\n\nif __name__ == \"__main__\":\n    main(sys.argv[1])\n"),
        sh("python3 mean.py numbers.txt"),
    ],
    "implement-slugify": [write("text_utils.py", "import re\n\n\ndef slugify(text: str) -> str:\n"
                                                 "    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')\n")],
    "fix-failing-tests": [
        sh("python3 -m unittest test_inventory 2>&1 | tail -3"),
        py("s = open('inventory.py').read()\n"
           "s = s.replace('self.items[name] = (qty, price)\\n        else', 'self.items[name] = (old_qty + qty, price)\\n        else')\n"
           "s = s.replace('        self.items[name] = (have - qty, price)\\n', "
           "'        if qty == have:\\n            del self.items[name]\\n        else:\\n            self.items[name] = (have - qty, price)\\n')\n"
           "open('inventory.py', 'w').write(s)\n"),
        sh("python3 -m unittest test_inventory"),
    ],
    "primes-file": [py("ps = [n for n in range(2, 200) if all(n % d for d in range(2, n))]\n"
                       "open('primes.txt', 'w').write(''.join(f'{p}\\n' for p in ps) + f'count: {len(ps)}\\n')\n")],
}


def seed(task) -> Workspace:
    return Workspace({p: c.encode() for p, c in task.files.items()})


def play(task, calls: list[ToolCall]) -> Workspace:
    ws, obs = seed(task), ""
    for call in calls:
        assert call.name in task.tools, f"{task.id}: the oracle uses {call.name}, not offered to the model"
        obs = execute(call, ws, timeout_s=20)
    # the last action succeeds (earlier ones may reproduce the bug first, as an agent would)
    assert calls[-1].name in ("read_file", "write_file") or "[exit code 0]" in obs, obs
    return ws


def test_the_suite_has_twenty_plus_distinct_tasks_over_four_kinds():
    assert len(TASKS) >= 20 and len(BY_ID) == len(TASKS)
    assert {t.category for t in TASKS} == {"files", "shell", "python", "data"}
    assert set(ORACLES) == set(BY_ID)  # every task has its oracle here
    for t in TASKS:
        assert t.prompt and 1 <= t.max_steps <= 20 and set(t.tools) <= set(TOOLS)
        assert [s["function"]["name"] for s in data_task(t).tools][-1] == "finish"


@pytest.mark.parametrize("task_id", sorted(ORACLES))
def test_checker_rejects_the_seed_and_accepts_the_oracle(task_id):
    task = BY_ID[task_id]
    assert run_check(task, seed(task).files) is not None, f"{task_id}: the untouched seed passes"
    ws = play(task, ORACLES[task_id])
    assert run_check(task, ws.files) is None, run_check(task, ws.files)


def test_checkers_compare_against_the_seed_constants_not_the_edited_inputs():
    # editing the tests or the data to fit a wrong answer does not pass
    inv = BY_ID["fix-failing-tests"]
    ws = play(inv, [write("test_inventory.py", "import unittest\n")])
    assert "tests fail" in run_check(inv, ws.files)
    sales = BY_ID["sales-by-region"]
    ws = play(sales, [write("sales.csv", "date,region,product,units,unit_price\n"),
                      write("totals.json", "{}")])
    assert "keys of totals.json" in run_check(sales, ws.files)


def test_near_misses_fail_with_a_reason():
    rename = BY_ID["rename-photos"]  # the png must not be renamed too
    ws = play(rename, [sh("cd photos && for f in IMG_*; do n=${f#IMG_}; mv \"$f\" \"holiday-${n%.*}.jpg\"; done")])
    assert "files under photos/" in run_check(rename, ws.files)
    large = BY_ID["find-large-files"]  # >= instead of > picks the 1000-byte file
    ws = play(large, [sh("find data -type f -size +999c | sort > large_files.txt")])
    assert "lines of large_files.txt" in run_check(large, ws.files)
    slug = BY_ID["implement-slugify"]
    ws = play(slug, [write("text_utils.py", "def slugify(text):\n    return text.lower().replace(' ', '-')\n")])
    assert "hidden tests" in run_check(slug, ws.files)
    crash = BY_ID["loc-report"]
    ws = play(crash, [write("loc.json", "{not json")])
    assert "not valid JSON" in run_check(crash, ws.files)


def test_task_hash_changes_with_what_the_model_sees():
    t = BY_ID["primes-file"]
    assert task_hash(t, 6) == task_hash(t, 6) != task_hash(t, 7)
    assert task_hash(t, 6) != task_hash(BY_ID["tar-backup"], 6)
