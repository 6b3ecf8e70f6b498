"""Typed configuration: dataclass defaults <- YAML file section <- command-line options.

Every stage declares a dataclass whose fields carry their default and a `help` text in `metadata`.
They are registered in `CONFIG_SECTIONS`, from which `kormed config show` and `docs/configuration.md`
are generated: that is the one place where every default is documented.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import importlib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kormed.errors import KormedError

T = TypeVar("T")

# section name in the YAML file -> "module:DataclassName"
CONFIG_SECTIONS: dict[str, str] = {
    "prepare": "kormed.prepare.config:PrepareConfig",
    "tokenizer": "kormed.tokenizer.config:TokenizerConfig",
    "cpt": "kormed.train.config:CPTConfig",
    "sft": "kormed.train.sft_config:SFTConfig",
    "loop": "kormed.train.sft_config:LoopConfig",
    "eval": "kormed.eval.config:EvalConfig",
    "chat": "kormed.chat:ChatConfig",
}


# Top-level keys of a pipeline file (`kormed run`, and the resolved_config.yaml it writes) that are not stage
# sections: the one list, read by pipeline.run and by every stage command given such a file with --config.
PIPELINE_KEYS = (
    "name",
    "description",
    "run_dir",
    "stages",
    "model",
    "device",
    "data_root",
    "report_to",
    "eval_targets",
    "launcher",
)

# What numpy, torch and Python's random all accept as a seed.
SEED_RANGE = (0, 2**32 - 1)


def opt(
    default: Any,
    help: str,  # noqa: A002
    *,
    bounds: tuple[Any, ...] | None = None,
    choices: tuple[Any, ...] | str | None = None,
    pattern: tuple[str, str] | None = None,
    flags: tuple[str, ...] = (),
    aliases: tuple[str | tuple[str, dict[Any, Any]], ...] = (),
    cli_path: bool = False,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a documented default (mutable defaults are copied per instance) and the constraint
    `build` enforces on every value, from YAML and from flags alike, naming the file and key (or the flag):

    * `bounds` (low, high[, brackets]): a range; None = open, brackets "[]" (inclusive, the default), "()", "[)"
      or "(]" (e.g. `(0, None, "()")`: above 0).
    * `choices`: the allowed values, or "module:attribute" naming an Enum, a mapping or a function returning them,
      from the library that consumes the value (e.g. transformers' SchedulerType); imported only when a value
      other than the default is checked.
    * `pattern`: (regex, what it means) a string must match in full.

    A list field's constraint applies to each item. `flags` are short command-line aliases besides the generated
    dotted flag (e.g. `("--lr",)` for `train.lr`; a bool's alias may name its off switch too: `"--all/--sample"`);
    see kormed.flags. `aliases`: the names users of transformers' TrainingArguments, TRL and PEFT know the option
    by (`"learning_rate"` for `train.lr`), read in YAML beside the field and, for a nested field, at the top of
    the section (TrainingArguments are flat), and on the command line as `--learning-rate` / `--learning_rate`;
    `(name, {alias value: value})` translates a value (`("bf16", {True: "bfloat16", False: "float32"})` for
    `dtype`). `cli_path`: a path that a flag gives relative to the current directory (made absolute; the
    YAML value of the same key may be relative elsewhere)."""
    metadata: dict[str, Any] = {"help": help}
    if bounds is not None:
        metadata["bounds"] = bounds
    if choices is not None:
        metadata["choices"] = choices
    if pattern is not None:
        metadata["pattern"] = pattern
    if flags:
        metadata["flags"] = tuple(flags)
    if aliases:
        metadata["aliases"] = tuple((a, None) if isinstance(a, str) else (a[0], dict(a[1])) for a in aliases)
    if cli_path:
        metadata["path"] = True
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: _deepcopy(d), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


# `--device`: what kormed.models.pick_runtime runs on (checked when the config is read, not when the run starts).
DEVICE_PATTERN = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


def check_device(value: str, flag: str = "--device") -> str:
    """`value` when it is a device kormed runs on (DEVICE_PATTERN), for a hand-written command's `--device`."""
    if not re.fullmatch(DEVICE_PATTERN[0], value):
        raise KormedError(f"must be {DEVICE_PATTERN[1]}, got {value!r}", field=flag)
    return value


def seed_opt(
    default: int, help: str, *, flags: tuple[str, ...] = (), aliases: tuple[str, ...] = ()  # noqa: A002
) -> Any:
    """A random-seed field: an integer in SEED_RANGE (numpy rejects a negative seed with a traceback)."""
    return opt(default, help, bounds=SEED_RANGE, flags=flags, aliases=aliases)


def nested(cls: type, help: str) -> Any:  # noqa: A002
    """A dataclass field holding another config dataclass."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def flag_for(cls: type, dotted: str) -> str:
    """The command-line flag a user types for field `dotted` ('train.lr') of dataclass `cls`: its first alias
    ('--lr') if it has one, else the generated dotted flag ('--train.warmup-ratio'). A nested field with an alias
    ('--mcq' for prepare's mcq source) names the flags of its `path` field."""
    parts = [p.split("[", 1)[0] for p in dotted.split(".")]
    current: Any = cls
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(current):
            break
        fields = {f.name: f for f in dataclasses.fields(current)}
        f = fields.get(part)
        if f is None:
            break
        aliases = f.metadata.get("flags", ())
        if aliases and (i == len(parts) - 1 or parts[i + 1:] == ["path"]):
            return aliases[0].split("/", 1)[0]
        current = field_type(current, part)
        current = next((a for a in typing.get_args(current) if dataclasses.is_dataclass(a)), current)
    return "--" + ".".join(p.replace("_", "-") for p in parts)


def _deepcopy(value: Any) -> Any:

    return copy.deepcopy(value)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping through kormed's guarded YAML reader, with errors naming the file and line."""
    from kormed.io import read_yaml_file

    p = Path(path)
    if not p.is_file():
        raise KormedError("config file does not exist", path=p)
    data = read_yaml_file(p, what="config file")  # kormed's guarded reader: depth, aliases, duplicate keys, ...
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KormedError("a config file must be a mapping of sections", path=p)
    return data


def field_type(cls: type, name: str) -> Any:
    """The type of field `name` of dataclass `cls` (annotations resolved), as `build` and kormed.flags read it."""
    return _type_hints(cls)[name]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Options of transformers' TrainingArguments, TRL's SFTConfig/ModelConfig and PEFT's LoraConfig that kormed does not
# take (those it does are `aliases` of its own options), with what to use instead. Written out rather than read from
# those classes: the answer to a mistyped key must come without importing transformers (torch); a test checks that
# each name is an option of the library named.
FOREIGN_OPTIONS: dict[str, tuple[str, str]] = {
    "fp16": ("transformers", "kormed never trains in fp16 (Gemma 3 overflows it); precision is `dtype`"),
    "tf32": ("transformers", "precision is `dtype` (auto, float32, bfloat16)"),
    "warmup_steps": ("transformers", "kormed's warmup is a fraction of the steps: `warmup_ratio`"),
    "resume_from_checkpoint": ("transformers", "`resume: true` continues from <output>/checkpoints"),
    "eval_strategy": ("transformers", "kormed validates every `eval_steps` optimizer steps"),
    "save_strategy": ("transformers", "kormed saves every `save_steps` (off: `save_checkpoints: false`)"),
    "logging_strategy": ("transformers", "kormed logs every `logging_steps`"),
    "do_train": ("transformers", "each kormed command runs one stage"),
    "do_eval": ("transformers", "each kormed command runs one stage"),
    "adam_beta1": ("transformers", "kormed keeps the optimizer's defaults; `optim` picks it"),
    "adam_beta2": ("transformers", "kormed keeps the optimizer's defaults; `optim` picks it"),
    "adam_epsilon": ("transformers", "kormed keeps the optimizer's defaults; `optim` picks it"),
    "auto_find_batch_size": ("transformers", "set `batch_size` (kormed bench train measures memory)"),
    "deepspeed": ("transformers", "several GPUs: `accelerate launch -m kormed.cli ...` (docs/commands/train-cpt.md)"),
    "fsdp": ("transformers", "several GPUs: `accelerate launch -m kormed.cli ...` (docs/commands/train-cpt.md)"),
    "torch_compile": ("transformers", "not offered"),
    "push_to_hub": ("transformers", "kormed never uploads; push the output directory yourself"),
    "hub_model_id": ("transformers", "kormed never uploads; push the output directory yourself"),
    "label_smoothing_factor": ("transformers", "not offered"),
    "neftune_noise_alpha": ("transformers", "not offered"),
    "packing": ("trl", "CPT always packs; SFT: `padding_free`"),
    "dataset_text_field": ("trl", "CPT reads JSONL {\"text\": ...}; `kormed eval ppl` takes `text_field`"),
    "use_peft": ("trl", "kormed always trains a LoRA adapter"),
    "load_in_8bit": ("trl", "kormed quantizes to 4-bit only: `quantize: 4bit`"),
    "trust_remote_code": ("trl", "kormed never runs a checkpoint's code"),
    "attn_implementation": ("trl", "not offered"),
    "bias": ("peft", "not offered (LoRA without bias training)"),
    "lora_bias": ("peft", "not offered (LoRA without bias training)"),
    "modules_to_save": ("peft", "embeddings: `lora.train_embeddings`"),
    "use_dora": ("peft", "not offered"),
    "init_lora_weights": ("peft", "not offered"),
}
FOREIGN_LIBRARIES = {"transformers": "transformers' TrainingArguments", "trl": "TRL's", "peft": "PEFT's LoraConfig"}


def nested_class(cls: type, name: str) -> type | None:
    """The config dataclass that field `name` of `cls` holds (Optional removed), or None for a leaf field."""
    tp = field_type(cls, name)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


@functools.cache
def declared_aliases(cls: type) -> tuple[tuple[str, tuple[str, ...], dict[Any, Any] | None], ...]:
    """(alias, path of its field under `cls`, value translation or None) for every alias that `opt(aliases=...)`
    declares in `cls` and the sections nested in it."""
    out: list[tuple[str, tuple[str, ...], dict[Any, Any] | None]] = []
    for f in dataclasses.fields(cls):
        out += [(name, (f.name,), values) for name, values in f.metadata.get("aliases", ())]
        sub = nested_class(cls, f.name)
        if sub is not None:
            out += [(name, (f.name, *path), values) for name, path, values in declared_aliases(sub)]
    return tuple(out)


@functools.cache
def alias_table(cls: type) -> dict[str, tuple[tuple[str, ...], dict[Any, Any] | None]]:
    """The keys a mapping of `cls` may hold that name a field by an alias: alias -> (field path, translation).
    A field's own name wins (`warmup_ratio` beside itself is the field; one level up it is the alias)."""
    own = {f.name for f in dataclasses.fields(cls)}
    table: dict[str, tuple[tuple[str, ...], dict[Any, Any] | None]] = {}
    for name, path, values in declared_aliases(cls):
        if name not in own:
            table.setdefault(name, (path, values))
    return table


def alias_value(value: Any, values: dict[Any, Any] | None, where: str, path: str | None = None) -> Any:
    """The value of the option that alias value `value` means (`bf16: true` -> "bfloat16")."""
    if values is None:
        return value
    if all(isinstance(k, bool) for k in values):
        value = _coerce(value, bool, where, path)
    if value not in values:
        raise KormedError(f"must be one of {', '.join(map(str, values))}, got {value!r}", path=path, field=where)
    return values[value]


def resolve_aliases(cls: type, values: dict[str, Any], *, path: str | None = None, prefix: str = "") -> dict[str, Any]:
    """`values` (a mapping of `cls`, nested sections included) with every alias key put under its field's own
    name and place (`learning_rate: 1e-4` -> `train: {lr: 1e-4}`). One option given under two names is an error
    naming both."""
    return _resolve(cls, values, path, prefix)[0]


def _resolve(
    cls: type, values: dict[str, Any], path: str | None, prefix: str
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """(`values` with aliases resolved, field path -> the key the user wrote for it)."""
    table = alias_table(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    given: dict[tuple[str, ...], str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in table:
            continue
        sub = nested_class(cls, name) if name in own else None
        if sub is not None and isinstance(value, dict):
            value, inner = _resolve(sub, value, path, f"{prefix}{name}.")
            given.update({(name, *p): where for p, where in inner.items()})
        given.setdefault((name,), prefix + str(key))
        out[key] = value
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in table:
            continue
        field_path, translation = table[name]
        where = prefix + str(key)
        other = given.get(field_path)
        if other is not None:
            raise KormedError(f"`{where}` and `{other}` name the same option ({prefix}{'.'.join(field_path)}); "
                              "give one", path=path, field=where)
        target = out
        for i, part in enumerate(field_path[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise KormedError(f"expected a mapping, got {target!r}", path=path,
                                  field=prefix + ".".join(field_path[: i + 1]))
        target[field_path[-1]] = alias_value(value, translation, where, path)
        given[field_path] = where
    return out, given


def foreign_option(name: str) -> str | None:
    """'transformers' TrainingArguments option `fp16`, which kormed does not take: ...' for a known option of a
    peer library that kormed has no equivalent of, else None."""
    known = FOREIGN_OPTIONS.get(name.replace("-", "_"))
    if known is None:
        return None
    library, instead = known
    return f"{FOREIGN_LIBRARIES[library]} option `{name}`, which kormed does not take: {instead}"


def unknown_option(cls: type, name: str) -> str:
    """The message for key `name` that `cls` does not have: a peer library's option kormed lacks said as such,
    else the closest known name (difflib), else the known names."""
    foreign = foreign_option(name)
    if foreign:
        return foreign
    candidates = {f.name: f.name for f in dataclasses.fields(cls)}
    candidates.update({alias: alias for alias in alias_table(cls)})
    for f in dataclasses.fields(cls):  # `lr` at the top of a section: suggest `train.lr`
        sub = nested_class(cls, f.name)
        for leaf in dataclasses.fields(sub) if sub is not None else ():
            candidates.setdefault(leaf.name, f"{f.name}.{leaf.name}")
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if close:
        return f"unknown option; did you mean `{candidates[close[0]]}`?"
    return f"unknown option (known: {', '.join(sorted({f.name for f in dataclasses.fields(cls)}))})"


def _coerce(value: Any, tp: Any, where: str, path: str | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, path)
            except KormedError as exc:
                errors.append(exc)
        raise errors[0] if errors else KormedError("invalid value", path=path, field=where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise KormedError(f"expected a mapping, got {value!r}", path=path, field=where)
        return build(tp, value, path=path, prefix=where + ".")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise KormedError(f"expected a list, got {value!r}", path=path, field=where)
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KormedError(f"expected a mapping, got {value!r}", path=path, field=where)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}", path) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise KormedError(f"must be one of {list(args)}, got {value!r}", path=path, field=where)
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise KormedError(f"expected true/false, got {value!r}", path=path, field=where)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise KormedError(f"expected an integer, got {value!r}", path=path, field=where)
        try:
            return int(value)
        except ValueError:
            raise KormedError(f"expected an integer, got {value!r}", path=path, field=where) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise KormedError(f"expected a number, got {value!r}", path=path, field=where)
        try:
            number = float(value)
        except ValueError:
            raise KormedError(f"expected a number, got {value!r}", path=path, field=where) from None
        if not math.isfinite(number):  # nan/inf (YAML .nan/.inf, `--lr nan`) would poison training silently
            raise KormedError(f"must be a finite number, got {value!r}", path=path, field=where)
        return number
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise KormedError(f"expected a string, got {value!r}", path=path, field=where)
    return value


def build(cls: type[T], values: dict[str, Any], *, path: str | None = None, prefix: str = "") -> T:
    """Construct dataclass `cls` from a mapping, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in resolve_aliases(cls, values, path=path, prefix=prefix).items():
        name = str(key).replace("-", "_")
        if name not in fields:
            removed = getattr(cls, "removed_options", {}).get(name)  # a ClassVar of the config class
            if removed:
                raise KormedError(f"option removed: {removed}", path=path, field=prefix + str(key))
            raise KormedError(unknown_option(cls, name), path=path, field=prefix + str(key))
        kwargs[name] = _coerce(value, field_type(cls, name), prefix + name, path)
        _check_bounds(fields[name], kwargs[name], prefix + name, path)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except KormedError as exc:
            raise _located(exc, path, prefix) from None
    return obj


def _check_bounds(f: dataclasses.Field, value: Any, where: str, path: str | None) -> None:
    """Check `value` (each item of a list) against the constraint declared in field `f`'s `opt()`."""
    meta = f.metadata
    if value is None or not ({"bounds", "choices", "pattern"} & set(meta)):
        return
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        problem = _violation(f, item)
        if problem:
            raise KormedError(f"{problem}, got {item!r}", path=path, field=at)


def _violation(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for field `f` ("must be ..."), or None when it satisfies the declaration."""
    meta = f.metadata
    bounds = meta.get("bounds")
    if bounds is not None and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = bounds[0], bounds[1]
        left, right = bounds[2] if len(bounds) > 2 else "[]"
        if ((low is not None and (value < low or (left == "(" and value == low)))
                or (high is not None and (value > high or (right == ")" and value == high)))):
            return f"must be {range_text(bounds)}"
    pattern = meta.get("pattern")
    if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern[0], value):
        return f"must be {pattern[1]}"
    choices = meta.get("choices")
    if choices is not None and not _default_item(f, value):
        allowed = allowed_choices(choices)
        if value not in allowed:
            return f"must be one of {', '.join(map(str, allowed))}"
    return None


def _default_item(f: dataclasses.Field, value: Any) -> bool:
    """Whether `value` is (an item of) `f`'s default: a default is known to be allowed (a test checks it), so a
    library's list of names is imported only for a value the user chose."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return value == default or (isinstance(default, list) and value in default)


@functools.cache
def allowed_choices(choices: tuple[Any, ...] | str) -> tuple[Any, ...]:
    """The values `choices` allows: the tuple itself, or the values of the Enum (the keys of the mapping, what the
    function returns) that "module:attribute" names."""
    if not isinstance(choices, str):
        return tuple(choices)
    module, _, name = choices.partition(":")
    source = getattr(importlib.import_module(module), name)
    if isinstance(source, type) and issubclass(source, enum.Enum):
        return tuple(member.value for member in source)
    return tuple(source() if callable(source) else source)


def range_text(bounds: tuple[Any, ...]) -> str:
    """A range as the error and the reference say it: 'at least 1', 'between 0 and 1', 'in [0, 1)', 'positive'."""
    low, high = bounds[0], bounds[1]
    left, right = bounds[2] if len(bounds) > 2 else "[]"
    if low is not None and high is not None:
        return f"between {low} and {high}" if (left, right) == ("[", "]") else f"in {left}{low}, {high}{right}"
    if low is not None:
        return f"at least {low}" if left == "[" else "positive" if low == 0 else f"above {low}"
    return f"at most {high}" if right == "]" else f"below {high}"


def constraint_text(f: dataclasses.Field) -> str:
    """The declared constraint of field `f` in words, for `kormed config show` ('' when it has none)."""
    meta = f.metadata
    parts = []
    if "bounds" in meta:
        parts.append(range_text(meta["bounds"]))
    if "pattern" in meta:
        parts.append(meta["pattern"][1])
    choices = meta.get("choices")
    if isinstance(choices, str):
        module, _, name = choices.partition(":")
        parts.append(f"a name of {module}.{name}")
    elif choices is not None:
        parts.append("one of " + ", ".join(map(str, choices)))
    return "; ".join(parts)


def _located(exc: KormedError, path: str | None, prefix: str) -> KormedError:
    """A `validate()` error (whose field is relative, e.g. 'train.lr' or 'cpt.max_length') placed in the file and
    section being read: `prefix` is where the dataclass sits ('cpt.train.', or '--' for command-line flags)."""
    where = prefix.rstrip(".")
    field = exc.field
    if field and where:
        head = field.split(".", 1)[0].split("[", 1)[0]
        last = where.rsplit(".", 1)[-1].removeprefix("--")
        if head == last:  # 'train.lr' validated inside 'cpt.train'
            field = where + field[len(head):]
        elif where == "--" and head in CONFIG_SECTIONS:  # 'cpt.max_length' validated for a command's flags
            field = "--" + field.split(".", 1)[-1]
        else:
            field = (where if where.endswith("-") else where + ".") + field
    elif where and not field:
        field = where
    return KormedError(exc.message, path=exc.path or path, line=exc.line, field=field, hint=exc.hint)


def flag_error(exc: KormedError, cls: type) -> KormedError:
    """An error in a command-line value of dataclass `cls`, named by the flag the user types: '--train.lr' ->
    '--lr' (its alias), '--train.warmup_ratio' -> '--train.warmup-ratio', '--mcq.path' -> '--mcq'."""
    field = exc.field or ""
    if not field.startswith("--"):
        return exc
    return KormedError(exc.message, path=exc.path, line=exc.line, field=flag_for(cls, field[2:]), hint=exc.hint)


def merge(base: Any, values: dict[str, Any], *, path: str | None = None, prefix: str = "") -> Any:
    """Return a copy of dataclass `base` with `values` (possibly nested mappings) applied."""
    current = dataclasses.asdict(base)
    _deep_update(current, resolve_aliases(type(base), values, path=path, prefix=prefix))
    return build(type(base), current, path=path, prefix=prefix)


def _deep_update(target: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if isinstance(value, dict) and isinstance(target.get(k), dict):
            _deep_update(target[k], value)
        else:
            target[k] = value


def drop_unset(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line overrides without the unset (None) flags, nested sections included; empty sections vanish."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = drop_unset(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def section_class(section: str) -> type:
    module, _, name = CONFIG_SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def load_config(
    section: str,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    preset: dict[str, Any] | None = None,
) -> Any:
    """Defaults, then an optional preset mapping, then the YAML file's `section`, then CLI overrides (None = unset)."""
    cls = section_class(section)
    cfg = cls()
    if preset:
        cfg = merge(cfg, preset, prefix=f"{section}.")
    if config_path is not None:
        data = read_yaml(config_path)
        unknown = [k for k in data if k not in CONFIG_SECTIONS and k not in PIPELINE_KEYS]
        if unknown:
            raise KormedError(
                f"unknown section '{unknown[0]}' (known: {', '.join(CONFIG_SECTIONS)})", path=config_path
            )
        section_values = data.get(section) or {}
        if not isinstance(section_values, dict):
            raise KormedError("section must be a mapping", path=config_path, field=section)
        cfg = merge(cfg, section_values, path=str(config_path), prefix=f"{section}.")
    if overrides:
        set_values = {k: v for k, v in overrides.items() if v is not None}
        if set_values:
            try:
                cfg = merge(cfg, set_values, prefix="--")
            except KormedError as exc:
                raise flag_error(exc, cls) from None
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def _flags_text(path: tuple[str, ...], aliases: tuple[str, ...]) -> str:
    """The command-line flags of a field, as kormed.flags generates them: the dotted flag, then the aliases."""
    dotted = "--" + ".".join(p.replace("_", "-") for p in path)
    return ", ".join([dotted, *(a for a in aliases if a != dotted)])


def _aliases_text(f: dataclasses.Field) -> str:
    """'; also learning_rate' (the field's aliases, a translating one with its values; 'top-level': its own name at
    the top of the section) for `kormed config show`."""
    names = [("top-level" if name == f.name else name) if values is None else
             f"{name} ({', '.join(f'{_yaml_scalar(k)}: {_yaml_scalar(v)}' for k, v in values.items())})"
             for name, values in f.metadata.get("aliases", ())]
    return f"; also {', '.join(names)}" if names else ""


def _document(
    cls: type,
    obj: Any,
    indent: int,
    path: tuple[str, ...] | None = (),
    path_aliases: tuple[str, ...] = (),
    *,
    comments: bool = True,
) -> list[str]:
    """Commented YAML of `obj`: each key with its help above and its command-line flags beside it
    (`path` None: items of a list of sections, e.g. sft.steps, which are set by YAML or by the list's own flag)."""
    lines: list[str] = []
    pad = "  " * indent
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help", "") if comments else ""
        for hl in help_text.splitlines() or [""]:
            if hl:
                lines.append(f"{pad}# {hl}")
        if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            flags = "" if path is None else f"  # {_flags_text(path + (f.name,), tuple(f.metadata.get('flags', ())))}"
            lines.append(f"{pad}{f.name}:{flags}")  # a list of sections (e.g. sft.steps): items' keys, help once
            for i, v in enumerate(value):
                lines.append(f"{pad}  -")
                lines.extend(_document(type(v), v, indent + 2, None, comments=i == 0))
        elif dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            sub = None if path is None else path + (f.name,)
            lines.extend(_document(type(value), value, indent + 1, sub, f.metadata.get("flags", ()), comments=comments))
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            lines.append(f"{pad}{f.name}:")
            for k, v in value.items():
                lines.append(f"{pad}  {k}:")
                lines.extend(_document(type(v), v, indent + 2, None, comments=comments))
        elif path is None:
            rule = constraint_text(f)
            lines.append(f"{pad}{f.name}: {_yaml_scalar(value)}" + (f"  # {rule}" if rule else ""))
        else:
            aliases = tuple(f.metadata.get("flags", ())) + (path_aliases if f.name == "path" else ())
            rule = constraint_text(f)
            lines.append(f"{pad}{f.name}: {_yaml_scalar(value)}  # {_flags_text(path + (f.name,), aliases)}"
                         + (f" ({rule})" if rule else "") + _aliases_text(f))
    return lines


def defaults_yaml(sections: list[str] | None = None) -> str:
    """Every default of every registered section, as commented YAML (the documented reference)."""
    out: list[str] = []
    for section in sections or list(CONFIG_SECTIONS):
        cls = section_class(section)
        out.append(f"{section}:")
        out.extend(_document(cls, cls(), 1))
        out.append("")
    return "\n".join(out)


def defaults_markdown() -> str:
    """The text of docs/configuration.md (regenerate with `kormed config show --markdown`)."""
    parts = [
        "# Configuration reference",
        "",
        "Generated by `kormed config show --markdown`; do not edit by hand (a test checks it is current).",
        "",
        "Every command reads an optional YAML file (`--config FILE`) with one section per stage. Values are taken",
        "in this order, later wins: the defaults below, a preset (`--preset`), the file's section, command-line flags.",
        "A pipeline file for `kormed run` holds several sections at once. Unknown keys, wrong types, values out of",
        "range or not among its choices (each key's rule is in brackets after its flags), a number that is not finite",
        "(`nan`, `inf`: no option takes one) and a seed outside 0-4294967295 are errors naming the file and",
        "`section.key` (or, on the command line, the flag), checked when the config is read, before any work. The",
        "YAML is read safely: a duplicate key, aliases that repeat more than 10,000 nodes, nesting deeper than 100",
        "levels, an integer of more than 64 digits or text that is not UTF-8 is an error naming the file and line.",
        "",
        "Every key is also a flag of the command that reads its section (after `#` below): a top-level key as",
        "`--key`, a nested one dotted (`--lora.r`, `--train.warmup-ratio`), plus a short alias for some",
        "(`--lr`). A bool is `--key/--no-key`; a list or mapping takes YAML (`--lora.target-modules q_proj,v_proj`).",
        "The names transformers' TrainingArguments, TRL and PEFT give an option are accepted too (after `also`",
        "below): as a key beside it or, for a `train`/`lora` option, at the top of the section",
        "(`learning_rate: 1e-4`), and as a flag with `-` or `_` (`--learning-rate`, `--learning_rate`, `--bf16`).",
        "An option given under two names is an error naming both; an unknown key or flag is answered with the",
        "closest known name, and an option of those libraries that kormed does not take is said to be one.",
        "A flag left out changes nothing. `--config` takes a file with this section, a pipeline file or a run's",
        "`resolved_config.yaml`: each command reads only its own section.",
        "",
    ]
    for section in CONFIG_SECTIONS:
        parts += [f"## `{section}`", "", "```yaml", defaults_yaml([section]).rstrip(), "```", ""]
    return "\n".join(parts)
