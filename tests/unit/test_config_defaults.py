"""One home per config value (#23): the schemas hold types and checks, conf/ holds every value once.

- every schema field is MISSING, or equals its YAML default (so the two can never disagree);
- conf/defaults/<section>.yaml lists exactly its schema's fields, each with a comment;
- every experiment preset still composes and validates (no MISSING value left anywhere);
- the GGUF tier list lives once (conf/defaults/quant.yaml): no quant option repeats it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import MISSING, OmegaConf

from cardforge.core import paths
from cardforge.core.config import schemas
from cardforge.core.config.compose import compose

CONF = paths.conf_dir()
SECTION_DEFAULTS = sorted(p.stem for p in (CONF / "defaults").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclasses_in(tp: Any) -> list[type]:
    """The dataclasses a field's type names (itself, or inside Optional / list / dict)."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for arg in typing.get_args(tp) for c in _dataclasses_in(arg)]


def _schema_fields() -> list[tuple[str, type, dataclasses.Field, bool]]:
    """(dotted key, owning dataclass, field, whether a YAML node can hold its default) for the whole tree; fields
    of list / dict element types (quant.gguf_tiers[].imatrix) have no YAML default, so they must be MISSING."""
    out: list[tuple[str, type, dataclasses.Field, bool]] = []

    def walk(cls: type, prefix: str, addressable: bool) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            out.append((key, cls, f, addressable))
            tp = hints[f.name]
            for sub in _dataclasses_in(tp):
                walk(sub, f"{key}." if sub is tp else f"{key}[].", addressable and sub is tp)

    walk(schemas.CardforgeConfig, "", True)
    return out


def _schema_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _yaml_default(key: str) -> tuple[bool, Any]:
    """The value conf/ gives `key` whatever the options: conf/defaults/<section>.yaml or conf/base.yaml's own keys,
    else the value every option of the section's group agrees on. (False, None) where there is none."""
    section, _, rest = key.partition(".")
    if not rest:
        base = _load(CONF / "base.yaml")
        return (key in base, base.get(key))
    candidates = []
    if (CONF / "defaults" / f"{section}.yaml").is_file():
        candidates = [_load(CONF / "defaults" / f"{section}.yaml")]
    else:
        candidates = [_load(p) for p in sorted((CONF / section).glob("*.yaml"))]
    values = []
    for doc in candidates:
        node: Any = doc
        for part in rest.split("."):
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        values.append(node)
    if not values or any(v != values[0] for v in values):
        return False, None
    return True, values[0]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return getattr(value, "value", value)


def test_every_schema_field_is_missing_or_equals_its_yaml_default():
    fields = _schema_fields()
    assert len(fields) > 200  # the whole tree was walked
    wrong = []
    for key, cls, f, addressable in fields:
        default = _schema_default(f)
        if default is MISSING or default == MISSING:
            continue
        has, yaml_value = _yaml_default(key) if addressable else (False, None)
        if not has or _plain(default) != yaml_value:
            wrong.append(f"{cls.__name__}.{f.name} ({key}): schema {_plain(default)!r}, "
                         f"YAML {repr(yaml_value) if has else 'none'}")
    assert not wrong, ("schema defaults that are not conf/'s: make the field MISSING and put its default (with a "
                       "comment) in conf/defaults/<section>.yaml:\n" + "\n".join(wrong))


@pytest.mark.parametrize("section", SECTION_DEFAULTS)
def test_section_defaults_list_exactly_the_schema_fields(section):
    """Each conf/defaults/<section>.yaml is the section's complete reference: one entry per schema field."""
    cls = _hints(schemas.CardforgeConfig)[section]
    doc = _load(CONF / "defaults" / f"{section}.yaml")

    def compare(cls: type, node: dict, prefix: str) -> list[str]:
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        problems = [f"{prefix}{k}: in YAML, not in {cls.__name__}" for k in node if k not in names]
        for name in names:
            if name not in node:
                problems.append(f"{prefix}{name}: a {cls.__name__} field missing from the YAML")
            elif dataclasses.is_dataclass(hints[name]):
                problems += compare(hints[name], node[name] or {}, f"{prefix}{name}.")
        return problems

    assert compare(cls, doc, f"{section}.") == []


def _knob_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, key) of each mapping key line (a `key:` at any indent; not the keys of list items or a flow
    mapping's inner keys: data, not knobs), skipping the defaults list and the hydra node."""
    out, skip_indent, prev, item_indent = [], None, "", None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lead = len(line) - len(line.lstrip())
        if line.lstrip().startswith("- "):
            item_indent = lead
            continue
        if item_indent is not None and lead > item_indent:
            continue  # a key of a list item (card.attribution entries)
        item_indent = None
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        continued, prev = prev.rstrip().endswith(","), line  # inside a flow mapping
        if not m or continued:
            continue
        indent, key = len(m.group(1)), m.group(2)
        if skip_indent is not None and indent > skip_indent:
            continue
        skip_indent = indent if key in ("defaults", "hydra") else None
        if skip_indent is None:
            out.append((i, key))
    return out


# the sections without a defaults file hold every value in their options: those carry the comments
COMMENTED = ([f"defaults/{s}.yaml" for s in SECTION_DEFAULTS] + ["base.yaml"]
             + [f"{g}/{p.name}" for g in ("lora", "card", "paths", "logger") for p in sorted((CONF / g).glob("*.yaml"))])


@pytest.mark.parametrize("name", COMMENTED)
def test_every_knob_has_a_comment(name):
    """torchtune style: a comment on the knob's line, or on the line(s) right above it."""
    path = CONF / name
    lines = path.read_text().splitlines()
    bare = []
    for n, key in _knob_lines(path):
        line = lines[n - 1]
        above = lines[n - 2].strip() if n >= 2 else ""
        nested_parent = line.rstrip().endswith(":")  # a block mapping's head: its children carry the comments
        if "#" not in line and not above.startswith("#") and not nested_parent:
            bare.append(f"{name}:{n}: {key}")
    assert not bare, "knobs without a comment:\n" + "\n".join(bare)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    for primary in ("pipeline", "release"):
        cfg = compose(primary, [f"experiment={preset}"])  # validates: no unknown key, every __post_init__ passes
        assert OmegaConf.missing_keys(cfg) == set(), (preset, primary)
        assert cfg.experiment == preset


def test_gguf_tier_list_lives_once():
    """Presets derive from the one tier list in conf/defaults/quant.yaml; a quant option does not repeat it."""
    assert _load(CONF / "defaults" / "quant.yaml")["gguf_tiers"]
    repeats = [p.name for p in sorted((CONF / "quant").glob("*.yaml")) if "gguf_tiers" in _load(p)]
    assert repeats == []
    assert compose("pipeline", ["experiment=tiny"]).quant.gguf_tiers == compose(
        "pipeline", ["experiment=qwen36_27b_card"]).quant.gguf_tiers


# --- no Python fallback for a config value: the composed config holds every key, conf/ holds the value ---

PACKAGES_SRC = Path(__file__).resolve().parents[2] / "packages"


def _config_names(tree: "ast.AST") -> set[str]:
    """Names bound to the config or one of its sections in this module (`ev = cfg.eval`, `t, n = cfg.teacher, 1`)."""
    import ast

    names = {"cfg", "config"}
    is_cfg = lambda v: ast.unparse(v).split(".")[0] in names and ast.unparse(v).count("(") == 0  # noqa: E731
    for _ in range(2):  # `tc = cfg.trainer` then `mtp = tc.mtp`
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                pairs = [(node.targets[0], node.value)]
                if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(node.targets[0].elts, node.value.elts))
                names |= {t.id for t, v in pairs if isinstance(t, ast.Name) and is_cfg(v)}
    return names


def config_fallbacks(source: str) -> list[tuple[int, str]]:
    """(line, call) of each place a config value gets a default in Python: `option(serve, key, default)`,
    `OmegaConf.select(cfg, key, default=<not None>)` (hydra.* keys aside: Hydra's, not ours), and `.get(key,
    <not None>)` / `getattr(section, key, <not None>)` on the config or a section of it."""
    import ast

    tree = ast.parse(source)
    names = _config_names(tree)
    on_config = lambda node: ast.unparse(node).split(".")[0].split("[")[0] in names  # noqa: E731
    not_none = lambda node: not (isinstance(node, ast.Constant) and node.value is None)  # noqa: E731
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn, args = node.func, node.args
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        bad = False
        if name == "option" and (len(args) > 2 or node.keywords):
            bad = True
        elif name == "select" and ast.unparse(fn).endswith("OmegaConf.select"):
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            key = args[1] if len(args) > 1 else None
            hydra = isinstance(key, ast.Constant) and str(key.value).startswith("hydra.")
            bad = default is not None and not_none(default) and not hydra
        elif name == "get" and isinstance(fn, ast.Attribute) and len(args) == 2:
            itself = ast.unparse(args[1]) == ast.unparse(fn.value)  # config.get("text_config", config): a model's
            bad = on_config(fn.value) and not_none(args[1]) and not itself
        elif name == "getattr" and len(args) == 3:
            itself = ast.unparse(args[2]) == ast.unparse(args[0])  # getattr(x, "value", x): an enum's value
            bad = on_config(args[0]) and not_none(args[2]) and not itself
        if bad:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_fallback_finder_finds_each_form():
    src = '''
def f(cfg, serve):
    ev = cfg.eval
    t, n = cfg.teacher, 2
    a = option(serve, "ctx_size", 4096)
    b = OmegaConf.select(cfg, "data.max_retries", default=3)
    c = ev.get("stream", True)
    d = getattr(cfg.trainer, "kernels", "transformers")
    e = t.get("price", {})
    ok = [option(serve, "ctx_size"), OmegaConf.select(cfg, "hydra.mode", default=""), cfg.get("x"),
          OmegaConf.select(cfg, "release.out_dir", default=None), row.get("n", 0),
          getattr(cfg.kind, "value", cfg.kind), config.get("text_config", config)]
'''
    assert [line for line, _ in config_fallbacks(src)] == [5, 6, 7, 8, 9]


# files allowed a fallback for now, with the reason (none: proof.py read its keys with defaults until #19 fixed it)
NOT_YET: dict[str, str] = {}  # file -> why it still has a fallback (none now)


def test_no_python_fallback_for_a_config_value():
    """Every key is in the composed config (conf/defaults/ + the schema's MISSING), so a default in code is a second
    home for the value, one that drifts (`option(serve, "tool_call_parser", "qwen3_coder")` vs qwen3_xml in YAML)."""
    found = [f"{f.relative_to(PACKAGES_SRC)}:{line}: {call}" for f in sorted(PACKAGES_SRC.rglob("*.py"))
             for line, call in config_fallbacks(f.read_text())
             if str(f.relative_to(PACKAGES_SRC)) not in NOT_YET]
    assert not found, ("config values with a Python fallback: read the key (the composed config has it) and keep "
                       "the value in conf/defaults/<section>.yaml:\n" + "\n".join(found))


# groups whose options set only what differs from conf/defaults/<section>.yaml, but for the keys that say what
# the option is (mtp=grafted: enabled false). Not here: serve (each backend's option names its own port and
# parsers, which serve.commands reads for the published commands of the other backends), teacher (each option
# names its kind, model and transport in full)
THIN_GROUPS = {"trainer": set(), "data": set(), "eval": set(), "mtp": {"enabled"}}


@pytest.mark.parametrize("group", sorted(THIN_GROUPS))
def test_an_option_sets_only_what_differs_from_the_defaults(group):
    defaults = _load(CONF / "defaults" / f"{group}.yaml")

    def repeats(node: dict, base: dict, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                out += repeats(value, base[key], f"{prefix}{key}.")
            elif key in base and base[key] == value and not (prefix == f"{group}." and key in THIN_GROUPS[group]):
                out.append(f"{prefix}{key}: {value!r}")
        return out

    found = {p.name: repeats(_load(p), defaults, f"{group}.") for p in sorted((CONF / group).glob("*.yaml"))}
    assert {k: v for k, v in found.items() if v} == {}, f"conf/{group}/ options repeating conf/defaults/{group}.yaml"
