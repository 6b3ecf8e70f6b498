"""`kormed run PIPELINE.yaml`, `kormed demo`, `kormed report RUN_DIR` (thin: the work is in run.py / report.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from kormed.errors import KormedError


def demo_pipeline_path() -> Path:
    """The bundled demo pipeline (sample data, embedded Gemma 3 270M, short step budgets)."""
    return Path(__file__).resolve().parents[1] / "presets" / "demo.yaml"


def _split_report_to(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    known = {"tensorboard", "wandb", "none", "mlflow", "trackio", "comet_ml", "clearml", "dvclive"}
    for v in out:
        if v not in known:
            raise KormedError(f"unknown logger {v!r} (e.g. tensorboard, wandb, none)", field="--report-to")
    return [v for v in out if v != "none"]


def _run(pipeline_file: Path, *, from_stage: str | None, run_dir: Path | None, report_to: list[str] | None,
         no_report: bool = False, launcher: str | None = None) -> None:
    from kormed.pipeline.run import STAGE_ORDER, load_pipeline, run_pipeline

    if from_stage is not None and from_stage not in STAGE_ORDER:
        raise KormedError(f"unknown stage {from_stage!r} (known: {', '.join(STAGE_ORDER)})", field="--from")
    pipeline = load_pipeline(pipeline_file, run_dir=run_dir, report_to=_split_report_to(report_to))
    if launcher is not None:
        pipeline.launcher = launcher or None
    state = run_pipeline(pipeline, from_stage=from_stage, log=lambda m: typer.echo(m, err=True),
                         report=not no_report)
    rows = []
    total = 0.0
    for stage in pipeline.stages:
        entry = state["stages"].get(stage) or {}
        wall = entry.get("wall_s")
        total += wall or 0.0
        rows.append(f"  {stage:<10} {entry.get('status', '-'):<12} {f'{wall:.1f}s' if wall is not None else '-'}")
    typer.echo(f"run {pipeline.name} in {pipeline.run_dir}:")
    typer.echo("\n".join(rows))
    typer.echo(f"  total stage time {total:.1f}s")
    if not no_report:
        typer.echo(f"report: {pipeline.run_dir / 'report.html'} (and report.md)")


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Register `kormed run`, `kormed demo` and `kormed report` on the root app."""

    @app.command("run")
    def run(
        pipeline_file: Path = typer.Argument(..., help="Pipeline YAML: name, run_dir, stages, one section per stage."),
        from_stage: str = typer.Option(None, "--from", help="Rerun this stage and every later one (earlier stages "
                                                            "must have finished in this run directory)."),
        run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: the file's run_dir, else "
                                                             "runs/<name>)."),
        report_to: list[str] = typer.Option(None, "--report-to", help="Trainer loggers, e.g. tensorboard,wandb "
                                                                      "(default: the file's report_to, else "
                                                                      "tensorboard)."),
        no_report: bool = typer.Option(False, "--no-report", help="Do not write report.html / report.md at the end."),
        launcher: str = typer.Option(None, "--launcher", help="Run the training stages (cpt, sft, loop) under this "
                                                              "command, e.g. 'accelerate launch --config_file "
                                                              "examples/accelerate/ddp.yaml'; '' = in-process."),
    ) -> None:
        """Run a pipeline file: prepare, tokenizer, cpt, sft, loop, eval in one run directory, then the report.

        A stage whose config and inputs are unchanged since it finished is skipped."""
        _run(pipeline_file, from_stage=from_stage, run_dir=run_dir, report_to=report_to, no_report=no_report,
             launcher=launcher)

    @app.command("demo")
    def demo(
        output: Path = typer.Option(None, "--output", help="Run directory (default: runs/demo)."),
        from_stage: str = typer.Option(None, "--from", help="Rerun this stage and every later one."),
        report_to: list[str] = typer.Option(None, "--report-to", help="Trainer loggers (default: tensorboard)."),
    ) -> None:
        """Every stage on the bundled sample data with the embedded Gemma 3 270M (short step budgets).

        Same as `kormed run` on the bundled demo pipeline; uses the GPU when there is one."""
        _run(demo_pipeline_path(), from_stage=from_stage, run_dir=output, report_to=report_to)

    @app.command("report")
    def report(
        run_dir: Path = typer.Argument(..., help="A run directory written by `kormed run` / `kormed demo`."),
        output: Path = typer.Option(None, "--output", help="Write report.html / report.md here (default: RUN_DIR)."),
    ) -> None:
        """Write the run's report: report.html (self-contained, plots inlined) and report.md (+ report_assets/)."""
        from kormed.pipeline.report import write_report  # tensorboard and numpy: only when `kormed report` runs

        html, md = write_report(run_dir, output)
        typer.echo(f"wrote {html}")
        typer.echo(f"wrote {md}")
