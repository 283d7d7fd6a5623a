"""Typed stage configs read from YAML, with `--set key=value` overrides.

Every stage has a dataclass config. A YAML file holds one section per stage
(`data:`, `encode:`, `tokenize:`, ...); `section_config(Cls, raw, "data")` builds the
dataclass and names any unknown or ill-typed field together with the file it came from.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml


class _DatesAsTextLoader(yaml.SafeLoader):
    """YAML as the safe loader reads it, but an unquoted date (2020-10-08) stays the text it is: the
    settings that take dates parse them themselves, and a date object is not JSON for the run's config."""


_DatesAsTextLoader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _yaml_load(text: str):
    return yaml.load(text, Loader=_DatesAsTextLoader)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the field."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of stage sections")
    raw.setdefault("_source", str(path))
    return raw


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (so 3, true, [1,3] work)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = _override_value(item, value)
    return raw


def _override_value(item: str, value: str) -> Any:
    """An override's value parsed as YAML; whitespace alone (a literal tab given as a separator)
    stays as written, which YAML would refuse."""
    if value and not value.strip():
        return value
    try:
        return _yaml_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                          "quote it, e.g. key='value'") from e


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    raw = load_yaml(path) if path else {"_source": "<defaults>"}
    return apply_overrides(raw, overrides)


_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        last = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):  # bare `list` too: a string would split into letters
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        # PyYAML (YAML 1.1) reads 5e-4 and 1e5 without a dot as strings: accept any float literal
        if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def nearest(name: str, known) -> str:
    """" (did you mean 'x'?)" for the closest known name, else ""."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass `cls` from `data`, naming unknown keys (with the nearest valid name), bad
    types and values out of range (a ValueError of the class's own checks)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown field(s) {unknown}{nearest(unknown[0], names)}; "
                          f"known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the class's own range checks (ConfigError included)
        prefix = where.split(": ")[0] + ": " if ": " in where else ""
        raise ConfigError(f"{prefix}{e}") from e


def section_config(cls, raw: dict, section: str):
    """The dataclass for one stage section of a loaded YAML config."""
    src = raw.get("_source", "<config>")
    value = raw.get(section)
    return from_dict(cls, {} if value is None else value, f"{src}: {section}")


# ---------------------------------------------------------------- whole-config checks
# top-level section -> "module:Class" of its dataclass (imported only when that section is checked)
SECTIONS = {
    "run": None, "data": "negrec.data.prepare:DataConfig", "encode": "negrec.encode.config:EncodeConfig",
    "tokenize": "negrec.tokenizer.config:TokenizeConfig", "export": "negrec.tokenizer.export:ExportConfig",
    "model": "negrec.llm.model:ModelConfig", "prompt": "negrec.llm.prompts:PromptConfig",
    "sft_align": "negrec.train.sft:SFTAlignConfig", "sft_next": "negrec.train.sft:SFTNextConfig",
    "grpo": "negrec.train.grpo:ProgressiveGRPOConfig", "rewards": "negrec.rewards.functions:RewardConfig",
    "eval": "negrec.eval.run:EvalConfig", "blend": "negrec.eval.blend:BlendConfig",
    "baselines": "negrec.eval.run:BaselinesConfig",
    "filter": "negrec.eval.run:FilterConfig", "report": "negrec.eval.report:ReportConfig",
    "pipeline": "negrec.stages:PipelineConfig",
}
RUN_KEYS = ("name", "root")


def _section_class(name: str):
    target = SECTIONS.get(name)
    if not target:
        return None
    module, cls = target.split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):  # a module being moved: its stage still checks its section
        return None


def check_config(raw: dict, sections=None) -> list[str]:
    """Refuse unknown top-level sections and `run` keys (naming the nearest valid one), sections
    that are not mappings, and unknown keys or out-of-range values of `sections` (default: all);
    then resolve `prompt.day_breaks` (`_fill_day_breaks`) and fix the horizon (see `resolve_horizons`).
    Returns notes to show (explicit horizon overrides)."""
    src = raw.get("_source", "<config>")
    for key, value in raw.items():
        if str(key).startswith("_"):
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{src}: unknown section {key!r}{nearest(key, SECTIONS)}; known: {sorted(SECTIONS)}")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{src}: {key}: expected a mapping of fields, got {value!r}")
    run = raw.get("run") or {}
    bad = [k for k in run if k not in RUN_KEYS]
    if bad:
        raise ConfigError(f"{src}: run: unknown field(s) {bad}{nearest(bad[0], RUN_KEYS)}; known: {list(RUN_KEYS)}")
    for name in (SECTIONS if sections is None else sections):
        cls = _section_class(name)
        if cls is not None and name in raw:
            section_config(cls, raw, name)
    if "prompt" in (SECTIONS if sections is None else sections):
        _check_prompt_history(raw)
        _check_answer_end(raw)
    if "eval" in (SECTIONS if sections is None else sections):
        _check_history_windows(raw)
    # every command, whatever sections it checks: the stages' fingerprints hold the resolved value, so
    # `negrec evaluate` on a day-cut run judged its inputs stale without it (predict reads `prompt`)
    _fill_day_breaks(raw)
    return resolve_horizons(raw)


def _check_prompt_history(raw: dict) -> None:
    """Refuse a compact prompt longer than the history a sample keeps: the prompts would be cut to
    `data.split.max_history` events (and negatives: the older ones come from there too) while the
    timeline SFT trains on windows of the full length."""
    from negrec.data.prepare import DataConfig
    from negrec.llm.prompts import PromptConfig

    prompt = section_config(PromptConfig, raw, "prompt")
    history = section_config(DataConfig, raw, "data").split.max_history
    need = prompt.max_events + prompt.older_negatives
    if prompt.format == "compact" and need > history:
        asked = f"prompt.max_events ({prompt.max_events})" + (
            f" + prompt.older_negatives ({prompt.older_negatives})" if prompt.older_negatives else "")
        raise ConfigError(f"{raw.get('_source', '<config>')}: {asked} exceeds data.split.max_history ({history}), "
                          f"the events and negatives a sample keeps: raise data.split.max_history to at least {need}")


def _check_history_windows(raw: dict) -> None:
    """Refuse `eval.history_windows` above 1 with a verbose prompt: the windows are slices of the
    compact timeline (`negrec.eval.windows`); a verbose prompt shows worded segments instead."""
    from negrec.llm.prompts import PromptConfig

    windows = (raw.get("eval") or {}).get("history_windows")
    if windows is not None and int(windows) > 1 and section_config(PromptConfig, raw, "prompt").format != "compact":
        raise ConfigError(f"{raw.get('_source', '<config>')}: eval.history_windows: {windows} asks the policy from "
                          "windows of a compact timeline; set prompt.format: compact or eval.history_windows: 1")


def _check_answer_end(raw: dict) -> None:
    """Refuse `prompt.event_eos: false` (answers are the SID alone) with a stage that would end them
    with EOS all the same: the prompt-mode SFT (TRL's SFTTrainer appends EOS to every completion) and
    a GRPO `max_completion_length` (the constraint forces EOS after a complete SID)."""
    from negrec.llm.prompts import PromptConfig

    if section_config(PromptConfig, raw, "prompt").event_eos:
        return
    src = raw.get("_source", "<config>")
    # read from the raw sections, not SFTNextConfig / ProgressiveGRPOConfig: their modules import torch,
    # and the check runs for every command (evaluate runs where torch is blocked); "timeline" is the default
    if ((raw.get("sft_next") or {}).get("mode") or "timeline") == "prompt":
        raise ConfigError(f"{src}: prompt.event_eos: false needs sft_next.mode: timeline (the prompt-mode SFT "
                          "ends every answer with EOS)")
    if (raw.get("grpo") or {}).get("max_completion_length") is not None:
        raise ConfigError(f"{src}: grpo.max_completion_length is set while prompt.event_eos is false: leave it "
                          "unset (answers are the SID's tokens alone; past them the constraint forces EOS)")


def fill_cut_unit(raw: dict, run_dir) -> None:
    """Under `data.split.cut_unit: auto`, the unit the data stage chose from the log (recorded in its
    data/data_config.json) into `raw["_cut_unit"]`, and `prompt.day_breaks` resolved from it. Called
    by every question to the stage contract (`negrec.contract`: the stages' fingerprints hold the
    resolved day breaks) and by the stages that read the prompt or SFT settings before asking it. Before the data stage has run there is nothing to read and nothing that needs it."""
    if ((raw.get("data") or {}).get("split") or {}).get("cut_unit") != "auto":
        return
    from negrec.data.splits import CUT_UNITS

    try:
        unit = json.loads((Path(run_dir) / "data" / "data_config.json").read_text())["split"]["cut_unit"]
    except (OSError, ValueError, KeyError, TypeError):
        unit = None  # no choice in this folder (yet): none carried over from another folder either
    if raw.get("_cut_unit") == unit:
        return
    if "prompt.day_breaks" in raw.get("_filled", []):  # filled for another unit: resolved again below
        raw["_filled"].remove("prompt.day_breaks")
        del raw["prompt"]["day_breaks"]
    raw.pop("_cut_unit", None)
    if unit in CUT_UNITS:
        raw["_cut_unit"] = unit
        _fill_day_breaks(raw)


def _fill_day_breaks(raw: dict) -> None:
    """Write `prompt.day_breaks` as resolved from the data's cuts (`negrec.llm.prompts.prompt_config`)
    into `raw` when unset, so that the stages' fingerprints hold it: a run folder built without the
    <|day|> token is then rebuilt, not reused."""
    from negrec.data.prepare import cut_unit_of
    from negrec.llm.prompts import prompt_config

    if cut_unit_of(raw) is None:  # `auto` before the data stage chose (`fill_cut_unit` fills it then)
        return
    if (raw.get("prompt") or {}).get("day_breaks") is None and prompt_config(raw).day_breaks:
        # only when on: off is what a run folder from before the token was built with
        _node(raw, "prompt", create=True)["day_breaks"] = True
        raw.setdefault("_filled", []).append("prompt.day_breaks")


# (section path, field, filled with data.main_horizon when absent)
HORIZON_KEYS = (("sft_align", "horizon", False), ("sft_next", "horizon", False), ("rewards", "horizon", True),
                ("eval.metrics", "main_horizon", True))


def as_set(raw: dict, leave_out=()) -> dict:
    """A copy of `raw` as the user set it: no `_` keys, no horizon `resolve_horizons` filled in, and
    none of the dotted keys `leave_out`."""
    import copy

    out = copy.deepcopy({k: v for k, v in raw.items() if not str(k).startswith("_")})
    for dotted in [*raw.get("_filled", []), *leave_out]:
        parent, _, key = dotted.rpartition(".")
        node = _node(out, parent, create=False)
        if isinstance(node, dict):
            node.pop(key, None)
    return out


def _node(raw: dict, path: str, create: bool) -> dict | None:
    node = raw
    for part in path.split("."):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None and create:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            return None
        node = nxt
    return node


def resolve_horizons(raw: dict) -> list[str]:
    """The horizon is defined once, in `data` (horizons, main_horizon). `rewards.horizon` and
    `eval.metrics.main_horizon` / `horizons` take data's values unless set; an explicit value
    (and `sft_*.horizon`, 0 = data's) must be one of data.horizons. Fills `raw` in place; returns
    a note per explicit override that differs from data.main_horizon."""
    from .data.prepare import DataConfig

    src = raw.get("_source", "<config>")
    data = section_config(DataConfig, raw, "data")
    hs, main = list(data.horizons), data.main_horizon
    notes, filled = [], raw.setdefault("_filled", [])  # what the run folder's config.yaml leaves out
    for path, key, fill in HORIZON_KEYS:
        node = _node(raw, path, create=fill)
        if node is None:
            continue
        value = node.get(key)
        if value in (None, 0):
            if fill:
                node[key] = main
                filled.append(f"{path}.{key}")
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value not in hs:
            raise ConfigError(f"{src}: {path}.{key}: {value!r} is not one of data.horizons {hs} "
                              f"(the horizon is defined in data; leave {path}.{key} out to use data.main_horizon)")
        if value != main:
            notes.append(f"{path}.{key} = {value} overrides data.main_horizon = {main}")
    metrics = _node(raw, "eval.metrics", create=True)
    given = metrics.get("horizons")
    if given is None:
        metrics["horizons"] = hs
        filled.append("eval.metrics.horizons")
    elif not isinstance(given, list) or not set(given) <= set(hs) or metrics["main_horizon"] not in given:
        raise ConfigError(f"{src}: eval.metrics.horizons: {given!r} must be a subset of data.horizons {hs} "
                          f"holding eval.metrics.main_horizon {metrics['main_horizon']}")
    return notes


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
