"""A trajectory as the ReAct wire: the exact messages the data loop sends a model (`react.run_sample`'s
`wire`) and the eval actor sends the student (cardforge.eval.agentic.runner, through the same loop).

    system    tools_prompt(task system, tools)          the tool block as text, as our template writes it
    user      the task prompt
    assistant CONTENT + "\\n\\n" + call_xml(call)         one Qwen3 XML call as text (no structured tool_calls)
    user      "<tool_response>\\nOBSERVATION\\n</tool_response>"
    ...
    assistant the final answer

`data.train_format=react_wire` trains on this list rendered by the student's own chat template, so a
template without tool support (SmolLM2's plain ChatML) sees in training exactly the text llama-server
renders at eval from the same wire. Reasoning (`reasoning_content`) is dropped, as the wire drops it.
"""

from __future__ import annotations

from cardforge.core.chat import Trajectory
from cardforge.agent.teacher import call_xml, tools_prompt

TOOL_RESPONSE_OPEN = "<tool_response>"


def react_wire(traj: Trajectory) -> list[dict]:
    msgs = traj.messages
    if len(msgs) < 2 or msgs[0].role != "system":
        raise ValueError(f"{traj.id}: a ReAct trajectory starts with a system and a user message")
    out = [{"role": "system", "content": tools_prompt(msgs[0].content, traj.tools)}]
    for m in msgs[1:]:
        if m.role == "assistant":
            parts = [m.content.strip()] if m.content.strip() else []
            parts += [call_xml(c) for c in m.tool_calls[:1]]  # the loop runs one call per step
            out.append({"role": "assistant", "content": "\n\n".join(parts)})
        elif m.role == "tool":
            out.append({"role": "user", "content": f"{TOOL_RESPONSE_OPEN}\n{m.content}\n</tool_response>"})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def is_tool_result(message: dict) -> bool:
    """A tool result in either form: a `tool` message, or a wire user turn holding a <tool_response>."""
    role, content = message.get("role"), message.get("content")
    return role == "tool" or (role == "user" and isinstance(content, str) and content.startswith(TOOL_RESPONSE_OPEN))
