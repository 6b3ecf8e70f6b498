"""`kormed eval kormedmcqa --backend lm-eval`: lm-evaluation-harness's own `kormedmcqa` task (v3.0) run by lm-eval.

kormed's `generate` mode copies the harness protocol; this backend runs the harness itself, so a user can quote
"lm-evaluation-harness" numbers. What kormed adds is only what lm-eval cannot do by itself here:

* the model comes from kormed's loader (adapters with their rebuilt embedding rows, QLoRA) and is handed to
  lm-eval already loaded (`HFLM(pretrained=model, tokenizer=tokenizer)`);
* the questions come from the user's local JSONL (read and validated by kormed, so a bad record is the usual
  one-line error), written per subset into a temporary directory that lm-eval's task configs point at with
  `dataset_path: json` + `data_files`: nothing is downloaded, and hub access is switched off while lm-eval runs.

The task configs are lm-eval's own YAML files (`lm_eval/tasks/kormedmcqa/*.yaml`, read with lm-eval's YAML loader,
including its `ExtractChoiceFilter`); kormed changes only the dataset location and `max_gen_toks` (its
`--max-new-tokens`, so both backends cut generation at the same length; 1024 is the harness's value).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.records import LETTERS, MCQ

LM_EVAL_TASK = "kormedmcqa"
LM_EVAL_SUBSETS = ("doctor", "nurse", "pharm", "dentist")  # the group's tasks, in lm-eval's order
LM_EVAL_INSTALL = "pip install 'kormed[harness]'"
FEWSHOT_SEED = 1234  # simple_evaluate's default; the task's `first_n` sampler takes the first rows whatever it is


def require_lm_eval() -> str:
    """lm-eval's version, or a one-line KormedError saying how to install it (checked before the model loads)."""
    try:
        from importlib.metadata import version

        import lm_eval  # noqa: F401
    except ImportError:
        raise KormedError(
            f"--backend lm-eval needs lm-evaluation-harness (lm-eval >= 0.4.13), which is not installed: "
            f"{LM_EVAL_INSTALL}", field="backend",
        ) from None
    return version("lm_eval")


def lm_eval_task_dir() -> Path:
    """Where the installed lm-eval keeps its `kormedmcqa` task YAMLs."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / LM_EVAL_TASK


def _load_task_yaml(name: str) -> dict[str, Any]:
    """One of lm-eval's own kormedmcqa YAMLs, resolved by lm-eval's loader (its `include` and `!function` tags)."""
    from lm_eval.tasks._yaml_loader import load_yaml  # what lm-eval's TaskManager itself reads task files with

    path = lm_eval_task_dir() / name
    if not path.is_file():
        raise KormedError("the installed lm-eval has no kormedmcqa task file", path=path,
                          hint=f"{LM_EVAL_INSTALL} (lm-eval >= 0.4.13)")
    return load_yaml(path, resolve_func=True)


def _public_record(mcq: MCQ) -> dict[str, Any]:
    """A question in the public dataset's schema, the fields lm-eval's prompt reads."""
    rec: dict[str, Any] = {"subject": mcq.subset, "year": mcq.year, "question": mcq.question}
    rec.update(zip(LETTERS, mcq.options, strict=True))
    rec["answer"] = mcq.answer
    return rec


def _write_jsonl(path: Path, questions: Sequence[MCQ]) -> str:
    path.write_text("".join(json.dumps(_public_record(q), ensure_ascii=False) + "\n" for q in questions),
                    encoding="utf-8")
    return str(path)


def harness_task_configs(
    questions: Sequence[MCQ], fewshot: Sequence[MCQ], workdir: Path, *, max_gen_toks: int
) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """lm-eval's `kormedmcqa` task configs, one per subset of `questions`, each reading a JSONL written to
    `workdir`, and, per task name, the indices in `questions` of its documents (in doc_id order).

    A subset lm-eval does not ship (a file named after something else) uses the tasks' shared template under the
    name `kormedmcqa_<subset>`. Few-shot examples of a subset are the few-shot rows of that subset, or all of them
    when it has none (as kormed's `generate` mode picks them)."""
    by_subset: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_subset.setdefault(q.subset, []).append(i)
    order = sorted(by_subset, key=lambda s: (LM_EVAL_SUBSETS.index(s) if s in LM_EVAL_SUBSETS else 99, s))
    tasks: list[dict[str, Any]] = []
    doc_index: dict[str, list[int]] = {}
    for n, subset in enumerate(order):
        shipped = subset in LM_EVAL_SUBSETS
        cfg = _load_task_yaml(f"{subset}.yaml" if shipped else "_template_yaml")
        name = f"{LM_EVAL_TASK}_{subset}" if shipped else f"{LM_EVAL_TASK}_{_safe(subset)}_{n}"
        files = {"test": _write_jsonl(workdir / f"{n}_test.jsonl", [questions[i] for i in by_subset[subset]])}
        if fewshot:
            same = [f for f in fewshot if f.subset == subset]
            files["fewshot"] = _write_jsonl(workdir / f"{n}_fewshot.jsonl", same or list(fewshot))
        else:
            cfg["fewshot_split"] = None
            cfg.pop("fewshot_config", None)
        # datasets' cache of these files lives and dies with `workdir` (else every run leaves one in ~/.cache)
        cfg.update(task=name, dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": files, "cache_dir": str(workdir / "datasets-cache")})
        cfg["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), "max_gen_toks": int(max_gen_toks)}
        tasks.append(cfg)
        doc_index[name] = by_subset[subset]
    return tasks, doc_index


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40] or "subset"


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub access while lm-eval runs: huggingface_hub's and datasets' offline switches (what HF_HUB_OFFLINE=1
    sets at import), restored afterwards."""
    from kormed.models import hub_offline

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import datasets.config as dconfig

    previous = dconfig.HF_HUB_OFFLINE
    dconfig.HF_HUB_OFFLINE = True
    try:
        with hub_offline():
            yield
    finally:
        dconfig.HF_HUB_OFFLINE = previous
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQ],
    *,
    fewshot: Sequence[MCQ] = (),
    num_fewshot: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    progress: bool = True,
    compute_dtype: str | None = None,
) -> dict[str, Any]:
    """Run lm-eval's `kormedmcqa` task on `questions` with an already-loaded `model`; the result has the keys of
    :func:`kormed.eval.kormedmcqa.evaluate_kormedmcqa`'s (one record per question, in `questions` order, taken from
    lm-eval's logged samples) plus `backend`, `lm_eval_version` and `lm_eval` (the harness's own results table).
    `compute_dtype` as in `evaluate_kormedmcqa` (the same autocast, so both backends compute alike)."""
    from kormed.eval.mcq_records import HARNESS_VERSION, base_record, device_of, summarise
    from kormed.precision import autocast

    version = require_lm_eval()
    if not questions:
        raise KormedError("no questions to evaluate")
    import datasets.utils.logging as datasets_logging
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm_eval_logger = logging.getLogger("lm_eval")
    log_level, bars = lm_eval_logger.level, datasets_logging.is_progress_bar_enabled()
    if not progress:  # lm-eval's own request bars still show: it draws them whatever it is told
        lm_eval_logger.setLevel(logging.ERROR)
        datasets_logging.disable_progress_bar()
    was_training = model.training
    model.eval()
    try:
        with (tempfile.TemporaryDirectory(prefix="kormed-lm-eval-") as tmp, _offline(),
              autocast(device_of(model), compute_dtype or "float32")):
            tasks, doc_index = harness_task_configs(questions, fewshot, Path(tmp), max_gen_toks=max_new_tokens)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            # lm-eval's `evaluate`, with the task set-up `simple_evaluate` does (few-shot count and seed); not
            # `simple_evaluate` itself, which also runs `git` and torch's environment report (pip, nvidia-smi) in
            # child processes for metadata kormed does not keep. No built-in task index: the tasks are inline.
            loaded = TaskManager(include_defaults=False).load(tasks)
            for task in loaded["tasks"].values():
                task.set_config(key="num_fewshot", value=num_fewshot)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
            out = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True)
    finally:
        lm_eval_logger.setLevel(log_level)
        if bars:
            datasets_logging.enable_progress_bar()
        if was_training:
            model.train()
    records: list[dict[str, Any] | None] = [None] * len(questions)
    for task, indices in doc_index.items():
        for sample in out["samples"][task]:
            i = indices[int(sample["doc_id"])]
            rec = base_record(questions[i], sample["arguments"][0][0])
            extracted = sample["filtered_resps"][0]
            rec.update(output=sample["resps"][0][0], extracted=extracted, correct=float(sample["exact_match"]) == 1.0)
            records[i] = rec
    if any(r is None for r in records):
        raise KormedError("lm-eval returned fewer answers than questions", field="backend")
    done: list[dict[str, Any]] = [r for r in records if r is not None]
    correct = sum(r["correct"] for r in done)
    return {
        "accuracy": correct / len(done),
        "correct": correct,
        "total": len(done),
        "unparseable": sum(1 for r in done if not r["extracted"]),
        "per_subset": summarise(done, "subset"),
        "per_year": summarise(done, "year"),
        "mode": "generate",
        "backend": "lm-eval",
        "num_fewshot": num_fewshot,
        "loglik_target": None,
        "max_new_tokens": max_new_tokens,
        "harness_version": HARNESS_VERSION,
        "lm_eval_version": version,
        "lm_eval": _harness_table(out, doc_index),
        "questions": done,
    }


def _harness_table(out: dict[str, Any], doc_index: dict[str, list[int]]) -> dict[str, Any]:
    """lm-eval's own numbers: exact_match (filter `extract_answer`) of each task as lm-eval reports it, and of the
    `kormedmcqa` group, aggregated as the group's YAML says (mean weighted by size) with lm-eval's own function.

    The tasks run as separate configs because lm-eval 0.4.13 passes an inline group's own keys on to its tasks."""
    from lm_eval.api.metrics import aggregate_subtask_metrics

    key = "exact_match,extract_answer"
    results = out.get("results", {})
    tasks = {name: {"exact_match": results[name][key], "samples": len(doc_index[name])} for name in doc_index}
    group = aggregate_subtask_metrics([t["exact_match"] for t in tasks.values()],
                                      [t["samples"] for t in tasks.values()], weight_by_size=True)
    return {"results": {LM_EVAL_TASK: {"exact_match": group, "samples": sum(len(v) for v in doc_index.values())},
                        **tasks},
            "versions": dict(out.get("versions", {})), "n-shot": dict(out.get("n-shot", {}))}
