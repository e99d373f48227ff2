"""Render a conversation with the model's own chat template and mark the tokens the loss trains on.

The mask is 1 exactly on what the model itself produces in an assistant turn at inference time: the text
after the generation prompt up to and including the end-of-turn token (`<|im_end|>`). So it is 0 on
system, user and tool-result turns, on the `<|im_start|>assistant\\n` header, on the newline the template
puts after `<|im_end|>`, and, with our Qwen3-style template, on the `<think>\\n` that the generation prompt
already holds (the model never generates it; it generates "REASONING\\n</think>\\n\\nCONTENT<tool_call>...").

How the spans are found (template-agnostic, no string search for role markers):
  for each assistant message i:  G = render(messages[:i], add_generation_prompt=True)
                                 U = render(messages[:i+1])
  the span is U[len(G) : end of the last end-of-turn token in U]. The full render must start with U and U
  with G (the template is prefix-stable); otherwise `TemplateNotPrefixStable` names the message index.
  Templates that drop earlier turns' reasoning (the official Qwen3 ones) fail here on purpose: training
  on a context the model never sees at inference would be wrong.

Tokens: each span and each text between spans is tokenized on its own and the ids are concatenated, so
no token straddles a boundary and the prompt part tokenizes exactly as the serving prompt does (whole-text
BPE would merge the generation prompt's "\\n" with a reasoning that starts with "\\n").

Truncation (`max_len`): a sample is never cut inside an assistant turn. It ends right after the
end-of-turn token of the last assistant turn that fits, later messages are dropped and `truncated` is
set; if not even the first assistant turn fits, `EncodeError` is raised (the caller skips and records it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cardforge.core.chat.schema import Message, Trajectory


class EncodeError(ValueError):
    """The conversation cannot be rendered/encoded as asked; the message says why and what to change."""


class TemplateNotPrefixStable(EncodeError):
    def __init__(self, index: int, detail: str):
        self.index = index
        super().__init__(f"chat template is not prefix-stable at message {index}: {detail}; the loss mask "
                         "needs a template that renders earlier turns the same way whatever follows them")


@dataclass
class TurnSpan:
    message_index: int  # index of the assistant message in the (untruncated) message list
    token_start: int
    token_end: int  # exclusive; the end-of-turn token is the last one inside
    char_start: int
    char_end: int


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]
    text: str  # the rendered text these ids decode to
    offsets: list[tuple[int, int]]  # per token: its character range in `text` (for display)
    spans: list[TurnSpan] = field(default_factory=list)
    truncated: bool = False
    n_messages: int = 0  # messages kept (after truncation)

    @property
    def labels(self) -> list[int]:
        """input_ids where trained, -100 (ignored by cross-entropy) elsewhere."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.loss_mask)]

    def __len__(self) -> int:
        return len(self.input_ids)


def as_template_messages(conversation: Trajectory | Sequence[Message | dict]) -> list[dict]:
    if isinstance(conversation, Trajectory):
        return conversation.openai_messages()
    return [m.to_openai() if isinstance(m, Message) else dict(m) for m in conversation]


def encode(
    conversation: Trajectory | Sequence[Message | dict],
    tokenizer: Any,
    tools: list[dict] | None = None,
    max_len: int | None = None,
    *,
    end_of_turn: str | None = None,
    **template_kwargs: Any,
) -> Encoded:
    """Token ids + loss mask for one conversation (tools default to the trajectory's own)."""
    messages = as_template_messages(conversation)
    if tools is None and isinstance(conversation, Trajectory):
        tools = conversation.tools
    eot = end_of_turn or tokenizer.eos_token
    if not eot:
        raise EncodeError("the tokenizer has no eos_token; pass end_of_turn='<|im_end|>' (the end-of-turn token)")

    def render(msgs: list[dict], generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False,
                                                 add_generation_prompt=generation_prompt, **template_kwargs)
        except Exception as e:  # jinja raise_exception and friends: say which prefix failed
            raise EncodeError(f"chat template failed on messages[:{len(msgs)}]: {e}") from e

    full = render(messages, False)
    spans: list[tuple[int, int, int]] = []  # (char_start, char_end, message index)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt, upto = render(messages[:i], True), render(messages[:i + 1], False)
        if not full.startswith(upto):
            raise TemplateNotPrefixStable(i, f"rendering messages[:{i + 1}] differs from the start of the full "
                                             f"render (first difference at char {_diff_at(full, upto)})")
        if not upto.startswith(prompt):
            raise TemplateNotPrefixStable(i, f"the generation prompt after messages[:{i}] is not how the rendered "
                                             f"assistant turn starts (first difference at char "
                                             f"{_diff_at(upto, prompt)}; enable_thinking=False with non-empty "
                                             "reasoning does this)")
        end = upto.rfind(eot, len(prompt))
        if end < 0:
            raise EncodeError(f"assistant message {i} renders without the end-of-turn token {eot!r}; "
                              "pass end_of_turn=... for this template")
        if spans and len(prompt) < spans[-1][1]:
            raise TemplateNotPrefixStable(i, "its turn overlaps the previous assistant turn")
        spans.append((len(prompt), end + len(eot), i))

    ids: list[int] = []
    mask: list[int] = []
    offsets: list[tuple[int, int]] = []
    turns: list[TurnSpan] = []
    pos = 0
    for start, end, index in spans + [(len(full), len(full), -1)]:
        _extend(tokenizer, full, pos, start, 0, ids, mask, offsets)
        if index >= 0:
            first = len(ids)
            _extend(tokenizer, full, start, end, 1, ids, mask, offsets)
            turns.append(TurnSpan(index, first, len(ids), start, end))
        pos = end
    enc = Encoded(ids, mask, full, offsets, turns, False, len(messages))
    return _truncate(enc, max_len) if max_len is not None and len(ids) > max_len else enc


def _extend(tokenizer, text: str, start: int, end: int, flag: int, ids: list, mask: list, offsets: list) -> None:
    if end <= start:
        return
    piece = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
    ids.extend(piece["input_ids"])
    mask.extend([flag] * len(piece["input_ids"]))
    offsets.extend((start + a, start + b) for a, b in piece["offset_mapping"])


def _truncate(enc: Encoded, max_len: int) -> Encoded:
    fitting = [t for t in enc.spans if t.token_end <= max_len]
    if not fitting:
        first = enc.spans[0].token_end if enc.spans else len(enc)
        raise EncodeError(f"max_len {max_len} is shorter than the first assistant turn (it ends at token {first});"
                          " nothing trainable fits: raise max_len or drop this sample")
    cut, last = fitting[-1].token_end, fitting[-1]
    return Encoded(enc.input_ids[:cut], enc.loss_mask[:cut], enc.text[:last.char_end], enc.offsets[:cut],
                   fitting, True, last.message_index + 1)


def _diff_at(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)
