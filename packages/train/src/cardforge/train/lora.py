"""LoRA from config: resolve `lora.target_modules` against the real model, then wrap it with PEFT.

PEFT silently accepts a target list where only some names match (it fails only when none do), so a
misspelled GDN projection would train attention + MLP only and nobody would notice. The resolver checks every
requested name on its own and reports what each one matched.

Only the language model is adapted: in a vision-language model (Qwen3_5ForConditionalGeneration, whose tower
lives under `model.visual.*`) no tower module is ever a target, whatever the list says (its own Linear names,
qkv / proj / linear_fc1 / linear_fc2, match nothing), and PEFT gets the same exclusion (`exclude_modules`). The
train stage loads the text view (Qwen3_5ForCausalLM, `model.layers.*`), which has no tower at all; the merge
maps the adapter's names back to the checkpoint's `model.language_model.*`.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

import torch

from cardforge.core.errors import UserError

log = logging.getLogger(__name__)


class LoraTargetError(UserError, ValueError):
    """A requested LoRA target matches no module (one line naming the key to change)."""


VISION_TOWER = re.compile(r"(^|\.)visual(\.|$)")  # model.visual.* (and a bare visual.*) of a VL model


PEFT_EXCLUDE_TOWER = r"(.*\.)?visual(\..*)?"  # PEFT full-matches a str exclude_modules against module names


def is_vision_module(name: str) -> bool:
    return bool(VISION_TOWER.search(name))


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The model's Linear modules outside the vision tower."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not is_vision_module(n)]


def resolve_targets(model: torch.nn.Module, targets: list[str], skip: tuple[str, ...] = ("lm_head",)) -> dict[str, list[str]]:
    """{target: [full module names it matches]}, matching PEFT's rule (the name's last component(s)).

    Raises LoraTargetError naming every target that matches nothing, with the linear names that exist.
    """
    names = [n for n in linear_module_names(model) if n.split(".")[-1] not in skip]
    matched: dict[str, list[str]] = defaultdict(list)
    for target in targets:
        for name in names:
            if name == target or name.endswith("." + target):
                matched[target].append(name)
    missing = [t for t in targets if not matched[t]]
    if missing:
        leaves = sorted({n.split(".")[-1] for n in names})
        raise LoraTargetError(
            f"lora.target_modules: {', '.join(missing)} match no linear module of {type(model).__name__}; "
            f"its linear modules are: {', '.join(leaves)}"
        )
    return {t: matched[t] for t in targets}


def summarize(matched: dict[str, list[str]]) -> str:
    return ", ".join(f"{t} x{len(v)}" for t, v in matched.items())


def apply_lora(model: torch.nn.Module, lora_cfg) -> tuple[torch.nn.Module, dict[str, list[str]]]:
    """`lora_cfg` is the config node (`hydra.utils.instantiate` turns it into peft.LoraConfig)."""
    import peft
    from hydra.utils import instantiate

    config = instantiate(lora_cfg, _convert_="all")
    if not isinstance(config, peft.LoraConfig):
        raise TypeError(f"lora._target_ must build a peft.LoraConfig, got {type(config).__name__}")
    requested = list(lora_cfg.target_modules)
    matched = resolve_targets(model, requested)
    if any(is_vision_module(n) for n, _ in model.named_modules()) and not config.exclude_modules:
        config.exclude_modules = PEFT_EXCLUDE_TOWER
    log.info("LoRA targets: %s", summarize(matched))
    return peft.get_peft_model(model, config), matched
