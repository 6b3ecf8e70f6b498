"""The pipeline runner: one YAML file -> every stage in order, in one run directory, resumable.

A pipeline file holds a few top-level keys (`name`, `run_dir`, `stages`, `model`, `device`, `data_root`,
`report_to`, `eval_targets`) and one section per stage (`prepare`, `tokenizer`, `cpt`, `sft`, `loop`, `eval`) with
that stage's own options (`kormed config show` documents them). Each stage's config is built as:
stage defaults <- the runner's wiring (run-directory paths, the previous stage's outputs) <- the file's section,
so anything the file sets wins over the wiring.

A finished stage is skipped on a rerun when the hash of (its config + its input files) is the one recorded in
`RUN_DIR/state.json` and its outputs still exist; `--from STAGE` reruns STAGE and every later stage.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import resource
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kormed.config import PIPELINE_KEYS, merge, read_yaml
from kormed.errors import KormedError
from kormed.export.model_card import write_run_cards
from kormed.io import Log, atomic_write, check_output_path, file_key, read_json, write_json
from kormed.pipeline.registry import STAGE_DIRS, STAGE_ORDER, STAGE_SECTIONS, TRAINING_STAGES, stage_info
from kormed.pipeline.report import write_report
from kormed.pipeline.results import RESULT_FILE, to_json, write_result
from kormed.pipeline.spec import Pipeline, RunContext, StageInterrupted, StageSpec, stderr_log
from kormed.pipeline.stages import default_specs

__all__ = ["STAGE_ORDER", "Pipeline", "RunContext", "StageInterrupted", "StageSpec", "fingerprint", "load_pipeline",
           "pipeline_from_mapping", "read_state", "resolve_configs", "run_pipeline"]

STATE_FILE = "state.json"
STATE_VERSION = 1
# files above this size are fingerprinted by size, mtime and their first/last MiB instead of a full hash
FULL_HASH_LIMIT = 256 * 1024 * 1024
# directory entries never part of a stage's inputs (checkpoints, logs, editor/OS litter, the runner's own
# kormed_result.json summary: written after the stage, so a stage's output hash is that of its own files)
_SKIP_NAMES = ("checkpoint", "runs", "tensorboard", ".", "__pycache__", RESULT_FILE)


# --------------------------------------------------------------------------------------------------- pipeline file


def _parse_stages(value: Any, source: Path | None) -> list[str]:
    if value is None:
        return list(STAGE_ORDER)
    if isinstance(value, dict):  # {tokenizer: false, loop: false}: the default order with some stages disabled
        for key, enabled in value.items():
            if key not in STAGE_ORDER:
                raise KormedError(f"unknown stage '{key}' (known: {', '.join(STAGE_ORDER)})", path=source,
                                  field="stages")
            if not isinstance(enabled, bool):
                raise KormedError(f"expected true/false, got {enabled!r}", path=source, field=f"stages.{key}")
        return [s for s in STAGE_ORDER if value.get(s, True)]
    if isinstance(value, list):
        for item in value:
            if item not in STAGE_ORDER:
                raise KormedError(f"unknown stage {item!r} (known: {', '.join(STAGE_ORDER)})", path=source,
                                  field="stages")
        if len(set(value)) != len(value):
            raise KormedError("a stage is listed twice", path=source, field="stages")
        ordered = [s for s in STAGE_ORDER if s in value]
        if ordered != list(value):
            raise KormedError(f"stages must follow the data flow order {' -> '.join(STAGE_ORDER)}", path=source,
                              field="stages")
        return ordered
    raise KormedError("expected a list of stages or a mapping stage: true/false", path=source, field="stages")


def pipeline_from_mapping(
    data: dict[str, Any],
    *,
    source: str | Path | None = None,
    run_dir: str | Path | None = None,
    report_to: list[str] | None = None,
) -> Pipeline:
    """Build a Pipeline from a parsed YAML mapping (top-level keys + stage sections), checking every key."""
    src = Path(source) if source is not None else None
    for key in data:
        if key not in PIPELINE_KEYS and key not in STAGE_SECTIONS.values():
            raise KormedError(
                f"unknown key '{key}' (pipeline keys: {', '.join(PIPELINE_KEYS)}; stage sections: "
                f"{', '.join(STAGE_SECTIONS.values())})",
                path=src,
            )
    name = data.get("name")
    if name is None:
        name = src.stem if src is not None else "run"
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise KormedError(f"expected a plain run name, got {name!r}", path=src, field="name")
    sections: dict[str, dict[str, Any]] = {}
    for stage, section in STAGE_SECTIONS.items():
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise KormedError("a stage section must be a mapping of options", path=src, field=section)
        sections[stage] = value
    rt = report_to if report_to is not None else data.get("report_to", ["tensorboard"])
    if isinstance(rt, str):
        rt = [r.strip() for r in rt.split(",") if r.strip()]
    if not isinstance(rt, list) or not all(isinstance(r, str) for r in rt):
        raise KormedError(f"expected a list such as [tensorboard, wandb], got {rt!r}", path=src, field="report_to")
    targets = data.get("eval_targets")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise KormedError("expected a list such as [base, cpt, sft, loop]", path=src, field="eval_targets")
    for key in ("model", "device", "data_root", "description", "launcher"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise KormedError(f"expected a string, got {value!r}", path=src, field=key)
    rd = run_dir if run_dir is not None else data.get("run_dir") or Path("runs") / name
    return Pipeline(
        name=name,
        run_dir=Path(rd),
        stages=_parse_stages(data.get("stages"), src),
        sections=sections,
        model=data.get("model"),
        device=data.get("device"),
        data_root=data.get("data_root"),
        report_to=list(rt),
        eval_targets=list(targets) if targets is not None else None,
        launcher=data.get("launcher") or None,
        description=data.get("description") or "",
        source=src,
    )


def load_pipeline(
    path: str | Path, *, run_dir: str | Path | None = None, report_to: list[str] | None = None
) -> Pipeline:
    """Read a pipeline YAML file (errors name the file, line and key)."""
    return pipeline_from_mapping(read_yaml(path), source=path, run_dir=run_dir, report_to=report_to)


# --------------------------------------------------------------------------------------------------- stages


def filter_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys that `cls` (a config dataclass) declares, dropping None values."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def resolve_configs(pipeline: Pipeline, specs: dict[str, StageSpec], log: Log = stderr_log) -> RunContext:
    """Build every enabled stage's config (defaults <- wiring <- file section), before anything runs, so a typo in
    the last section fails in seconds rather than after hours of training. A stage whose code cannot be imported is
    an error: later stages would silently start from the wrong model without it."""
    ctx = RunContext(pipeline=pipeline, log=log)
    for stage in pipeline.stages:
        spec = specs.get(stage)
        if spec is None:
            raise KormedError(f"stage '{stage}' has no runner", path=pipeline.source, field="stages")
        try:
            cls = spec.config_cls()
        except (ImportError, AttributeError) as exc:
            raise KormedError(f"stage '{stage}' cannot be loaded: {exc}", path=pipeline.source, field="stages",
                              hint="the kormed installation is incomplete: reinstall it (`pip install -e .`), "
                                   f"or disable the stage with `stages: {{{stage}: false}}`") from exc
        cfg = cls()
        prefix = f"{STAGE_SECTIONS[stage]}."  # errors name the key as the file spells it: cpt.train.lr
        wiring = filter_fields(cls, spec.wire(ctx))
        if wiring:
            cfg = merge(cfg, _plain(wiring), prefix=prefix)
        section = pipeline.sections.get(stage) or {}
        _refuse_full_method(stage, section, pipeline.source)  # before the merge: its own message, not a clash
        if section:
            cfg = merge(cfg, section, path=str(pipeline.source) if pipeline.source else None, prefix=prefix)
        ctx.configs[stage] = cfg
    return ctx


def _refuse_full_method(stage: str, section: dict[str, Any], source: Path | None) -> None:
    """`train.method: full` is for the stage commands: the run's stages hand each other LoRA adapters (the next
    stage's from_adapter, the eval targets, the model cards), so a pipeline refuses it before anything runs."""
    train = section.get("train")
    if isinstance(train, dict) and train.get("method") == "full":
        raise KormedError(
            "method full is not supported by `kormed run` (its stages pass LoRA adapters to each other)",
            path=source, field=f"{STAGE_SECTIONS[stage]}.train.method",
            hint=f"run `kormed train {stage} --method full` on its own and pass its output directory as --model "
                 "to the next command")


# --------------------------------------------------------------------------------------------------- hashing


def _plain(obj: Any) -> Any:
    """JSON-able copy: Paths become strings, dataclasses dicts, tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)


def _file_digest(path: Path) -> str:
    """sha256 of the file; above FULL_HASH_LIMIT a cheaper stand-in (:func:`kormed.io.file_key`)."""
    return file_key(path, FULL_HASH_LIMIT)


def fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of every file in a directory (relative names included); 'missing' if absent."""
    p = Path(path)
    if p.is_file():
        return _file_digest(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p)
            if any(part.startswith(_SKIP_NAMES) for part in rel.parts) or not f.is_file():
                continue
            h.update(str(rel.as_posix()).encode())
            h.update(b"\0")
            h.update(_file_digest(f).encode())
            h.update(b"\n")
        return "dir:" + h.hexdigest()
    return "missing"


def stage_hash(spec: StageSpec, cfg: Any, ctx: RunContext) -> tuple[str, dict[str, str]]:
    """sha256 of the stage's config (minus its volatile fields) and the fingerprints of its input files."""
    config = _plain(cfg)
    for name in spec.volatile:
        config.pop(name, None)
    inputs = {str(p): fingerprint(p) for p in spec.inputs(cfg, ctx) if p is not None}
    extra = _plain(spec.extra_hash(cfg, ctx)) if spec.extra_hash else None
    payload = json.dumps({"stage": spec.name, "config": config, "inputs": inputs, "extra": extra}, sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest(), inputs


# --------------------------------------------------------------------------------------------------- state


def read_state(run_dir: str | Path) -> dict[str, Any]:
    """The run's state.json (empty state when there is none)."""
    p = Path(run_dir) / STATE_FILE
    if not p.exists():
        return {"version": STATE_VERSION, "stages": {}}
    state = read_json(p, what="run state")
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise KormedError("not a kormed run state file", path=p, hint="delete it to start the run afresh")
    return state


def write_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    state["updated"] = _now()
    write_json(Path(run_dir) / STATE_FILE, _plain(state))


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: on a shared machine the wall time
    depends on the neighbours, the CPU time much less."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return path.resolve() != root.resolve()


# --------------------------------------------------------------------------------------------------- launcher


def launch_stage(spec: StageSpec, cfg: Any, ctx: RunContext) -> str:
    """Run a training stage as its own command under the pipeline's launcher (e.g. `accelerate launch ...`):
    the stage's resolved config is written to RUN_DIR/configs/<stage>.yaml and passed with --config, so the
    processes of a multi-GPU run get exactly the config a single-process run would use. Returns the command line;
    the stage's result is read back from the files it wrote (`StageSpec.result`)."""
    assert spec.command is not None and ctx.pipeline.launcher
    config_file = ctx.run_dir / "configs" / f"{spec.name}.yaml"
    # every section of the run (the stage's command may read a neighbour, e.g. cpt reads `tokenizer`'s CPT options)
    sections = {STAGE_SECTIONS[name]: _plain(c) for name, c in ctx.configs.items()}
    sections[STAGE_SECTIONS[spec.name]] = _plain(cfg)
    with atomic_write(config_file) as fh:
        yaml.safe_dump(sections, fh, allow_unicode=True, sort_keys=False)
    try:
        launcher = shlex.split(ctx.pipeline.launcher)
    except ValueError as exc:
        raise KormedError(f"cannot parse the launcher command: {exc}", path=ctx.pipeline.source,
                          field="launcher") from None
    cmd = [*launcher, "-m", "kormed.cli", *spec.command, "--config", str(config_file)]
    ctx.log(f"[{spec.name}] $ {shlex.join(cmd)}")
    try:
        proc = subprocess.run(cmd, check=False)
    except FileNotFoundError:
        raise KormedError(f"launcher not found: {launcher[0]}", path=ctx.pipeline.source, field="launcher",
                          hint="install accelerate (`pip install accelerate`) or remove `launcher:`") from None
    if proc.returncode != 0:
        raise KormedError(f"stage '{spec.name}' failed under the launcher (exit code {proc.returncode})",
                          hint=f"its config is {config_file}; rerun `kormed run` to resume")
    return shlex.join(cmd)


# --------------------------------------------------------------------------------------------------- TensorBoard


def gather_tensorboard(tb_dir: Path, stage_dirs: list[Path]) -> int:
    """Copy the TensorBoard event files a stage's trainers wrote under its own directories (HF Trainer: <output>/
    .../runs/) into the run's TensorBoard directory, keeping their relative paths, so that
    `tensorboard --logdir RUN_DIR/tensorboard` shows every stage. Returns the number of files copied."""
    copied = 0
    for d in stage_dirs:
        if not d.is_dir() or _inside(d, tb_dir) or d.resolve() == tb_dir.resolve():
            continue
        for f in sorted(d.rglob("events.out.tfevents.*")):
            if not f.is_file() or _inside(f, tb_dir.parent):
                continue
            dest = tb_dir / f.relative_to(d) if len(stage_dirs) == 1 else tb_dir / d.name / f.relative_to(d)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            copied += 1
    return copied


def _numeric_leaves(obj: Any, prefix: str = "", depth: int = 0) -> Iterable[tuple[str, float]]:
    if isinstance(obj, dict) and depth < 3:
        for k, v in obj.items():
            yield from _numeric_leaves(v, f"{prefix}/{k}" if prefix else str(k), depth + 1)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield prefix, float(obj)


def log_stage_summary(tb_dir: Path, stage: str, wall_s: float, result: Any, limit: int = 64) -> None:
    """The stage's wall time and the numbers of its result (accuracies, token counts, ...) as TensorBoard scalars
    under `kormed/`, so stages without a trainer (prepare, tokenizer, eval) appear in TensorBoard as well."""
    try:  # imported here: torch loads with it, and `kormed run --help` must not wait for torch
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install only loses these summary scalars
        return
    writer = SummaryWriter(log_dir=str(tb_dir / "kormed_summary"))
    try:
        writer.add_scalar("kormed/wall_time_s", wall_s, 0)
        for i, (tag, value) in enumerate(_numeric_leaves(result)):
            if i >= limit:
                break
            writer.add_scalar(f"kormed/{stage}/{tag}", value, 0)
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------------- the run


def run_pipeline(
    pipeline: Pipeline,
    *,
    from_stage: str | None = None,
    specs: dict[str, StageSpec] | None = None,
    log: Log = stderr_log,
    report: bool = True,
) -> dict[str, Any]:
    """Run the enabled stages in order, skipping the ones that are current; returns the final state."""
    if specs is None:
        specs = default_specs()
    if from_stage is not None and from_stage not in pipeline.stages:
        raise KormedError(
            f"--from {from_stage}: not a stage of this pipeline (enabled: {', '.join(pipeline.stages)})",
            field="--from",
        )
    check_output_path(pipeline.run_dir, "dir", "the run directory (run_dir)")
    ctx = resolve_configs(pipeline, specs, log)
    run_dir = pipeline.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(run_dir)
    state.update(
        version=STATE_VERSION,
        name=pipeline.name,
        pipeline=str(pipeline.source) if pipeline.source else None,
        order=list(pipeline.stages),
    )
    state.setdefault("created", _now())
    _write_resolved(pipeline, ctx)
    from_index = pipeline.stages.index(from_stage) if from_stage else None
    log(f"kormed run: {pipeline.name} -> {run_dir} (stages: {', '.join(pipeline.stages)})")
    try:
        for index, stage in enumerate(pipeline.stages):
            _run_stage(specs[stage], ctx, state, forced=from_index is not None and index >= from_index,
                       before_from=from_index is not None and index < from_index)
    finally:
        write_state(run_dir, state)
        if report:
            try:
                html, _md = write_report(run_dir)
                log(f"report: {html}")
            except Exception as exc:  # noqa: BLE001 - a broken plot must not hide the run's own outcome
                log(f"report: could not be written ({type(exc).__name__}: {exc}); retry with `kormed report {run_dir}`")
    return state


def _write_resolved(pipeline: Pipeline, ctx: RunContext) -> None:
    """The configs actually used, one section per stage: rerun any stage by hand with `--config` on this file."""
    doc = {"name": pipeline.name, "run_dir": str(pipeline.run_dir), "stages": list(pipeline.stages)}
    for key in ("model", "device", "data_root"):
        if getattr(pipeline, key) is not None:
            doc[key] = getattr(pipeline, key)
    doc["report_to"] = list(pipeline.report_to)
    for stage, cfg in ctx.configs.items():
        doc[STAGE_SECTIONS[stage]] = _plain(cfg)
    with atomic_write(pipeline.run_dir / "resolved_config.yaml") as fh:
        yaml.safe_dump(doc, fh, allow_unicode=True, sort_keys=False)


def _run_stage(spec: StageSpec, ctx: RunContext, state: dict[str, Any], *, forced: bool, before_from: bool) -> None:
    stage = spec.name
    cfg = ctx.configs[stage]
    run_dir = ctx.run_dir
    prev = state["stages"].get(stage) or {}
    digest, inputs = stage_hash(spec, cfg, ctx)
    outputs = [Path(p) for p in spec.outputs(cfg, ctx)]
    missing = [str(p) for p in outputs if not p.exists()]
    if not missing and spec.verify is not None and (problem := spec.verify(cfg, ctx)):
        missing = [problem]  # e.g. a prepare set mixed by a kill: redone like missing outputs
    done = prev.get("status") == "done"
    if before_from:
        if not done or missing:
            what = f"its outputs are missing ({missing[0]})" if done else "it has not finished in this run directory"
            raise KormedError(
                f"--from: stage '{stage}' comes before the restart point but {what}",
                path=run_dir / STATE_FILE,
                hint=f"run `kormed run` without --from, or restart from '{stage}'",
            )
        if prev.get("hash") != digest:
            ctx.log(f"[{stage}] config or inputs changed since it ran; kept as is because of --from")
        ctx.results[stage] = prev.get("result")
        return
    if not forced and done and prev.get("hash") == digest and not missing:
        ctx.log(f"[{stage}] up to date (finished {prev.get('finished')}, {prev.get('wall_s', 0):.0f}s); skipped")
        ctx.results[stage] = prev.get("result")
        prev["skipped_at"] = _now()
        if spec.result is not None and not (ctx.stage_dir(stage) / RESULT_FILE).is_file():
            # a run directory made before kormed_result.json: written now from the stage's own files
            write_result(ctx.stage_dir(stage), stage, spec.result(cfg, ctx))
        return
    reason = "forced by --from" if forced else (
        "first run" if not prev else
        f"outputs missing ({missing[0]})" if done and prev.get("hash") == digest else
        f"previous attempt {prev.get('status')}" if prev.get("hash") == digest else
        "config or inputs changed"
    )
    resumed = None
    if not forced and prev.get("hash") == digest and prev.get("status") in ("failed", "interrupted", "running"):
        if spec.resume_hook is not None:
            resumed = spec.resume_hook(cfg, ctx)
        elif spec.resume_field is not None and hasattr(cfg, spec.resume_field):
            resumed = dataclasses.replace(cfg, **{spec.resume_field: True})
    if resumed is not None:
        cfg = resumed
        ctx.configs[stage] = cfg
        reason += "; resuming where it stopped"
    else:
        # a fresh (re)run: the stage's directories in the run dir and its TensorBoard logs hold one attempt only
        dirs = list(spec.output_dirs(cfg, ctx)) if spec.output_dirs else [ctx.stage_dir(stage)]
        for d in [*map(Path, dirs), ctx.tb_dir(stage)]:
            if d.is_dir() and _inside(d, run_dir):
                shutil.rmtree(d)
    ctx.log(f"[{stage}] running ({reason})")
    entry: dict[str, Any] = {
        "status": "running",
        "hash": digest,
        "inputs": inputs,
        "config": _plain(cfg),
        "started": _now(),
        "output_dir": STAGE_DIRS[stage],
    }
    state["stages"][stage] = entry
    write_state(run_dir, state)
    t0 = time.perf_counter()
    c0 = _cpu_seconds()
    try:
        if ctx.pipeline.launcher and spec.command:
            returned: Any = {"launched": launch_stage(spec, cfg, ctx)}
        else:
            returned = spec.run(cfg, ctx)
        result = spec.result(cfg, ctx) if spec.result is not None else None
        if result is not None:
            write_result(ctx.stage_dir(stage), stage, result)
            if spec.check is not None:
                spec.check(result)
    except (KeyboardInterrupt, StageInterrupted):
        entry.update(status="interrupted", wall_s=round(time.perf_counter() - t0, 3), finished=_now())
        raise
    except BaseException as exc:
        entry.update(status="failed", wall_s=round(time.perf_counter() - t0, 3), finished=_now(),
                     error=f"{type(exc).__name__}: {exc}")
        raise
    wall = time.perf_counter() - t0
    entry.update(status="done", wall_s=round(wall, 3), cpu_s=round(_cpu_seconds() - c0, 3), finished=_now(),
                 result=state_summary(to_json(result) if result is not None else returned))
    ctx.results[stage] = entry["result"]
    write_state(run_dir, state)
    dirs = list(spec.output_dirs(cfg, ctx)) if spec.output_dirs else [ctx.stage_dir(stage)]
    gather_tensorboard(ctx.tb_dir(stage), [Path(d) for d in dirs])
    if "tensorboard" in ctx.pipeline.report_to:
        log_stage_summary(ctx.tb_dir(stage), stage, wall, entry["result"])
    # the hash is of the inputs as they were when the stage started; outputs written now are the next stage's inputs
    ctx.log(f"[{stage}] done in {wall:.1f}s")
    _write_model_cards(ctx)


def state_summary(result: Any) -> Any:
    """What state.json keeps of a stage's result: scalars and small mappings, no long lists (the full typed result
    is the stage's kormed_result.json)."""
    if not isinstance(result, dict):
        return _plain(result)
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, str | int | float | bool | Path) or v is None:
            out[k] = _plain(v)
        elif isinstance(v, dict) and len(v) <= 32:
            out[k] = state_summary(v)
    return out


def _write_model_cards(ctx: RunContext) -> None:
    """A model card (README.md) in each training stage's final adapter, refreshed after every stage so that the
    eval results land in it (README.md is not among any stage's hashed inputs)."""
    try:
        write_run_cards(stage_info(stage).final_adapter(cfg) for stage, cfg in ctx.configs.items()
                        if stage in TRAINING_STAGES)
    except Exception as exc:  # noqa: BLE001 - a card must not fail the run
        ctx.log(f"model cards: could not be written ({type(exc).__name__}: {exc})")
