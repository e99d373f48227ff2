"""encode()/encode_all(): the loss mask on the real Qwen3.6 tokenizer + our Qwen3-style template
(tiny-qwen35-mtp) and on SmolLM2's template; the round trip render -> tokens -> decode -> parse_assistant (THE
parser). The base's own Qwen3.5 template and hypothesis-generated trajectories: test_chat_contract.py."""

from __future__ import annotations

import json
import random

import pytest
from cardforge.core.chat import (
    EncodeError,
    Message,
    encode_all,
    TemplateNotPrefixStable,
    ToolCall,
    Trajectory,
    encode,
    parse_assistant,
)

IM_START, IM_END, THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, NL, NLNL = (
    248045, 248046, 248068, 248069, 248058, 248059, 198, 271)


@pytest.fixture(scope="module")
def qwen(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def hand_example() -> list[Message]:
    return [Message("user", "hi"),
            Message("assistant", "", "go", [ToolCall("f", {"x": "1"})]),  # no tool schema: "1" stays a string
            Message("tool", "ok", name="f"),
            Message("assistant", "Done.", "fine")]


def test_hand_checked_example(qwen):
    enc = encode(hand_example(), qwen)
    rows = [(i, t, m, enc.text[a:b]) for i, (t, m, (a, b)) in enumerate(zip(enc.input_ids, enc.loss_mask, enc.offsets))]
    for row in rows:  # pytest -s shows the table
        print(f"{row[0]:3d} {row[1]:7d} {row[2]} {row[3]!r}")
    expected = [
        # <|im_start|>user\nhi<|im_end|>\n  -- context
        (IM_START, 0), (846, 0), (NL, 0), (5834, 0), (IM_END, 0), (NL, 0),
        # <|im_start|>assistant\n<think>\n  -- the header and the generation prompt: context
        (IM_START, 0), (74455, 0), (NL, 0), (THINK, 0), (NL, 0),
        # go\n</think>\n\n<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call><|im_end|>
        (3237, 1), (NL, 1), (END_THINK, 1), (NLNL, 1), (TOOL_CALL, 1), (NL, 1),
        (27, 1), (1628, 1), (17572, 1), (29, 1), (NL, 1),
        (27, 1), (15704, 1), (24582, 1), (29, 1), (NL, 1), (16, 1), (NL, 1), (510, 1), (15704, 1), (29, 1), (NL, 1),
        (510, 1), (1628, 1), (29, 1), (NL, 1), (END_TOOL_CALL, 1), (IM_END, 1),
        # \n<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n  -- the tool result: context
        (NL, 0), (IM_START, 0), (846, 0), (NL, 0), (248066, 0), (NL, 0), (547, 0), (NL, 0), (248067, 0), (IM_END, 0),
        (NL, 0),
        # <|im_start|>assistant\n<think>\n | fine\n</think>\n\nDone.<|im_end|> | \n
        (IM_START, 0), (74455, 0), (NL, 0), (THINK, 0), (NL, 0),
        (59965, 1), (NL, 1), (END_THINK, 1), (NLNL, 1), (16936, 1), (13, 1), (IM_END, 1),
    ]  # a sequence ends with its last trained <|im_end|>
    assert list(zip(enc.input_ids, enc.loss_mask)) == expected
    assert [(s.message_index, s.token_start, s.token_end) for s in enc.spans] == [(1, 11, 39), (3, 55, 62)]
    assert qwen.decode(enc.input_ids[11:39]) == (
        "go\n</think>\n\n<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call><|im_end|>")
    assert qwen.decode(enc.input_ids) == enc.text
    assert enc.labels[:11] == [-100] * 11 and enc.labels[11] == 3237


# --- round trip over generated multi-step trajectories (seeded: each seed is one reproducible case) ---

TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer"}, "fuzzy": {"type": "boolean"}}}}},
    {"type": "function", "function": {"name": "run_python", "description": "", "parameters": {"type": "object", "properties": {
        "code": {"type": "string"}, "timeout": {"type": "number"}, "env": {"type": "object"},
        "args": {"type": "array"}, "seed": {"type": ["integer", "null"]}}}}},
]
WORDS = ["the", "x", "Zürich", "日本語", "a<b", "{'k': 1}", "42", "true", "null", "[1, 2]", "emoji 🎉", "tab\there",
         "if x > 0:", "    return x", "'quoted'", '"dq"', "path/to/f.py", "-1.5e3", "café"]


def text(rng: random.Random, max_words: int = 8, lines: bool = True) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
    out = "".join(w + (rng.choice([" ", " ", "\n"]) if lines else " ") for w in words)
    return out.strip()


def value(rng: random.Random, schema: dict):
    kind = schema["type"] if isinstance(schema["type"], str) else rng.choice(schema["type"])
    return {"string": lambda: rng.choice([text(rng), "", "42", "true", '{"a": 1}', "  padded  ", "\nlead"]),
            "integer": lambda: rng.randint(-10**6, 10**6), "number": lambda: rng.choice([0.5, -2.25, 3, 1e-3]),
            "boolean": lambda: rng.random() < 0.5, "null": lambda: None,
            "object": lambda: {"k": text(rng, 2), "n": [1, {"deep": True}]},
            "array": lambda: [text(rng, 2), 7, None]}[kind]()


def trajectory(rng: random.Random, task_id: str) -> Trajectory:
    msgs = [Message("system", text(rng))] if rng.random() < 0.5 else []
    msgs.append(Message("user", text(rng)))
    n = 0
    for step in range(rng.randint(1, 4)):
        calls = []
        for _ in range(rng.randint(1, 3)):
            fn = rng.choice(TOOLS)["function"]
            props = fn["parameters"]["properties"]
            args = {k: value(rng, props[k]) for k in rng.sample(sorted(props), rng.randint(0, len(props)))}
            calls.append(ToolCall(fn["name"], args, f"call{n}"))
            n += 1
        msgs.append(Message("assistant", text(rng) if rng.random() < 0.3 else "", text(rng) if rng.random() < 0.9 else "",
                            calls))
        msgs += [Message("tool", text(rng), tool_call_id=c.id, name=c.name) for c in calls]
        if rng.random() < 0.2:
            msgs.append(Message("user", text(rng)))
    msgs.append(Message("assistant", text(rng), text(rng)))
    return Trajectory(task_id, msgs, tools=TOOLS)


def _serving_ids(tok, messages, tools):
    ids = tok.apply_chat_template(messages, tools=tools or None, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.parametrize("seed", range(12))
def test_round_trip_render_tokens_decode_parse(qwen, seed):
    traj = Trajectory.from_dict(json.loads(json.dumps(trajectory(random.Random(seed), f"s{seed}").to_dict())))
    enc = encode_all(traj, qwen)
    assistant = [(i, m) for i, m in enumerate(traj.messages) if m.role == "assistant"]
    spans = [s for seq in enc.sequences for s in seq.spans]
    assert [s.message_index for s in spans] == [i for i, _ in assistant] and enc.dropped_spans == 0
    for seq in enc.sequences:
        assert qwen.decode(seq.input_ids) == seq.text
        for span in seq.spans:
            original = traj.messages[span.message_index]
            # the context is the serving prompt, token for token
            assert seq.input_ids[:span.token_start] == _serving_ids(qwen, traj.openai_messages()[:span.message_index],
                                                                    TOOLS)
            trained = qwen.decode(seq.input_ids[span.token_start:span.token_end])
            assert trained.endswith("<|im_end|>")
            parsed = parse_assistant(trained, TOOLS, think_open=True)  # the text a server would return
            assert parsed.errors == []
            want = Message("assistant", original.content, original.reasoning_content,
                           [ToolCall(c.name, c.arguments) for c in original.tool_calls])  # ids are not rendered
            assert parsed.to_message() == want
        # exactly the spans are trained; everything else (system, user, tool results, headers) is not
        inside = {i for s in seq.spans for i in range(s.token_start, s.token_end)}
        assert [i for i, m in enumerate(seq.loss_mask) if m] == sorted(inside)
        assert all(seq.input_ids[s.token_end - 1] == IM_END for s in seq.spans)


def test_tool_results_are_never_trained(qwen):
    traj = trajectory(random.Random(99), "t")
    for enc in encode_all(traj, qwen).sequences:
        for i, m in enumerate(traj.messages[:enc.n_messages]):
            if m.role == "tool" and m.content:
                start = enc.text.index(m.content, enc.text.index("<tool_response>"))
                toks = [k for k, (a, b) in enumerate(enc.offsets) if a >= start and b <= start + len(m.content)]
                assert toks and all(enc.loss_mask[k] == 0 for k in toks)


def test_truncation_drops_whole_turns_and_counts_them(qwen):
    msgs = hand_example()
    full = encode(msgs, qwen)
    n = len(full)
    assert encode(msgs, qwen, max_len=n).input_ids == full.input_ids
    cut = encode_all(msgs, qwen, max_len=n - 1)  # the second turn does not fit with its context
    assert cut.dropped_spans == 1 and cut.truncated and len(cut.sequences) == 1
    seq = cut.sequences[0]
    assert seq.truncated and seq.n_messages == 2 and seq.input_ids == full.input_ids[:full.spans[0].token_end]
    assert seq.input_ids[-1] == IM_END and seq.loss_mask[-1] == 1 and seq.text.endswith("</tool_call><|im_end|>")
    with pytest.raises(EncodeError, match="max_len 20 is shorter than every assistant turn") as e:
        encode_all(msgs, qwen, max_len=20)
    assert e.value.reason == "too_long"


def test_template_that_drops_old_reasoning_trains_each_turn_in_its_serving_context(qwen):
    # the base's own (Qwen3.5) template shows reasoning only after the last user query, so turn 1 is rendered
    # without it once turn 3 exists: turn 3 gets its own sequence whose context is what the server sends
    from cardforge.core.chat.template import qwen35_template

    drops = qwen35_template()
    msgs = [Message("user", "hi"), Message("assistant", "A", "r1"), Message("user", "more"), Message("assistant", "B", "r2")]
    with pytest.raises(EncodeError, match="trains as 2 sequences"):
        encode(msgs, qwen, chat_template=drops)
    enc = encode_all(msgs, qwen, chat_template=drops)
    assert [[s.message_index for s in seq.spans] for seq in enc.sequences] == [[1], [3]]
    assert "r1" in enc.sequences[0].text and "r1" not in enc.sequences[1].text
    assert enc.sequences[1].text.endswith("<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"
                                          "<|im_start|>assistant\n<think>\nr2\n</think>\n\nB<|im_end|>")


def test_thinking_off_generation_prompt_conflicts_with_reasoning(qwen):
    with pytest.raises(TemplateNotPrefixStable, match="enable_thinking=False"):
        encode(hand_example(), qwen, enable_thinking=False)


def test_smollm2_template_no_tools_no_think():
    from cardforge.core.models import prepare
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    msgs = [Message("user", "hi"), Message("assistant", "Hello!"), Message("user", "2+2?"), Message("assistant", "4")]
    enc = encode(msgs, tok)
    assert "You are a helpful AI assistant named SmolLM" in enc.text  # its default system prompt: context
    trained = [tok.decode(enc.input_ids[s.token_start:s.token_end]) for s in enc.spans]
    assert trained == ["Hello!<|im_end|>", "4<|im_end|>"]
    assert sum(enc.loss_mask) == sum(s.token_end - s.token_start for s in enc.spans)
    assert [parse_assistant(t).content for t in trained] == ["Hello!", "4"]


def test_react_wire_form_carries_calls_as_text_and_is_not_refused(qwen):
    from cardforge.core.chat.template import qwen35_template

    from cardforge.agent.wire import react_wire

    tools = [{"type": "function", "function": {"name": "python", "parameters": {"type": "object", "properties": {
        "code": {"type": "string"}}}}}]
    traj = Trajectory("w", [Message("system", "s"), Message("user", "q"),
                            Message("assistant", "run it", "r", [ToolCall("python", {"code": "print(1)"}, "c0")]),
                            Message("tool", "1", tool_call_id="c0", name="python"), Message("assistant", "1", "r2")],
                      tools=tools)
    wire = react_wire(traj)
    with pytest.raises(EncodeError) as e:  # as structured messages, a call in the content is refused
        encode_all(wire, qwen)
    assert e.value.reason == "tool_markup_in_content"
    for template in (None, qwen35_template()):
        kw = {"chat_template": template} if template else {}
        enc = encode_all(wire, qwen, wire=True, **kw)
        trained = [seq.text[s.char_start:s.char_end] for seq in enc.sequences for s in seq.spans]
        assert "<function=python>\n<parameter=code>\nprint(1)\n</parameter>" in trained[0]
        assert "<tool_response>\n1\n</tool_response>" not in "".join(trained)


def test_tools_render_in_the_form_llama_server_hands_the_template(qwen):
    from cardforge.core.chat.mask import serving_tools

    bare = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}, "strict": True},
            {"type": "function", "function": {"name": "g", "description": None}}]
    assert serving_tools(bare) == [
        {"type": "function", "function": {"name": "f", "description": "", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "g", "description": "", "parameters": {}}}]
    seq = encode_all([Message("user", "q"), Message("assistant", "a", "r")], qwen, bare).sequences[0]
    assert '{"type": "function", "function": {"name": "g", "description": "", "parameters": {}}}' in seq.text
