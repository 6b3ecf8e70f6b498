"""The `kormed` command line.

Every command that runs a stage is one row of `COMMANDS`: its config section, its run function and how its result
is printed. Its flags are generated from the section's dataclass (kormed.flags), so an option is declared once, in
its `opt()`. Commands that read no config section (export, namumark, run, bench, ...) are written by hand in the
modules of `HAND_WRITTEN`. User errors (KormedError) print one clear message.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from kormed.config import (
    CONFIG_SECTIONS,
    defaults_markdown,
    defaults_yaml,
    foreign_option,
    load_config,
    section_class,
)
from kormed.errors import KormedError
from kormed.flags import command_class, config_parameters, overrides_from_params
from kormed.prepare.config import load_preset

# kormed opens no network connection at run time (the one download the user asks for, `kormed model path
# --download`, lifts this in models.hub_offline(False)). Offline from the start, before a Hugging Face library is
# imported: imported on a CPU with AVX512-BF16, bitsandbytes' CPU backend asks the hub for a kernel
# (kernels-community/quantization-bitsandbytes, through `kernels`, a transformers dependency) and falls back to its
# own when that fails; offline it fails at once, and neither library's note about it is kormed's to print.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _name in ("bitsandbytes.backends.cpu.ops", "kernels"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# click's "no such option" error, from the click that typer runs on (typer 0.29 vendors its own copy)
NoSuchOption = importlib.import_module(typer.BadParameter.__module__).NoSuchOption


def unknown_flag(exc: Any) -> str:
    """One line for an option the command does not have: a transformers/TRL/PEFT option kormed does not take said
    as such, else the closest option of the command (difflib; an HF name's `_` or `-` form alike)."""
    name = exc.option_name
    command = exc.ctx.command_path if exc.ctx is not None else "kormed"
    foreign = foreign_option(name.lstrip("-"))
    if foreign:
        return f"{name}: {foreign}"
    known = [o for p in (exc.ctx.command.params if exc.ctx is not None else [])
             for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (see `{command} --help`)"
    return f"no such option {name} in `{command}`{hint}"


class KormedGroup(TyperGroup):
    """The root command group: a KormedError, or an OSError the user's environment caused (disk full, permission
    denied, read-only file system, a file where a directory is expected), ends any command with one line on stderr
    and exit code 2 - the same in `kormed` and in-process (typer.testing.CliRunner). So does an unknown option."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:  # `kormed --versoin`
            typer.echo(f"kormed: error: {unknown_flag(exc)}", err=True)
            raise typer.Exit(2) from None

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KormedError as exc:
            message = str(exc)
        except NoSuchOption as exc:
            message = unknown_flag(exc)
        except OSError as exc:
            from kormed.io import os_error

            err = os_error(exc)
            if err is None:
                raise
            message = str(err)
        typer.echo(f"kormed: error: {message}", err=True)
        raise typer.Exit(2)


app = typer.Typer(
    cls=KormedGroup,
    name="kormed",
    help="Turn a Gemma-3-family medical model into a Korean-medicine model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
subapps: dict[str, typer.Typer] = {
    "train": typer.Typer(help="Training stages: cpt, sft, loop.", no_args_is_help=True),
    "eval": typer.Typer(help="Evaluation: KorMedMCQA accuracy and perplexity.", no_args_is_help=True),
    "bench": typer.Typer(help="Benchmarks that print measured figures.", no_args_is_help=True),
    "tokenizer": typer.Typer(help="Tokenizer extension for Korean medical text.", no_args_is_help=True),
    "model": typer.Typer(help="Model resolution helpers.", no_args_is_help=True),
    "config": typer.Typer(help="Configuration reference.", no_args_is_help=True),
}
for _name, _sub in subapps.items():
    app.add_typer(_sub, name=_name)


def _print_version(value: bool) -> None:
    if value:
        from kormed.env_cli import kormed_version

        typer.echo(f"kormed {kormed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print kormed's version and exit."),
) -> None:
    """Turn a Gemma-3-family medical model into a Korean-medicine model."""


@dataclass(frozen=True)
class StageCommand:
    """One command that runs a stage: `run(cfg, log=..., **options)`, then `show(result, cfg)` prints the result.
    Both are "module:function" strings, imported only when the command runs: run functions import torch, and
    `kormed --help` must stay fast."""

    section: str  # config section: the flags, the `--config` section and `kormed config show`
    run: str
    help: str
    show: str | None = None
    options: tuple[inspect.Parameter, ...] = ()  # non-config flags, passed to `run` under their names
    sections: dict[str, str] = field(default_factory=dict)  # run keyword -> another section of --config (or None)
    preset: bool = False  # `--preset` (bundled name or YAML file): between the defaults and --config
    progress: bool = False  # `--quiet`: run(progress=False)
    log_to_stdout: bool = False  # progress lines on stdout instead of stderr


def _option(name: str, annotation: Any, default: Any, *decls: str, help: str) -> inspect.Parameter:  # noqa: A002
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, help=help))


# command (group, name) -> what it runs. The group "" is the root (`kormed prepare`).
COMMANDS: dict[tuple[str, str], StageCommand] = {
    ("", "prepare"): StageCommand(
        "prepare", "kormed.prepare.corpus:run_prepare", log_to_stdout=True, preset=True, progress=True,
        help="Clean, convert and mix the four sources into one CPT corpus (JSONL), with a validation set and "
             "stats.\n\nPaths given as flags are relative to the current directory; paths in YAML are relative to "
             "the data root.",
    ),
    ("tokenizer", "extend"): StageCommand(
        "tokenizer", "kormed.tokenizer.extend:extend_tokenizer", show="kormed.tokenizer.extend:show",
        help="Extend the base tokenizer with Korean medical terms and frequent Korean words; print the report.",
    ),
    ("train", "cpt"): StageCommand(
        "cpt", "kormed.train.cpt:run_cpt", show="kormed.train.cpt:show",
        sections={"tokenizer_options": "tokenizer"},
        help="Continued pretraining with LoRA on packed raw text (validation perplexity, early stopping).",
    ),
    ("train", "sft"): StageCommand(
        "sft", "kormed.train.sft:run_sft", show="kormed.train.sft:show",
        help="Staged chat-format SFT (4 steps): answer-only loss, ratio mixes, per-step stop conditions.",
    ),
    ("train", "loop"): StageCommand(
        "loop", "kormed.train.loop:run_loop", show="kormed.train.loop:show",
        help="Alternate dictionary and MCQ-with-reasoning SFT rounds until the KorMedMCQA target accuracy.",
    ),
    ("eval", "kormedmcqa"): StageCommand(
        "eval", "kormed.eval.kormedmcqa:run_kormedmcqa", show="kormed.eval.kormedmcqa:show",
        progress=True,
        help="KorMedMCQA accuracy: overall, per subset, per year, unparseable answers; a table and a JSON file.",
    ),
    ("eval", "ppl"): StageCommand(
        "eval", "kormed.eval.perplexity:run_perplexity", show="kormed.eval.perplexity:show",
        progress=True,
        help="Token-weighted loss and perplexity on held-out raw text, over blocks packed exactly as CPT packs them.",
    ),
    ("eval", "knowledge"): StageCommand(
        "eval", "kormed.eval.knowledge:run_knowledge", show="kormed.eval.knowledge:show",
        progress=True,
        help="Dictionary knowledge: multiple choice from the medical and symbol dictionaries (forms no stage "
             "trains on), accuracy per form, trained vs held-out entries.",
    ),
    ("", "chat"): StageCommand(
        "chat", "kormed.chat:run_chat",
        options=(_option("prompt", str | None, None, "--prompt",
                         help="One-shot: answer this and exit (else stdin if piped)."),),
        help="Chat with a model in the Gemma chat format (streaming; /reset, /exit); one-shot with --prompt or stdin.",
    ),
}

# Modules whose `register(app, subapps)` adds commands written by hand (no config section). A missing module is an
# import error, not a command that quietly disappears. They must not import torch at module level.
HAND_WRITTEN = (
    "kormed.prepare.namumark_cli",  # kormed namumark
    "kormed.export.command",  # kormed export (--merge, --gguf)
    "kormed.bench.prepare",  # kormed bench prepare
    "kormed.bench.eval",  # kormed bench eval
    "kormed.bench.train",  # kormed bench train
    "kormed.bench.quality",  # kormed bench quality
    "kormed.bench.data",  # kormed bench data
    "kormed.pipeline.commands",  # kormed run, demo, report
    "kormed.env_cli",  # kormed env
)


def _function(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage_command(command: StageCommand, config: Path | None, params: dict[str, Any]) -> Any:
    """Load the command's config (defaults < preset < --config section < flags) and run it; print its result."""

    preset = params.get("preset")
    cfg = load_config(
        command.section, config, overrides_from_params(section_class(command.section), params),
        preset=load_preset(preset, command.section) if preset else None,
    )
    kwargs = {option.name: params[option.name] for option in command.options}
    if command.progress:
        kwargs["progress"] = not params["quiet"]
    for keyword, section in command.sections.items():
        kwargs[keyword] = load_config(section, config) if config is not None else None
    log_err = not command.log_to_stdout
    result = _function(command.run)(cfg, log=lambda m: typer.echo(m, err=log_err), **kwargs)
    if command.show is not None:
        _function(command.show)(result, cfg)
    return result


def _register_stage_command(group: typer.Typer, name: str, command: StageCommand) -> None:
    """Add the command with a signature built from its section's fields (typer reads `__signature__`)."""

    own = [
        _option("config", Path | None, None, "--config",
                help=f"YAML file: its `{command.section}:` section applies (a pipeline file or a run's "
                     "resolved_config.yaml is fine)."),
        *command.options,
    ]
    if command.preset:
        own.append(_option("preset", str | None, None, "--preset",
                           help="Bundled preset (e.g. seed-000) or a YAML file with this section."))
    if command.progress:
        own.append(_option("quiet", bool, False, "--quiet", help="No progress bars."))
    parameters = [*own, *config_parameters(section_class(command.section))]

    def stage_command(**params: Any) -> None:
        run_stage_command(command, params.pop("config"), params)

    stage_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    stage_command.__annotations__ = {p.name: p.annotation for p in parameters}
    group.command(name, help=command.help, cls=command_class(section_class(command.section)))(stage_command)


def _register_commands() -> None:
    for (group, name), command in COMMANDS.items():
        _register_stage_command(subapps[group] if group else app, name, command)
    for module in HAND_WRITTEN:
        importlib.import_module(module).register(app, subapps)


@subapps["model"].command("path")
def model_path(
    model: str = typer.Option(None, "--model", help="Hub id or local directory; default: embedded Gemma 3 270M."),
    download: bool = typer.Option(False, "--download", help="Fetch the hub model --model into the Hugging Face "
                                                            "cache first (the one command that downloads a model)."),
) -> None:
    """Print the local directory of the resolved model (converting the embedded default on first use)."""
    from kormed.models import download_hub_model, in_hub_cache, looks_like_hub_id, resolve_model

    def log(message: str) -> None:
        typer.echo(message, err=True)

    if download and model and looks_like_hub_id(model) and not Path(model).expanduser().exists() \
            and not in_hub_cache(model):
        download_hub_model(model, log=log)
    typer.echo(resolve_model(model, log=log))


@subapps["config"].command("show")
def config_show(
    section: list[str] = typer.Argument(None, help="Sections to show (default: all)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print docs/configuration.md instead."),
) -> None:
    """Print every configuration option with its default and documentation, as YAML."""

    if markdown:
        typer.echo(defaults_markdown(), nl=False)
        return

    for s in section or []:
        if s not in CONFIG_SECTIONS:
            raise KormedError(f"unknown section '{s}' (known: {', '.join(CONFIG_SECTIONS)})")
    typer.echo(defaults_yaml(section or None), nl=False)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning KormedError into a one-line message and exit code 2."""
    try:
        app(args=argv, prog_name="kormed", standalone_mode=True)
    except KormedError as exc:
        typer.echo(f"kormed: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("kormed: interrupted", err=True)
        sys.exit(130)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


if __name__ == "__main__":
    main()
