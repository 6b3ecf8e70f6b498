"""The `kormed` command line. Each stage registers its commands from its own `commands` module;
every command is a thin call into its stage. User errors (KormedError) print one clear message."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from kormed.errors import KormedError


class KormedGroup(TyperGroup):
    """The root command group: a KormedError, or an OSError the user's environment caused (disk full, permission
    denied, read-only file system, a file where a directory is expected), ends any command with one line on stderr
    and exit code 2 - the same in `kormed` and in-process (typer.testing.CliRunner)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KormedError as exc:
            message = str(exc)
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

# Stage modules that register commands; a stage not built yet is simply absent.
# A command module must not import torch/transformers at module level (keeps `kormed --help` fast).
COMMAND_MODULES = [
    "kormed.prepare.commands",  # kormed prepare
    "kormed.prepare.namumark_cli",  # kormed namumark
    "kormed.tokenizer.commands",  # kormed tokenizer extend
    "kormed.train.cpt_cli",  # kormed train cpt
    "kormed.train.export_cli",  # kormed export (--merge, --gguf)
    "kormed.chat",  # kormed chat
    "kormed.train.sft_cli",  # kormed train sft, kormed train loop
    "kormed.eval.commands",  # kormed eval kormedmcqa / ppl
    "kormed.bench.prepare",  # kormed bench prepare
    "kormed.bench.eval",  # kormed bench eval
    "kormed.bench.train",  # kormed bench train
    "kormed.bench.quality",  # kormed bench quality
    "kormed.pipeline.commands",  # kormed run, demo, report
]


@subapps["model"].command("path")
def model_path(
    model: str = typer.Option(None, "--model", help="Hub id or local directory; default: embedded Gemma 3 270M."),
) -> None:
    """Print the local directory of the resolved model (converting the embedded default on first use)."""
    from kormed.models import resolve_model

    typer.echo(resolve_model(model, log=lambda m: typer.echo(m, err=True)))


@subapps["config"].command("show")
def config_show(
    section: list[str] = typer.Argument(None, help="Sections to show (default: all)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print docs/configuration.md instead."),
) -> None:
    """Print every configuration option with its default and documentation, as YAML."""
    from kormed.config import CONFIG_SECTIONS, defaults_markdown, defaults_yaml

    if markdown:
        typer.echo(defaults_markdown(), nl=False)
        return

    for s in section or []:
        if s not in CONFIG_SECTIONS:
            raise KormedError(f"unknown section '{s}' (known: {', '.join(CONFIG_SECTIONS)})")
    typer.echo(defaults_yaml(section or None), nl=False)


def _register_stage_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # the stage (or its package) does not exist yet
            raise
        module.register(app, subapps)


_register_stage_commands()


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
