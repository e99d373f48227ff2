"""Render a conversation with the model's own chat template and mark the tokens the loss trains on, so that
every trained assistant turn sits in exactly the context a server gives the model, token for token.

The mask is 1 exactly on what the model itself produces in an assistant turn at inference time: the text
after the generation prompt up to and including the end-of-turn token (`<|im_end|>`). It is 0 on system,
user and tool-result turns, on the `<|im_start|>assistant\\n` header and on the `<think>\\n` that the
generation prompt already holds.

Serving builds the context of assistant message i as `render(messages[:i], add_generation_prompt=True)`
and tokenizes that text WHOLE. So, for each assistant message i:
    P_i = tokens of render(messages[:i], add_generation_prompt=True)      (whole text, as serving does)
    S_i = tokens of the turn the model writes: render(messages[:i+1])[len(prompt):] up to its <|im_end|>
and a training sequence is P_i + S_i. Consecutive turns share one sequence when the sequence so far is a
token prefix of the next turn's P_j; otherwise a new sequence starts at P_j. That happens when
* the template renders earlier turns differently once a later user query exists: the Qwen3.5 template
  drops the reasoning of assistant turns before the last user query, so each user query starts a
  sequence;
* whole-text BPE merges across the turn boundary: an empty reasoning is generated as "\\n" after the
  prompt's "<think>\\n" but re-tokenizes as one "\\n\\n" token in the next prompt.
So training context == serving context for every trained span, by construction (`tests/unit/
test_chat_contract.py` checks it against `apply_chat_template(..., tokenize=True)` on generated data).

Exact or refused: before anything is trained, each span's text is parsed back with `parse_assistant` (THE
parser) and must give the message again (reasoning and content as the template trims them, calls and
typed arguments); input that the format cannot carry unambiguously is refused with `EncodeError.reason`
(a short code the loaders count): see REASONS. Text is NFC-normalized first (the tokenizer would do it
anyway; decode(ids) == text holds only for NFC text, and offsets index that text).

Truncation (`max_len`): a sequence never ends inside an assistant turn; a turn whose P_i + S_i is longer
than max_len is dropped (`Encoding.dropped_spans`), and if none fits, `EncodeError(reason="too_long")`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cardforge.core.chat.parse import (
    CALL_CLOSE,
    CALL_OPEN,
    FN_CLOSE,
    FN_PREFIX,
    PARAM_CLOSE,
    PARAM_PREFIX,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    nfc,
    parse_assistant,
    same_value,
    valid_name,
)
from cardforge.core.chat.schema import Message, Trajectory

REASONS = {
    "template_error": "the chat template raised on this conversation",
    "not_prefix_stable": "a rendered assistant turn does not start with the generation prompt",
    "no_end_of_turn": "an assistant turn renders without the end-of-turn token",
    "no_assistant_turn": "nothing to train: no assistant message",
    "too_long": "no assistant turn fits max_len with its context",
    "edge_whitespace": "text starts or ends with Unicode/control whitespace (\\xa0, \\u3000, \\x1f, ...) that "
                       "jinja2 trims and llama.cpp's template engine does not",
    "special_token_in_text": "a message holds a special token's text (<|im_end|>, <|im_start|>, ...)",
    "think_tag_in_reasoning": "reasoning holds <think> or </think> (the reasoning block would end early)",
    "content_starts_with_think": "assistant content starts with <think> (reads as a reasoning block)",
    "tool_markup_in_content": "assistant content holds <tool_call>, </tool_call> or <function= (parsed as a call)",
    "markup_in_argument": "an argument value holds </parameter>, <parameter=, </function>, <function= or "
                          "</tool_call> (engines' parsers would split it into other arguments)",
    "bad_name": "a function or parameter name the XML format cannot carry (<>{}\"'= or whitespace)",
    "tool_response_tag_in_tool_result": "a tool result holds <tool_response> or </tool_response>",
    "user_looks_like_tool_response": "a user message starts with <tool_response> (the template takes it for "
                                     "a tool result)",
    "argument_type": "an argument comes back with another type (its schema allows a string, or none is given)",
    "round_trip": "parsing the rendered turn does not give the message back",
    "decode_mismatch": "decode(tokens) differs from the rendered text",
}
ASCII_SPACE = " \t\n\r\v\f"  # what llama.cpp's jinja `trim` removes (C isspace); Python's strip removes more
ARGUMENT_MARKUP = (PARAM_CLOSE, PARAM_PREFIX, FN_CLOSE, FN_PREFIX, CALL_CLOSE)
CONTENT_MARKUP = (CALL_OPEN, CALL_CLOSE, FN_PREFIX)


class EncodeError(ValueError):
    """The conversation cannot be rendered/encoded as asked; `reason` is a REASONS code, the message says why
    and what to change."""

    def __init__(self, message: str, reason: str = "template_error"):
        self.reason = reason
        super().__init__(message)


class TemplateNotPrefixStable(EncodeError):
    def __init__(self, index: int, detail: str):
        self.index = index
        super().__init__(f"chat template is not prefix-stable at message {index}: {detail}", "not_prefix_stable")


@dataclass
class TurnSpan:
    message_index: int  # index of the assistant message in the message list
    token_start: int
    token_end: int  # exclusive; the end-of-turn token is the last one inside
    char_start: int
    char_end: int


@dataclass
class Encoded:
    """One training sequence: the serving context of its first span, then spans and the context between."""

    input_ids: list[int]
    loss_mask: list[int]
    text: str  # the rendered text these ids decode to
    offsets: list[tuple[int, int]]  # per token: its character range in `text` (for display)
    spans: list[TurnSpan] = field(default_factory=list)
    truncated: bool = False  # some assistant turn of the conversation did not fit max_len
    n_messages: int = 0  # messages up to and including this sequence's last span

    @property
    def labels(self) -> list[int]:
        """input_ids where trained, -100 (ignored by cross-entropy) elsewhere."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.loss_mask)]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Encoding:
    """All training sequences of one conversation."""

    sequences: list[Encoded]
    n_spans: int  # assistant messages
    dropped_spans: int = 0  # assistant turns left out: longer than max_len with their context

    @property
    def truncated(self) -> bool:
        return self.dropped_spans > 0


def as_template_messages(conversation: Trajectory | Sequence[Message | dict]) -> list[dict]:
    if isinstance(conversation, Trajectory):
        return conversation.openai_messages()
    return [m.to_openai() if isinstance(m, Message) else dict(m) for m in conversation]


def encode_all(
    conversation: Trajectory | Sequence[Message | dict],
    tokenizer: Any,
    tools: list[dict] | None = None,
    max_len: int | None = None,
    *,
    end_of_turn: str | None = None,
    wire: bool = False,
    **template_kwargs: Any,
) -> Encoding:
    """Token ids + loss mask for one conversation (tools default to the trajectory's own), as one or more
    training sequences (see the module docstring). `wire=True`: the ReAct wire form (cardforge.agent.wire), where
    an assistant turn carries its call as Qwen3 XML text in `content` and tool results are user turns of
    <tool_response> text: such content is not refused, and a turn must parse like its content does."""
    messages = nfc(as_template_messages(conversation))
    if tools is None and isinstance(conversation, Trajectory):
        tools = conversation.tools
    tools = serving_tools(nfc(tools)) if tools else None
    eot = end_of_turn or tokenizer.eos_token
    if not eot:
        raise EncodeError("the tokenizer has no eos_token; pass end_of_turn='<|im_end|>' (the end-of-turn token)")
    tok = _tokenizer_cache(tokenizer)
    check_messages(messages, tok.special, wire=wire)

    def render(msgs: list[dict], generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False,
                                                 add_generation_prompt=generation_prompt, **template_kwargs)
        except Exception as e:  # jinja raise_exception and friends: say which prefix failed
            raise EncodeError(f"chat template failed on messages[:{len(msgs)}]: {e}") from e

    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistant:
        raise EncodeError("no assistant message: nothing to train", "no_assistant_turn")
    sequences: list[Encoded] = []
    cur: Encoded | None = None
    dropped = 0
    for i in assistant:
        prompt, upto = render(messages[:i], True), render(messages[:i + 1], False)
        if not upto.startswith(prompt):
            raise TemplateNotPrefixStable(i, f"the rendered assistant turn does not start with the generation "
                                             f"prompt (first difference at char {_diff_at(upto, prompt)}; "
                                             "enable_thinking=False with non-empty reasoning does this)")
        end = upto.find(eot, len(prompt))
        if end < 0:
            raise EncodeError(f"assistant message {i} renders without the end-of-turn token {eot!r}; "
                              "pass end_of_turn=... for this template", "no_end_of_turn")
        turn = upto[len(prompt):end + len(eot)]
        _check_round_trip(i, messages[i], turn, tools, think_open=prompt.endswith(THINK_OPEN + "\n"), wire=wire)
        p_ids, p_offs = tok(prompt)
        s_ids, s_offs = tok(turn)
        if max_len is not None and len(p_ids) + len(s_ids) > max_len:
            dropped += 1
            continue
        n = len(cur.input_ids) if cur is not None else 0
        if cur is not None and n <= len(p_ids) and p_ids[:n] == cur.input_ids:
            assert prompt.startswith(cur.text), "token prefix with a text mismatch"
            cur.input_ids += p_ids[n:]
            cur.loss_mask += [0] * (len(p_ids) - n)
            cur.offsets += p_offs[n:]
            cur.text = prompt
        else:
            cur = Encoded(list(p_ids), [0] * len(p_ids), prompt, list(p_offs))
            sequences.append(cur)
        first, base = len(cur.input_ids), len(cur.text)
        cur.input_ids += s_ids
        cur.loss_mask += [1] * len(s_ids)
        cur.offsets += [(base + a, base + b) for a, b in s_offs]
        cur.text += turn
        cur.spans.append(TurnSpan(i, first, len(cur.input_ids), base, len(cur.text)))
        cur.n_messages = i + 1
    if not sequences:
        raise EncodeError(f"max_len {max_len} is shorter than every assistant turn with its context; nothing "
                          "trainable fits: raise max_len or drop this sample", "too_long")
    for s in sequences:
        s.truncated = dropped > 0
    return Encoding(sequences, len(assistant), dropped)


def serving_tools(tools: list[dict] | None) -> list[dict] | None:
    """Tools in the form a server renders them: llama-server parses each OpenAI tool and hands the template
    {"type": "function", "function": {"name", "description" ("" when absent), "parameters" ({} when absent)}},
    dropping other keys (e.g. "strict"); bare {"name", "parameters"} schemas get the same wrapper. Training
    renders this form, so a tool without a description is the same text in training and serving
    (tests/integration/test_chat_contract_llama_server.py)."""
    if not tools:
        return tools
    out = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            out.append(tool)  # not a function tool: left for the template to render or refuse
            continue
        params = fn.get("parameters", fn.get("input_schema"))
        out.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description") or "",
                                                      "parameters": params if isinstance(params, dict) else {}}})
    return out


def encode(
    conversation: Trajectory | Sequence[Message | dict],
    tokenizer: Any,
    tools: list[dict] | None = None,
    max_len: int | None = None,
    *,
    end_of_turn: str | None = None,
    wire: bool = False,
    **template_kwargs: Any,
) -> Encoded:
    """The one training sequence of a conversation that needs only one (single-turn, or a template and data
    that keep every earlier turn as it was served); `encode_all` for any conversation."""
    enc = encode_all(conversation, tokenizer, tools, max_len, end_of_turn=end_of_turn, wire=wire, **template_kwargs)
    if len(enc.sequences) != 1:
        raise EncodeError(f"this conversation trains as {len(enc.sequences)} sequences (its serving contexts are "
                          "not prefixes of one another); use encode_all", "not_prefix_stable")
    return enc.sequences[0]


# --- what the format cannot carry: refused up front with a reason code ---


def check_messages(messages: list[dict], special: Sequence[str] = ("<|im_start|>", "<|im_end|>"), *,
                   wire: bool = False) -> None:
    """Raise EncodeError(reason) for a message the Qwen3 XML chat format cannot carry unambiguously.
    `wire`: calls are content text and tool results user text (cardforge.agent.wire): those are allowed."""
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        reasoning = m.get("reasoning_content") if isinstance(m.get("reasoning_content"), str) else ""
        for where, text in (("content", content), ("reasoning", reasoning)):
            _no_special(i, where, text, special)
            if text.strip() != text.strip(ASCII_SPACE):
                raise EncodeError(f"message {i}: {where} starts or ends with whitespace other than space, tab, CR, LF, "
                                  "VT, FF (jinja2's trim removes it, llama.cpp's does not); strip it",
                                  "edge_whitespace")
        if role == "assistant":
            if THINK_OPEN in reasoning or THINK_CLOSE in reasoning:
                raise EncodeError(f"message {i}: reasoning holds {THINK_OPEN} or {THINK_CLOSE}",
                                  "think_tag_in_reasoning")
            if content.strip().startswith(THINK_OPEN) and not wire:
                raise EncodeError(f"message {i}: assistant content starts with {THINK_OPEN} (where the template "
                                  "opens a reasoning block)", "content_starts_with_think")
            if any(t in content for t in CONTENT_MARKUP) and not wire:
                raise EncodeError(f"message {i}: assistant content holds tool-call markup "
                                  f"({', '.join(t for t in CONTENT_MARKUP if t in content)})", "tool_markup_in_content")
            for call in m.get("tool_calls") or []:
                fn = call.get("function", call)
                name, args = fn.get("name", ""), fn.get("arguments") or {}
                if not isinstance(name, str) or not valid_name(name):
                    raise EncodeError(f"message {i}: function name {name!r} cannot be written as <function=NAME>",
                                      "bad_name")
                if not isinstance(args, dict):
                    raise EncodeError(f"message {i}: {name}: arguments must be a mapping", "template_error")
                for arg, value in args.items():
                    if not valid_name(arg):
                        raise EncodeError(f"message {i}: {name}: parameter name {arg!r} cannot be written as "
                                          "<parameter=NAME>", "bad_name")
                    for text in _strings(value):
                        _no_special(i, f"{name}.{arg}", text, special)
                        hit = [t for t in ARGUMENT_MARKUP if t in text]
                        if hit:
                            raise EncodeError(f"message {i}: {name}.{arg} holds {', '.join(hit)}", "markup_in_argument")
        elif role == "tool":
            if RESPONSE_OPEN in content or RESPONSE_CLOSE in content:
                raise EncodeError(f"message {i}: the tool result holds {RESPONSE_OPEN} or {RESPONSE_CLOSE}",
                                  "tool_response_tag_in_tool_result")
        elif role == "user" and content.strip().startswith(RESPONSE_OPEN) and not wire:
            raise EncodeError(f"message {i}: a user message that starts with {RESPONSE_OPEN}",
                              "user_looks_like_tool_response")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _no_special(i: int, where: str, text: str, special: Sequence[str]) -> None:
    hit = [t for t in special if t in text]
    if hit:
        raise EncodeError(f"message {i}: {where} holds the special token text {hit[0]}", "special_token_in_text")


def _check_round_trip(i: int, message: dict, turn: str, tools: list[dict] | None, think_open: bool,
                      wire: bool = False) -> None:
    parsed = parse_assistant(turn, tools, think_open=think_open)
    if parsed.errors:
        raise EncodeError(f"message {i}: its rendered turn does not parse: {parsed.errors[0]}", "round_trip")
    want_reasoning = (message.get("reasoning_content") or "").strip()
    want_content = (message.get("content") or "").strip() if isinstance(message.get("content"), str) else ""
    calls = [c.get("function", c) for c in message.get("tool_calls") or []]
    if wire and not calls:  # the call is content text: the turn must parse as that text does
        text = parse_assistant(want_content, tools, think_open=None)
        if text.errors:
            raise EncodeError(f"message {i}: its content does not parse: {text.errors[0]}", "round_trip")
        want_content = text.content
        calls = [{"name": c.name, "arguments": c.arguments} for c in text.tool_calls]
    if (parsed.reasoning, parsed.content) != (want_reasoning if think_open else "", want_content):
        raise EncodeError(f"message {i}: the rendered turn parses to other reasoning/content", "round_trip")
    if [c.name for c in parsed.tool_calls] != [c.get("name") for c in calls]:
        raise EncodeError(f"message {i}: the rendered turn parses to other calls", "round_trip")
    for got, want in zip(parsed.tool_calls, calls):
        args = want.get("arguments") or {}
        if list(got.arguments) != list(args):
            raise EncodeError(f"message {i}: {got.name}: the rendered call parses to other arguments "
                              f"({sorted(got.arguments)} != {sorted(args)})", "round_trip")
        for k, v in args.items():
            if not same_value(got.arguments[k], v):
                raise EncodeError(f"message {i}: {got.name}.{k}: {v!r} comes back as {got.arguments[k]!r} "
                                  "(declare its type in the tool schema, or pass it as a string)", "argument_type")


# --- tokenization exactly as serving does it, with a cache of the pieces between added tokens ---


class _SegmentTokenizer:
    """tokenizer(text, add_special_tokens=False) of a whole text, computed from cached pieces: HF tokenizers
    cut the text at added tokens first and tokenize each piece on its own, so a prompt that grows turn by
    turn is re-tokenized in linear time. Falls back to the whole text where an added token strips or
    normalizes (then the cut is not exact)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.ids = {t.content: i for i, t in added.items()}
        self.special = sorted((t.content for t in added.values() if t.special), key=len, reverse=True)
        self.exact = bool(added) and all(not (t.lstrip or t.rstrip or t.single_word or t.normalized)
                                         for t in added.values())
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.ids, key=len, reverse=True)) + ")") \
            if self.ids else None
        self.cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    def piece(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        hit = self.cache.get(text)
        if hit is None:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
            if self.tokenizer.decode(ids) != text:
                raise EncodeError(f"decode(tokenize(text)) != text for {text[:60]!r}", "decode_mismatch")
            hit = self.cache[text] = (ids, offs)
            if len(self.cache) > 50_000:
                self.cache.clear()
        return hit

    def __call__(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not self.exact or self.split is None:
            return self.piece(text)
        ids: list[int] = []
        offs: list[tuple[int, int]] = []
        pos = 0
        for part in self.split.split(text):
            if not part:
                continue
            if part in self.ids:
                ids.append(self.ids[part])
                offs.append((pos, pos + len(part)))
            else:
                p_ids, p_offs = self.piece(part)
                ids += p_ids
                offs += [(pos + a, pos + b) for a, b in p_offs]
            pos += len(part)
        return ids, offs


_CACHES: dict[int, _SegmentTokenizer] = {}


def _tokenizer_cache(tokenizer: Any) -> _SegmentTokenizer:
    seg = _CACHES.get(id(tokenizer))
    if seg is None or seg.tokenizer is not tokenizer:
        if len(_CACHES) > 8:
            _CACHES.clear()
        seg = _CACHES[id(tokenizer)] = _SegmentTokenizer(tokenizer)
    return seg


def _diff_at(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)
