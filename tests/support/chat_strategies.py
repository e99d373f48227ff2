"""Hypothesis strategies for the chat contract's property tests (tests/unit/test_chat_contract.py and the
llama-server check in tests/integration/test_chat_contract_llama_server.py): conversations with roles,
reasoning, calls whose arguments are drawn from JSON schemas, arbitrary Unicode, and the format's tags."""

from __future__ import annotations

from hypothesis import strategies as st

from cardforge.core.chat import Message, ToolCall

TAGS = ["</parameter>", "<parameter=s>", "<parameter=zz>", "</function>", "<function=f>", "<tool_call>", "</tool_call>",
        "<think>", "</think>", "<tool_response>", "</tool_response>", "\n", "\n\n", " ", "  ", "e\u0301", "\u0301",
        "A\u030a", "\r\n", "\t", "🎉", "日本", "=", ">"]
SPECIAL = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|vision_start|>"]
# mostly text and format tags; a special token's text now and then
hostile_text = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(TAGS), st.sampled_from(TAGS),
                                  st.text(max_size=8).map(lambda t: t + SPECIAL[len(t) % 4] if len(t) == 7 else t)),
                        max_size=6).map("".join)
clean_text = st.text(st.characters(exclude_characters="<>", exclude_categories=("Cs",)), max_size=24)

SCHEMAS = {  # parameter -> (its JSON schema, whether a value of each generated kind round-trips)
    "s": {"type": "string"},
    "i": {"type": "integer"},
    "n": {"type": "number"},
    "b": {"type": "boolean"},
    "sn": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "tl": {"type": ["string", "null"]},
    "inn": {"type": ["integer", "null"]},
    "e": {"enum": ["1", "2", "x"]},
    "c": {"const": 5},
    "o": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}},
    "arr": {"type": "array", "items": {"type": "integer"}},
    "oo": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
}
TOOLS = [{"type": "function", "function": {"name": "f", "description": "all kinds",
                                           "parameters": {"type": "object", "properties": SCHEMAS}}},
         {"type": "function", "function": {"name": "g.sub-1", "description": "", "parameters": {
             "type": "object", "properties": {"s": {"type": "string"}, "i": {"type": "integer"}}}}}]
# (in the form servers hand the template: see core.chat.mask.serving_tools)


def values(text):
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), text)
    return {
        "s": text, "i": st.integers(), "n": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
        "b": st.booleans(), "sn": st.one_of(st.none(), text), "tl": st.one_of(st.none(), text),
        "inn": st.one_of(st.none(), st.integers()), "e": st.sampled_from(["1", "2", "x"]), "c": st.just(5),
        "o": st.fixed_dictionaries({"a": st.fixed_dictionaries({"b": text})},
                                   optional={"extra": st.lists(leaf, max_size=3)}),
        "arr": st.lists(st.integers(), max_size=4), "oo": st.one_of(st.integers(), st.booleans()),
    }


@st.composite
def conversations(draw, text, bad_names: bool = False):
    vals = values(text)
    names = st.sampled_from(["f", "g.sub-1"] * 6 + (["f g", "h>", "", "k=v"] if bad_names else []))
    msgs = []
    if draw(st.booleans()):
        msgs.append(Message("system", draw(text)))
    msgs.append(Message("user", draw(text)))
    n = 0
    for _ in range(draw(st.integers(1, 3))):
        calls = []
        for _ in range(draw(st.integers(0, 2))):
            name = draw(names)
            params = sorted(SCHEMAS) if name == "f" else ["s", "i"]
            keys = draw(st.lists(st.sampled_from(params), unique=True, max_size=4))
            args = {k: draw(vals[k]) for k in keys}
            if bad_names and draw(st.integers(0, 29)) == 0:
                args[draw(st.sampled_from(["a b", "x>", "q=1"]))] = "v"
            calls.append(ToolCall(name, args, f"call_{n}"))
            n += 1
        msgs.append(Message("assistant", draw(text), draw(st.one_of(st.just(""), text)), calls))
        msgs += [Message("tool", draw(text), tool_call_id=c.id, name=c.name) for c in calls]
        if not calls or draw(st.integers(0, 3)) == 0:  # a new user query: the template drops earlier reasoning
            msgs.append(Message("user", draw(text)))
    msgs.append(Message("assistant", draw(text), draw(st.one_of(st.just(""), text))))
    return msgs
