"""Agentic coding tasks: fix a crashing script, implement a function to a docstring, fix code until its
tests pass, generate a file by program. Checked by running hidden inputs and tests in the sandbox."""

from __future__ import annotations

from cardforge.eval.agentic.task import AgenticTask, expect, expect_equal, nonblank_lines, sandboxed, text

# --- fix-mean-script ---
MEAN = """import sys


def mean(values):
    return sum(values) / len(value)


def main(path):
    numbers = [float(x) for x in open(path).read().split()]
    print(f"{mean(numbers):.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
"""


def _check_mean(files: dict[str, bytes]) -> None:
    fresh = {"mean.py": text(files, "mean.py"), "a.txt": "1 2\n3 4\n", "b.txt": "", "c.txt": "2.5\n-1\n\n10\n"}
    r = sandboxed(fresh, "for f in a b c; do python3 mean.py $f.txt || echo FAILED; done")
    expect_equal(r.stdout.split(), ["2.50", "0.00", "3.83"], "python3 mean.py on three hidden files")


# --- implement-slugify ---
SLUGIFY = '''def slugify(text: str) -> str:
    """Return a URL slug of `text`: lowercase, only the ASCII letters a-z and digits 0-9 are kept, every run
    of other characters becomes a single "-", and the slug neither starts nor ends with "-".

    >>> slugify("Hello, World!")
    'hello-world'
    """
    raise NotImplementedError
'''
SLUG_CASES = {"Hello, World!": "hello-world", "  Multiple   spaces  ": "multiple-spaces",
              "C++ & Python 3.12": "c-python-3-12", "already-a-slug": "already-a-slug", "---": "",
              "snake_case_Name": "snake-case-name", "2024: Year in Review": "2024-year-in-review"}


def _check_slugify(files: dict[str, bytes]) -> None:
    # judged by a process the model's module cannot read or fake (core.humaneval_judge): before, printing
    # seven "ok" lines at import and exiting passed
    from cardforge.core.humaneval_judge import judge

    test = (f"def check(candidate):\n    for arg, want in {SLUG_CASES!r}.items():\n        got = candidate(arg)\n"
            "        assert got == want, f'slugify({arg!r}) = {got!r}, expected {want!r}'\n")
    passed, detail, _ = judge(text(files, "text_utils.py"), "slugify", test)
    expect(passed, f"hidden tests: {detail}")


# --- fix-failing-tests ---
INVENTORY = """class Inventory:
    def __init__(self):
        self.items = {}  # name -> (quantity, unit price)

    def add(self, name, qty, price):
        if name in self.items:
            old_qty, _ = self.items[name]
            self.items[name] = (qty, price)
        else:
            self.items[name] = (qty, price)

    def remove(self, name, qty):
        have, price = self.items[name]
        if qty > have:
            raise ValueError(f"only {have} {name} left")
        self.items[name] = (have - qty, price)

    def total_value(self):
        return sum(qty * price for qty, price in self.items.values())
"""
INVENTORY_TESTS = """import unittest

from inventory import Inventory


class InventoryTest(unittest.TestCase):
    def test_add_accumulates(self):
        inv = Inventory()
        inv.add("apple", 3, 0.5)
        inv.add("apple", 2, 0.5)
        self.assertEqual(inv.items["apple"], (5, 0.5))

    def test_remove_all_deletes_the_item(self):
        inv = Inventory()
        inv.add("pear", 2, 1.0)
        inv.remove("pear", 2)
        self.assertNotIn("pear", inv.items)

    def test_total_value(self):
        inv = Inventory()
        inv.add("apple", 4, 0.5)
        inv.add("fig", 1, 3.0)
        self.assertAlmostEqual(inv.total_value(), 5.0)

    def test_remove_too_many(self):
        inv = Inventory()
        inv.add("kiwi", 1, 2.0)
        with self.assertRaises(ValueError):
            inv.remove("kiwi", 5)


if __name__ == "__main__":
    unittest.main()
"""
HIDDEN_INVENTORY_TESTS = """import unittest

from inventory import Inventory


class Hidden(unittest.TestCase):
    def test_add_then_remove_some(self):
        inv = Inventory()
        inv.add("nut", 10, 0.1)
        inv.add("nut", 5, 0.1)
        inv.remove("nut", 12)
        self.assertEqual(inv.items["nut"][0], 3)
        self.assertAlmostEqual(inv.total_value(), 0.3)
"""


def _check_inventory(files: dict[str, bytes]) -> None:
    # the seed's tests, not the workspace's: editing the tests cannot make them pass. They run in a judge
    # process the model's module cannot read or fake (core.humaneval_judge, unittest mode: the module's
    # objects are proxies served by another process); before, os._exit(0) at import passed
    from cardforge.core.humaneval_judge import judge

    passed, detail, _ = judge(text(files, "inventory.py"), "*", "", unittest={
        "module": "inventory", "tests": {"test_inventory": INVENTORY_TESTS, "test_hidden": HIDDEN_INVENTORY_TESTS},
        "count": 5})
    expect(passed, f"tests fail: {detail[:200]}")


# --- primes ---
def _check_primes(files: dict[str, bytes]) -> None:
    primes = [n for n in range(2, 200) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
    expect_equal(nonblank_lines(files, "primes.txt"), [str(p) for p in primes] + [f"count: {len(primes)}"],
                 "lines of primes.txt")


TASKS = [
    AgenticTask("fix-mean-script", "python",
                "`python3 mean.py numbers.txt` should print the mean of the whitespace-separated numbers in the file "
                "with two decimals, but it crashes. Fix mean.py. For a file without numbers it must print 0.00.",
                _check_mean, files={"mean.py": MEAN, "numbers.txt": "3\n4\n5\n\n8\n"}, max_steps=8),
    AgenticTask("implement-slugify", "python",
                "Implement slugify in text_utils.py as its docstring specifies.",
                _check_slugify, files={"text_utils.py": SLUGIFY}, max_steps=8),
    AgenticTask("fix-failing-tests", "python",
                "The tests in test_inventory.py fail. Fix inventory.py (do not change the tests) so that "
                "`python3 -m unittest test_inventory` passes.", _check_inventory,
                files={"inventory.py": INVENTORY, "test_inventory.py": INVENTORY_TESTS}, max_steps=10),
    AgenticTask("primes-file", "python",
                "Write primes.txt with every prime number below 200, one per line in increasing order, followed by "
                "a last line `count: N` where N is how many primes there are.", _check_primes, max_steps=6),
]
