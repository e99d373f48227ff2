"""Statistics for the card's tables: accuracy with a Wilson 95% CI, the paired distill-vs-base delta
(paired bootstrap CI, McNemar's exact p), the finish_reason table and the median generation length.

Paired because both models answer the same questions: the per-question difference removes question
difficulty from the variance, so a delta's CI is much tighter than two independent CIs suggest.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n (well-behaved at 0, n and small n, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(records: list[dict]) -> dict[str, Any]:
    n = len(records)
    k = sum(1 for r in records if r.get("correct"))
    lo, hi = wilson(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95_low": lo, "ci95_high": hi,
            "parse_fail": sum(1 for r in records if r.get("finish_reason") != "error" and r.get("parsed") is None)}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: discordant pairs b (only A right) vs c (only B right) ~ Binomial(b+c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(a: list[dict], b: list[dict], *, iters: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Delta accuracy(a) - accuracy(b) over the questions both answered (matched by id)."""
    bmap = {r["id"]: bool(r.get("correct")) for r in b}
    pairs = [(bool(r.get("correct")), bmap[r["id"]]) for r in a if r["id"] in bmap]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "delta": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "mcnemar_p": 1.0,
                "only_a": 0, "only_b": 0}
    d = np.array([int(x) - int(y) for x, y in pairs], dtype=float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(iters, n))].mean(axis=1)  # resample questions, keep pairs together
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    return {"n": n, "delta": float(d.mean()), "ci95_low": float(np.percentile(boots, 2.5)),
            "ci95_high": float(np.percentile(boots, 97.5)), "mcnemar_p": mcnemar_exact(only_a, only_b),
            "only_a": only_a, "only_b": only_b}


def sign_test(a: list[dict], b: list[dict], *, alpha: float = 0.05) -> dict[str, Any]:
    """The paired comparison as an exact sign test on the discordant pairs (= exact McNemar), with the
    Clopper-Pearson interval of P(A right | the two differ) and the one-sided p that A is better.
    A p below 0.001 needs at least 10 discordant pairs, all in A's favour."""
    bmap = {r["id"]: bool(r.get("correct")) for r in b}
    pairs = [(bool(r.get("correct")), bmap[r["id"]]) for r in a if r["id"] in bmap]
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    n = only_a + only_b
    one_sided = sum(math.comb(n, i) for i in range(only_a, n + 1)) / 2 ** n if n else 1.0
    lo, hi = clopper_pearson(only_a, n, alpha)
    return {"n": len(pairs), "discordant": n, "only_a": only_a, "only_b": only_b,
            "p_two_sided": mcnemar_exact(only_a, only_b), "p_one_sided": min(1.0, one_sided),
            "share_a_ci_low": lo, "share_a_ci_high": hi}


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial interval for k of n (bisection on the binomial tails; no scipy needed)."""
    if n == 0:
        return (0.0, 1.0)

    def tail_ge(p: float) -> float:  # P(X >= k)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def tail_le(p: float) -> float:  # P(X <= k)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(0, k + 1))

    def solve(f, target: float, increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (f(mid) < target) == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(tail_ge, alpha / 2, True)
    high = 1.0 if k == n else solve(tail_le, alpha / 2, False)
    return (low, high)


def finish_table(records: Iterable[dict]) -> dict[str, int]:
    out = {"stop": 0, "length": 0, "error": 0, "other": 0}
    for r in records:
        fr = r.get("finish_reason")
        out[fr if fr in out else "other"] += 1
    return out


def median_tokens(records: Iterable[dict]) -> float | None:
    toks = [r["completion_tokens"] for r in records if r.get("completion_tokens") is not None]
    return float(statistics.median(toks)) if toks else None


def judge_summary(records: list[dict]) -> dict[str, Any]:
    """An LLM judge's verdicts beside the rule-based `correct` (records with `judge_correct` true/false)."""
    judged = [r for r in records if r.get("judge_correct") is not None]
    k = sum(1 for r in judged if r["judge_correct"])
    lo, hi = wilson(k, len(judged))
    return {"judge_n": len(judged), "judge_correct": k, "judge_accuracy": k / len(judged) if judged else 0.0,
            "judge_ci95_low": lo, "judge_ci95_high": hi,
            "judge_agree": sum(1 for r in judged if bool(r["judge_correct"]) == bool(r.get("correct")))}


def summarize(records: list[dict], *, by_group: bool = True) -> dict[str, Any]:
    """Accuracy, finish table, median length; plus `groups` (the same per record `group`, e.g. a BFCL set)
    and the judge's numbers when records carry them."""
    out = {**accuracy(records), "finish": finish_table(records), "median_completion_tokens": median_tokens(records)}
    probed = [r for r in records if r.get("invented_observation") is not None]
    if probed:  # the proof suite's probe: how often the model wrote its own <tool_response>
        k = sum(1 for r in probed if r["invented_observation"])
        lo, hi = wilson(k, len(probed))
        out.update({"invented_n": len(probed), "invented": k, "invented_rate": k / len(probed),
                    "invented_ci95_low": lo, "invented_ci95_high": hi})
    if any(r.get("judge_correct") is not None for r in records):
        out.update(judge_summary(records))
    groups = sorted({r["group"] for r in records if r.get("group")}) if by_group else []
    if groups:
        out["groups"] = {g: summarize([r for r in records if r.get("group") == g], by_group=False) for g in groups}
    return out
