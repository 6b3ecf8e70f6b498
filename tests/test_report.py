"""`kormed report`: a synthetic run directory (TensorBoard events, trainer logs, stats and eval JSONs) becomes a
self-contained HTML page and a Markdown twin; missing pieces say "not run"; the page renders in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kormed.errors import KormedError
from kormed.pipeline.report import write_report
from kormed.pipeline.rundir import collect, read_scalars, scalars_from_log_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _mcq(acc: float, doctor: float, nurse: float, total: int = 20) -> dict:
    return {
        "accuracy": acc, "correct": round(acc * total), "total": total, "unparseable": 1, "mode": "loglik",
        "per_subset": {"doctor": {"accuracy": doctor, "correct": 5, "total": 10},
                       "nurse": {"accuracy": nurse, "correct": 5, "total": 10}},
        "per_year": {}, "questions": [],
    }


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run directory as `kormed run` leaves it (prepare, tokenizer, cpt, sft step1-2, eval; loop not run)."""
    from torch.utils.tensorboard import SummaryWriter

    rd = tmp_path / "runs" / "synthetic"
    _write(rd / "state.json", {
        "version": 1, "name": "synthetic", "pipeline": "pipeline.yaml", "updated": "2026-11-24T21:00:00+00:00",
        "order": ["prepare", "tokenizer", "cpt", "sft", "loop", "eval"],
        "stages": {
            "prepare": {"status": "done", "wall_s": 12.5, "output_dir": "corpus", "result": {"documents": 130}},
            "tokenizer": {"status": "done", "wall_s": 30.0, "output_dir": "tokenizer"},
            "cpt": {"status": "done", "wall_s": 421.0, "output_dir": "cpt"},
            "sft": {"status": "done", "wall_s": 200.0, "output_dir": "sft"},
            "loop": {"status": "unavailable", "reason": "not installed"},
            "eval": {"status": "done", "wall_s": 95.0, "output_dir": "eval"},
        },
    })
    # the shape kormed prepare writes: the seeds' table (plain sum row, its parts, medical rows, total)
    def row(source, base, mult, final, chars, ratio, **extra):
        return {"source": source, "base": base, "multiplier": mult, "final": final, "ratio": ratio,
                "ratio_text": f"{ratio * 100:.1f}%", "characters": chars, **extra}

    _write(rd / "corpus" / "raw_text_mixed.stats.json", {
        "out": str(rd / "corpus" / "raw_text_mixed.jsonl"), "val": str(rd / "corpus" / "raw_text_mixed.val.jsonl"),
        "lines": 145, "val_docs": 2,
        "table": [
            row("Korean Plain", 80, 1, 80, 90000, 0.55),
            row("namu_wiki", 50, 1, 50, 60000, 0.35, part_of="Korean Plain"),
            row("c4_korean", 30, 1, 30, 30000, 0.2, part_of="Korean Plain"),
            row("MCQ", 6, 5, 30, 6000, 0.2),
            row("Medical Dict", 7, 5, 35, 3500, 0.25),
            row("Total", 93, "", 145, 99500, 1.0),
        ],
        "drops": {"namu_wiki": {"too_short": 4, "low_hangul": 2}, "c4_korean": {"contaminated": 3}},
        "decontamination": {"enabled": True, "ngram": 13, "min_words": 8, "documents": 3, "characters": 4321,
                            "eval_sets": [{"name": "test", "path": "test.jsonl", "questions": 100,
                                           "matched_documents": 3}]},
    })
    _write(rd / "tokenizer" / "tokenizer_report.json", {
        "method": "bpe", "new_tokens": 1200, "base_vocab_size": 262145, "vocab_size": 263345,
        "heldout": {"tokens_per_1000_chars_before": 640.0, "tokens_per_1000_chars_after": 450.0,
                    "new_token_share_of_chars": 0.31},
        "medical": {"tokens_per_1000_chars_before": 700.0, "tokens_per_1000_chars_after": 420.0,
                    "new_token_share_of_chars": 0.4},
        "settings": {"max_new_tokens": 1200},
    })
    # CPT: curves in the run's TensorBoard directory, stop info in training_info.json
    writer = SummaryWriter(log_dir=str(rd / "tensorboard" / "cpt" / "runs" / "x"))
    for step in range(1, 31):
        writer.add_scalar("train/loss", 4.0 - step * 0.05, step)
        if step % 10 == 0:
            writer.add_scalar("eval/loss", 3.8 - step * 0.04, step)
            writer.add_scalar("eval/perplexity", 40.0 - step, step)
    writer.close()
    _write(rd / "cpt" / "training_info.json", {
        "stop_reason": "early_stopping", "stop_step": 30, "global_step": 30, "tokens_seen": 120000,
        "wall_time_s": 400.0, "config": {"train": {"target_perplexity": 3.0}},
        "best_eval": {"step": 20, "epoch": 0.5, "eval_loss": 3.0, "eval_perplexity": 20.09, "eval_runtime": 1.5},
        "last_eval": {"step": 30, "epoch": 0.7, "eval_loss": 2.6, "eval_perplexity": 13.46},
    })
    # SFT: no TensorBoard events, only the Trainer's log_history (fallback path)
    for step_no, stop in ((1, "conditions_met"), (2, "max_steps")):
        d = rd / "sft" / f"step{step_no}"
        history = [{"step": s, "loss": 2.0 / s, "epoch": 0.1} for s in range(1, 9)]
        history += [{"step": s, "eval_qa_loss": 1.0 / s, "eval_raw_loss": 2.5} for s in (4, 8)]
        _write(d / "trainer_state.json", {"log_history": history})
        _write(d / "training_info.json", {
            "stop_reason": stop, "stop_step": 8, "global_step": 8, "stop_conditions": ["eval_qa_loss < 0.3"],
            "conditions_at_stop": [{"condition": "eval_qa_loss < 0.3", "metric": "eval_qa_loss", "value": 0.125,
                                    "threshold": 0.3, "holds": True}],
        })
    _write(rd / "eval" / "kormedmcqa_base.json", _mcq(0.25, 0.2, 0.3))
    _write(rd / "eval" / "kormedmcqa_cpt.json", _mcq(0.3, 0.3, 0.3))
    _write(rd / "eval" / "kormedmcqa_sft.json", {**_mcq(0.45, 0.4, 0.5), "mean_margin": 0.4321,
                                                 "permutations": "cyclic"})
    val = rd / "corpus" / "raw_text_mixed.val.jsonl"
    val.write_text(json.dumps({"text": "가" * 600}) + "\n" + json.dumps({"text": "나" * 400}) + "\n", encoding="utf-8")
    _write(rd / "eval" / "ppl_base.json", {"loss": 3.2, "perplexity": 24.5, "tokens": 5000, "data": str(val)})
    _write(rd / "eval" / "ppl_sft.json", {"loss": 2.9, "perplexity": 18.2, "tokens": 5000, "bits_per_char": 1.2345,
                                          "hangul_bits_per_char": 2.3456})
    return rd


def _images(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img alt="[^"]*" data-name="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return {name: base64.b64decode(b64) for name, b64 in found}


def test_readers(run_dir: Path):
    scalars = read_scalars(run_dir / "tensorboard" / "cpt")
    assert [s for s, _ in scalars["eval/loss"]] == [10, 20, 30]
    assert scalars["train/loss"][0] == (1, pytest.approx(3.95))
    hist = scalars_from_log_history([{"step": 2, "loss": 1.5, "epoch": 0.1}, {"step": 4, "eval_qa_loss": 0.7},
                                     {"epoch": 1.0, "train_runtime": 3.0}])
    assert hist == {"train/loss": [(2, 1.5)], "eval/qa_loss": [(4, 0.7)]}
    data = collect(run_dir)
    assert [u.name for u in data.training["sft"]] == ["sft/step1", "sft/step2"]
    assert data.training["sft"][0].source == "sft/step1/trainer_state.json"
    assert data.training["cpt"][0].source == "tensorboard/cpt"
    assert sorted(data.mcq) == ["base", "cpt", "sft"] and sorted(data.ppl) == ["base", "sft"]


def test_report_has_every_section_and_embedded_plots(run_dir: Path):
    html_path, md_path = write_report(run_dir)
    html = html_path.read_text(encoding="utf-8")
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "<script" not in html
    images = _images(html)
    expected = {"wall_time.png", "data_distribution.png", "data_characters.png", "token_efficiency.png",
                "curves_cpt.png", "curves_sft_step1.png", "curves_sft_step2.png", "kormedmcqa.png", "perplexity.png"}
    assert set(images) == expected
    for png in images.values():
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    for title in ("Stages", "Data distribution", "Token efficiency", "Training curves", "KorMedMCQA accuracy"):
        assert f"<h2>{title}" in html
    # figures from the inputs appear in the tables
    assert "namu_wiki" in html and "namu_wiki: too_short" in html and "5x" in html and "55.0%" in html
    assert "640.0" in html and "29.7%" in html  # tokens/1k chars before, saving on held-out text
    assert "early_stopping" in html and "conditions_met" in html and "max_steps" in html
    assert "0.450" in html and "doctor" in html and "nurse" in html
    assert "23.083" in html  # bits per character of the base model: 3.2 nats x 5000 tokens / 1000 chars / ln 2
    assert "1.234" in html and "2.346" in html  # sft: as eval ppl measured them (each text alone; Hangul)
    assert "0.432" in html and "loglik (cyclic permutations)" in html and "Mean margin" in html
    assert "300 tokens/s" in html  # cpt: 120,000 tokens in 400 s
    assert "7m 01s" in html  # cpt wall time 421 s
    assert "unavailable" in html and "dictionary &lt;-&gt; exam loop: not run." in html
    # the Markdown twin points at PNG files that exist and are the same images
    md = md_path.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\((report_assets/[^)]+)\)", md)
    assert {Path(link).name for link in links} == expected
    for link in links:
        assert (run_dir / link).read_bytes() == images[Path(link).name]
    assert "| model | mode | questions | accuracy | 95% CI | doctor | nurse | unparseable |" in md
    assert ("Decontamination: documents sharing a 13-word span with an evaluation question dropped: 3 (4,321 "
            "characters); evaluation sets: test (100 questions, 3 matched).") in md
    assert "| c4_korean: contaminated | 3 |" in md
    # base: 5/20 correct -> Wilson 95% interval (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.959964, 20, 0.25
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    assert f"| base | loglik | 20 | 0.250 | {centre - half:.3f}–{centre + half:.3f} |" in md
    # rerunning gives the same page
    write_report(run_dir)
    assert html_path.read_text(encoding="utf-8") == html


def test_missing_pieces_say_not_run(tmp_path: Path):
    rd = tmp_path / "empty"
    rd.mkdir()
    html_path, md_path = write_report(rd)
    md = md_path.read_text(encoding="utf-8")
    assert md.count("not run") >= 5
    assert "<img" not in html_path.read_text(encoding="utf-8")
    # a broken JSON file is treated as missing, not a crash
    (rd / "eval").mkdir()
    (rd / "eval" / "kormedmcqa_base.json").write_text("{broken", encoding="utf-8")
    (rd / "state.json").write_text("[]", encoding="utf-8")
    write_report(rd)
    with pytest.raises(KormedError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def test_stale_plots_are_removed(run_dir: Path):
    write_report(run_dir)
    assert (run_dir / "report_assets" / "perplexity.png").exists()
    for p in (run_dir / "eval").glob("ppl_*.json"):
        p.unlink()
    write_report(run_dir)
    assert not (run_dir / "report_assets" / "perplexity.png").exists()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian package `chromium`)")
    html_path, _ = write_report(run_dir)
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2400",
           f"--screenshot={shot}", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    import numpy as np
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[0] >= 2000 and img.shape[1] >= 1100
    pixels = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(pixels[:: max(1, len(pixels) // 200000)], axis=0)
    non_white = (pixels.min(axis=1) < 240).mean()
    # text, tables and coloured plots: many colours and a real share of non-white pixels (not a blank page)
    assert len(colours) > 200, len(colours)
    assert non_white > 0.05, non_white


def test_curve_tags_drop_summaries_and_duplicates():
    from kormed.pipeline.report import curve_tags

    same = [(0, 5.0), (2, 4.0)]
    tags = curve_tags({"eval/loss": same, "eval/val_loss": list(same), "train/loss": [(1, 6.0), (2, 5.5)],
                       "train/train_loss": [(2, 5.7)], "eval/qa_loss": [(0, 5.0), (2, 3.0)]})
    assert tags == ["eval/qa_loss", "eval/val_loss", "train/loss"]


def _loop_dir(rd: Path) -> None:
    """The loop's files as `kormed train loop` writes them: loop_table.json and one training_info per round."""
    rounds = []
    for i, (kind, acc) in enumerate((("start", 0.3), ("dict", 0.35), ("mcq", 0.55))):
        d = rd / "loop" / (f"round{i:02d}_{kind}" if i else "round00_start")
        d.mkdir(parents=True, exist_ok=True)
        # round 0 is the adapter saved before the first round: model info, no stop record (not a trainer run)
        _write(d / "training_info.json", {"stop_reason": "max_steps", "stop_step": 4, "global_step": 4} if i
               else {"stage": "loop", "round": 0})
        test = 0.5 if i == 2 else None  # the test set is scored only when a round becomes the best on dev
        rounds.append({"round": i, "kind": kind, "adapter": str(d), "dev_accuracy": acc,
                       "dev_correct": round(acc * 20), "dev_total": 20, "dev_unparseable": 0,
                       "test_accuracy": test, "test_correct": 50 if test else None, "test_total": 100 if test else None,
                       "global_step": 4 if i else None, "stop_reason": "max_steps" if i else None, "metrics": None})
    _write(rd / "loop" / "loop_table.json", {
        "target": 0.9, "eval_mode": "chat", "selected_on": "dev (dev.jsonl, 20 q)",
        "reported_on": "test (test.jsonl, 100 q)",
        "baseline_raw_perplexity": None, "rounds": rounds, "stop_reason": "max_rounds", "best_round": 2,
        "best_dev_accuracy": 0.55, "best_test_accuracy": 0.5, "best_adapter": str(rd / "loop" / "best")})


def test_result_files_round_trip(run_dir: Path):
    from kormed.pipeline import results
    from kormed.stop_reason import StopReason

    _loop_dir(run_dir)
    for stage in ("prepare", "tokenizer", "cpt", "sft", "loop", "eval"):
        d = run_dir / {"prepare": "corpus"}.get(stage, stage)
        built = results.stage_result_from_files(stage, d)
        assert isinstance(built, results.RESULT_TYPES[stage])
        results.write_result(d, stage, built)
        doc = json.loads((d / results.RESULT_FILE).read_text(encoding="utf-8"))
        assert doc["schema"] == results.RESULT_SCHEMA and doc["stage"] == stage
        assert results.read_result(d, stage) == built
    cpt = results.read_result(run_dir / "cpt", "cpt")
    assert cpt.stop_reason is StopReason.EARLY_STOPPING and cpt.best_metrics["eval_loss"] == 3.0
    assert [t.label for t in cpt.thresholds] == ["target ppl < 3"]
    sft = results.read_result(run_dir / "sft", "sft")
    assert [s.name for s in sft.steps] == ["step1", "step2"] and sft.finished is False
    assert sft.steps[0].thresholds[0].value == 0.3
    loop = results.read_result(run_dir / "loop", "loop")
    assert [r.name for r in loop.trained] == ["round01_dict", "round02_mcq"] and loop.rounds[0].stop_reason is None
    assert loop.stop_reason is StopReason.MAX_ROUNDS
    # a file of another stage or schema, or an unknown stop reason, is an error naming the file
    with pytest.raises(KormedError, match="expected a 'cpt' result"):
        results.read_result(run_dir / "sft", "cpt")
    path = run_dir / "cpt" / results.RESULT_FILE
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["result"]["stop_reason"] = "bored"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(KormedError, match="unknown stop_reason 'bored'") as info:
        results.read_result(run_dir / "cpt", "cpt")
    assert str(path) in str(info.value)
    with pytest.raises(TypeError):
        results.write_result(run_dir / "cpt", "cpt", sft)


def test_report_reads_the_typed_results(run_dir: Path):
    """With kormed_result.json present, the report shows what it holds (not the stage files' numbers), including
    the best-checkpoint metrics and the loop table."""
    import dataclasses

    from kormed.pipeline import results

    _loop_dir(run_dir)
    ev = results.eval_result(run_dir / "eval")
    ev.targets["base"] = dataclasses.replace(ev.targets["base"], accuracy=0.875)
    results.write_result(run_dir / "eval", "eval", ev)
    prep = results.stage_result_from_files("prepare", run_dir / "corpus")
    results.write_result(run_dir / "corpus", "prepare", dataclasses.replace(prep, drops={"c4_korean": {"dup": 9}}))
    html = write_report(run_dir)[0].read_text(encoding="utf-8")
    assert "0.875" in html and "0.250" not in html
    assert "c4_korean: dup" in html and "namu_wiki: too_short" not in html
    assert "best: eval_loss=3, eval_perplexity=20.09" in html and "final: eval_loss=2.6" in html
    assert "eval_runtime" not in html  # how long an evaluation took is not a metric of the model
    assert "Loop rounds" in html and "55.0%" in html and "Best on dev: round 2 (dev 55.0%, test 50.0%)" in html
    assert "dev (dev.jsonl, 20 q)" in html and "test (test.jsonl, 100 q)" in html
    assert "loop/round02_mcq" in html and "loop: max_rounds" in html
    # a broken result file: its section says why, the rest of the report is written
    (run_dir / "eval" / results.RESULT_FILE).write_text("{broken", encoding="utf-8")
    md = write_report(run_dir)[1].read_text(encoding="utf-8")
    assert "evaluation: its result could not be read" in md and "Data distribution" in md


def test_report_shows_the_loops_knowledge_curve(run_dir: Path):
    """A loop that measured dictionary knowledge each round: the report's loop table carries the dev, test and
    held-out knowledge and the raw perplexity of every round, plots them, and names the best round's dev knowledge;
    a loop table without knowledge (older runs) keeps the exam-only table and draws no knowledge plot."""
    _loop_dir(run_dir)
    path = run_dir / "loop" / "loop_table.json"
    table = json.loads(path.read_text(encoding="utf-8"))
    for r, (dev, test, held, ppl) in zip(table["rounds"], ((0.4, 0.34, 0.38, None), (0.6, 0.58, 0.52, 14.06),
                                                           (0.76, 0.78, 0.5, 16.78)), strict=True):
        r.update(dev_knowledge_accuracy=dev, test_knowledge_accuracy=test, heldout_knowledge_accuracy=held,
                 metrics=None if ppl is None else {"eval_raw_perplexity": ppl})
    table.update(select_on="knowledge", best_dev_knowledge=0.76, baseline_raw_perplexity=13.07)
    _write(path, table)
    md = write_report(run_dir)[1].read_text(encoding="utf-8")
    assert "| dev knowledge | test knowledge | held-out knowledge |" in md
    assert "| 2 | mcq | 76.0% | 78.0% | 50.0% | 55.0% | 11/20 | 50.0% | 16.78 |" in md
    assert "| 0 | start | 40.0% | 34.0% | 38.0% | 30.0% | 6/20 | - | - |" in md
    assert "selected on knowledge" in md and "(the start: 13.07)" in md
    assert "Best on dev: round 2 (dev knowledge 76.0%, dev 55.0%, test 50.0%)" in md
    assert (run_dir / "report_assets" / "loop_knowledge.png").is_file()
    _loop_dir(run_dir)  # the same loop without knowledge
    (run_dir / "report_assets" / "loop_knowledge.png").unlink()
    md = write_report(run_dir)[1].read_text(encoding="utf-8")
    assert "dev knowledge" not in md and "| 2 | mcq | 55.0% | 11/20 | 50.0% |" in md
    assert not (run_dir / "report_assets" / "loop_knowledge.png").exists()


def _knowledge_file(path: Path, right: dict[str, int], margin: float, reuse: dict | None = None) -> None:
    """A `kormed eval knowledge` result: 10 questions per group (trained, held_out), `right[group]` of them right,
    each question's margin `margin` (+0.1 for a right one)."""
    from kormed.eval.knowledge import summarise

    records = [{"form": "medical:term_to_definition", "term": f"{g}{i}", "group": g, "question": f"q {g}{i}",
                "options": list("abcde"), "answer": "A", "extracted": "A" if i < right[g] else "B",
                "correct": i < right[g], "margin": margin + (0.1 if i < right[g] else 0.0)}
               for g in ("trained", "held_out") for i in range(10)]
    _write(path, {"split": "test", "seed": 0, "permutations": "cyclic", "per_group": None,
                  "questions_total": len(records), "skipped": {}, "summary": summarise(records),
                  "questions": records, **({"reuse": reuse} if reuse else {})})


def test_report_shows_knowledge_columns_and_the_loop_reuse(run_dir: Path):
    """Trained vs held-out accuracy with Wilson intervals, margins and the paired difference from the base; where a
    target's scores came from the loop (or why not); the mean-margin sentence without escaped backticks."""
    _knowledge_file(run_dir / "eval" / "knowledge_base.json", {"trained": 2, "held_out": 2}, -0.5)
    _knowledge_file(run_dir / "eval" / "knowledge_sft.json", {"trained": 7, "held_out": 3}, 0.25,
                    reuse={"why_not": "kormedmcqa_test.json: 20 recorded items, 100 to score"})
    mcq = json.loads((run_dir / "eval" / "kormedmcqa_sft.json").read_text("utf-8"))
    mcq["reuse"] = {"reused_from": "loop_table.json (round 1: round01_dict/kormedmcqa_test.json)"}
    _write(run_dir / "eval" / "kormedmcqa_sft.json", mcq)
    _html, md_path = write_report(run_dir)
    md = md_path.read_text(encoding="utf-8")
    assert ("| model | trained accuracy (95% CI, n) | held-out accuracy (95% CI, n) | trained margin | held-out margin "
            "| trained margin vs base | held-out margin vs base |") in md
    # sft: 7/10 trained (Wilson 0.397-0.892), 3/10 held out; margins 0.25 + 0.1 x share right; vs base: paired
    row = next(line for line in md.splitlines() if line.startswith("| sft | 0.700"))
    assert "0.700 (0.397–0.892, n=10)" in row and "0.300 (0.108–0.603, n=10)" in row
    assert "| 0.320 | 0.280 | +0.800 (" in row and "| +0.760 (" in row  # 0.32 - (-0.48), 0.28 - (-0.48)
    assert "| model | medical:term_to_definition (trained) | medical:term_to_definition (held out) |" in md
    assert "sft: KorMedMCQA reused from `loop_table.json (round 1: round01_dict/kormedmcqa_test.json)`" in md
    assert "sft: dictionary knowledge scored again, not reused from the loop: kormedmcqa_test.json: 20 recorded" in md
    assert "held-out entries were set aside by prepare" in md
    margin = next(line for line in md.splitlines() if line.startswith("Mean margin"))
    assert "\\`" not in margin and "`eval.permutations: cyclic`" in margin
