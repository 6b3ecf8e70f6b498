"""`kormed report RUN_DIR`: one self-contained HTML page (plots inlined as base64 PNG) and a Markdown twin.

Everything is read from what the stages wrote into the run directory; any missing piece becomes a section that
says "not run" (or why its file could not be read) instead of an error:

- state.json (the runner): per-stage status, wall and CPU time;
- each stage's typed result, `<stage dir>/kormed_result.json` (`kormed.pipeline.results`): the distribution table
  and drop counts, tokens per 1,000 characters, stop reasons, final/best metrics and stop-condition thresholds,
  the loop table, KorMedMCQA accuracy and perplexity per target. A run directory made before these files existed
  is read from the stages' own files by the same builders (`results.stage_result_from_files`);
- TensorBoard event files under tensorboard/<stage>/ (and the stages' own dirs), else trainer_state.json
  log_history: the loss and validation curves.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from kormed.errors import KormedError
from kormed.eval.kormedmcqa import wilson_interval
from kormed.io import atomic_write, check_output_path, iter_jsonl
from kormed.markdown import md_code, md_escape
from kormed.pipeline import results
from kormed.pipeline.registry import STAGE_TITLES, TRAINING_STAGES
from kormed.pipeline.rundir import ReportData, TrainingUnit, collect, target_key

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

ASSET_DIR = "report_assets"


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    # imported when a plot is drawn: the Agg backend must be chosen before pyplot is first imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _ascii(text: str) -> str:
    """Plot labels: DejaVu has no Hangul glyphs; keep labels ASCII so no box characters appear in the PNGs."""
    return text if text.isascii() else text.encode("ascii", "replace").decode().replace("?", "_")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _stop_step(unit: TrainingUnit) -> int | None:
    r = unit.result
    if r.stop_step is not None:
        return r.stop_step
    if r.global_step is not None:
        return r.global_step
    steps = [s for pts in unit.scalars.values() for s, _ in pts]
    return max(steps) if steps else None


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
    reason = unit.result.stop_reason.value
    thresholds = [(t.metric, t.value, f"{t.label} ({t.value:.4g})" if "baseline" in t.label or "maintained" in t.label
                   else t.label) for t in unit.result.thresholds]
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
            ax.annotate(_ascii(f"stop: {reason}"), (stop, 0.97), xycoords=("data", "axes fraction"),
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


def _line_plot(xs: list[int], series: dict[str, list[float | None]], *, title: str, ylabel: str,
               xlabel: str) -> bytes | None:
    """One line per series over `xs`, unmeasured points left out; None when nothing was measured."""
    if not any(v is not None for vals in series.values() for v in vals):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for name, vals in series.items():
        pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=_ascii(name))
    ax.set_xticks(xs)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_ascii(title), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


# --------------------------------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Lit:
    """Plain text, shown literally (the same as a str part)."""

    text: str


@dataclass(frozen=True)
class Code(Lit):
    """Text shown as a code span."""


@dataclass(frozen=True)
class Bold(Lit):
    """Text shown in bold."""


# A paragraph: every part is text, kormed's own words and the data's alike (names, paths, reasons, file names of
# the evaluation sets), and each renderer escapes all of it with its one escaping function (`_html_text`,
# `md_escape`). Nothing is read as markup: a code span or bold is a `Code` or `Bold` part, never `**` or a backtick.
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


def _throughput(units: list[TrainingUnit]) -> str:
    """Tokens per second of a training stage: the tokens its trainer runs saw over their wall time."""
    tokens = sum(u.result.tokens_seen or 0 for u in units)
    seconds = sum(u.result.wall_time_s or 0 for u in units)
    if not tokens or not seconds:
        return "-"
    rate = tokens / seconds
    return f"{rate:,.0f} tokens/s" if rate >= 100 else f"{rate:.1f} tokens/s"


def _unreadable(data: ReportData, stage: str, sec: Section) -> bool:
    """Say so in `sec` when the stage's result could not be read (True), instead of a silent "not run"."""
    why = data.unreadable.get(stage)
    if why:
        sec.p(f"{STAGE_TITLES[stage]}: its result could not be read: ", Lit(why))
    return bool(why)


# --------------------------------------------------------------------------------------------------- sections


def _overview(data: ReportData) -> Section:
    sec = Section("Stages", "stages")
    stages = data.state.get("stages") or {}
    order = list(data.state.get("order") or []) or [s for s in STAGE_TITLES if s in stages]
    if not order:
        sec.p("not run: no state.json in this directory (not a ", Code("kormed run"),
              " directory), so no stage timings.")
        return sec
    rows, names, walls = [], [], []
    for s in order:
        entry = stages.get(s) or {}
        units = data.training.get(s, [])
        reasons = [f"{u.name}: {u.result.stop_reason.value}" for u in units]
        loop = data.loop if s == "loop" else None
        if loop is not None and loop.stop_reason is not None:
            reasons.append(f"loop: {loop.stop_reason.value}")
        wall = _number(entry.get("wall_s"))
        rows.append([STAGE_TITLES.get(s, s), entry.get("status", "not run"), _duration(wall),
                     _duration(entry.get("cpu_s")), _throughput(units),
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


def _data_section(data: ReportData) -> Section:
    sec = Section("Data distribution", "data")
    prep = data.prepare
    if prep is None:
        if not _unreadable(data, "prepare", sec):
            sec.p("not run: no prepare statistics (corpus/*.stats.json) in this run.")
        return sec
    rows = prep.table
    stats_file = Path(prep.stats_file)
    shown = stats_file.relative_to(data.run_dir) if stats_file.is_relative_to(data.run_dir) else stats_file
    counts = (f": {prep.documents:,} training documents, {prep.val_documents:,} held out for validation"
              if prep.documents is not None and prep.val_documents is not None else "")
    sec.p("From ", Code(str(shown)), f"{counts}.")
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
    else:
        sec.p("The distribution table is empty (no source had a record).")
    flat = [[f"{source}: {reason}", count] for source, reasons in prep.drops.items()
            for reason, count in reasons.items()]
    if flat:
        sec.p("Records dropped by the filters, by reason:")
        sec.table(["reason", "count"], [[a, _fmt(b)] for a, b in flat])
    else:
        sec.p("No record was dropped by the filters.")
    sec.p(_decontamination_text(prep.decontamination))
    return sec


def _decontamination_text(info: dict[str, Any]) -> str:
    """One sentence on the decontamination against the evaluation questions (prepare's stats `decontamination`)."""
    if not info:
        return "Decontamination: not recorded (a corpus prepared before kormed checked for evaluation questions)."
    if not info.get("enabled"):
        return "Decontamination against the evaluation questions was off (prepare.decontaminate: false)."
    sets = ", ".join(f"{s.get('name')} ({_fmt(s.get('questions'))} questions, {_fmt(s.get('matched_documents'))} "
                     "matched)" for s in info.get("eval_sets") or []) or "none found"
    return (f"Decontamination: documents sharing a {info.get('ngram')}-word span with an evaluation question "
            f"dropped: {_fmt(info.get('documents', 0))} ({_fmt(info.get('characters', 0))} characters); "
            f"evaluation sets: {sets}.")


def _token_section(data: ReportData) -> Section:
    sec = Section("Token efficiency (tokenizer extension)", "tokens")
    tok = data.tokenizer_result
    if tok is None:
        if not _unreadable(data, "tokenizer", sec):
            sec.p("not run: no tokenizer/tokenizer_report.json in this run (the tokenizer stage was disabled or "
                  "absent).")
        return sec
    sec.p(f"Tokens added to the vocabulary: {tok.new_tokens:,} (vocabulary {tok.base_vocab_size:,} -> "
          f"{tok.vocab_size:,}), method ", Code(tok.method), ".")
    rows, labels, before, after = [], [], [], []
    for name, eff in tok.texts.items():
        b, a = eff.tokens_per_1000_chars_before, eff.tokens_per_1000_chars_after
        rows.append([name, f"{b:.1f}", f"{a:.1f}", f"{(1 - a / b) * 100:.1f}%" if b else "-",
                     _pct(eff.new_token_share_of_chars)])
        labels.append(name)
        before.append(b)
        after.append(a)
    if rows:
        sec.table(["text", "tokens / 1k chars before", "after", "saving", "characters covered by new tokens"], rows)
        sec.img("token_efficiency.png", _grouped_bar(labels, {"base tokenizer": before, "extended": after},
                                                     title="Tokens per 1,000 characters", ylabel="tokens"),
                "tokens per 1,000 characters before and after")
    return sec


def _metrics_text(metrics: dict[str, float], limit: int) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in list(metrics.items())[:limit])


def _training_section(data: ReportData) -> Section:
    sec = Section("Training curves", "training")
    any_unit = False
    for stage in TRAINING_STAGES:
        units = data.training.get(stage) or []
        if not units:
            status = ((data.state.get("stages") or {}).get(stage) or {}).get("status")
            if _unreadable(data, stage, sec):
                pass
            elif status in ("running", "failed", "interrupted"):
                sec.p(f"{STAGE_TITLES[stage]}: ", Lit(str(status)), ", no finished training run logged yet.")
            else:
                sec.p(f"{STAGE_TITLES[stage]}: not run.")
            continue
        for u in units:
            any_unit = True
            png = plot_training(u)
            bits: list[list[Part]] = [[Bold(u.name)], ["stopped by: ", Lit(u.result.stop_reason.value)]]
            if u.result.final_metrics:
                bits.append(["final: ", Lit(_metrics_text(u.result.final_metrics, 6))])
            if u.result.best_metrics and u.result.best_metrics != u.result.final_metrics:
                bits.append(["best: ", Lit(_metrics_text(u.result.best_metrics, 4))])
            if u.source:
                bits.append(["curves from ", Code(str(u.source))])
            sec.p(*[part for i, bit in enumerate(bits) for part in ([" - "] if i else []) + bit])
            if png:
                sec.img(f"curves_{u.name.replace('/', '_')}.png", png, f"loss and validation curves of {u.name}")
            elif not u.scalars:
                sec.p("(no logged curves found for this run)")
    loop = data.loop
    if loop is not None and loop.rounds:
        _loop_rounds(sec, loop)
    if not any_unit:
        sec.p("No training stage has run yet.")
    return sec


def _loop_rounds(sec: Section, loop: results.LoopResult) -> None:
    """The loop's per-round curve: dictionary knowledge (where measured), exam accuracy, raw-text perplexity."""
    knowledge = any(r.dev_knowledge is not None for r in loop.rounds)
    sec.p("Loop rounds: after each round, ", *(["dictionary knowledge (trained entries: dev forms, selected on ",
          Lit(loop.select_on or "exam"), "; test forms and the held-out entries only reported) and "]
          if knowledge else []), "KorMedMCQA accuracy on the selection split (", Lit(loop.selected_on or "dev"),
          ") and, where measured, on the reported split (", Lit(loop.reported_on or "test"),
          "); raw ppl is the held-out raw text's perplexity (the start: ", Lit(_fmt(loop.baseline_raw_perplexity)),
          "). The test set and the held-out entries are never used to choose.")
    head = ["round", "kind", *(["dev knowledge", "test knowledge", "held-out knowledge"] if knowledge else []),
            "dev accuracy", "dev correct/total", "test accuracy", "raw ppl", "global_step", "stop_reason"]
    sec.table(head, [[_fmt(r.round), r.kind,
                      *([_pct(r.dev_knowledge), _pct(r.test_knowledge), _pct(r.heldout_knowledge)] if knowledge
                        else []),
                      f"{r.dev_accuracy:.1%}", f"{_fmt(r.dev_correct)}/{_fmt(r.dev_total)}",
                      _pct(r.test_accuracy), _fmt(r.raw_perplexity), _fmt(r.global_step),
                      r.stop_reason.value if r.stop_reason else "-"] for r in loop.rounds])
    if knowledge:
        series = {"dev knowledge (trained, selected on)": [r.dev_knowledge for r in loop.rounds],
                  "test knowledge (trained)": [r.test_knowledge for r in loop.rounds],
                  "test knowledge (held-out entries)": [r.heldout_knowledge for r in loop.rounds]}
        sec.img("loop_knowledge.png", _line_plot([r.round for r in loop.rounds], series, title="loop: dictionary "
                "knowledge per round", ylabel="accuracy", xlabel="round"), "dictionary knowledge per loop round")
    if loop.best_round is not None and loop.best_dev_accuracy is not None:
        test = "" if loop.best_test_accuracy is None else f", test {loop.best_test_accuracy:.1%}"
        dev_k = "" if loop.best_dev_knowledge is None else f"dev knowledge {loop.best_dev_knowledge:.1%}, "
        sec.p(f"Best on dev: round {loop.best_round} ({dev_k}dev {loop.best_dev_accuracy:.1%}{test}), copied to ",
              Code(loop.best_adapter or "best/"), "; loop stopped by: ",
              Lit(loop.stop_reason.value if loop.stop_reason else "running"), ".")


def _eval_section(data: ReportData) -> Section:
    sec = Section("KorMedMCQA accuracy, dictionary knowledge and perplexity", "eval")
    ev = data.eval
    if _unreadable(data, "eval", sec):
        return sec
    mcq = {t: r for t, r in (ev.targets if ev else {}).items() if r.accuracy is not None}
    ppl = {t: r for t, r in (ev.targets if ev else {}).items() if r.perplexity is not None}
    if not mcq and not ppl:
        sec.p("not run: no eval/kormedmcqa_*.json or eval/ppl_*.json in this run.")
        return sec
    if mcq:
        targets = sorted(mcq, key=target_key)
        subsets = sorted({s for t in targets for s in mcq[t].per_subset})
        margins = any(mcq[t].mean_margin is not None for t in targets)
        rows = []
        for t in targets:
            r = mcq[t]
            mode = f"{r.mode} ({r.permutations} permutations)" if r.permutations not in (None, "none") else r.mode
            rows.append([t, mode or "-", _fmt(r.total), f"{r.accuracy:.3f}", _interval(r),
                         *[f"{r.per_subset[s]:.3f}" if s in r.per_subset else "-" for s in subsets],
                         _fmt(r.unparseable),
                         *([f"{r.mean_margin:.3f}" if r.mean_margin is not None else "-"] if margins else [])])
        sec.table(["model", "mode", "questions", "accuracy", "95% CI", *subsets, "unparseable",
                   *(["mean margin"] if margins else [])], rows)
        if margins:
            sec.p("Mean margin: log-probability of the right option minus the mean over the wrong ones, per question "
                  "(averaged over the 5 option rotations with ", Code("eval.permutations: cyclic"), "); it moves "
                  "where accuracy at chance cannot.")
        sec.p("95% CI: Wilson score interval of the accuracy over these questions; two models whose intervals "
              "overlap widely are not shown apart by this test set.")
        series: dict[str, list[float | None]] = {"overall": [mcq[t].accuracy for t in targets]}
        for s in subsets:
            series[s] = [mcq[t].per_subset.get(s) for t in targets]
        sec.img("kormedmcqa.png", _grouped_bar(targets, series, title="KorMedMCQA accuracy per stage and subset",
                                               ylabel="accuracy", ylim=(0, 1.15)), "KorMedMCQA accuracy per stage")
    else:
        sec.p("KorMedMCQA: not run.")
    _reuse_notes(sec, ev.targets if ev else {})
    _knowledge_table(sec, ev.targets if ev else {})
    if ppl:
        targets = sorted(ppl, key=target_key)
        vals = [ppl[t].perplexity for t in targets]
        bpc = [_bits_per_char(ppl[t]) for t in targets]
        hangul = [ppl[t].hangul_bits_per_char for t in targets]
        sec.table(["model", "perplexity", "loss", "tokens", "bits per character", "Hangul bits per Hangul character"],
                  [[t, _fmt(v), _fmt(ppl[t].loss), _fmt(ppl[t].tokens), f"{b:.3f}" if b is not None else "-",
                    f"{h:.3f}" if h is not None else "-"]
                   for t, v, b, h in zip(targets, vals, bpc, hangul, strict=True)])
        sec.p("Perplexity is per token of each model's own tokenizer: after a tokenizer extension (fewer, longer "
              "tokens) compare the bits per character, which do not depend on the tokenizer. Bits per character "
              "score each text alone, without the end-of-text target CPT learns to predict; the Hangul column "
              "counts only the Hangul syllables' share (not newlines, spaces, punctuation or Latin letters).")
        sec.img("perplexity.png", _bar(targets, vals, title="Held-out Korean perplexity", ylabel="perplexity"),
                "perplexity per stage")
    else:
        sec.p("Perplexity: not run.")
    return sec


def _reuse_notes(sec: Section, targets: dict[str, results.EvalTarget]) -> None:
    """Which loop-round targets took the loop's own scores (and from where), or were scored again (and why)."""
    names = {"kormedmcqa": "KorMedMCQA", "knowledge": "dictionary knowledge"}
    for t in sorted(targets, key=target_key):
        for kind, note in sorted(targets[t].reuse.items()):
            if note.get("reused_from"):
                sec.p(f"{t}: {names.get(kind, kind)} reused from ", Code(note["reused_from"]),
                      " (the loop scored the same questions with the same settings; not scored again).")
            elif note.get("why_not"):
                sec.p(f"{t}: {names.get(kind, kind)} scored again, not reused from the loop: ", Lit(note["why_not"]),
                      ".")


def _ci(s: dict[str, Any] | None) -> str:
    """`accuracy (low–high, n)` of one knowledge group ("-" when absent)."""
    if not s:
        return "-"
    low, high = s["ci95"]
    return f"{s['accuracy']:.3f} ({low:.3f}–{high:.3f}, n={s['total']})"


def _paired(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    low, high = d["ci95"]
    return f"{d['difference']:+.3f} ({low:+.3f} to {high:+.3f})"


def _knowledge_table(sec: Section, targets: dict[str, results.EvalTarget]) -> None:
    """Dictionary knowledge per model: trained vs held-out entries, accuracy with Wilson intervals, mean margin and
    its paired difference from the base."""
    known = {t: r for t, r in targets.items() if r.knowledge}
    if not known:
        sec.p("Dictionary knowledge: not run (no dictionary in this run, or a run made before the eval stage "
              "scored it).")
        return
    names = sorted(known, key=target_key)
    splits = sorted({known[t].knowledge_split or "?" for t in names})
    rows = []
    for t in names:
        k = known[t].knowledge
        tr, ho = k.get("all/trained"), k.get("all/held_out")
        rows.append([t, _ci(tr), _ci(ho), f"{tr['mean_margin']:.3f}" if tr else "-",
                     f"{ho['mean_margin']:.3f}" if ho else "-",
                     _paired(known[t].knowledge_vs_base.get("all/trained")),
                     _paired(known[t].knowledge_vs_base.get("all/held_out"))])
    sec.p("Dictionary knowledge (", Code("kormed eval knowledge"), f", {', '.join(splits)} forms: reported, never "
          "used to choose): multiple choice on the run's medical and symbol dictionaries in forms no stage trains "
          "on (term to definition, definition to term, English to Korean), each question scored under its 5 option "
          "rotations, chance 20%. Trained entries are those the SFT and loop stages read; held-out entries were "
          "set aside by prepare (", Code("prepare.dict_holdout"), ", recorded in ", Code("corpus/*.dict_heldout.json"),
          ") and never trained on: the control. Accuracy with its Wilson 95% interval; margin as for KorMedMCQA; "
          "vs base: the mean margin minus the base's on the same questions, with a paired bootstrap 95% interval.")
    sec.table(["model", "trained accuracy (95% CI, n)", "held-out accuracy (95% CI, n)", "trained margin",
               "held-out margin", "trained margin vs base", "held-out margin vs base"], rows)
    forms = sorted({g.rsplit("/", 1)[0] for t in names for g in known[t].knowledge if not g.startswith("all/")})
    if forms:
        sec.table(["model", *[f"{f} ({g})" for f in forms for g in ("trained", "held out")]],
                  [[t, *[_count(known[t].knowledge.get(f"{f}/{g}")) for f in forms for g in ("trained", "held_out")]]
                   for t in names])


def _count(s: dict[str, Any] | None) -> str:
    return "-" if not s else f"{s['accuracy']:.2f} ({s['correct']}/{s['total']})"


def _interval(target: results.EvalTarget) -> str:
    """The Wilson 95% interval of a target's accuracy, as `low–high` ("-" without a question count)."""
    total = target.total
    correct = target.correct if target.correct is not None else (
        round(target.accuracy * total) if target.accuracy is not None and total else None)
    if not total or correct is None:
        return "-"
    low, high = wilson_interval(correct, total)
    return f"{low:.3f}–{high:.3f}"


def _bits_per_char(target: results.EvalTarget) -> float | None:
    """Bits per character, tokenizer-independent: as `kormed eval ppl` measured it (each text alone, no end-of-text
    target); for a run made before it did, the packed loss in bits over the text file's characters."""
    if target.bits_per_char is not None:
        return target.bits_per_char
    if target.loss is None or not target.tokens or not target.ppl_data:
        return None
    chars = _text_chars(target.ppl_data)
    return target.loss * target.tokens / chars / math.log(2) if chars else None


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
            for _, record in iter_jsonl(path):
                text = record.get("text")
                total += len(text) if isinstance(text, str) else 0
        except (OSError, KormedError):
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


def _html_text(text: Any) -> str:
    """Any text of the report as HTML: the one escaping function of report.html (quotes too, for attributes)."""
    return html.escape(str(text), quote=True)


def _html_parts(parts: Iterable[Part]) -> str:
    """A paragraph as HTML: every part escaped, a `Code` part in <code>, a `Bold` part in <b>."""
    out = []
    for p in parts:
        text = _html_text(p if isinstance(p, str) else p.text)
        if isinstance(p, Code):
            text = f"<code>{text}</code>"
        elif isinstance(p, Bold):
            text = f"<b>{text}</b>"
        out.append(text)
    return "".join(out)


def _md_parts(parts: Iterable[Part]) -> str:
    """A paragraph as Markdown: every part escaped (the first as at a line start), a `Code` part as a code span."""
    out = []
    for i, p in enumerate(parts):
        if isinstance(p, str):
            out.append(md_escape(p, line_start=i == 0))
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
             f"<title>{_html_text(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_html_text(title)}</h1>", f'<p class="meta">{_html_parts(meta)}</p>', "<nav>"]
    parts += [f'<a href="#{s.anchor}">{_html_text(s.title)}</a>' for s in sections]
    parts.append("</nav>")
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{_html_text(s.title)}</h2>')
        for kind, payload in s.blocks:
            if kind == "p":
                parts.append(f"<p>{_html_parts(payload)}</p>")
            elif kind == "table":
                head, rows = payload
                parts.append("<table><thead><tr>" + "".join(f"<th>{_html_text(h)}</th>" for h in head)
                             + "</tr></thead><tbody>")
                for r in rows:
                    parts.append("<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in r) + "</tr>")
                parts.append("</tbody></table>")
            elif kind == "img":
                name, png, alt = payload
                b64 = base64.b64encode(png).decode("ascii")
                parts.append(f'<img alt="{_html_text(alt)}" data-name="{_html_text(name)}" '
                             f'src="data:image/png;base64,{b64}">')
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(value: Any) -> str:
    return md_escape(str(value))


def render_markdown(title: str, meta: Iterable[Part], sections: list[Section]) -> str:
    lines = [f"# {md_escape(title)}", "", _md_parts(meta), ""]
    for s in sections:
        lines += [f"## {md_escape(s.title)}", ""]
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
                lines += [f"![{md_escape(alt)}]({ASSET_DIR}/{quote(name)})", ""]  # a link target: URL-escaped
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
