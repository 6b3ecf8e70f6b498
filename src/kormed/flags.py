"""Command-line flags generated from the config dataclasses, so that each option is declared once (its `opt()`).

Every field of a command's section becomes a flag: top-level fields as `--name`, nested ones dotted
(`--lora.r`, `--train.warmup-ratio`), plus the short aliases in the field's `flags` metadata
(`--lr`). The flag's help is the field's help and its default; a bool is `--x/--no-x`; a Literal lists its
choices; a list or mapping takes YAML (`--lora.target-modules q_proj,v_proj`, sft's `--steps` list).
A flag left out is unset (None) and overrides nothing, so precedence stays dataclass < preset < YAML < flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer
import typer.core
import yaml

from kormed.config import field_type

# Parameter names of generated flags: the dotted path with this separator (click needs identifiers).
SEPARATOR = "__"
PREFIX = "cfg" + SEPARATOR


@dataclasses.dataclass(frozen=True)
class FieldFlag:
    """One config field as a command-line flag."""

    path: tuple[str, ...]  # ('train', 'lr')
    tp: Any  # the field's type, Optional removed
    help: str
    default: Any
    aliases: tuple[str, ...]
    as_path: bool  # a prepare path: made absolute from the current directory (YAML paths are under data_root)

    @property
    def param_name(self) -> str:
        return PREFIX + SEPARATOR.join(self.path)

    @property
    def flag(self) -> str:
        return "--" + ".".join(p.replace("_", "-") for p in self.path)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _dataclass_in(tp: Any) -> type | None:
    tp = _strip_optional(tp)
    return tp if dataclasses.is_dataclass(tp) and isinstance(tp, type) else None


def field_flags(cls: type, prefix: tuple[str, ...] = (), instance: Any = None) -> list[FieldFlag]:
    """Every leaf field of dataclass `cls` (nested sections walked), in declaration order, with the defaults of
    `instance` (default: `cls()`; a nested section's defaults are those its parent gives it, e.g. sft.step2)."""
    out: list[FieldFlag] = []
    instance = cls() if instance is None else instance
    for f in dataclasses.fields(cls):
        tp = field_type(cls, f.name)
        sub = _dataclass_in(tp)
        if sub is not None:
            children = field_flags(sub, prefix + (f.name,), getattr(instance, f.name))
            aliases = f.metadata.get("flags", ())
            if aliases:  # a nested field's alias sets its `path` (prepare's `--mcq FILE`)
                children = [
                    dataclasses.replace(c, aliases=c.aliases + aliases, as_path=bool(f.metadata.get("path")))
                    if c.path[-1] == "path" and len(c.path) == len(prefix) + 2 else c
                    for c in children
                ]
            out.extend(children)
            continue
        out.append(FieldFlag(
            path=prefix + (f.name,), tp=_strip_optional(tp), help=f.metadata.get("help", ""),
            default=getattr(instance, f.name), aliases=tuple(f.metadata.get("flags", ())),
            as_path=bool(f.metadata.get("path", False)),
        ))
    return out


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "''"
    if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
        return f"{len(value)} sections, see `kormed config show`"  # e.g. sft.steps: too long for a help line
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def _declarations(ff: FieldFlag) -> list[str]:
    """The dotted flag, then its aliases; a bool's as on/off switches."""
    if ff.tp is not bool:
        return [ff.flag, *(a for a in ff.aliases if a != ff.flag)]
    decls = [f"{ff.flag}/--no-{ff.flag[2:]}"]
    for alias in ff.aliases:
        on, _, off = alias.partition("/")
        # ' /--sample' declares an off switch only (click reads 'ON/OFF' and skips an empty ON)
        decls.append(f"{on if on != ff.flag else ' '}/{off or '--no-' + on[2:]}")
    return decls


_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def _is_structured(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, dict) or tp in (list, dict) or tp is Any


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """Keyword parameters, one typer option each, for every field of dataclass `cls` (all unset by default).
    A command function with this signature gets every flag; `overrides_from_params` turns them into overrides."""
    parameters = []
    for ff in field_flags(cls):
        text = ff.help.replace("\n", " ")
        if _is_structured(ff.tp):
            text += " (YAML; a list may be comma-separated)"
        choices = typing.get_args(ff.tp) if typing.get_origin(ff.tp) is typing.Literal else ()  # shown as metavar
        text += f" (default: {_default_text(ff.default)})"
        if typer.core.DEFAULT_MARKUP_MODE == "rich":  # typer renders help as Rich markup: '[a, b]' would vanish
            text = text.replace("[", "\\[")
        heading = "Options" if len(ff.path) == 1 else ".".join(p.replace("_", "-") for p in ff.path[:-1])
        metavar = ("YAML" if _is_structured(ff.tp) else "[" + "|".join(map(str, choices)) + "]" if choices
                   else _METAVARS.get(ff.tp))
        option = typer.Option(None, *_declarations(ff), help=text, rich_help_panel=heading, metavar=metavar)
        # every value but a switch is read as text and typed and checked by config.build, so that a wrong type, a
        # wrong choice or a value out of range is the same one-line kormed error as in YAML (click's is a usage
        # block)
        annotation = bool if ff.tp is bool else str
        parameters.append(inspect.Parameter(
            ff.param_name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None,
        ))
    return parameters


def _parse_structured(ff: FieldFlag, text: str) -> Any:
    from kormed.io import YamlSyntaxError, load_yaml

    try:
        value = load_yaml(text, where=ff.flag)
    except YamlSyntaxError:
        value = text
    if typing.get_origin(ff.tp) is list and not isinstance(value, list):
        value = [v.strip() for v in str(text).split(",") if v.strip()]
    return value


def overrides_from_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The nested overrides mapping `config.load_config` takes, from parsed click params (unset flags left out)."""
    out: dict[str, Any] = {}
    for ff in field_flags(cls):
        value = params.get(ff.param_name)
        if value is None:
            continue
        if isinstance(value, str) and _is_structured(ff.tp):
            value = _parse_structured(ff, value)
        if ff.as_path and isinstance(value, str) and value:
            value = str(Path(value).expanduser().absolute())
        target = out
        for part in ff.path[:-1]:
            target = target.setdefault(part, {})
        target[ff.path[-1]] = value
    return out

