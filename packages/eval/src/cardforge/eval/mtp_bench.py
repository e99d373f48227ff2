"""MTP speed bench: single-stream decode speed with speculation off and draft-mtp n-max = N.

For every (quant tier, n-max) a llama-server is started with one slot; each prompt type (coding,
reasoning) is run `repeats` times, greedy, and llama-server's own `timings` are read from the last
stream chunk: predicted_per_second (decode tok/s), draft_n, draft_n_accepted. Reported per tier and
prompt type: median tok/s, accept rate = sum(draft_n_accepted) / sum(draft_n), mean accept length, and
the speedup vs speculation off measured in the same run (ratios travel across machines; absolute tok/s
on a shared CPU does not, and is labelled as such).

Mean accept length = tokens emitted per verification step = 1 + accepted drafts / verification steps, the
number llama-server itself logs ("mean len"). `timings` has no step count, so it is read from the server's
Prometheus counters (/metrics, which cardforge's llama-server launch enables with --metrics):
llamacpp:spec_decode_num_drafts_total ("total speculative decoding verification steps") before and after
each request; the bench runs one request at a time on a one-slot server, so the difference is that request's.
Only when a server has no such counter is it estimated as 1 + n_max * accept_rate, which assumes every step
drafts n_max tokens: exact only for p-min = 0 (a p-min > 0 cuts drafts short, and the estimate is then too
high). Each row says which (`mean_accept_len_source`: "server" or "estimate"); the table marks estimates.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import statistics
from pathlib import Path
from typing import Any

import httpx2

from cardforge.core.io import atomic_write_bytes
from cardforge.agent.client import Sampling, complete, new_session

# llama-server's Prometheus counters (GET /metrics with --metrics): cumulative over the server's life
SPEC_COUNTERS = {"draft_steps": "llamacpp:spec_decode_num_drafts_total",
                 "draft_tokens": "llamacpp:spec_decode_num_draft_tokens_total",
                 "draft_accepted": "llamacpp:spec_decode_num_accepted_tokens_total"}

PROMPTS = {
    "coding": [
        "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
        "Write a Python function is_palindrome(s) that ignores case and non-letters, and two tests for it.",
    ],
    "reasoning": [
        "A train leaves at 9:40 and arrives at 13:05. How long is the trip? Explain step by step.",
        "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies? Reason it out.",
    ],
}


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition: {name: value}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and "{" not in parts[0]:
            with contextlib.suppress(ValueError):
                out[parts[0]] = float(parts[1])
    return out


async def spec_counters(session, base_url: str) -> dict[str, float] | None:
    """llama-server's cumulative speculative-decoding counters, or None (no /metrics or no such counters)."""
    try:
        r = await session.http.get(base_url.rstrip("/") + "/metrics", timeout=30)
        if r.status_code != 200:
            return None
        got = parse_prometheus(r.text)
    except (httpx2.HTTPError, asyncio.TimeoutError):
        return None
    return {k: got[name] for k, name in SPEC_COUNTERS.items()} if all(n in got for n in SPEC_COUNTERS.values()) \
        else None


async def _measure(base_url: str, prompts: list[str], repeats: int, sampling: Sampling, timeout_s: float,
                   on_done: Any = None) -> list[dict]:
    out = []
    async with new_session(1) as session:
        for rep in range(repeats):
            for prompt in prompts:
                before = await spec_counters(session, base_url)
                c = await complete(session, base_url, [{"role": "user", "content": prompt}], sampling,
                                   timeout_s=timeout_s, retries=1)
                after = await spec_counters(session, base_url) if before is not None else None
                t = c.timings or {}
                out.append({"repeat": rep, "error": c.error, "finish_reason": c.finish_reason,
                            "predicted_n": t.get("predicted_n"), "tok_s": t.get("predicted_per_second"),
                            "draft_n": int(t.get("draft_n", 0) or 0),
                            "draft_n_accepted": int(t.get("draft_n_accepted", 0) or 0),
                            # this request's verification steps (one slot, one request at a time)
                            "draft_steps": (int(after["draft_steps"] - before["draft_steps"])
                                            if before is not None and after is not None else None),
                            "wall_s": c.latency_s})
                if on_done is not None:
                    on_done()
    return out


def summarize(samples: list[dict], n_max: int) -> dict[str, Any]:
    ok = [s for s in samples if s["tok_s"]]
    drafts = sum(s["draft_n"] for s in ok)
    accepted = sum(s["draft_n_accepted"] for s in ok)
    rate = accepted / drafts if drafts else None
    steps = [s.get("draft_steps") for s in ok]
    n_steps = sum(steps) if ok and all(st is not None for st in steps) else None
    mean_len, source = None, None
    if rate is not None and n_max:
        if n_steps:  # what llama-server counts: 1 + accepted / verification steps
            mean_len, source = 1 + accepted / n_steps, "server"
        else:  # no step counter: assumes every step drafted n_max tokens (exact only for p-min = 0)
            mean_len, source = 1 + n_max * rate, "estimate"
    return {"runs": len(ok), "failed": len(samples) - len(ok),
            "tok_s_median": statistics.median(s["tok_s"] for s in ok) if ok else None,
            "tokens_median": statistics.median(s["predicted_n"] for s in ok) if ok else None,
            "draft_n": drafts, "draft_n_accepted": accepted, "draft_steps": n_steps, "accept_rate": rate,
            "mean_accept_len": mean_len, "mean_accept_len_source": source}


def bench(models: dict[str, Path], n_values: list[int], serve: dict, *, p_min: float, repeats: int,
          max_tokens: int, thinking: bool, timeout_s: float, log_dir: Path) -> list[dict]:
    """Rows {tier, prompt_type, n_max, ...summary, speedup}; speedup is vs n_max=0 of the same tier/type."""
    from cardforge.serve.launchers.llama_cpp import llama_server

    from cardforge.core.progress import Progress

    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0, thinking=thinking)
    rows = []
    per_server = 1 + repeats * sum(len(p) for p in PROMPTS.values())  # the warm-up + the measured requests
    bar = Progress(len(models) * len(n_values) * per_server, "mtp bench", "requests", every_s=5)
    bar.start(f"{len(models)} model(s) x n_max {list(n_values)}, one llama-server each")
    for tier, gguf in models.items():
        for n in n_values:
            opts = {**serve, "mtp": {**serve["mtp"], "enabled": n > 0, "n_max": max(n, 1), "p_min": p_min}}
            with llama_server(gguf, opts, extra_args=["--parallel", "1"],
                              log_path=log_dir / f"bench-{tier}-n{n}.log") as srv:
                step = lambda: bar.step(note=f"{tier} n_max={n}")  # noqa: E731
                asyncio.run(_measure(srv.base_url, PROMPTS["coding"][:1], 1, sampling, timeout_s, step))  # warm-up
                for ptype, prompts in PROMPTS.items():
                    samples = asyncio.run(_measure(srv.base_url, prompts, repeats, sampling, timeout_s, step))
                    rows.append({"tier": tier, "prompt_type": ptype, "n_max": n, **summarize(samples, n)})
    for r in rows:
        off = next((o for o in rows if o["tier"] == r["tier"] and o["prompt_type"] == r["prompt_type"]
                    and o["n_max"] == 0), None)
        r["speedup"] = (r["tok_s_median"] / off["tok_s_median"]
                        if off and off["tok_s_median"] and r["tok_s_median"] else None)
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict], device: str) -> str:
    lines = [f"Single-stream decode, greedy, median of repeats; tok/s is absolute on {device} (not comparable "
             "across machines); speedup = ratio to speculation off, measured side by side in this run. "
             "Accept rate = Σdraft_n_accepted / Σdraft_n; mean accept len = tokens per verification step = "
             "1 + accepted / verification steps, the steps counted by llama-server (/metrics "
             "spec_decode_num_drafts_total); a * marks an estimate 1 + n-max × accept rate (the server gave no "
             "step count), which assumes every step drafts n-max tokens: exact only for p-min = 0.", "",
             "| tier | prompts | n-max | tok/s (abs, this machine) | speedup | accept rate | mean accept len |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        est = "*" if r.get("mean_accept_len_source") == "estimate" else ""
        lines.append(f"| {r['tier']} | {r['prompt_type']} | {r['n_max'] or 'off'} | {_fmt(r['tok_s_median'], '.1f')} | "
                     f"{_fmt(r['speedup'], '.2f')}× | {_fmt(r['accept_rate'], '.3f')} | "
                     f"{_fmt(r['mean_accept_len'], '.2f')}{est} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({(r["tier"], r["prompt_type"]) for r in rows}):
        sel = sorted((r for r in rows if (r["tier"], r["prompt_type"]) == key), key=lambda r: r["n_max"])
        ax1.plot([r["n_max"] for r in sel], [r["speedup"] or 0 for r in sel], marker="o", label=" / ".join(key))
        spec = [r for r in sel if r["n_max"] and r["accept_rate"] is not None]
        ax2.plot([r["n_max"] for r in spec], [r["accept_rate"] for r in spec], marker="o", label=" / ".join(key))
    ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax1.set(xlabel="spec draft n-max (0 = off)", ylabel="speedup vs spec off", title="MTP single-stream speedup")
    ax2.set(xlabel="spec draft n-max", ylabel="draft accept rate", title="MTP draft accept rate", ylim=(0, 1))
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write(rows: list[dict], out_dir: Path) -> list[Path]:
    """mtp_bench.json / .md (the table, labelled with this machine) / .png in out_dir; returns the paths."""
    import platform

    from cardforge.core.io import atomic_write_json, atomic_write_text

    device = f"{platform.machine()} CPU ({platform.node()})"
    return [atomic_write_json(out_dir / "mtp_bench.json", rows),
            atomic_write_text(out_dir / "mtp_bench.md", table(rows, device)),
            plot(rows, out_dir / "mtp_bench.png")]
