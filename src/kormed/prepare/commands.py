"""`kormed prepare`: the command-line front of `kormed.prepare.pipeline.run_prepare`.

Values come from, later wins: defaults (seed 001) <- `--preset` <- `--config` YAML section `prepare` <- flags.
Paths given as flags are relative to the current directory; paths in YAML are relative to the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _abs(p: Path | None) -> str | None:
    return str(p.expanduser().absolute()) if p is not None else None


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Register `kormed prepare` on the root app."""

    @app.command("prepare")
    def prepare(
        data_root: Path = typer.Option(None, "--data-root", help="Data root in the seeds' layout (default: .)."),
        out: Path = typer.Option(
            None, "--out", help="Output JSONL (default: data/01_raw/00_korean/korean/raw_text_mixed.jsonl)."
        ),
        config: Path = typer.Option(None, "--config", help="YAML file; its `prepare` section is applied."),
        preset: str = typer.Option(None, "--preset", help="Bundled preset (seed-000) or a YAML file."),
        seed: int = typer.Option(None, "--seed", help="Random seed (sampling, validation split, shuffle)."),
        num_proc: int = typer.Option(None, "--num-proc", help="Cleaning worker processes (0 = all cores)."),
        all_docs: bool = typer.Option(None, "--all/--sample", help="Use every plain document instead of sampling."),
        plain_docs: int = typer.Option(None, "--plain-docs", help="Plain documents to sample (default 100000)."),
        val_fraction: float = typer.Option(None, "--val-fraction", help="Validation share of plain documents."),
        mcq_style: str = typer.Option(None, "--mcq-style", help="korean_only (seed 001) or with_english (000)."),
        skip_bad: bool = typer.Option(None, "--skip-bad/--no-skip-bad", help="Skip and count bad records."),
        duplicates: str = typer.Option(
            None, "--duplicates", help="drop (default) or keep medical records that repeat an earlier one (counted)."
        ),
        namu_wiki: Path = typer.Option(None, "--namu-wiki", help="Namu Wiki dataset directory."),
        wikipedia_korean: Path = typer.Option(None, "--wikipedia-korean", help="Korean Wikipedia dataset directory."),
        c4_korean: Path = typer.Option(None, "--c4-korean", help="Korean C4 dataset directory."),
        mcq: Path = typer.Option(None, "--mcq", help="KorMedMCQA train JSONL."),
        medical_dict: Path = typer.Option(None, "--medical-dict", help="Medical dictionary JSON."),
        char_dict: Path = typer.Option(None, "--char-dict", help="Medical symbol dictionary JSON."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Clean, convert and mix the four sources into one CPT corpus (JSONL), with a validation set and stats."""
        from kormed.config import load_config
        from kormed.prepare.config import load_preset
        from kormed.prepare.pipeline import run_prepare

        overrides: dict[str, Any] = {
            "data_root": _abs(data_root),
            "out": _abs(out),
            "seed": seed,
            "num_proc": num_proc,
            "all": all_docs,
            "plain_docs": plain_docs,
            "val_fraction": val_fraction,
            "mcq_style": mcq_style,
            "skip_bad": skip_bad,
            "duplicates": duplicates,
        }
        paths = {
            "namu_wiki": namu_wiki,
            "wikipedia_korean": wikipedia_korean,
            "c4_korean": c4_korean,
            "mcq": mcq,
            "medical_dict": medical_dict,
            "char_dict": char_dict,
        }
        for name, p in paths.items():
            if p is not None:
                overrides[name] = {"path": _abs(p)}
        cfg = load_config("prepare", config, overrides, preset=load_preset(preset) if preset else None)
        run_prepare(cfg, log=typer.echo, progress=not quiet)
