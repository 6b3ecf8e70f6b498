"""Every `kormed` flag that README.md and docs/commands/*.md quote exists in that command's --help: a renamed or
removed option (such as the old `--step3.max-steps`) cannot linger in the docs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from kormed.cli import app, repo_root

ROOT = repo_root()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:[.-][a-z0-9]+)*")
SPAN = re.compile(r"`([^`\n]+)`")


def command_options() -> dict[tuple[str, ...], set[str]]:
    """Each command path (('train', 'sft'), ('export',), ...) with the option names its --help lists."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if getattr(cmd, "commands", None):  # a group (typer ships its own click, so no isinstance on click's)
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
            return
        names = {"--help"}
        for p in cmd.params:
            names.update(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
        out[path] = names

    walk(typer.main.get_command(app), ())
    return out


OPTIONS = command_options()
ROOT_FLAGS = {"--help", "--version"}


def _command_of(words: list[str]) -> tuple[str, ...] | None:
    """The longest command path that the words after `kormed` start with."""
    best = None
    for path in OPTIONS:
        if tuple(words[: len(path)]) == path and (best is None or len(path) > len(best)):
            best = path
    return best


def quoted_flags(text: str) -> list[tuple[tuple[str, ...] | None, str, str]]:
    """(command named by the quote or None, flag, the quote) for each flag in a code span or code-block line; a
    quote of another program's command line (accelerate launch, llama.cpp, ollama, pip) is left out."""
    quotes = [m.group(1) for m in SPAN.finditer(text)]
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block:
            quotes.append(line.split(" #")[0])  # a shell comment may quote anything
    found = []
    for quote in quotes:
        words = quote.replace("\\", " ").split()
        command = None
        if "kormed" in words:
            command = _command_of(words[words.index("kormed") + 1:])
        elif words and not words[0].startswith("--"):
            continue  # another program's command line
        found += [(command, flag, quote) for flag in FLAG.findall(quote)]
    return found


PAGES = sorted((ROOT / "docs" / "commands").glob("*.md"))


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_quoted_flag_exists(page: Path):
    everything = set().union(*OPTIONS.values())  # a bare `--flag` may name any command's option
    missing = []
    for command, flag, quote in quoted_flags(page.read_text(encoding="utf-8")):
        known = OPTIONS[command] if command else everything
        if flag not in known | ROOT_FLAGS:
            missing.append(f"{flag} in `{quote[:80]}`")
    assert not missing, f"{page.name}: flags that the command's --help does not list: {missing}"


def test_the_checker_sees_a_removed_flag():
    """The walk finds generated dotted flags and would flag the old per-step spelling."""
    sft = OPTIONS[("train", "sft")]
    assert "--lora.r" in sft and "--train.warmup-ratio" in sft
    assert quoted_flags("`kormed train sft --step3.max-steps 200`") == [
        (("train", "sft"), "--step3.max-steps", "kormed train sft --step3.max-steps 200")]
    assert "--step3.max-steps" not in sft
