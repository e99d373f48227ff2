"""Agentic data-wrangling tasks: aggregate a CSV into JSON, join two CSVs, filter JSON into CSV, word counts,
dates in mixed formats, a JSONL summary, lines of code, an INI edit."""

from __future__ import annotations

import configparser
import csv
import io
import json
import random
import re
from collections import Counter
from datetime import date

from cardforge.eval.agentic.task import AgenticTask, Fail, expect, expect_equal, load_json, text


def _rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


# --- sales-by-region ---
def _sales() -> str:
    rng = random.Random(3)
    rows = [f"2024-04-{d:02d},{rng.choice(['north', 'south', 'east', 'west'])},"
            f"{rng.choice(['widget', 'gadget', 'gizmo'])},{rng.randint(1, 20)},"
            f"{rng.choice(['2.50', '4.75', '9.99', '12.00'])}\n"
            for d in range(1, 19)]
    return "date,region,product,units,unit_price\n" + "".join(rows)


SALES = _sales()


def _check_sales(files: dict[str, bytes]) -> None:
    want: dict[str, float] = {}
    for r in _rows(SALES):
        want[r["region"]] = want.get(r["region"], 0.0) + int(r["units"]) * float(r["unit_price"])
    got = load_json(files, "totals.json")
    expect(isinstance(got, dict), "totals.json must be a JSON object")
    expect_equal(list(got), sorted(want), "keys of totals.json (sorted)")
    for k, v in want.items():
        expect(isinstance(got[k], (int, float)) and abs(got[k] - round(v, 2)) < 0.005,
               f"totals.json[{k!r}] = {got[k]!r}, expected {round(v, 2)}")


# --- word-frequency ---
ESSAY = """The river runs past the old mill, and the mill still turns when the river is high.
Children play by the river in summer; in winter the river freezes and the mill stops.
Nobody knows who built the mill, but everyone knows the river. The river was here first,
and the river will be here when the mill is gone. Don't ask the miller: the miller won't say.
"""


def _check_words(files: dict[str, bytes]) -> None:
    counts = Counter(re.findall(r"[a-z]+", ESSAY.lower()))
    want = [f"{w} {n}" for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    got = [" ".join(line.split()) for line in text(files, "top_words.txt").splitlines() if line.strip()]
    expect_equal(got, want, "lines of top_words.txt")


# --- json-to-csv ---
USERS = [{"name": "mia", "age": 34, "city": "Oslo"}, {"name": "ben", "age": 17, "city": "Rome"},
         {"name": "ana", "age": 18, "city": "Lima"}, {"name": "zoe", "age": 61, "city": "Kyiv"},
         {"name": "eli", "age": 9, "city": "Oslo"}, {"name": "kai", "age": 25, "city": "Pune"},
         {"name": "ida", "age": 40, "city": "Rome"}, {"name": "tom", "age": 16, "city": "Lima"}]


def _check_adults(files: dict[str, bytes]) -> None:
    want = [["name", "age"]] + [[u["name"], str(u["age"])] for u in sorted(USERS, key=lambda u: u["name"])
                                 if u["age"] >= 18]
    got = [row for row in csv.reader(io.StringIO(text(files, "adults.csv"))) if row]
    expect_equal(got, want, "rows of adults.csv")


# --- join-orders ---
CUSTOMERS = "id,name\n1,Acme\n2,Globex\n3,Initech\n4,Umbrella\n5,Hooli\n"
ORDERS = ("order_id,customer_id,amount\n101,2,120.50\n102,1,75.00\n103,2,30.25\n104,3,410.00\n105,5,99.99\n"
          "106,1,15.50\n107,2,8.00\n108,5,0.01\n109,1,60.00\n110,3,12.00\n")


def _check_report(files: dict[str, bytes]) -> None:
    names = {r["id"]: r["name"] for r in _rows(CUSTOMERS)}
    agg = {cid: [0, 0.0] for cid in names}
    for o in _rows(ORDERS):
        agg[o["customer_id"]][0] += 1
        agg[o["customer_id"]][1] += float(o["amount"])
    ranked = sorted(agg.items(), key=lambda kv: (-kv[1][1], names[kv[0]]))
    want = [["name", "orders", "total"]] + [[names[c], str(n), f"{t:.2f}"] for c, (n, t) in ranked]
    got = [row for row in csv.reader(io.StringIO(text(files, "report.csv"))) if row]
    expect_equal(got, want, "rows of report.csv")


# --- loc-report ---
PKG = {"pkg/__init__.py": "from .core import run\n",
       "pkg/core.py": "def run():\n    total = 0\n    for i in range(3):\n        total += i\n    return total\n",
       "pkg/sub/__init__.py": "",
       "pkg/sub/helpers.py": "import os\n\n\ndef here():\n    return os.getcwd()\n\n\n# end\n",
       "pkg/README.txt": "not python\nat all\n"}


def _check_loc(files: dict[str, bytes]) -> None:
    want = {p: c.count("\n") for p, c in PKG.items() if p.endswith(".py")}
    want["total"] = sum(want.values())
    expect_equal(load_json(files, "loc.json"), want, "loc.json")


# --- normalize-dates ---
EVENTS = """March 5, 2024 | launch party
2023-12-31 | year-end close
05/01/2024 | kickoff
2024-03-05 | press release
February 29, 2024 | leap day sale
14/02/2024 | valentine promo
2024-01-05 | second kickoff
"""
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def _parse_date(s: str) -> date:
    s = s.strip()
    if m := re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", s):
        return date(int(m[1]), int(m[2]), int(m[3]))
    if m := re.fullmatch(r"(\d{2})/(\d{2})/(\d{4})", s):
        return date(int(m[3]), int(m[2]), int(m[1]))
    m = re.fullmatch(r"([A-Z][a-z]+) (\d{1,2}), (\d{4})", s)
    return date(int(m[3]), _MONTHS.index(m[1]) + 1, int(m[2]))


def _check_dates(files: dict[str, bytes]) -> None:
    parsed = [(_parse_date(d), e.strip()) for d, e in (line.split("|") for line in EVENTS.splitlines())]
    want = [[d.isoformat(), e] for d, e in sorted(parsed, key=lambda x: x[0])]  # sorted() is stable
    got = [[part.strip() for part in line.split("|")] for line in text(files, "events_sorted.txt").splitlines()
           if line.strip()]
    expect_equal(got, want, "lines of events_sorted.txt (as DATE | EVENT)")


# --- jsonl-summary ---
def _events() -> str:
    rng = random.Random(11)
    out = []
    for _ in range(16):
        e = {"user": f"u{rng.randint(1, 6)}", "type": rng.choice(["view", "view", "click", "purchase"])}
        if e["type"] == "purchase":
            e["amount"] = round(rng.uniform(1, 50), 2)
        out.append(json.dumps(e) + "\n")
    return "".join(out)


EVENTS_JSONL = _events()


def _check_summary(files: dict[str, bytes]) -> None:
    evs = [json.loads(line) for line in EVENTS_JSONL.splitlines()]
    got = load_json(files, "summary.json")
    expect(isinstance(got, dict), "summary.json must be a JSON object")
    expect_equal(got.get("users"), len({e["user"] for e in evs}), "summary.json users")
    expect_equal(got.get("by_type"), dict(Counter(e["type"] for e in evs)), "summary.json by_type")
    revenue = round(sum(e.get("amount", 0) for e in evs if e["type"] == "purchase"), 2)
    expect(isinstance(got.get("revenue"), (int, float)) and abs(got["revenue"] - revenue) < 0.005,
           f"summary.json revenue = {got.get('revenue')!r}, expected {revenue}")


# --- ini-edit ---
SETTINGS = """[server]
host = 0.0.0.0
port = 8000
workers = 4

[database]
url = postgres://db.internal/app
pool_size = 10
"""


def _check_ini(files: dict[str, bytes]) -> None:
    cp = configparser.ConfigParser()
    try:
        cp.read_string(text(files, "settings.ini"))
    except configparser.Error as e:
        raise Fail(f"settings.ini does not parse ({e})") from None
    got = {s: dict(cp[s]) for s in cp.sections()}
    want = {"server": {"host": "0.0.0.0", "port": "8080", "workers": "4"},
            "database": {"url": "postgres://db.internal/app", "pool_size": "10"}, "logging": {"level": "debug"}}
    expect_equal(got, want, "settings.ini")


TASKS = [
    AgenticTask("sales-by-region", "data",
                "sales.csv lists sales (units and unit_price per row). Write totals.json: a JSON object mapping each "
                "region to its total revenue (sum of units * unit_price) as a number rounded to 2 decimals, with the "
                "keys in alphabetical order.", _check_sales, files={"sales.csv": SALES}, max_steps=8),
    AgenticTask("word-frequency", "data",
                "Write top_words.txt with the 5 most frequent words of essay.txt, one per line as `word count`. "
                "Words are the runs of letters a-z after lowercasing (so don't counts as don and t); order by count, "
                "highest first, and break ties alphabetically.", _check_words, files={"essay.txt": ESSAY}, max_steps=8),
    AgenticTask("json-to-csv", "data",
                "users.json holds a list of users. Write adults.csv with the header line `name,age` and then one "
                "line per user aged 18 or older, sorted by name.",
                _check_adults, files={"users.json": json.dumps(USERS, indent=1) + "\n"}, max_steps=8),
    AgenticTask("join-orders", "data",
                "Using customers.csv and orders.csv, write report.csv with the header `name,orders,total` and one "
                "row per customer (including customers without orders): the number of orders and the sum of their "
                "amounts with exactly 2 decimals. Sort by total, highest first, then by name.",
                _check_report, files={"customers.csv": CUSTOMERS, "orders.csv": ORDERS}, max_steps=10),
    AgenticTask("loc-report", "data",
                "Write loc.json: a JSON object mapping the path of every .py file under pkg/ (recursively, paths "
                "like pkg/sub/helpers.py) to its number of lines (as `wc -l` counts them), plus a key \"total\" "
                "with the sum.", _check_loc, files=PKG, max_steps=8),
    AgenticTask("normalize-dates", "data",
                "Each line of events.txt is `DATE | EVENT`, with the date written as 2024-03-05, as 05/03/2024 "
                "(day/month/year) or as March 5, 2024. Write events_sorted.txt with the same lines, every date "
                "rewritten as YYYY-MM-DD, sorted by date, oldest first (lines with the same date keep their order).",
                _check_dates, files={"events.txt": EVENTS}, max_steps=10),
    AgenticTask("jsonl-summary", "data",
                "events.jsonl has one JSON event a line (user, type, and amount for purchases). Write summary.json "
                "with three keys: \"users\" (the number of distinct users), \"by_type\" (an object counting the "
                "events of each type) and \"revenue\" (the sum of the purchase amounts, rounded to 2 decimals).",
                _check_summary, files={"events.jsonl": EVENTS_JSONL}, max_steps=8),
    AgenticTask("ini-edit", "data",
                "In settings.ini, set port to 8080 in the [server] section and add a [logging] section with "
                "level = debug. Keep every other setting as it is.", _check_ini, files={"settings.ini": SETTINGS},
                max_steps=8),
]
