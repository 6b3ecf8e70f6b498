"""Command-line flags generated from the config dataclasses, so that each option is declared once (its `opt()`).

Every field of a command's section becomes a flag: top-level fields as `--name`, nested ones dotted
(`--lora.r`, `--train.warmup-ratio`), plus the short aliases in the field's `flags` metadata (`--lr`), and the
names transformers/TRL/PEFT users know from the field's `aliases` (`--learning-rate`, or HfArgumentParser's
`--learning_rate`, for `train.lr`; one that translates a value, `--bf16` for `--dtype bfloat16`, is a hidden switch
named in the help of the option it sets). The flag's help is the field's help and its default; a bool is
`--x/--no-x`; a Literal lists its choices; a list or mapping takes YAML (`--lora.target-modules q_proj,v_proj`,
sft's `--steps` list).
A flag left out is unset (None) and overrides nothing, so precedence stays dataclass < preset < YAML < flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import types
import typing
from pathlib import Path
from typing import Any

import typer
import typer.core
import yaml

from kormed.config import alias_value, field_type
from kormed.errors import KormedError

# Parameter names of generated flags: the dotted path with this separator (click needs identifiers).
SEPARATOR = "__"
PREFIX = "cfg" + SEPARATOR
ALIAS_PREFIX = "alias" + SEPARATOR


@dataclasses.dataclass(frozen=True)
class FieldFlag:
    """One config field as a command-line flag."""

    path: tuple[str, ...]  # ('train', 'lr')
    tp: Any  # the field's type, Optional removed
    help: str
    default: Any
    aliases: tuple[str, ...]
    as_path: bool  # a prepare path: made absolute from the current directory (YAML paths are under data_root)
    known_as: tuple[tuple[str, Any], ...] = ()  # the field's `aliases`: (name, value translation or None)

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
            as_path=bool(f.metadata.get("path", False)), known_as=tuple(f.metadata.get("aliases", ())),
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


def _is_switch(ff: FieldFlag, translation: Any) -> bool:
    """Whether an alias of `ff` is an on/off switch: the field is a bool, or the alias translates true/false."""
    return (ff.tp is bool and translation is None) or (
        translation is not None and all(isinstance(k, bool) for k in translation))


@dataclasses.dataclass(frozen=True)
class AliasFlag:
    """The flag of one alias of a field: `--learning-rate` for `train.lr`, declared on the field's own option;
    one that translates a value (`--bf16`) is a hidden switch of its own."""

    name: str
    param_name: str
    decls: tuple[str, ...]
    switch: bool  # on/off (`--bf16/--no-bf16`)
    translation: Any  # alias value -> field value, or None

    @property
    def flag(self) -> str:
        return self.decls[0].split("/", 1)[0]


def alias_flags(ff: FieldFlag, taken: set[str]) -> list[AliasFlag]:
    """The flag of each of `ff`'s aliases (`--learning-rate`; a switch `--x-y/--no-x-y`), unless the command
    declares it already (`--seed`). HfArgumentParser's `_` spelling (`--learning_rate`) is read as this one by
    `command_class`."""
    out = []
    for name, translation in ff.known_as:
        switch = _is_switch(ff, translation)
        flag = f"--{name.replace('_', '-')}"
        if flag not in taken:
            decl = f"{flag}/--no-{flag[2:]}" if switch else flag
            out.append(AliasFlag(name, ALIAS_PREFIX + name, (decl,), switch, translation))
    return out


def _taken(flags: list[FieldFlag]) -> set[str]:
    """Every option string the generated flags of a command declare (switches' off forms included)."""
    out: set[str] = set()
    for ff in flags:
        for decl in _declarations(ff):
            out.update(d.strip() for d in decl.split("/") if d.strip())
    return out


def _is_structured(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, dict) or tp in (list, dict) or tp is Any


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """Keyword parameters, one typer option each, for every field of dataclass `cls` (all unset by default).
    A command function with this signature gets every flag; `overrides_from_params` turns them into overrides."""
    parameters = []
    flags = field_flags(cls)
    taken = _taken(flags)
    for ff in flags:
        text = ff.help.replace("\n", " ")
        if _is_structured(ff.tp):
            text += " (YAML; a list may be comma-separated)"
        choices = typing.get_args(ff.tp) if typing.get_origin(ff.tp) is typing.Literal else ()  # shown as metavar
        text += f" (default: {_default_text(ff.default)})"
        aliases = alias_flags(ff, taken)
        own = [d for a in aliases if a.translation is None for d in a.decls]  # more names of this option
        hidden = [a for a in aliases if a.translation is not None]  # `--bf16`: a switch of its own
        if aliases:  # also in the text: a narrow terminal cuts the list of names short
            text += " (also " + ", ".join(a.flag for a in aliases) + ")"
        if typer.core.DEFAULT_MARKUP_MODE == "rich":  # typer renders help as Rich markup: '[a, b]' would vanish
            text = text.replace("[", "\\[")
        heading = "Options" if len(ff.path) == 1 else ".".join(p.replace("_", "-") for p in ff.path[:-1])
        metavar = ("YAML" if _is_structured(ff.tp) else "[" + "|".join(map(str, choices)) + "]" if choices
                   else _METAVARS.get(ff.tp))
        option = typer.Option(None, *_declarations(ff), *own, help=text, rich_help_panel=heading, metavar=metavar)
        # every value but a switch is read as text and typed and checked by config.build, so that a wrong type, a
        # wrong choice or a value out of range is the same one-line kormed error as in YAML (click's is a usage
        # block)
        annotation = bool if ff.tp is bool else str
        parameters.append(inspect.Parameter(
            ff.param_name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None,
        ))
        for a in hidden:  # named in the help of the option above, not on a line of its own
            parameters.append(inspect.Parameter(
                a.param_name, inspect.Parameter.KEYWORD_ONLY, annotation=(bool if a.switch else str) | None,
                default=typer.Option(None, *a.decls, hidden=True, help=f"= {ff.flag}"),
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
    flags = field_flags(cls)
    taken = _taken(flags)
    for ff in flags:
        value = params.get(ff.param_name)
        for a in alias_flags(ff, taken):  # a translating alias (`--bf16`) is a parameter of its own
            alias = params.get(a.param_name) if a.translation is not None else None
            if alias is None:
                continue
            if value is not None:  # hf_spellings refuses this first when the words are parsed
                raise KormedError(f"{a.flag} and {ff.flag} name the same option; give one", field=a.flag)
            value = alias_value(alias, a.translation, a.flag)
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


def hf_spellings(cls: type, params: list[Any], args: list[str]) -> list[str]:
    """The words of a command line with HfArgumentParser's spelling of an alias made kormed's (`--learning_rate`
    -> `--learning-rate`, `--no_x_y` -> `--no-x-y`), after refusing one option of dataclass `cls` given under two
    names (`--learning-rate 1e-4 --lr 2e-4`), naming both as typed: an alias shares its option's parameter and
    click would keep the last value silently. `params`: the command's click parameters (which options take a
    value, so that a value is never read as a flag)."""
    flags = field_flags(cls)
    taken = _taken(flags)
    field_of: dict[str, tuple[tuple[str, ...], str]] = {}  # option string -> (field path, the name it spells)
    underscored: dict[str, tuple[str, str]] = {}  # `--learning_rate` -> (`--learning-rate`, its alias)
    for ff in flags:
        for decl in _declarations(ff):
            field_of.update({o.strip(): (ff.path, "") for o in decl.split("/") if o.strip()})
        for a in alias_flags(ff, taken):
            field_of.update({o: (ff.path, a.name) for decl in a.decls for o in decl.split("/")})
        for name, translation in ff.known_as:
            dashed = name.replace("_", "-")
            if "_" in name:
                underscored[f"--{name}"] = (f"--{dashed}", name)
            if _is_switch(ff, translation):
                underscored[f"--no_{name}"] = (f"--no-{dashed}", name)
    takes_value = {o for p in params if not getattr(p, "is_flag", True) for o in getattr(p, "opts", ())}
    seen: dict[tuple[str, ...], dict[str, str]] = {}
    out: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            out += [word, *words]
            break
        typed, sep, value = word.partition("=")
        option, alias = underscored.get(typed, (typed, None))
        out.append(option + sep + value)
        if option in takes_value and not sep:
            out += list(itertools.islice(words, 1))  # its value, whatever it looks like
        if option not in field_of:
            continue
        path, name = field_of[option]
        name = alias or name
        names = seen.setdefault(path, {})
        names.setdefault(name, typed)
        if len(names) > 1:
            first, second = names.values()
            raise KormedError(f"{second} and {first} name the same option; give one", field=second)
    return out


def command_class(cls: type) -> type:
    """The typer command class of a command whose flags are dataclass `cls`'s: it reads the words through
    `hf_spellings` before click parses them."""

    class ConfigCommand(typer.core.TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, hf_spellings(cls, self.params, args))

    return ConfigCommand
