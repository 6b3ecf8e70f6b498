"""Flags generated from the config dataclasses (kormed.flags) and the command table (kormed.cli.COMMANDS):
every field of a command's section is a flag that lands in the config; old short flags mean what the dotted ones
mean; flag beats YAML beats default; every example YAML, preset and resolved_config.yaml is accepted by every
command that reads it. Runs the command line up to the config (the run function is replaced), never training."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

import kormed.cli as cli
from kormed.config import CONFIG_SECTIONS, PIPELINE_KEYS, load_config, section_class
from kormed.flags import FieldFlag, field_flags

ROOT = Path(__file__).resolve().parents[1]
COMMAND_IDS = [" ".join(p for p in key if p) for key in cli.COMMANDS]


@pytest.fixture(scope="module")
def click_app() -> Any:
    return typer.main.get_command(cli.app)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace every run/show function: the run records its config and keyword arguments."""
    seen: dict[str, Any] = {}

    def function(spec: str) -> Any:
        def run(cfg: Any, **kwargs: Any) -> None:
            seen["cfg"], seen["kwargs"] = cfg, kwargs

        return run if spec == seen.get("run") else (lambda result, cfg: None)

    def resolve(spec: str) -> Any:
        return function(spec)

    monkeypatch.setattr(cli, "_function", resolve)
    # `quantize: 4bit` checks that bitsandbytes imports (about 20 s of torch import here; tested in test_qlora)
    monkeypatch.setattr("kormed.quantization.require_bitsandbytes", lambda *args, **kwargs: None)
    return seen


def _invoke(click_app: Any, captured: dict[str, Any], key: tuple[str, str], args: list[str]) -> Any:
    captured.clear()
    captured["run"] = cli.COMMANDS[key].run
    words = [p for p in key if p]
    click_app.main([*words, *args], prog_name="kormed", standalone_mode=False)
    assert "cfg" in captured, "the run function was not called"
    return captured["cfg"]


# Values that pass a section's validate() where the generic choice would not.
VALID: dict[str, Any] = {
    "device": "cpu",
    "from_step": 3,
    "report_to": ["none"],
    "stop": ["eval_qa_loss < 0.5"],
    "stable_metrics": ["eval_qa_loss"],
    "eod_token": "<eos>",
    "scheduler": "linear",
    "optim": "adamw_torch_fused",
    "target_perplexity": 3.0,
    "dict_forms": ["meaning", "term"],
}
# The same by the field's whole path, kept at their defaults: train.method full is refused beside the adapter and
# 4bit this test also sets (`--method full` landing is test_full_finetune.py's), `--streaming` beside num_workers > 0
# (its landing is test_cpt_streaming.py's).
VALID_PATHS: dict[tuple[str, ...], Any] = {("train", "method"): "lora", ("streaming",): False}


def _new_value(ff: FieldFlag) -> Any:
    """A value different from the default that the section accepts."""
    if tuple(ff.path) in VALID_PATHS:
        return VALID_PATHS[tuple(ff.path)]
    if ff.path[-1] in VALID:
        return VALID[ff.path[-1]]
    tp, default = ff.tp, ff.default
    if tp is bool:
        return not default
    if typing.get_origin(tp) is typing.Literal:
        return next(c for c in typing.get_args(tp) if c != default)
    if tp is int:
        return 3 if default is None else default + 1
    if tp is float:
        return 0.25 if not default else default / 2
    if tp is str:
        return f"{ff.path[-1]}-from-flag"
    if typing.get_origin(tp) is list and default and dataclasses.is_dataclass(default[0]):
        # a list of sections (sft.steps, loop.rounds): the same sections with the first one's budget changed
        return [dataclasses.replace(default[0], max_steps=default[0].max_steps + 1), *default[1:]]
    if typing.get_origin(tp) is list:
        return ["q_proj", "v_proj"]
    if typing.get_origin(tp) is dict:  # a mapping is merged key by key, as in YAML: change every value
        return {k: v / 2 for k, v in default.items()} if default else {"qa": 0.5}
    raise AssertionError(f"no test value for {ff.flag} ({tp})")


def _as_arg(ff: FieldFlag, value: Any) -> list[str]:
    if ff.tp is bool:
        return [ff.flag if value else f"--no-{ff.flag[2:]}"]
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [dataclasses.asdict(v) for v in value]
    if isinstance(value, list | dict):
        return [ff.flag, yaml.safe_dump(value, default_flow_style=True).strip()]
    return [ff.flag, str(value)]


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("key", list(cli.COMMANDS), ids=COMMAND_IDS)
def test_every_field_is_a_flag_that_lands_in_the_config(click_app, captured, key) -> None:
    command = cli.COMMANDS[key]
    flags = field_flags(section_class(command.section))
    args: list[str] = []
    expected = {}
    for ff in flags:
        value = _new_value(ff)
        args += _as_arg(ff, value)
        expected[ff.path] = value
    cfg = _invoke(click_app, captured, key, args)
    for ff in flags:
        got = _get(cfg, ff.path)
        want = expected[ff.path]
        if ff.as_path:  # a path flag is taken from the current directory
            want = str(Path(want).absolute())
        assert got == want, f"{ff.flag}: {got!r} != {want!r}"
    # and the default of every field when no flag is given (a flag left out overrides nothing)
    cfg = _invoke(click_app, captured, key, [])
    assert cfg == section_class(command.section)()


def test_every_field_has_help_and_no_flag_is_declared_twice() -> None:
    for section in CONFIG_SECTIONS:
        seen: dict[str, str] = {}
        for ff in field_flags(section_class(section)):
            assert ff.help, f"{section}: {ff.flag} has no help"
            names = [ff.flag, *(a.split("/", 1)[0] for a in ff.aliases)]
            for name in names:
                assert seen.setdefault(name, ff.flag) == ff.flag, f"{section}: {name} is {seen[name]} and {ff.flag}"


# Today's short flags (each worked before the flags were generated) -> the dotted flag with the same meaning.
ALIASES: dict[tuple[str, str], list[tuple[list[str], list[str]]]] = {
    ("train", "cpt"): [
        (["--lr", "0.001"], ["--train.lr", "0.001"]),
        (["--batch-size", "3"], ["--train.batch-size", "3"]),
        (["--grad-accum", "4"], ["--train.grad-accum", "4"]),
        (["--max-steps", "7"], ["--train.max-steps", "7"]),
        (["--epochs", "2"], ["--train.epochs", "2"]),
        (["--eval-steps", "5"], ["--train.eval-steps", "5"]),
        (["--seed", "9"], ["--train.seed", "9"]),
        (["--device", "cpu"], ["--train.device", "cpu"]),
        (["--dtype", "float32"], ["--train.dtype", "float32"]),
        (["--quantize", "4bit"], ["--train.quantize", "4bit"]),
        (["--train-embeddings"], ["--lora.train-embeddings"]),
        (["--no-train-embeddings"], ["--no-lora.train-embeddings"]),
    ],
    ("train", "sft"): [
        (["--lr", "0.001"], ["--train.lr", "0.001"]),
        (["--batch-size", "3"], ["--train.batch-size", "3"]),
        (["--grad-accum", "4"], ["--train.grad-accum", "4"]),
        (["--eval-steps", "5"], ["--train.eval-steps", "5"]),
        (["--seed", "9"], ["--train.seed", "9"]),
        (["--device", "cpu"], ["--train.device", "cpu"]),
        (["--dtype", "bfloat16"], ["--train.dtype", "bfloat16"]),
        (["--quantize", "4bit"], ["--train.quantize", "4bit"]),
    ],
    ("train", "loop"): [
        (["--lr", "0.001"], ["--train.lr", "0.001"]),
        (["--eval-steps", "5"], ["--train.eval-steps", "5"]),
        (["--seed", "9"], ["--train.seed", "9"]),
        (["--device", "cpu"], ["--train.device", "cpu"]),
        (["--dtype", "float32"], ["--train.dtype", "float32"]),
        (["--quantize", "4bit"], ["--train.quantize", "4bit"]),
    ],
    ("", "prepare"): [
        (["--mcq", "q.jsonl"], ["--mcq.path", "q.jsonl"]),
        (["--medical-dict", "d.json"], ["--medical-dict.path", "d.json"]),
        (["--char-dict", "c.json"], ["--char-dict.path", "c.json"]),
        (["--namu-wiki", "n"], ["--namu-wiki.path", "n"]),
        (["--wikipedia-korean", "w"], ["--wikipedia-korean.path", "w"]),
        (["--c4-korean", "c"], ["--c4-korean.path", "c"]),
        (["--all"], ["--all"]),
        (["--sample"], ["--no-all"]),
    ],
}


@pytest.mark.parametrize(("key", "short", "dotted"),
                         [(k, s, d) for k, pairs in ALIASES.items() for s, d in pairs])
def test_old_short_flags_give_the_same_config_as_the_dotted_ones(click_app, captured, key, short, dotted) -> None:
    by_short = _invoke(click_app, captured, key, short)
    by_dotted = _invoke(click_app, captured, key, dotted)
    assert by_short == by_dotted
    if not short[0].startswith(("--no-", "--sample")):  # an off switch may equal the default
        assert by_short != section_class(cli.COMMANDS[key].section)()


def test_todays_flags_all_still_parse(click_app, captured) -> None:
    """Every flag the hand-written commands had (same names), with a value of the right kind."""
    old = {
        ("train", "sft"): "--mcq m --dict d --char-dict c --raw r --raw-val rv --from-adapter a --model m "
                          "--output o --max-steps-per-step 2 --max-length 64 --device cpu --dtype float32 "
                          "--padding-free --no-padding-free --from-step 2 --eval-steps 3 --batch-size 2 "
                          "--grad-accum 2 --lr 0.01 --seed 1 --quantize none",
        ("train", "loop"): "--mcq m --dict d --char-dict c --raw r --raw-val rv --eval-data e --target 0.5 "
                           "--max-rounds 2 --eval-limit 3 --eval-mode loglik --from-adapter a --model m --output o "
                           "--max-steps-per-round 2 --max-length 64 --device cpu --dtype float32 --padding-free "
                           "--eval-steps 3 --lr 0.01 --seed 1 --quantize none",
        ("train", "cpt"): "--data d --val v --model m --tokenizer-path t --adapter a --output o --max-steps 2 "
                          "--max-samples 3 --epochs 1 --max-length 64 --batch-size 2 --grad-accum 2 --lr 0.01 "
                          "--eval-steps 3 --seed 1 --train-embeddings --resume --device cpu --dtype float32 "
                          "--quantize none",
        ("", "prepare"): "--data-root . --out o.jsonl --preset seed-000 --seed 1 --num-proc 1 --all --plain-docs 5 "
                         "--val-fraction 0.1 --mcq-style with_english --skip-bad --duplicates keep --namu-wiki n "
                         "--wikipedia-korean w --c4-korean c --mcq q --medical-dict d --char-dict c --quiet",
        ("tokenizer", "extend"): "--model m --corpus c --dict d --out o --max-new-tokens 5 --max-dict-tokens 2 "
                                 "--min-frequency 2 --method added_tokens --seed 1",
        ("eval", "kormedmcqa"): "--model m --adapter a --data d --fewshot-file f --num-fewshot 1 --mode loglik "
                                "--loglik-target text --output o --limit 2 --subset s --device cpu --dtype float32 "
                                "--batch-size 2 --max-new-tokens 5 --quiet",
        ("eval", "ppl"): "--model m --adapter a --data d --max-length 64 --eod-token <eos> --text-field t --limit 2 "
                         "--device cpu --dtype float32 --batch-size 2 --output o --quiet",
        ("", "chat"): "--model m --adapter a --prompt p --system s --max-new-tokens 5 --temperature 0.5 "
                      "--top-p 0.5 --device cpu",
    }
    for key, line in old.items():
        cfg = _invoke(click_app, captured, key, line.split())
        assert cfg != section_class(cli.COMMANDS[key].section)(), key
    assert captured["kwargs"]["prompt"] == "p"
    _invoke(click_app, captured, ("eval", "ppl"), ["--quiet"])
    assert captured["kwargs"]["progress"] is False


def test_flag_beats_yaml_beats_default(click_app, captured, tmp_path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"cpt": {"train": {"lr": 0.003, "warmup_ratio": 0.2}, "lora": {"r": 8}}}))
    cfg = _invoke(click_app, captured, ("train", "cpt"), ["--config", str(cfg_file), "--lr", "0.004"])
    assert cfg.train.lr == 0.004  # flag over YAML
    assert cfg.train.warmup_ratio == 0.2 and cfg.lora.r == 8  # YAML over default; unset flags override nothing
    assert cfg.train.batch_size == section_class("cpt")().train.batch_size  # default
    cfg = _invoke(click_app, captured, ("train", "cpt"), ["--config", str(cfg_file), "--lora.r", "4"])
    assert cfg.lora.r == 4 and cfg.train.lr == 0.003


def test_prepare_preset_sits_between_defaults_and_yaml(click_app, captured, tmp_path) -> None:
    cfg = _invoke(click_app, captured, ("", "prepare"), ["--preset", "seed-000"])
    preset = cfg.mcq_style
    assert preset != section_class("prepare")().mcq_style
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text(yaml.safe_dump({"prepare": {"mcq_style": "korean_only"}}))
    cfg = _invoke(click_app, captured, ("", "prepare"), ["--preset", "seed-000", "--config", str(cfg_file)])
    assert cfg.mcq_style == "korean_only"
    cfg = _invoke(click_app, captured, ("", "prepare"),
                  ["--preset", "seed-000", "--config", str(cfg_file), "--mcq-style", preset])
    assert cfg.mcq_style == preset


def test_a_bad_flag_value_is_named_by_the_flag_the_user_typed() -> None:
    from typer.testing import CliRunner

    cases = [
        (["train", "cpt", "--lr", "nan"], "--lr"),
        (["train", "cpt", "--train.warmup-ratio", "inf"], "--train.warmup-ratio"),
        (["train", "cpt", "--lora.embedding-rows", "some"], "--lora.embedding-rows"),
        (["prepare", "--mcq.multiplier", "-1"], "--mcq.multiplier"),
    ]
    for args, flag in cases:
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 2 and f"field '{flag}'" in result.output, result.output


def _yaml_files() -> list[Path]:
    files = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((ROOT / "src/kormed/presets").glob("*.yaml"))
    return [f for f in files if isinstance(yaml.safe_load(f.read_text(encoding="utf-8")), dict)
            and any(k in CONFIG_SECTIONS for k in yaml.safe_load(f.read_text(encoding="utf-8")))]


def _commands_reading(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [key for key, command in cli.COMMANDS.items() if command.section in data]


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_yaml_is_accepted_by_every_command_that_reads_it(click_app, captured, path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in _commands_reading(data):
        cfg = _invoke(click_app, captured, key, ["--config", str(path)])
        assert cfg == load_config(cli.COMMANDS[key].section, path)


def test_a_resolved_config_is_accepted_by_every_stage_command(click_app, captured, tmp_path) -> None:
    """A resolved_config.yaml as pipeline/run.py writes it (top-level keys, then one section per stage), from the
    bundled demo pipeline: every stage command reads its own section of it."""
    from kormed.config import read_yaml
    from kormed.pipeline.registry import STAGE_ORDER
    from kormed.pipeline.run import _write_resolved, pipeline_from_mapping, resolve_configs
    from kormed.pipeline.stages import default_specs

    demo = ROOT / "src/kormed/presets/demo.yaml"
    data = {**read_yaml(demo), "stages": list(STAGE_ORDER)}  # the demo's file with every stage listed
    pipeline = pipeline_from_mapping(data, source=demo, run_dir=tmp_path / "run")
    ctx = resolve_configs(pipeline, default_specs(), log=lambda m: None)
    (tmp_path / "run").mkdir(exist_ok=True)
    _write_resolved(pipeline, ctx)
    resolved = tmp_path / "run" / "resolved_config.yaml"
    data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    assert set(data) - set(CONFIG_SECTIONS) <= set(PIPELINE_KEYS)
    keys = _commands_reading(data)
    assert {cli.COMMANDS[k].section for k in keys} >= {"prepare", "tokenizer", "cpt", "sft", "loop", "eval"}
    for key in keys:
        cfg = _invoke(click_app, captured, key, ["--config", str(resolved)])
        assert dataclasses.asdict(cfg) == dataclasses.asdict(ctx.configs[cli.COMMANDS[key].section])


def test_help_shows_dotted_flags_aliases_and_choices(click_app) -> None:
    from typer.testing import CliRunner

    out = CliRunner().invoke(cli.app, ["train", "cpt", "--help"], env={"COLUMNS": "250"}).output
    for needle in ("--lora.r", "--train.warmup-ratio", "--lr", "--train-embeddings", "auto|float32|bfloat16",
                   "(default: 16)", "(default: [q_proj"):
        assert needle in out, needle


def test_the_configuration_reference_names_every_flag() -> None:
    from kormed.config import defaults_yaml

    for section in CONFIG_SECTIONS:
        text = defaults_yaml([section])
        for ff in field_flags(section_class(section)):
            line = next((ln for ln in text.splitlines() if f"# {ff.flag}" in ln), None)
            assert line is not None, f"{section}: {ff.flag} missing from the reference"
            for alias in ff.aliases:
                assert alias in line, f"{section}: {alias} missing beside {ff.flag}"


def test_building_every_command_imports_no_torch() -> None:
    """`kormed --help` stays fast: the run functions (torch, transformers) are imported only when a command runs."""
    import subprocess
    import sys

    code = ("import sys, typer.main, kormed.cli; typer.main.get_command(kormed.cli.app); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_in_the_table_resolves() -> None:
    """Each row names a run function and printer that exist (a missing module is an error, never a skipped
    command)."""
    import importlib

    for command in cli.COMMANDS.values():
        for spec in filter(None, (command.run, command.show)):
            module, _, name = spec.partition(":")
            assert callable(getattr(importlib.import_module(module), name)), spec
    for module in cli.HAND_WRITTEN:
        assert callable(importlib.import_module(module).register)


# -- every option refuses a bad value, from YAML and from its flag ------------------------------------------------
# The bad values are derived from each option's declaration (its opt(): bounds, choices, pattern; else its type),
# so an option added later is walked too. A free-text string has no bad value on the command line (any text is a
# string); from YAML it is given a list.


@dataclasses.dataclass
class _Option:
    yaml_path: tuple[str | int, ...]  # ('train', 'lr') or ('steps', 0, 'max_steps') inside the section
    field: dataclasses.Field
    tp: Any  # the field's type, Optional removed
    flag: FieldFlag | None  # None for a key of a list item (sft.steps[0].max_steps): YAML only


def _options(cls: type, instance: Any = None, prefix: tuple[str | int, ...] = ()) -> list[_Option]:
    """Every option of dataclass `cls`: nested sections and the first item of a list of sections walked."""
    from kormed.config import field_type
    from kormed.flags import _strip_optional

    instance = cls() if instance is None else instance
    flags = {ff.path: ff for ff in field_flags(cls)} if not prefix else {}
    out = []
    for f in dataclasses.fields(cls):
        tp = _strip_optional(field_type(cls, f.name))
        value = getattr(instance, f.name)
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(value):
            out += [dataclasses.replace(o, flag=flags.get(tuple(map(str, o.yaml_path))))
                    for o in _options(type(value), value, path)]
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            out.append(_Option(path, f, tp, flags.get((f.name,))))  # the list itself: a wrong type
            out += [dataclasses.replace(o, flag=None) for o in _options(type(value[0]), value[0], (*path, 0))]
        else:
            out.append(_Option(path, f, tp, flags.get(tuple(map(str, path)))))
    return out


def _bad_values(option: _Option) -> list[tuple[Any, bool]]:
    """(value, also as a flag) pairs that the declaration of `option` refuses."""
    meta, tp = option.field.metadata, option.tp
    out: list[tuple[Any, bool]] = []
    if "bounds" in meta:
        low, high = meta["bounds"][:2]
        left, right = meta["bounds"][2] if len(meta["bounds"]) > 2 else "[]"
        step = 1 if tp is int else 0.5
        if low is not None:
            out.append((low if left == "(" else low - step, True))
        if high is not None:
            out.append((high if right == ")" else high + step, True))
    if "choices" in meta or typing.get_origin(tp) is typing.Literal:
        out.append(("not-a-choice", True))
    if "pattern" in meta:
        out.append(("not a name!", True))
    if tp in (int, float):
        out.append(("abc", True))
    elif tp is bool:
        out.append(("maybe", False))  # a flag is a switch: it takes no value
    elif tp is str or typing.get_origin(tp) is typing.Literal:
        out.append(([1, 2], False))
    elif typing.get_origin(tp) is list:  # a flag's `5` is the list ['5'] (a list of paths may hold a file 5)
        out.append((5, False))
    elif typing.get_origin(tp) is dict:
        out.append((5, True))
    return out


def _nest(path: tuple[str | int, ...], value: Any, item: Any = None) -> Any:
    """The YAML mapping that sets `path` to `value` (an index: a list holding `item`'s fields, one replaced)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        return [{**dataclasses.asdict(item), **_nest(rest, value)}]
    return {head: _nest(rest, value, item)}


SECTION_COMMANDS = {command.section: key for key, command in reversed(cli.COMMANDS.items())}


@pytest.mark.parametrize("section", list(CONFIG_SECTIONS))
def test_every_option_refuses_a_bad_value_from_yaml_and_from_its_flag(captured, section, tmp_path) -> None:
    from typer.testing import CliRunner

    from kormed.config import flag_for

    key = SECTION_COMMANDS[section]
    cls = section_class(section)
    words = [p for p in key if p]
    failures = []

    def check(args: list[str], needle: str) -> None:
        captured.clear()
        captured["run"] = cli.COMMANDS[key].run
        result = CliRunner().invoke(cli.app, [*words, *args])
        errors = [line for line in result.output.splitlines() if line.startswith("kormed: error:")]
        if (result.exit_code != 2 or len(errors) != 1 or needle not in errors[0] or "cfg" in captured
                or len(result.output.strip().splitlines()) != 1):
            failures.append(f"{' '.join(args)}: exit {result.exit_code}: {result.output.strip()[:300]}")

    options = _options(cls)
    for n, option in enumerate(options):
        item = _get(cls(), tuple(str(p) for p in option.yaml_path[:option.yaml_path.index(0)])) \
            if 0 in option.yaml_path else None
        for value, as_flag in _bad_values(option):
            config = tmp_path / f"bad{n}.yaml"
            config.write_text(yaml.safe_dump({section: _nest(option.yaml_path, value, item and item[0])}),
                              encoding="utf-8")
            dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in option.yaml_path).replace(".[", "[")
            check(["--config", str(config)], f"{config}: field '{section}.{dotted}")
            if as_flag and option.flag is not None:
                flag = flag_for(cls, ".".join(option.flag.path))
                shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
                check([option.flag.flag, shown], f"field '{flag}'")
    assert not failures, f"{len(failures)} bad values accepted or not named in one line:\n" + "\n".join(failures)


@pytest.mark.parametrize("section", list(CONFIG_SECTIONS))
def test_every_number_option_declares_its_range_and_every_default_satisfies_its_declaration(section) -> None:
    from kormed.config import _violation

    for option in _options(section_class(section)):
        if option.tp in (int, float):
            assert "bounds" in option.field.metadata, f"{section}.{option.yaml_path}: no bounds declared"
        default = _get(section_class(section)(), tuple(str(p) for p in option.yaml_path if not isinstance(p, int))) \
            if 0 not in option.yaml_path else None
        for value in default if isinstance(default, list) else [default]:
            if value is not None and not dataclasses.is_dataclass(value):
                meta = dict(option.field.metadata)
                if isinstance(meta.get("choices"), str):  # a library's names: the default must be among them
                    from kormed.config import allowed_choices

                    assert value in allowed_choices(meta["choices"]), f"{section}.{option.yaml_path}: {value!r}"
                assert _violation(option.field, value) is None, f"{section}.{option.yaml_path}: {value!r}"
