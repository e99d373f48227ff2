"""Compose configs outside `@hydra.main` (tests, the pipeline, preflight) and turn errors into one line."""

from __future__ import annotations

import itertools
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from cardforge.core import paths
from cardforge.core.config.resolvers import register_resolvers
from cardforge.core.config.schemas import register_configs


class ConfigError(ValueError):
    """A config problem, said in one line that names the key and what is allowed."""


def setup() -> None:
    register_configs()
    register_resolvers()


def group_options(group: str) -> list[str]:
    d = paths.conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def compose(config_name: str = "pipeline", overrides: Iterable[str] = (), validate: bool = True) -> DictConfig:
    """The config `python -m cardforge.<stage> OVERRIDES` would see (without the hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    setup()
    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except Exception as e:  # noqa: BLE001 - everything Hydra/OmegaConf raises becomes one line
        raise ConfigError(explain(e, config_name, overrides)) from e
    if validate:
        validate_config(cfg)
    return cfg


def check_ignored_overrides(cfg: DictConfig) -> None:
    """Values a preset would silently ignore are refused: an embedded model is built locally from its name, so
    a model.path other than its `${cf.embedded:NAME}` is never read (training would run on the embedded model)."""
    model = cfg.get("model") if isinstance(cfg, DictConfig) else None
    if not isinstance(model, DictConfig) or not model.get("embedded"):
        return
    raw = OmegaConf.to_container(model, resolve=False).get("path")
    if isinstance(raw, str) and not raw.startswith("${cf.embedded:"):
        raise ConfigError(f"model.path={raw}: ignored for the embedded model {model.get('name')} (model.embedded="
                          "true builds it locally); drop the override, or set model.embedded=false to use that "
                          "checkpoint")


def validate_config(cfg: DictConfig) -> None:
    """Keys the schema does not have (`+lora.rr=16`), cross-field checks (building the dataclasses runs each
    schema's __post_init__), and the torch-internal knobs the config would set (`check_torch_knobs`)."""
    check_schema_keys(cfg)
    check_ignored_overrides(cfg)
    try:
        OmegaConf.to_object(cfg)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(explain(e, "", [])) from e
    check_torch_knobs(cfg)


def check_schema_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Hydra's `+key=value` adds keys even to a typed node; every key must be one of its dataclass's fields."""
    from omegaconf import DictConfig as _Dict

    typ = OmegaConf.get_type(cfg)
    if not is_dataclass(typ):
        return  # a free-form dict (`extra`, hydra's own nodes)
    names = {f.name for f in fields(typ)}
    for key in cfg.keys():
        if key == "hydra" and not prefix:
            continue
        full = f"{prefix}{key}"
        if key not in names:
            parent = prefix.rstrip(".")
            raise ConfigError(f"{full}: no such key; keys in '{parent or '<root>'}': {', '.join(sorted(names))}")
        node = cfg._get_node(key)
        if isinstance(node, _Dict) and not node._is_missing() and not node._is_none():
            check_schema_keys(node, f"{full}.")


# torch internals the train stage sets: (the key that makes it set one, a predicate on the config, module, names
# (any one of them will do)). Checked against the installed torch at composition, not mid-run.
TORCH_KNOBS: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("trainer.activation_memory_budget", lambda c: c.trainer.compile_layers and
     c.trainer.activation_memory_budget is not None, "torch._functorch.config", ("activation_memory_budget",)),
    ("trainer.compile_layers", lambda c: c.trainer.compile_layers, "torch._dynamo.config",
     ("recompile_limit", "cache_size_limit")),
    ("trainer.compile_layers", lambda c: c.trainer.compile_layers, "torch._dynamo.config",
     ("accumulated_recompile_limit",)),
]


def _has_knob(module: Any, name: str) -> bool:
    cfg = getattr(module, "_config", None)
    if isinstance(cfg, dict):
        return name in cfg
    try:
        getattr(module, name)
    except AttributeError:
        return False
    return True


def check_torch_knobs(cfg: DictConfig) -> None:
    """One line naming the installed torch when a knob the config would set does not exist there."""
    import importlib

    wanted = []
    for key, when, module, names in TORCH_KNOBS:
        try:
            on = bool(when(cfg))
        except Exception:  # noqa: BLE001 - a config without the section (partial trees in tests)
            on = False
        if on:
            wanted.append((key, module, names))
    if not wanted:
        return
    import torch

    for key, module, names in wanted:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = None
        if mod is None or not any(_has_knob(mod, n) for n in names):
            value = OmegaConf.select(cfg, key)
            raise ConfigError(
                f"{key}={value}: the installed torch {torch.__version__} has no {module}.{' / '.join(names)}; "
                f"set {key}={'null' if key.endswith('budget') else 'false'} or install a torch that has it")


def _causes(e: BaseException) -> list[BaseException]:
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def explain(e: BaseException, config_name: str, overrides: list[str]) -> str:
    """One line: the key (as an override), what is wrong, what is allowed."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    for err in _causes(e):
        if isinstance(err, MissingConfigException) and err.missing_cfg_file:
            group, _, option = str(err.missing_cfg_file).rpartition("/")
            if group:
                allowed = err.options or group_options(group)
                given = next((o for o in overrides if o.lstrip("+~").split("=")[0] == group), f"{group}={option}")
                return f"{given}: no such option in '{group}'; choose one of: {', '.join(allowed)}"
            return f"no config named '{option}' in {paths.conf_dir()}; choose one of: " + ", ".join(
                p.stem for p in sorted(paths.conf_dir().glob("*.yaml"))
            )
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
            key = getattr(err, "full_key", None) or ""
            parent = key.rpartition(".")[0]
            return f"{key}: no such key; keys in '{parent or '<root>'}': {', '.join(_keys_of(parent))}"
        if isinstance(err, ValidationError):
            key = getattr(err, "full_key", None) or "?"
            msg = str(getattr(err, "msg", err)).splitlines()[0]
            return f"{key}: {msg}"
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"{err.full_key}: {str(getattr(err, 'msg', err)).splitlines()[0]}"
        if isinstance(err, ValueError) and not isinstance(err, ConfigError) and err is not e:
            return str(err).splitlines()[0]
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _keys_of(dotted: str) -> list[str]:
    from cardforge.core.config.schemas import CardforgeConfig

    node: Any = CardforgeConfig
    for part in [p for p in dotted.split(".") if p]:
        # the schemas carry no default instances (every field is MISSING): a section's type is its annotation
        node = typing.get_type_hints(node).get(part) if is_dataclass(node) else None
        if node is None:
            return []
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def expand_sweeps(overrides: list[str], cap: int = 64) -> list[list[str]]:
    """Each job's overrides of a multirun (`lora.r=8,16 trainer.lr=1e-4,2e-4`), at most `cap` of them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), cap)]
