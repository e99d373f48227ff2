"""The coding-100 problems: 10 problems, each defined ONCE, rendered for 10 languages (languages.py).

A problem is a description, a typed signature and hidden tests as data. Types are a small closed set
that every language can spell and print: int (fits in 32 bits), str (printable ASCII, no quote or
backslash, no newline, so every driver can print it as JSON), bool, list[int], list[str]. The tests
never reach the prompt: the model sees the description and its language's signature only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPES = ("int", "str", "bool", "list[int]", "list[str]")
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Param:
    name: str  # one lowercase word: the same spelling is idiomatic in every language
    type: str


@dataclass(frozen=True)
class Problem:
    id: str
    function: str  # snake_case; camelCase where the language wants it (languages.py)
    description: str  # what the function must do, in words, language-neutral
    params: tuple[Param, ...]
    returns: str
    tests: tuple[tuple[tuple[Any, ...], Any], ...]  # ((args...), expected)

    def __post_init__(self) -> None:
        for t in [p.type for p in self.params] + [self.returns]:
            if t not in TYPES:
                raise ValueError(f"{self.id}: type {t!r} is not one of {TYPES}")
        if len(self.tests) < 5:
            raise ValueError(f"{self.id}: needs at least 5 hidden tests, has {len(self.tests)}")
        for args, expected in self.tests:
            if len(args) != len(self.params):
                raise ValueError(f"{self.id}: test {args!r} has {len(args)} args, the signature {len(self.params)}")
            for value, t in zip(args + (expected,), [p.type for p in self.params] + [self.returns]):
                check_value(value, t, self.id)


def _safe_str(s: Any) -> bool:
    return isinstance(s, str) and all(32 <= ord(ch) < 127 for ch in s) and '"' not in s and "\\" not in s


def check_value(value: Any, t: str, where: str = "") -> None:
    ok = {
        "int": lambda v: type(v) is int and INT32[0] <= v <= INT32[1],
        "bool": lambda v: type(v) is bool,
        "str": _safe_str,
        "list[int]": lambda v: isinstance(v, list) and all(type(x) is int and INT32[0] <= x <= INT32[1] for x in v),
        # no empty element: bash passes a list as one line per element, where [""] and [] look alike
        "list[str]": lambda v: isinstance(v, list) and all(_safe_str(x) and x for x in v),
    }[t](value)
    if not ok:
        raise ValueError(f"{where}: {value!r} is not a valid {t} test value")


PROBLEMS: tuple[Problem, ...] = (
    Problem(
        "sum_evens", "sum_evens",
        "Return the sum of the even numbers in xs (negative even numbers count too); 0 when there are none.",
        (Param("xs", "list[int]"),), "int",
        (((([1, 2, 3, 4]),), 6), (([],), 0), (([-2, -3, 5],), -2), (([7, 9, 11],), 0), (([10, 20, 30, 1],), 60),
         (([0, -4, 4, 3],), 0))),
    Problem(
        "is_palindrome", "is_palindrome",
        "Return true if s reads the same forwards and backwards when only its letters and digits are kept and "
        "upper/lower case is ignored (the empty string is a palindrome).",
        (Param("s", "str"),), "bool",
        ((("A man, a plan, a canal: Panama",), True), (("race a car",), False), (("",), True),
         (("No lemon, no melon",), True), (("ab",), False), (("0P",), False),
         (("Was it a car or a cat I saw?",), True))),
    Problem(
        "fizzbuzz", "fizzbuzz",
        "Return the list of strings for the numbers 1..n in order: \"FizzBuzz\" for multiples of both 3 and 5, "
        "\"Fizz\" for other multiples of 3, \"Buzz\" for other multiples of 5, else the number in decimal. "
        "n = 0 gives an empty list.",
        (Param("n", "int"),), "list[str]",
        (((1,), ["1"]), ((3,), ["1", "2", "Fizz"]), ((5,), ["1", "2", "Fizz", "4", "Buzz"]), ((0,), []),
         ((15,), ["1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz", "11", "Fizz", "13", "14",
                  "FizzBuzz"]),
         ((16,), ["1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz", "11", "Fizz", "13", "14",
                  "FizzBuzz", "16"]))),
    Problem(
        "run_length", "run_length",
        "Run-length encode s: replace each maximal run of one repeated character by that character followed "
        "by the run's length in decimal, e.g. \"aaabccd\" -> \"a3b1c2d1\". The empty string encodes to \"\".",
        (Param("s", "str"),), "str",
        ((("aaabcc",), "a3b1c2"), (("",), ""), (("a",), "a1"), (("abab",), "a1b1a1b1"),
         (("zzzzzzzzzzzz",), "z12"), (("  xx",), " 2x2"))),
    Problem(
        "rotate_left", "rotate_left",
        "Return xs rotated left by k positions: the first k elements move to the end, in order. k >= 0 and "
        "may exceed the length (rotate by k modulo the length); an empty list stays empty.",
        (Param("xs", "list[int]"), Param("k", "int")), "list[int]",
        ((([1, 2, 3, 4, 5], 2), [3, 4, 5, 1, 2]), (([1, 2, 3], 0), [1, 2, 3]), (([1, 2, 3], 3), [1, 2, 3]),
         (([1, 2, 3], 7), [2, 3, 1]), (([], 4), []), (([9], 100), [9]))),
    Problem(
        "common_prefix", "common_prefix",
        "Return the longest string that every word in words starts with; \"\" when there is none or words is "
        "empty.",
        (Param("words", "list[str]"),), "str",
        (((["flower", "flow", "flight"],), "fl"), ((["dog", "racecar", "car"],), ""), (([],), ""),
         ((["same"],), "same"), ((["abc", "abcd", "ab"],), "ab"), ((["prefix", "prefix"],), "prefix"))),
    Problem(
        "balanced", "balanced",
        "Return true if the brackets (), [] and {} in s are balanced: every opening bracket is closed by the "
        "matching bracket in the right order. Other characters are ignored.",
        (Param("s", "str"),), "bool",
        ((("([]{})",), True), (("([)]",), False), (("",), True), (("((",), False), (("a(b)c[d]{e}",), True),
         (("}{",), False), (("{[()()]}",), True))),
    Problem(
        "primes_up_to", "primes_up_to",
        "Return every prime p with 2 <= p <= n, in increasing order (an empty list when there is none).",
        (Param("n", "int"),), "list[int]",
        (((10,), [2, 3, 5, 7]), ((1,), []), ((2,), [2]), ((0,), []), ((13,), [2, 3, 5, 7, 11, 13]),
         ((30,), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]))),
    Problem(
        "caesar", "caesar",
        "Shift every lowercase letter a-z of s by k places in the alphabet, wrapping around (k may be negative "
        "or larger than 26); every other character stays as it is.",
        (Param("s", "str"), Param("k", "int")), "str",
        ((("abc", 1), "bcd"), (("xyz", 3), "abc"), (("hello, world", -1), "gdkkn, vnqkc"), (("Abc", 27), "Acd"),
         (("", 5), ""), (("a-b", -27), "z-a"))),
    Problem(
        "has_pair_sum", "has_pair_sum",
        "Return true if two elements at different positions of xs add up to target.",
        (Param("xs", "list[int]"), Param("target", "int")), "bool",
        ((([1, 2, 3, 9], 8), False), (([1, 2, 4, 4], 8), True), (([], 0), False), (([5], 10), False),
         (([-3, 7, 1], 4), True), (([0, 0], 0), True))),
)

BY_ID = {p.id: p for p in PROBLEMS}
