"""`kormed report RUN_DIR`: one self-contained HTML page (plots inlined as base64 PNG) and a Markdown twin.

Everything is read from files the stages wrote into the run directory; any missing piece becomes a section that
says "not run" instead of an error:

- state.json (the runner): per-stage status, wall time, result summary;
- corpus/*.stats.json (prepare): the distribution table and drop counts;
- tokenizer/tokenizer_report.json (tokenizer extend): tokens per 1,000 characters before/after;
- TensorBoard event files under tensorboard/<stage>/ (and the stages' own dirs), else trainer_state.json
  log_history: loss and validation curves; training_info.json: stop reasons and the conditions' thresholds;
- eval/*.json (eval): KorMedMCQA accuracy per target model and subset, perplexity.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import atomic_write, check_output_path

STAGE_TITLES = {
    "prepare": "prepare (corpus)",
    "tokenizer": "tokenizer extend",
    "cpt": "CPT",
    "sft": "SFT steps 1-4",
    "loop": "dictionary <-> exam loop",
    "eval": "evaluation",
}
TRAINING_STAGES = ("cpt", "sft", "loop")
ASSET_DIR = "report_assets"
_EVENT_GLOB = "events.out.tfevents.*"


# --------------------------------------------------------------------------------------------------- reading


def _load_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is absent or unreadable (the report never fails on one file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `root` (recursively), merged by tag and step."""
    from tensorboard.backend.event_processing import event_accumulator

    series: dict[str, dict[int, float]] = {}
    dirs = sorted({p.parent for p in root.rglob(_EVENT_GLOB)}) if root.is_dir() else []
    for d in dirs:
        acc = event_accumulator.EventAccumulator(str(d), size_guidance={event_accumulator.SCALARS: 0})
        try:
            acc.Reload()
        except Exception:  # noqa: BLE001 - a truncated event file (killed run) must not break the report
            continue
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("kormed/"):  # the runner's per-stage summary scalars, not a curve
                continue
            for ev in acc.Scalars(tag):
                series.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


def scalars_from_log_history(log_history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The same series from a Trainer's trainer_state.json `log_history` (loss -> train/loss, eval_x -> eval/x)."""
    series: dict[str, dict[int, float]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            series.setdefault(tag, {})[int(step)] = float(value)
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


def _find_trainer_state(unit_dir: Path) -> Path | None:
    direct = unit_dir / "trainer_state.json"
    if direct.is_file():
        return direct
    candidates = []
    for p in unit_dir.rglob("trainer_state.json"):
        m = re.search(r"checkpoint-(\d+)", str(p))
        candidates.append((int(m.group(1)) if m else -1, p))
    return max(candidates)[1] if candidates else None


@dataclass
class TrainingUnit:
    """One trainer run: CPT, one SFT step or one loop round."""

    stage: str
    name: str  # "cpt", "sft/step1", "loop/round2"
    info: dict[str, Any] = field(default_factory=dict)  # training_info.json
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    source: str = ""  # where the curves came from


def _unit_dirs(run_dir: Path, stage: str, stage_dir: Path) -> list[tuple[str, Path]]:
    """(name, directory) of each trainer run of a training stage."""
    if stage == "cpt":
        return [("cpt", stage_dir)] if stage_dir.is_dir() else []
    pattern = re.compile(r"^(step|round)(\d+)(_\w+)?$")
    units = []
    if stage_dir.is_dir():
        for d in stage_dir.iterdir():
            m = pattern.match(d.name)
            if d.is_dir() and m:
                units.append((int(m.group(2)), f"{stage}/{d.name}", d))
    return [(name, d) for _, name, d in sorted(units)]


def collect_training(run_dir: Path, stage: str, stage_dir: Path) -> list[TrainingUnit]:
    """Curves and training_info of every trainer run of `stage`."""
    units = []
    for name, d in _unit_dirs(run_dir, stage, stage_dir):
        info = _load_json(d / "training_info.json")
        unit = TrainingUnit(stage=stage, name=name, info=info if isinstance(info, dict) else {})
        rel = Path(name).relative_to(stage) if "/" in name else Path()
        tb_root = run_dir / "tensorboard" / stage / rel
        scalars = read_scalars(tb_root) if tb_root.is_dir() else {}
        unit.source = f"tensorboard/{stage}/{rel}".rstrip("/.") if scalars else ""
        if not scalars:  # the stage's own TensorBoard logs (<output>/runs/...)
            scalars = read_scalars(d)
            if scalars:
                unit.source = f"{name}/runs"
        if not scalars:
            ts = _find_trainer_state(d)
            if ts is not None:
                history = (_load_json(ts) or {}).get("log_history") or []
                scalars = scalars_from_log_history(history)
                unit.source = str(ts.relative_to(run_dir))
        if not scalars and isinstance(unit.info.get("log_history"), list):
            scalars = scalars_from_log_history(unit.info["log_history"])
            unit.source = f"{name}/training_info.json"
        unit.scalars = scalars
        if unit.scalars or stop_reason(unit.info):  # (loop/round00_start is a saved adapter, not a training run)
            units.append(unit)
    return units


@dataclass
class ReportData:
    run_dir: Path
    state: dict[str, Any]
    stats: dict[str, Any] | None
    stats_path: str | None
    tokenizer: dict[str, Any] | None
    training: dict[str, list[TrainingUnit]]
    mcq: dict[str, dict[str, Any]]  # target -> kormedmcqa result
    ppl: dict[str, dict[str, Any]]  # target -> ppl result
    loop_table: list[dict[str, Any]] | None


def _stage_dir(run_dir: Path, state: dict[str, Any], stage: str, default: str) -> Path:
    entry = (state.get("stages") or {}).get(stage) or {}
    return run_dir / str(entry.get("output_dir") or default)


def _find_stats(corpus_dir: Path) -> Path | None:
    if not corpus_dir.is_dir():
        return None
    found = sorted(corpus_dir.glob("*.stats.json")) or sorted(corpus_dir.glob("*stats*.json"))
    return found[0] if found else None


def _target_of(path: Path, prefix: str) -> str:
    stem = path.stem
    return stem[len(prefix):].lstrip("_-") or "model"


def collect(run_dir: str | Path) -> ReportData:
    """Read everything the report shows from a run directory."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise KormedError("run directory does not exist", path=rd)
    state = _load_json(rd / "state.json")
    state = state if isinstance(state, dict) else {"stages": {}}
    state.setdefault("stages", {})
    corpus = _stage_dir(rd, state, "prepare", "corpus")
    stats_path = _find_stats(corpus)
    stats = _load_json(stats_path) if stats_path else None
    tok_dir = _stage_dir(rd, state, "tokenizer", "tokenizer")
    tok = _load_json(tok_dir / "tokenizer_report.json")
    if tok is None and tok_dir.is_dir():
        reports = sorted(tok_dir.glob("*report*.json"))
        tok = _load_json(reports[0]) if reports else None
    training = {s: collect_training(rd, s, _stage_dir(rd, state, s, s)) for s in TRAINING_STAGES}
    eval_dir = _stage_dir(rd, state, "eval", "eval")
    mcq: dict[str, dict[str, Any]] = {}
    ppl: dict[str, dict[str, Any]] = {}
    if eval_dir.is_dir():
        for p in sorted(eval_dir.glob("*.json")):
            data = _load_json(p)
            if not isinstance(data, dict):
                continue
            if p.stem.startswith("kormedmcqa") and "accuracy" in data:
                mcq[_target_of(p, "kormedmcqa")] = data
            elif p.stem.startswith("ppl") and ("perplexity" in data or "ppl" in data):
                ppl[_target_of(p, "ppl")] = data
    loop_table = None
    loop_dir = _stage_dir(rd, state, "loop", "loop")
    for name in ("loop_table.json", "rounds.json", "summary.json"):
        data = _load_json(loop_dir / name)
        rows = data.get("rounds") if isinstance(data, dict) else data
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            loop_table = rows
            break
    return ReportData(rd, state, stats if isinstance(stats, dict) else None,
                      str(stats_path.relative_to(rd)) if stats_path and stats is not None else None,
                      tok if isinstance(tok, dict) else None, training, mcq, ppl, loop_table)


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _ascii(text: str) -> str:
    """Plot labels: DejaVu has no Hangul glyphs; keep labels ASCII so no box characters appear in the PNGs."""
    return text if text.isascii() else text.encode("ascii", "replace").decode().replace("?", "_")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _thresholds(info: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(metric, threshold, label) of the stop conditions recorded in training_info.json, as far as we can read."""
    out: list[tuple[str, float, str]] = []
    # SFT / loop: the conditions as evaluated at the stop, with their absolute thresholds (baseline resolved)
    conds = info.get("conditions_at_stop") if isinstance(info.get("conditions_at_stop"), list) else None
    if conds:
        conds = [{"metric": c.get("metric"), "threshold": c.get("threshold"), "label": c.get("condition")}
                 for c in conds if isinstance(c, dict)]
    else:
        conds = info.get("stop_conditions") or info.get("conditions")
    if isinstance(conds, dict):
        conds = [{"metric": k, **(v if isinstance(v, dict) else {"threshold": v})} for k, v in conds.items()]
    if isinstance(conds, list):
        for c in conds:
            if not isinstance(c, dict):
                continue
            metric = c.get("metric") or c.get("name")
            thr = _number(c.get("threshold", c.get("value")))
            if isinstance(metric, str) and thr is not None:
                op = c.get("op") or c.get("comparison") or "<"
                label = c.get("label") if isinstance(c.get("label"), str) else f"{metric} {op} {thr:g}"
                out.append((metric, thr, f"{label} ({thr:.4g})" if "baseline" in label or "maintained" in label
                            else label))
    cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    tp = _number(info.get("target_perplexity")) or _number(train.get("target_perplexity"))
    if tp is not None:
        out.append(("eval/perplexity", tp, f"target ppl < {tp:g}"))
    return out


def _stop_step(unit: TrainingUnit) -> int | None:
    for key in ("stop_step", "global_step", "steps", "final_step"):
        v = unit.info.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    steps = [s for pts in unit.scalars.values() for s, _ in pts]
    return max(steps) if steps else None


def stop_reason(info: dict[str, Any]) -> str | None:
    reason = info.get("stop_reason")
    if isinstance(reason, dict):
        reason = reason.get("reason") or reason.get("name") or json.dumps(reason, ensure_ascii=False)
    return str(reason) if reason else None


def _match_tag(tags: Iterable[str], metric: str) -> str | None:
    m = metric.replace("eval_", "eval/", 1) if metric.startswith("eval_") else metric
    for t in tags:
        if t == m or t.endswith("/" + m.split("/")[-1]) and t.startswith(m.split("/")[0]):
            return t
    return None


def curve_tags(scalars: dict[str, list[tuple[int, float]]]) -> list[str]:
    """The tags worth a curve: no end-of-training summaries (train/train_loss), no exact duplicates (the Trainer
    logs eval/loss beside eval/val_loss when there is one validation set; the more specific name is kept)."""
    tags = [t for t in scalars if not t.startswith("train/train_") and len(scalars[t]) > 0]
    keep: list[str] = []
    for t in sorted(tags, key=lambda x: (-len(x), x)):
        if not any(scalars[k] == scalars[t] for k in keep):
            keep.append(t)
    return sorted(keep)


def plot_training(unit: TrainingUnit) -> bytes | None:
    """Loss curves (train + every validation set) and, beside them, perplexity/accuracy, with the stop marked."""
    tags = curve_tags(unit.scalars)
    loss_tags = [t for t in tags if t.endswith("loss") and "grad" not in t]
    other_tags = [t for t in tags if re.search(r"perplexity|ppl|accuracy|acc$", t)]
    if not loss_tags and not other_tags:
        return None
    plt = _plt()
    ncols = 2 if loss_tags and other_tags else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.2), squeeze=False)
    panels = [(axes[0][0], loss_tags, "loss")]
    if ncols == 2:
        panels.append((axes[0][1], other_tags, "metric"))
    elif other_tags:
        panels = [(axes[0][0], other_tags, "metric")]
    stop = _stop_step(unit)
    reason = stop_reason(unit.info)
    thresholds = _thresholds(unit.info)
    for ax, tags, ylabel in panels:
        for t in tags:
            pts = unit.scalars[t]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            style = "-" if t.startswith("train") else "o-"
            ax.plot(xs, ys, style, label=_ascii(t), markersize=3, linewidth=1.2)
        for metric, thr, label in thresholds:
            if _match_tag(tags, metric):
                ax.axhline(thr, color="tab:red", linestyle=":", linewidth=1)
                ax.annotate(_ascii(label), (0.01, thr), xycoords=("axes fraction", "data"), color="tab:red",
                            fontsize=7, va="bottom")
        if stop is not None:
            ax.axvline(stop, color="black", linestyle="--", linewidth=1)
            ax.annotate(_ascii(f"stop: {reason or 'end'}"), (stop, 0.97), xycoords=("data", "axes fraction"),
                        ha="right", va="top", fontsize=7, rotation=90)
        ax.set_xlabel("optimizer step")
        values = [v for t in tags for _, v in unit.scalars[t] if v > 0]
        if ylabel == "metric" and values and max(values) / min(values) > 50:
            ax.set_yscale("log")  # dictionary perplexity in the tens of thousands beside raw text's tens
            ylabel = "metric (log scale)"
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(_ascii(unit.name), fontsize=10)
    return _png(fig)


def _bar(labels: list[str], values: list[float], *, title: str, ylabel: str, fmt: str = "{:.3g}",
         horizontal: bool = False) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.35 * len(labels) + 1) if horizontal else 3.2))
    labels = [_ascii(x) for x in labels]
    bars = ax.barh(labels, values) if horizontal else ax.bar(labels, values)
    for b, v in zip(bars, values, strict=True):
        if horizontal:
            ax.annotate(fmt.format(v), (b.get_width(), b.get_y() + b.get_height() / 2), va="center", fontsize=7,
                        xytext=(2, 0), textcoords="offset points")
        else:
            ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    if horizontal:
        ax.set_xlabel(ylabel)
        ax.invert_yaxis()
    else:
        ax.set_ylabel(ylabel)
        if len(labels) > 4:
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_title(_ascii(title), fontsize=10)
    return _png(fig)


def _grouped_bar(groups: list[str], series: dict[str, list[float | None]], *, title: str, ylabel: str,
                 ylim: tuple[float, float] | None = None) -> bytes:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(series)) * 0.45 + 2), 3.4))
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ys = [v if v is not None else 0.0 for v in vals]
        bars = ax.bar(x + i * width - 0.4 + width / 2, ys, width, label=_ascii(name))
        for b, v in zip(bars, vals, strict=True):
            if v is not None:
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", fontsize=6,
                            xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([_ascii(g) for g in groups])
    if ylim:
        ax.set_ylim(*ylim)
    else:
        top = max((v for vals in series.values() for v in vals if v is not None), default=1.0)
        ax.set_ylim(0, top * 1.25)
    ax.set_ylabel(ylabel)
    ax.set_title(_ascii(title), fontsize=10)
    ax.legend(fontsize=7, ncols=min(4, len(series)), loc="upper right")
    return _png(fig)


# --------------------------------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Lit:
    """Text taken from the data (paths, names, metric keys, reasons): shown literally, never read as markup."""

    text: str


@dataclass(frozen=True)
class Code(Lit):
    """Text from the data shown as a code span."""


@dataclass(frozen=True)
class Bold(Lit):
    """Text from the data shown in bold."""


# A paragraph: str parts are kormed's own markup (the **bold** / `code` subset); Lit parts come from the data.
Part = str | Lit


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("p", parts) ("table", (head, rows)) ("img", name)

    def p(self, *parts: Part) -> None:
        self.blocks.append(("p", parts))

    def table(self, head: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (head, rows)))

    def img(self, name: str, png: bytes | None, alt: str) -> None:
        if png:
            self.blocks.append(("img", (name, png, alt)))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _duration(seconds: Any) -> str:
    s = _number(seconds)
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _find_number(d: Any, keys: Iterable[str]) -> float | None:
    """First numeric value under any of `keys`, searched breadth-first through nested dicts."""
    queue = [d]
    keys = list(keys)
    while queue:
        cur = queue.pop(0)
        if not isinstance(cur, dict):
            continue
        for k in keys:
            v = _number(cur.get(k))
            if v is not None:
                return v
        queue.extend(v for v in cur.values() if isinstance(v, dict))
    return None


THROUGHPUT_KEYS = ("train_tokens_per_second", "tokens_per_second", "tokens_per_sec", "train_samples_per_second",
                   "questions_per_second", "docs_per_second", "mb_per_second")


def _throughput(entry: dict[str, Any], units: list[TrainingUnit]) -> str:
    tokens = sum(_number(u.info.get("tokens_seen")) or 0 for u in units)
    seconds = sum(_number(u.info.get("wall_time_s")) or 0 for u in units)
    if tokens and seconds:
        rate = tokens / seconds
        return f"{rate:,.0f} tokens/s" if rate >= 100 else f"{rate:.1f} tokens/s"
    for src in [*(u.info for u in units), entry.get("result") or {}]:
        for key in THROUGHPUT_KEYS:
            v = _find_number(src, [key])
            if v is not None:
                return f"{v:,.1f} {key.replace('_per_second', '/s').replace('_per_sec', '/s').replace('train_', '')}"
    return "-"


# --------------------------------------------------------------------------------------------------- sections


def _overview(data: ReportData) -> Section:
    sec = Section("Stages", "stages")
    stages = data.state.get("stages") or {}
    order = list(data.state.get("order") or []) or [s for s in STAGE_TITLES if s in stages]
    if not order:
        sec.p("not run: no state.json in this directory (not a `kormed run` directory), so no stage timings.")
        return sec
    rows, names, walls = [], [], []
    for s in order:
        entry = stages.get(s) or {}
        units = data.training.get(s, [])
        reasons = [f"{u.name}: {r}" for u in units if (r := stop_reason(u.info))]
        wall = _number(entry.get("wall_s"))
        rows.append([STAGE_TITLES.get(s, s), entry.get("status", "not run"), _duration(wall),
                     _duration(entry.get("cpu_s")), _throughput(entry, units),
                     "; ".join(reasons) or entry.get("reason") or entry.get("error") or "-"])
        if wall is not None:
            names.append(s)
            walls.append(wall)
    total = sum(walls)
    sec.table(["stage", "status", "wall time", "CPU time", "throughput", "stop reason / note"], rows)
    sec.p(f"Total wall time of the stages: {_duration(total)}.")
    if walls:
        sec.img("wall_time.png", _bar(names, walls, title="Wall time per stage", ylabel="seconds",
                                      fmt="{:.0f}s", horizontal=True), "wall time per stage")
    return sec


def _rows_of_stats(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-source distribution rows of prepare's stats.json (list of rows or mapping source -> row)."""
    for key in ("table", "sources", "distribution", "rows"):
        val = stats.get(key)
        if isinstance(val, list) and val and all(isinstance(r, dict) for r in val):
            return val
        if isinstance(val, dict) and val and all(isinstance(r, dict) for r in val.values()):
            return [{"source": k, **v} for k, v in val.items()]
    return []


def _data_section(data: ReportData) -> Section:
    sec = Section("Data distribution", "data")
    if not data.stats:
        sec.p("not run: no prepare statistics (corpus/*.stats.json) in this run.")
        return sec
    rows = _rows_of_stats(data.stats)
    sec.p("From ", Code(str(data.stats_path)), ".")
    if rows:
        known = ("source", "base", "multiplier", "final", "ratio", "characters")
        cols = [c for c in known if any(c in r for r in rows)]
        table = []
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c)
                if c == "source" and r.get("part_of"):
                    v = f"  - {v}"
                elif c == "ratio" and r.get("ratio_text"):
                    v = r["ratio_text"]
                elif c == "multiplier" and isinstance(v, int):
                    v = f"{v}x"
                cells.append(_fmt(v))
            table.append(cells)
        sec.table(cols, table)
        # the chart: leaves only (each plain source rather than their "Korean Plain" sum), no total row
        parents = {r.get("part_of") for r in rows if r.get("part_of")}
        leaves = [r for r in rows if r.get("source") not in parents and str(r.get("source")).lower() != "total"]
        labels = [str(r.get("source", "?")) for r in leaves]
        finals = [_number(r.get("final")) for r in leaves]
        if leaves and all(v is not None for v in finals):
            sec.img("data_distribution.png", _bar(labels, finals, title="Documents per source (after multipliers)",
                                                  ylabel="documents", fmt="{:,.0f}", horizontal=True),
                    "documents per source")
        chars = [_number(r.get("characters")) for r in leaves]
        if leaves and all(v is not None for v in chars):
            sec.img("data_characters.png", _bar(labels, chars, title="Characters per source", ylabel="characters",
                                                fmt="{:,.0f}", horizontal=True), "characters per source")
    drops = data.stats.get("dropped") or data.stats.get("drops") or data.stats.get("drop_counts")
    if isinstance(drops, dict) and drops:
        flat = []
        for k, v in drops.items():
            if isinstance(v, dict):
                flat.extend([f"{k}: {kk}", vv] for kk, vv in v.items())
            else:
                flat.append([k, v])
        if flat:
            sec.p("Records dropped by the filters, by reason:")
            sec.table(["reason", "count"], [[a, _fmt(b)] for a, b in flat])
        else:
            sec.p("No record was dropped by the filters.")
    if not rows and not drops:
        sec.p("The stats file has no distribution table this report knows how to read.")
    return sec


def _token_section(data: ReportData) -> Section:
    sec = Section("Token efficiency (tokenizer extension)", "tokens")
    tok = data.tokenizer
    if not tok:
        sec.p("not run: no tokenizer/tokenizer_report.json in this run (the tokenizer stage was disabled or absent).")
        return sec
    rows, labels, before, after = [], [], [], []
    for name, val in tok.items():
        if not isinstance(val, dict):
            continue
        b = _find_number(val, ["tokens_per_1000_chars_before"])
        a = _find_number(val, ["tokens_per_1000_chars_after"])
        if b is None or a is None:
            continue
        rows.append([name, f"{b:.1f}", f"{a:.1f}", f"{(1 - a / b) * 100:.1f}%" if b else "-",
                     _pct(_find_number(val, ["new_token_share_of_chars"]))])
        labels.append(name)
        before.append(b)
        after.append(a)
    added = _number(tok.get("new_tokens"))
    if added is not None:
        vocab = (f" (vocabulary {int(tok['base_vocab_size']):,} -> {int(tok['vocab_size']):,})"
                 if _number(tok.get("base_vocab_size")) and _number(tok.get("vocab_size")) else "")
        sec.p(f"Tokens added to the vocabulary: {int(added):,}{vocab}, method ", Code(str(tok.get("method", "?"))), ".")
    if rows:
        sec.table(["text", "tokens / 1k chars before", "after", "saving", "characters covered by new tokens"], rows)
        sec.img("token_efficiency.png", _grouped_bar(labels, {"base tokenizer": before, "extended": after},
                                                     title="Tokens per 1,000 characters", ylabel="tokens"),
                "tokens per 1,000 characters before and after")
    else:
        sec.p("The report JSON has no before/after figures this report knows how to read.")
    return sec


def _training_section(data: ReportData) -> Section:
    sec = Section("Training curves", "training")
    any_unit = False
    for stage in TRAINING_STAGES:
        units = data.training.get(stage) or []
        if not units:
            status = ((data.state.get("stages") or {}).get(stage) or {}).get("status")
            if status in ("running", "failed", "interrupted"):
                sec.p(f"{STAGE_TITLES[stage]}: ", Lit(str(status)), ", no finished training run logged yet.")
            else:
                sec.p(f"{STAGE_TITLES[stage]}: not run.")
            continue
        for u in units:
            any_unit = True
            png = plot_training(u)
            reason = stop_reason(u.info)
            bits: list[list[Part]] = [[Bold(u.name)]]
            if reason:
                bits.append(["stopped by: ", Lit(str(reason))])
            best = u.info.get("best_metrics") or u.info.get("best") or {}
            final = u.info.get("final_metrics") or u.info.get("final") or {}
            if isinstance(final, dict) and final:
                bits.append(["final: ", Lit(", ".join(f"{k}={_fmt(_number(v) if _number(v) is not None else v)}"
                                                     for k, v in list(final.items())[:6]))])
            if isinstance(best, dict) and best:
                bits.append(["best: ", Lit(", ".join(f"{k}={_fmt(_number(v) if _number(v) is not None else v)}"
                                                    for k, v in list(best.items())[:4]))])
            if u.source:
                bits.append(["curves from ", Code(str(u.source))])
            sec.p(*[part for i, bit in enumerate(bits) for part in ([" - "] if i else []) + bit])
            if png:
                sec.img(f"curves_{u.name.replace('/', '_')}.png", png, f"loss and validation curves of {u.name}")
            elif not u.scalars:
                sec.p("(no logged curves found for this run)")
    if data.loop_table:
        preferred = ["round", "kind", "dev_accuracy", "test_accuracy", "accuracy", "correct", "total", "global_step",
                     "stop_reason"]
        present = {k for r in data.loop_table for k, v in r.items() if not isinstance(v, dict | list)}
        cols = [c for c in preferred if c in present] or sorted(present)[:8]
        sec.p("Loop rounds (KorMedMCQA accuracy after each round):")
        sec.table(cols, [[f"{r[c]:.1%}" if c.endswith("accuracy") and _number(r.get(c)) is not None else _fmt(r.get(c))
                          for c in cols] for r in data.loop_table])
    if not any_unit:
        sec.p("No training stage has run yet.")
    return sec


def _subset_accuracies(result: dict[str, Any]) -> dict[str, float]:
    per = result.get("per_subset") or {}
    out = {}
    if isinstance(per, dict):
        for k, v in per.items():
            acc = _number(v.get("accuracy")) if isinstance(v, dict) else _number(v)
            if acc is not None:
                out[k] = acc
    return out


TARGET_ORDER = ("base", "cpt", "sft", "loop")


def _target_key(name: str) -> tuple[int, str]:
    head = name.split("_")[0].split("-")[0]
    return (TARGET_ORDER.index(head) if head in TARGET_ORDER else len(TARGET_ORDER), name)


def _eval_section(data: ReportData) -> Section:
    sec = Section("KorMedMCQA accuracy and perplexity", "eval")
    if not data.mcq and not data.ppl:
        sec.p("not run: no eval/kormedmcqa_*.json or eval/ppl_*.json in this run.")
        return sec
    if data.mcq:
        targets = sorted(data.mcq, key=_target_key)
        subsets = sorted({s for t in targets for s in _subset_accuracies(data.mcq[t])})
        rows = []
        for t in targets:
            r = data.mcq[t]
            per = _subset_accuracies(r)
            n = r.get("n") or r.get("count") or r.get("total") or len(r.get("questions") or []) or None
            rows.append([t, r.get("mode", "-"), _fmt(n), f"{_number(r.get('accuracy')) or 0:.3f}",
                         *[f"{per[s]:.3f}" if s in per else "-" for s in subsets],
                         _fmt(r.get("unparseable", r.get("n_unparseable")))])
        sec.table(["model", "mode", "questions", "accuracy", *subsets, "unparseable"], rows)
        series = {"overall": [_number(data.mcq[t].get("accuracy")) for t in targets]}
        for s in subsets:
            series[s] = [_subset_accuracies(data.mcq[t]).get(s) for t in targets]
        sec.img("kormedmcqa.png", _grouped_bar(targets, series, title="KorMedMCQA accuracy per stage and subset",
                                               ylabel="accuracy", ylim=(0, 1.15)), "KorMedMCQA accuracy per stage")
    else:
        sec.p("KorMedMCQA: not run.")
    if data.ppl:
        targets = sorted(data.ppl, key=_target_key)
        vals = [_number(data.ppl[t].get("perplexity", data.ppl[t].get("ppl"))) for t in targets]
        bpc = [_bits_per_char(data.ppl[t]) for t in targets]
        sec.table(["model", "perplexity", "loss", "tokens", "bits per character"],
                  [[t, _fmt(v), _fmt(_number(data.ppl[t].get("loss"))), _fmt(data.ppl[t].get("tokens")),
                    f"{b:.3f}" if b is not None else "-"] for t, v, b in zip(targets, vals, bpc, strict=True)])
        sec.p("Perplexity is per token of each model's own tokenizer: after a tokenizer extension (fewer, longer "
              "tokens) compare the bits per character, which do not depend on the tokenizer.")
        if all(v is not None for v in vals):
            sec.img("perplexity.png", _bar(targets, vals, title="Held-out Korean perplexity", ylabel="perplexity"),
                    "perplexity per stage")
    else:
        sec.p("Perplexity: not run.")
    return sec


def _bits_per_char(result: dict[str, Any]) -> float | None:
    """Total loss in bits divided by the characters of the evaluated text file (tokenizer-independent)."""
    loss, tokens = _number(result.get("loss")), _number(result.get("tokens"))
    path = result.get("data")
    if loss is None or not tokens or not isinstance(path, str):
        return None
    chars = _text_chars(path)
    return loss * tokens / chars / math.log(2) if chars else None


_CHARS_CACHE: dict[tuple[str, int, int], int | None] = {}


def _text_chars(path: str) -> int | None:
    """Characters of the `text` fields of a JSONL file (None when unreadable)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _CHARS_CACHE:
        total = 0
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        text = json.loads(line).get("text")
                        total += len(text) if isinstance(text, str) else 0
        except (OSError, ValueError, AttributeError):
            total = 0
        _CHARS_CACHE[key] = total or None
    return _CHARS_CACHE[key]


def build_sections(data: ReportData) -> list[Section]:
    return [_overview(data), _data_section(data), _token_section(data), _training_section(data), _eval_section(data)]


# --------------------------------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Noto Sans KR","Noto Sans CJK KR",sans-serif;max-width:1100px;
margin:24px auto;padding:0 16px;color:#1d1d1f;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:.9em}table{border-collapse:collapse;margin:8px 0 12px;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f6}
td:not(:first-child){font-variant-numeric:tabular-nums}img{max-width:100%;display:block;margin:8px 0 16px}
nav a{margin-right:12px}code{background:#f4f4f6;padding:0 3px;border-radius:3px}
"""


def _inline_md(text: str) -> str:
    """The tiny Markdown subset used in paragraphs (**bold**, `code`) as escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_parts(parts: Iterable[Part]) -> str:
    """A paragraph as HTML: kormed's markup through `_inline_md`, data parts escaped and never parsed."""
    parts = list(parts)
    # data parts become placeholders (private-use characters) while the markup is parsed, then their escaped text
    markup = "".join(p if isinstance(p, str) else f"\ue000{i}\ue001" for i, p in enumerate(parts))

    def data(m: re.Match) -> str:
        part = parts[int(m.group(1))]
        text = html.escape(part.text)
        if isinstance(part, Code):
            return f"<code>{text}</code>"
        return f"<b>{text}</b>" if isinstance(part, Bold) else text

    return re.sub("\ue000(\\d+)\ue001", data, _inline_md(markup))


# Characters that Markdown (CommonMark / GFM tables) may read as markup inside a line.
_MD_INLINE = re.compile(r"([\\`*\[\]<>|&~!])")
_MD_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")  # an intraword _ never makes emphasis: left readable
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def md_escape(text: str, *, line_start: bool = False) -> str:
    """Text from the data as literal Markdown: its markup characters backslash-escaped, line breaks made spaces;
    `line_start` also escapes what would begin a heading, quote or list at the start of a line."""
    out = _MD_INLINE.sub(r"\\\1", " ".join(str(text).splitlines()))
    out = _MD_UNDERSCORE.sub(r"\\_", out)
    if line_start:
        out = _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2) if len(m.group(2)) == 1
                                 else m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], out)
    return out


def md_code(text: str) -> str:
    """Text from the data as a Markdown code span: fenced by more backticks than it holds (CommonMark)."""
    text = " ".join(str(text).splitlines())
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_parts(parts: Iterable[Part]) -> str:
    """A paragraph as Markdown: kormed's markup as is, data parts escaped (a leading one as at a line start)."""
    out = []
    for i, p in enumerate(parts):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Code):
            out.append(md_code(p.text))
        elif isinstance(p, Bold):
            out.append(f"**{md_escape(p.text)}**")
        else:
            out.append(md_escape(p.text, line_start=i == 0))
    return "".join(out)


def render_html(title: str, meta: Iterable[Part], sections: list[Section]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{_html_parts(meta)}</p>', "<nav>"]
    parts += [f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections]
    parts.append("</nav>")
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>')
        for kind, payload in s.blocks:
            if kind == "p":
                parts.append(f"<p>{_html_parts(payload)}</p>")
            elif kind == "table":
                head, rows = payload
                parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
                             + "</tr></thead><tbody>")
                for r in rows:
                    parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
                parts.append("</tbody></table>")
            elif kind == "img":
                name, png, alt = payload
                b64 = base64.b64encode(png).decode("ascii")
                parts.append(f'<img alt="{html.escape(alt)}" data-name="{html.escape(name)}" '
                             f'src="data:image/png;base64,{b64}">')
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(value: Any) -> str:
    return md_escape(str(value))


def render_markdown(title: str, meta: Iterable[Part], sections: list[Section]) -> str:
    lines = [f"# {md_escape(title)}", "", _md_parts(meta), ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for kind, payload in s.blocks:
            if kind == "p":
                lines += [_md_parts(payload), ""]
            elif kind == "table":
                head, rows = payload
                lines.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
                lines.append("|" + "|".join("---" for _ in head) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                lines.append("")
            elif kind == "img":
                name, _png, alt = payload
                lines += [f"![{md_escape(alt)}]({ASSET_DIR}/{name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (+ report_assets/*.png) for a run directory."""
    if out_dir is not None:
        check_output_path(out_dir, "dir", "--output")
    data = collect(run_dir)
    out = Path(out_dir) if out_dir is not None else check_output_path(data.run_dir, "dir", "RUN_DIR")
    sections = build_sections(data)
    name = data.state.get("name") or data.run_dir.name
    title = f"kormed run report: {name}"
    meta: list[Part] = ["run directory ", Code(str(data.run_dir))]
    if data.state.get("pipeline"):
        meta += ["; pipeline ", Code(str(data.state["pipeline"]))]
    if data.state.get("updated"):
        meta += ["; last updated ", Lit(str(data.state["updated"]))]
    meta.append(".")
    assets = out / ASSET_DIR
    wanted = set()
    for s in sections:
        for kind, payload in s.blocks:
            if kind == "img":
                name_, png, _alt = payload
                wanted.add(name_)
                with atomic_write(assets / name_, "wb", encoding=None) as fh:
                    fh.write(png)
    if assets.is_dir():  # plots of sections that are gone since the last report
        for p in assets.glob("*.png"):
            if p.name not in wanted:
                p.unlink()
    html_path, md_path = out / "report.html", out / "report.md"
    with atomic_write(html_path) as fh:
        fh.write(render_html(title, meta, sections))
    with atomic_write(md_path) as fh:
        fh.write(render_markdown(title, meta, sections))
    return html_path, md_path
