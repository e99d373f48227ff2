"""The chat contract shared by data, train, serve and eval: trajectory records (schema, JSONL), the one
parser of assistant output (think + qwen3_xml tool calls) and the render + loss mask for training.

    from cardforge.core.chat import Trajectory, load_jsonl, append_jsonl, parse_assistant, encode, encode_all
"""

from cardforge.core.chat.jsonl import (
    TornLine,
    TornLineWarning,
    append_jsonl,
    completed_task_ids,
    load_jsonl,
    read_jsonl,
    write_jsonl,
)
from cardforge.core.chat.mask import (
    REASONS,
    Encoded,
    EncodeError,
    Encoding,
    TemplateNotPrefixStable,
    TurnSpan,
    check_messages,
    encode,
    encode_all,
)
from cardforge.core.chat.parse import ParsedAssistant, allowed_types, parse_assistant, parse_conversation, typed_value
from cardforge.core.chat.schema import (
    SCHEMA_VERSION,
    Message,
    Timings,
    ToolCall,
    Trajectory,
    TrajectoryError,
    Verdict,
)

__all__ = [
    "REASONS",
    "SCHEMA_VERSION",
    "EncodeError",
    "Encoded",
    "Encoding",
    "Message",
    "ParsedAssistant",
    "TemplateNotPrefixStable",
    "Timings",
    "ToolCall",
    "TornLine",
    "TornLineWarning",
    "Trajectory",
    "TrajectoryError",
    "TurnSpan",
    "Verdict",
    "allowed_types",
    "append_jsonl",
    "check_messages",
    "completed_task_ids",
    "encode",
    "encode_all",
    "load_jsonl",
    "load_tokenizer",
    "parse_assistant",
    "parse_conversation",
    "read_jsonl",
    "typed_value",
    "write_jsonl",
]


def load_tokenizer(name_or_path: str):
    """A tokenizer by embedded model name (e.g. "tiny-qwen35-mtp", prepared on demand) or local path."""
    from cardforge.core.models import EMBEDDED, prepare
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(prepare(name_or_path)) if name_or_path in EMBEDDED else name_or_path)
