"""The start check for MTP speculation: one streamed probe request, read `timings.draft_n` and
`timings.draft_n_accepted` (llama-server puts them only in the last chunk before `data: [DONE]`), and a
verdict that the serve stage logs and tags.

A model that should carry an MTP head but drafts nothing (the head was lost in merge/quant, or the flag
is off) or whose drafts are never accepted (a head that does not match the trunk) serves correctly but
without the speed-up the card claims, so it is flagged rather than failed.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Iterable

log = logging.getLogger("cardforge.serve")

PROBE_PROMPT = "Count from one to twenty in words, separated by commas."


@dataclass
class SpecProbe:
    draft_n: int
    draft_n_accepted: int
    predicted_n: int
    predicted_per_second: float | None
    wall_s: float

    @property
    def accept_rate(self) -> float:
        return self.draft_n_accepted / self.draft_n if self.draft_n else 0.0

    def metrics(self) -> dict[str, float]:
        out = {f"spec.{k}": float(v) for k, v in asdict(self).items() if v is not None}
        out["spec.accept_rate"] = self.accept_rate
        return out


@dataclass
class SpecVerdict:
    status: str  # ok | no_drafts | low_acceptance | disabled | not_expected
    message: str

    @property
    def warn(self) -> bool:
        return self.status in ("no_drafts", "low_acceptance")


def stream_timings(lines: Iterable[bytes | str]) -> dict | None:
    """`timings` from an OpenAI-style SSE stream: the last chunk that carries it (the one before [DONE])."""
    timings = None
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "timings" in chunk:
            timings = chunk["timings"]
    return timings


def probe(base_url: str, *, max_tokens: int = 32, timeout_s: float = 300.0, model: str | None = None) -> SpecProbe:
    """One greedy streamed chat completion; raises if the server gives no timings (not llama-server)."""
    body = {"messages": [{"role": "user", "content": PROBE_PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        timings = stream_timings(resp)
    if timings is None:
        raise RuntimeError(f"{base_url}: the stream carried no `timings` (only llama-server reports drafts)")
    return SpecProbe(
        draft_n=int(timings.get("draft_n", 0)), draft_n_accepted=int(timings.get("draft_n_accepted", 0)),
        predicted_n=int(timings.get("predicted_n", 0)),
        predicted_per_second=timings.get("predicted_per_second"), wall_s=time.monotonic() - t0)


def assess(result: SpecProbe | None, *, has_mtp: bool, mtp_enabled: bool, min_accept_rate: float) -> SpecVerdict:
    if not has_mtp:
        return SpecVerdict("not_expected", "model.has_mtp=false: no MTP head expected, nothing to check")
    if not mtp_enabled:
        return SpecVerdict("disabled", "the model carries an MTP head but serve.mtp.enabled=false")
    assert result is not None
    if result.draft_n == 0:
        return SpecVerdict("no_drafts", (
            f"the model should carry an MTP head but drafted 0 tokens in {result.predicted_n}: was the head "
            "lost in merge/quant (GGUF key <arch>.nextn_predict_layers) or is draft-mtp off?"))
    if result.accept_rate < min_accept_rate:
        return SpecVerdict("low_acceptance", (
            f"MTP drafts are almost never accepted: {result.draft_n_accepted}/{result.draft_n} = "
            f"{result.accept_rate:.3f} < serve.mtp.min_accept_rate={min_accept_rate} (a random or mismatched "
            "head; expected on the tiny random-init model)"))
    return SpecVerdict("ok", f"MTP accept rate {result.accept_rate:.3f} ({result.draft_n_accepted}/{result.draft_n})")
