"""The periodic KorMedMCQA callback inside a real transformers Trainer run (tiny model, a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kormed.eval.callback import METRIC, KorMedMCQACallback
from kormed.records import parse_mcq


def _questions(n: int):
    rows = [{"question": f"질문 {i}", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": i % 5 + 1,
             "exam_type": "doctor"} for i in range(n)]
    return [parse_mcq(r, Path("q.jsonl"), i + 1) for i, r in enumerate(rows)]


def test_sample_is_fixed_and_seeded():
    qs = _questions(20)
    a = KorMedMCQACallback(qs, sample=5, seed=1)
    b = KorMedMCQACallback(qs, sample=5, seed=1)
    c = KorMedMCQACallback(qs, sample=5, seed=2)
    assert a.questions == b.questions and len(a.questions) == 5
    assert a.questions != c.questions
    assert len(KorMedMCQACallback(qs, sample=None).questions) == 20
    with pytest.raises(ValueError):
        KorMedMCQACallback(qs, every_n_evals=0)


def test_logs_accuracy_every_n_evals_to_the_run(tmp_path, tiny_gemma3_dir, real_tokenizer):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32")
    ids = real_tokenizer("<bos>고혈압 환자의 혈압 관리", add_special_tokens=False)["input_ids"]
    data = Dataset.from_list([{"input_ids": ids, "labels": ids}] * 4)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, eval_strategy="steps",
        eval_steps=1, report_to=["tensorboard"], save_strategy="no",
        use_cpu=True, disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=real_tokenizer)
    callback = KorMedMCQACallback(_questions(6), every_n_evals=2, sample=3, mode="loglik")
    trainer.add_callback(callback)
    callback.attach(trainer)
    trainer.train()
    logged = [e for e in trainer.state.log_history if METRIC in e]
    assert [e["step"] for e in logged] == [2, 4]  # evaluations 2 and 4 of 4
    assert all(0.0 <= e[METRIC] <= 1.0 for e in logged)
    assert [h["step"] for h in callback.history] == [2, 4] and callback.history[0]["total"] == 3
    events = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("events.out.tfevents*"))
    assert b"eval/kormedmcqa_accuracy" in events  # the same TensorBoard run
    metrics = trainer.evaluate()  # the 5th evaluation: not a multiple of 2, nothing added
    assert METRIC not in metrics
    metrics = trainer.evaluate()  # the 6th: added to the returned metrics (metric_for_best_model can use it)
    assert METRIC in metrics
    model.train()
    callback.on_evaluate(trainer.args, trainer.state, trainer.control, metrics={}, model=model)
    callback.on_evaluate(trainer.args, trainer.state, trainer.control, metrics={}, model=model)
    assert model.training  # the evaluation restored the training mode


def test_runs_in_the_trainings_precision_on_a_bf16_base(tiny_gemma3_dir, real_tokenizer):
    """bf16 base + fp32 trained embedding copy (kormed's layout for --train-embeddings on a bf16 run): the
    callback evaluates under the run's bf16 autocast; without it the fp32 embedding output meets bf16 layers."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

    from kormed.models import RuntimeSpec
    from kormed.train.engine.model_setup import upcast_trainable_copies

    base = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["embed_tokens"]))
    assert upcast_trainable_copies(model) > 0
    logged: list[dict] = []
    trainer = SimpleNamespace(model=model,
                              processing_class=real_tokenizer, log=logged.append)
    callback = KorMedMCQACallback(_questions(2), mode="loglik", sample=None, progress=False,
                                  compute_dtype=RuntimeSpec("cpu", "bfloat16", "sdpa").compute_dtype)
    callback.attach(trainer)
    metrics: dict = {}
    callback.on_evaluate(TrainingArguments(output_dir="unused", use_cpu=True), TrainerState(), TrainerControl(),
                         metrics=metrics, model=model)
    assert 0.0 <= metrics[METRIC] <= 1.0 and logged[0][METRIC] == metrics[METRIC]
