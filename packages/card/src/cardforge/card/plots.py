"""The card's figures: the stages' own plots copied from their runs, and the accuracy-delta chart drawn here.

Each figure's numbers are the same MLflow values the tables print, so a plot never disagrees with its table.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from cardforge.card.collect import Collected, suite_stats
from cardforge.core.io import atomic_write_bytes

# file next to the card -> (stage, artifact path in that stage's run)
COPIED = {"loss_curve.png": ("train", "loss_curve.png"), "mtp_bench.png": ("eval", "eval/mtp_bench.png")}
DELTA_PLOT = "accuracy_delta.png"


def accuracy_delta_plot(suites: dict[str, dict[str, dict[str, float]]], path: Path) -> Path | None:
    """Paired delta per benchmark with its bootstrap 95% CI as error bars (None when no delta was measured)."""
    rows = [(s, v["delta"]) for s, v in suites.items() if "delta" in v and "delta" in v["delta"]]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    names = [s for s, _ in rows]
    mid = [100 * d["delta"] for _, d in rows]
    lo = [100 * (d["delta"] - d.get("ci95_low", d["delta"])) for _, d in rows]
    hi = [100 * (d.get("ci95_high", d["delta"]) - d["delta"]) for _, d in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows) + 2), 3.5), dpi=100)
    ax.bar(names, mid, yerr=[lo, hi], capsize=6, color=["tab:green" if m >= 0 else "tab:red" for m in mid])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("Δ accuracy, pp (distill − base)")
    ax.set_title("paired delta, bootstrap 95% CI")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def make_plots(c: Collected, card_dir: Path) -> dict[str, Path]:
    """{file name: path} of the figures written next to the card."""
    out: dict[str, Path] = {}
    for name, (stage, artifact) in COPIED.items():
        run = c.get(stage)
        if run and artifact in run.files:
            out[name] = Path(shutil.copyfile(run.files[artifact], card_dir / name))
    if (ev := c.get("eval")) is not None and (p := accuracy_delta_plot(suite_stats(ev), card_dir / DELTA_PLOT)):
        out[DELTA_PLOT] = p
    return out
