"""Issue 19's pieces, fast: the proof task family's splits, the scripted expert teacher over real HTTP in the
real ReAct loop (tools run in the bubblewrap sandbox), the simulated-results double, the unmasked-tool-results
knob, the proof eval suite through the agentic runner, and the paired statistics. The whole distillation
(data -> train -> merge -> quant -> llama-server -> eval) is the slow test in test_distill_proof_slow.py."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardforge.agent import proof_tasks, scripted_teacher
from cardforge.agent.react import Options, run_sample
from cardforge.agent.teacher import Teacher
from cardforge.agent.verify import verify
from cardforge.eval import stats
from cardforge.agent.client import Sampling, complete, new_session
from cardforge.eval.harness import HarnessOptions


# --- the task family ---

def test_heldout_shares_no_value_with_train_and_form_b_is_heldout_only():
    train, held = proof_tasks.proof_split("train", 400), proof_tasks.proof_split("heldout", 120)
    assert {t.form for t in train} == {"A"} and {t.form for t in held} == {"A", "B"}
    assert sum(t.form == "B" for t in held) == 60 and {t.kind for t in held} == set(proof_tasks.KINDS)
    train_prompts = {t.prompt for t in train}
    # sum and grep questions name no value (their files differ); mul and count questions never repeat
    assert not any(t.prompt in train_prompts for t in held if t.kind in ("mul", "count"))
    assert not ({tuple(sorted(t.files.items())) for t in held if t.files}
                & {tuple(sorted(t.files.items())) for t in train if t.files})
    assert all(t.params["t"] % 2 == 1 for t in held if t.kind == "count")
    assert all(t.params["t"] % 2 == 0 for t in train if t.kind == "count")
    ops = {v for t in train if t.kind == "mul" for v in (t.params["a"], t.params["b"])}
    assert not any(t.params["a"] in ops or t.params["b"] in ops for t in held if t.kind == "mul")
    # stable: the same split twice, and a longer list extends a shorter one
    assert [t.id for t in proof_tasks.proof_split("heldout", 8)] == [t.id for t in held[:8]]


def test_answers_are_what_the_files_say():
    for t in proof_tasks.proof_split("heldout", 8):
        if t.kind == "mul":
            assert t.answer == t.params["a"] * t.params["b"] and len(str(t.answer)) >= 22
        if t.kind == "count":
            assert t.answer == sum(int(x) > t.params["t"] for x in t.files["values.txt"].split())
        if t.kind == "grep":
            assert t.answer == sum(t.params["level"] in line for line in t.files["server.log"].splitlines())


@settings(max_examples=60, deadline=None)
@given(a=st.integers(10**11, 10**12 - 1), b=st.integers(10**11, 10**12 - 1), off=st.integers(1, 10**6))
def test_integer_verifier_is_exact_at_any_size(a, b, off):
    task = proof_tasks.ProofItem("x", "mul", "A", "train", "q", a * b, {}, {}).task()
    assert verify(task, f"The tool printed it.\n\nFinal answer: {a * b}", [], None).ok
    assert not verify(task, f"Final answer: {a * b + off}", [], None).ok  # a float compare would pass some of these
    assert not verify(task, "I cannot say.", [], None).ok


def test_bad_source_spec_is_one_clear_error():
    from cardforge.core.errors import UserError

    with pytest.raises(UserError, match="proof:SPLIT:N"):
        proof_tasks.proof_tasks("train:many")
    with pytest.raises(UserError, match="train or heldout|use one of"):
        proof_tasks.proof_tasks("test:5")


# --- the scripted expert over real HTTP ---

def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=10).read()


def test_scripted_teacher_speaks_openai_streaming_and_not():
    item = proof_tasks.proof_split("heldout", 8)[4]  # mul, surface form B
    msgs = [{"role": "system", "content": proof_tasks.SYSTEM}, {"role": "user", "content": item.prompt}]
    with scripted_teacher.serve() as url:
        plain = json.loads(_post(url, {"messages": msgs}))
        assert plain["choices"][0]["finish_reason"] == "stop"
        text = plain["choices"][0]["message"]["content"]
        assert f"print({item.params['a']} * {item.params['b']})" in text and text.endswith("</tool_call>")
        cut = json.loads(_post(url, {"messages": msgs, "stop": ["</tool_call>"]}))["choices"][0]["message"]["content"]
        assert cut == text.removesuffix("</tool_call>")
        longcut = json.loads(_post(url, {"messages": msgs, "max_tokens": 3}))["choices"][0]
        assert longcut["finish_reason"] == "length" and len(longcut["message"]["content"]) == 12

        async def streamed():
            async with new_session(1) as s:
                return await complete(s, url, msgs, Sampling(max_tokens=512, stop=("</tool_call>",)), timeout_s=10,
                                      retries=1)
        c = asyncio.run(streamed())
        assert (c.finish_reason, c.content) == ("stop", cut) and c.completion_tokens
        bad = urllib.request.Request(url + "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 400


@pytest.mark.parametrize("index", range(8))  # each kind in both surface forms
def test_scripted_teacher_solves_heldout_tasks_in_the_real_loop(index):
    item = proof_tasks.proof_split("heldout", 8)[index]
    with scripted_teacher.serve() as url:
        teacher = Teacher(url, None, Sampling(max_tokens=512, stop=("</tool_call>", "<tool_response>")), 30, 1, 1)

        async def go():
            async with new_session(1) as s:
                return await run_sample(item.task(), 0, teacher, s, Options("execute", 4, True, 10.0))
        traj = asyncio.run(go())
    assert traj.verdict.status == "accepted", traj.verdict.reason
    roles = [m.role for m in traj.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    call = traj.messages[2].tool_calls[0]
    assert call.name == ("shell" if item.kind == "grep" else "python")
    assert traj.messages[3].content.startswith(str(item.answer))  # the sandbox really ran it
    assert traj.messages[4].content.endswith(f"Final answer: {item.answer}")


def test_simulated_results_are_invented_like_a_role_player():
    item = proof_tasks.proof_split("train", 1)[0]
    code = "print(%d * %d)" % (item.params["a"], item.params["b"])
    call = f"Tool: python\nArguments: {json.dumps({'code': code})}\nOutput:"
    from cardforge.agent.tools import SIMULATOR_SYSTEM

    out = scripted_teacher.respond([{"role": "system", "content": SIMULATOR_SYSTEM}, {"role": "user", "content": call}])
    exact = str(item.answer)
    assert len(out) == len(exact) and out[:4] == exact[:4] and out != exact
    assert out == scripted_teacher.respond([{"role": "system", "content": SIMULATOR_SYSTEM},
                                           {"role": "user", "content": call}])  # seeded by the call
    assert scripted_teacher.respond([{"role": "user", "content": "Write me a poem."}]).count("<tool_call>") == 0


# --- the train-side knob: tool results masked or not ---

def test_mask_tool_results_knob(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from cardforge.core.chat import Message, Trajectory, ToolCall, write_jsonl
    from cardforge.agent.tools import tool_schemas
    from cardforge.train.data import load_samples

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # our Qwen3-style tool template
    traj = Trajectory("t#0", [Message("system", "s"), Message("user", "What is 2 * 3?"),
                              Message("assistant", "I compute it.", tool_calls=[ToolCall("python", {"code": "print(2 * 3)"}, "c0")]),
                              Message("tool", "6\n[exit code 0]", tool_call_id="c0", name="python"),
                              Message("assistant", "Final answer: 6")], tools=tool_schemas(["python", "finish"]))
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [traj])
    masked = load_samples(path, tok)
    unmasked = load_samples(path, tok, mask_tool_results=False)
    assert [s.input_ids for s in masked] == [s.input_ids for s in unmasked] and masked

    def trained(samples):
        return "".join(tok.decode([i for i, m in zip(s.input_ids, s.loss_mask) if m]) for s in samples)
    assert "<tool_response>" not in trained(masked) and "[exit code 0]" not in trained(masked)
    assert "<tool_response>\n6\n[exit code 0]\n</tool_response>" in trained(unmasked)
    for m, u in zip(masked, unmasked):  # only ever more trained tokens, never fewer
        assert all(b >= a for a, b in zip(m.loss_mask, u.loss_mask))
    assert "What is 2 * 3" not in trained(unmasked)  # prompts stay context


# --- the eval suite through the agentic runner ---

def _hopts() -> HarnessOptions:
    return HarnessOptions(Sampling(temperature=0.0, max_tokens=256), concurrency=2, timeout_s=30, retries=1,
                          progress=False, model_id="scripted")


def test_proof_suite_scores_answers_and_probes_invented_observations(tmp_path):
    from omegaconf import OmegaConf

    from cardforge.eval.benchmarks import proof

    cfg = OmegaConf.create({"eval": {"proof_tasks": 8, "limit": None, "agentic_max_steps": None,
                                     "agentic_tool_timeout_s": 10, "proof_probe": True}})
    qs = proof.load(cfg.eval)
    assert len(qs) == 8 and {q.system for q in qs} == {proof_tasks.SYSTEM}
    with scripted_teacher.serve() as url:
        recs = proof.run_suite(qs, url, _hopts(), tmp_path / "distill" / "proof.jsonl", label="distill",
                               suite="proof", cfg=cfg)
    assert [r["correct"] for r in recs] == [True] * 8, [r["check"] for r in recs]
    assert {r["group"] for r in recs} == {"form A", "form B"}
    assert all(r["invented_observation"] is False for r in recs)  # it stops after its call
    s = stats.summarize(recs)
    assert s["accuracy"] == 1.0 and s["invented_rate"] == 0.0 and set(s["groups"]) == {"form A", "form B"}

    # a model that answers from memory: every answer wrong, and an invented observation in the probe
    def liar(messages):
        return ("<tool_call>\n<function=python>\n<parameter=code>\nprint(1)\n</parameter>\n</function>\n</tool_call>"
                "\n<tool_response>\n42\n</tool_response>\nFinal answer: 42")
    from unittest import mock

    with mock.patch.object(scripted_teacher, "respond", liar), scripted_teacher.serve() as url:
        bad = proof.run_suite(qs, url, HarnessOptions(Sampling(max_tokens=256), concurrency=2, timeout_s=30,
                                                      retries=1, progress=False, model_id="liar"),
                              tmp_path / "liar" / "proof.jsonl", label="liar", suite="proof", cfg=cfg)
    assert not any(r["correct"] for r in bad) and all(r["invented_observation"] for r in bad)
    d = stats.paired(recs, bad)
    assert (d["delta"], d["only_a"], d["only_b"]) == (1.0, 8, 0) and d["mcnemar_p"] == pytest.approx(2 / 2 ** 8)


# --- statistics ---

def test_sign_test_and_clopper_pearson_known_values():
    assert stats.clopper_pearson(5, 10) == pytest.approx((0.1870860, 0.8129140), abs=1e-6)
    assert stats.clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-6)
    a = [{"id": str(i), "correct": i < 40} for i in range(100)]
    b = [{"id": str(i), "correct": 30 <= i < 45} for i in range(100)]  # only a: 30, only b: 5
    r = stats.sign_test(a, b)
    assert (r["only_a"], r["only_b"], r["discordant"]) == (30, 5, 35)
    assert r["p_two_sided"] == pytest.approx(2 * sum(math.comb(35, i) for i in range(6)) / 2 ** 35)
    assert r["p_one_sided"] == pytest.approx(r["p_two_sided"] / 2)
    assert r["share_a_ci_low"] < 30 / 35 < r["share_a_ci_high"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), data=st.data())
def test_clopper_pearson_covers_the_estimate(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = stats.clopper_pearson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert stats.wilson(k, n)[0] >= lo - 0.1  # the two intervals agree roughly
