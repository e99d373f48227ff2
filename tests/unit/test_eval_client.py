"""The one client (teacher + eval) against the fault-injecting fake server over real HTTP on 127.0.0.1: the
idle clock apart from the total cap, Retry-After, backoff with jitter, the concurrency cap, token counts."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from cardforge.agent import client
from cardforge.agent.client import Price, Sampling, backoff_s, complete, new_session, retry_after_s
from support.fake_server import FakeServer


def ask(srv, text, *, timeout_s=10.0, idle_s=5.0, retries=0, concurrency=1):
    async def go():
        async with new_session(concurrency, idle_timeout_s=idle_s) as s:
            return await complete(s, srv.base_url, [{"role": "user", "content": text}], Sampling(max_tokens=16),
                                  timeout_s=timeout_s, retries=retries)
    return asyncio.run(go())


def test_slow_but_healthy_stream_outlives_the_idle_timeout():
    """8 chunks 0.25 s apart: 2 s of streaming, more than 3x the 0.6 s idle limit, never silent that long."""
    with FakeServer() as srv:
        t0 = time.monotonic()
        c = ask(srv, "QID=t FAULT=trickle:8:0.25", idle_s=0.6, timeout_s=30)
        took = time.monotonic() - t0
    assert c.finish_reason == "stop" and c.error is None and c.attempts == 1, c.errors
    assert took > 3 * 0.6
    assert c.reasoning.startswith("step 0. step 1.") and c.content.endswith("Answer: " + c.content[-1])
    assert c.reasoning_tokens == 9  # 8 trickled + 1 thought chunk (no usage detail: streamed chunks)
    assert (c.prompt_tokens, c.completion_tokens) == (2, 12)  # the fake counts words of the prompt


def test_silence_trips_the_idle_timeout_not_the_total_cap():
    with FakeServer() as srv:
        t0 = time.monotonic()
        c = ask(srv, "QID=s FAULT=stall:3", idle_s=0.5, timeout_s=60)
        took = time.monotonic() - t0
    assert c.finish_reason == "error" and c.error.startswith("idle timeout: no byte for 0.5 s"), c.errors
    assert took < 2.5  # cut at ~0.5 s of silence, not at the 60 s cap nor the 3 s stall


def test_total_cap_cuts_a_healthy_stream_that_runs_too_long():
    with FakeServer() as srv:
        c = ask(srv, "QID=c FAULT=trickle:20:0.1", idle_s=1.0, timeout_s=0.8)
    assert c.finish_reason == "error" and c.error == "total timeout: the request ran past 0.8 s", c.errors


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(status):
    with FakeServer() as srv:
        c = ask(srv, f"QID=r FAULT=http{status}_once:1.2", retries=2)
        times = srv.times["r"]
    assert c.finish_reason == "stop" and c.attempts == 2
    assert c.errors == [f"HTTP {status}: " + '{"error": {"message": "injected overload"}}']
    assert len(times) == 2 and times[1] - times[0] >= 1.2  # the backoff alone would wait 0.25-0.75 s


def test_client_errors_are_not_retried():
    async def go(url):
        async with new_session(1) as s:
            return await complete(s, url, [{"role": "user", "content": "x"}], Sampling(), timeout_s=5, retries=3)

    with FakeServer() as srv:  # no such route on the fake: 404, the same on every retry
        c = asyncio.run(go(srv.base_url + "/nope"))
    assert c.finish_reason == "error" and c.attempts == 1 and c.error.startswith("HTTP 404")


def test_concurrency_is_capped():
    async def go(url):
        async with new_session(2) as s:
            return await asyncio.gather(*(complete(s, url, [{"role": "user", "content": f"QID=k{i} FAULT=slow:0.3"}],
                                                   Sampling(), timeout_s=10, retries=0) for i in range(6)))

    with FakeServer() as srv:
        cs = asyncio.run(go(srv.base_url))
        peak = srv.peak_in_flight
    assert [c.finish_reason for c in cs] == ["stop"] * 6 and peak == 2


def test_retry_after_header_forms():
    now = 1_000_000.0
    assert retry_after_s("7") == 7.0 and retry_after_s(" 0.5 ") == 0.5 and retry_after_s("-3") == 0.0
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("") is None


def test_backoff_is_exponential_with_jitter():
    rng = random.Random(1)
    for attempt in range(9):
        base = client.RETRY_BACKOFF_S * 2 ** attempt
        got = [backoff_s(attempt, rng) for _ in range(200)]
        assert all(0.5 * base <= g <= 1.5 * base for g in got)
        assert min(got) < 0.6 * base and max(got) > 1.4 * base  # the whole jitter range is used


def test_backoff_jitter_spreads_retries():
    rng = random.Random(0)
    assert len({round(backoff_s(3, rng), 6) for _ in range(20)}) == 20  # no thundering herd in lockstep


def test_price_counts_money_per_million_tokens():
    p = Price(input_per_m=0.5, output_per_m=2.0)
    assert p.cost(2_000_000, 1_000_000) == pytest.approx(3.0)
    assert p.cost(None, None) == 0.0 and Price().cost(10**9, 10**9) == 0.0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e6, allow_nan=False), st.integers(0, 10**6))
def test_retry_after_property(seconds, now_offset):
    now = 1_700_000_000.0 + now_offset
    assert retry_after_s(repr(seconds)) == seconds
    date = email.utils.formatdate(now + int(seconds), usegmt=True)  # HTTP dates have whole seconds
    assert retry_after_s(date, now=now) == pytest.approx(int(seconds), abs=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.none() | st.integers(0, 10**6), st.none() | st.integers(0, 10**6),
                          st.none() | st.integers(0, 10**5)), max_size=20),
       st.floats(0, 100), st.floats(0, 100))
def test_spend_ledger_survives_a_reload(tmp_path_factory, answers, pin, pout):
    """The teacher's spend: what add() counted equals what a later run loads from the ledger."""
    from cardforge.agent.teacher import Spend
    from cardforge.agent.client import Completion

    ledger = tmp_path_factory.mktemp("spend") / "spend.jsonl"
    price, spend = Price(pin, pout), Spend.load(ledger)
    for p, c, r in answers:
        spend.add(Completion(prompt_tokens=p, completion_tokens=c, reasoning_tokens=r, finish_reason="stop"), price)
    again = Spend.load(ledger)
    assert again.as_dict() == spend.as_dict()
    assert again.tokens == sum((p or 0) + (c or 0) for p, c, _ in answers)
    assert again.cost == pytest.approx(sum(price.cost(p, c) for p, c, _ in answers))
    assert again.reached(again.tokens, None) and not again.reached(again.tokens + 1, None)
