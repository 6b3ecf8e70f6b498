"""`kormed bench train` on a tiny random Gemma 3: the JSON rows, and that the counted tokens are the real ones.

No timing is asserted (speed and memory are benchmark figures); what is checked would catch a wrong count
(padding counted as real tokens, a step missed, arms seeing different batches) or a broken row schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kormed.bench import train as bench

BATCH, LENGTH, STEPS, WARMUP = 2, 64, 1, 1


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory, embedded_model_dir) -> tuple[list[dict], Path, Path]:
    """One CLI run of the bench (cpt + sft, every default CPU arm) on the tiny model, 1 warm-up + 1 timed step."""
    from typer.testing import CliRunner

    from kormed.cli import app

    root = tmp_path_factory.mktemp("bench-train")
    out, work = root / "rows.json", root / "work"
    res = CliRunner().invoke(app, ["bench", "train", "--arch", "tiny", "--device", "cpu", "--steps", str(STEPS),
                                   "--warmup-steps", str(WARMUP), "--batch-size", str(BATCH), "--max-length",
                                   str(LENGTH), "--dtype", "float32", "--output", str(out), "--work-dir", str(work)])
    assert res.exit_code == 0, res.output
    assert "kormed/arm tok/s" in res.output  # the table was printed
    return json.loads(out.read_text(encoding="utf-8")), work, out


@pytest.mark.heavy
def test_rows_schema(bench_rows):
    rows, _, _ = bench_rows
    assert [r["mode"] for r in rows] == ["cpt", "sft"]
    for row in rows:
        assert row["arch"] == "tiny" and row["device_type"] == "cpu" and row["device"]
        assert row["settings"]["batch_size"] == BATCH and row["settings"]["max_length"] == LENGTH
        arms = ["reference", "kormed"] + (["trl"] if row["mode"] == "sft" else [])
        assert "seeds" not in row  # the seeds arm runs on CUDA only by default
        for arm in arms:
            r = row[arm]
            assert "error" not in r, r.get("error")
            assert r["tokens_per_s"] > 0 and r["peak_memory_gib"] > 0.1  # RSS of a process with torch loaded
            assert r["memory"].startswith("peak RSS")
            assert r["optimizer_steps"] == STEPS + WARMUP and r["timed_steps"] == STEPS
            assert r["timed_real_tokens"] == sum(r["step_real_tokens"][WARMUP:])
            assert r["tokens_per_s"] == pytest.approx(r["timed_real_tokens"] / r["timed_seconds"], rel=1e-3)
        for arm in arms[:1] + arms[2:]:
            ratio = row["ratios_kormed_over"][arm]
            assert ratio["tokens_per_s"] == pytest.approx(row["kormed"]["tokens_per_s"] / row[arm]["tokens_per_s"],
                                                          rel=1e-2)
        assert row["targets"] and all(c["met"] in (True, False) for c in row["targets"].values())
    assert rows[0]["kormed"]["settings"]["loss"] != "model default (full logits)"


@pytest.mark.heavy
def test_cpt_counts_every_block_token(bench_rows):
    """CPT blocks are full: every step of every arm trains BATCH x LENGTH real tokens, no padding."""
    rows, _, _ = bench_rows
    for arm in ("reference", "kormed"):
        r = rows[0][arm]
        assert r["step_real_tokens"] == [BATCH * LENGTH] * (STEPS + WARMUP)
        assert r["step_computed_tokens"] == r["step_real_tokens"]


@pytest.mark.heavy
def test_sft_counts_real_tokens_of_the_examples(bench_rows, real_tokenizer):
    """Each SFT arm trains exactly once on the examples the bench wrote: its real-token count is the sum of the
    examples' non-padding tokens as that arm tokenizes them; the padded Trainer computes padding on top."""
    from kormed.data.chat import encode_chat_example
    from kormed.io import iter_jsonl

    rows, work, _ = bench_rows
    sft = rows[1]
    examples = [r for _, r in iter_jsonl(work / "sft" / "step3_examples.jsonl")]
    pairs = [r for _, r in iter_jsonl(work / "sft" / "step3_prompt_completion.jsonl")]
    assert len(examples) == len(pairs) == BATCH * (STEPS + WARMUP)
    tok = real_tokenizer
    kormed = sum(len(encode_chat_example(tok, e["user"], e["answer"], LENGTH)["input_ids"]) for e in examples)
    reference = sum(min(LENGTH, len(tok(p["prompt"])["input_ids"])
                        + len(tok(p["completion"], add_special_tokens=False)["input_ids"])) for p in pairs)
    trl = sum(min(LENGTH, len(tok(p["prompt"] + p["completion"] + tok.eos_token)["input_ids"])) for p in pairs)
    assert sft["kormed"]["total_real_tokens"] == kormed
    assert sft["reference"]["total_real_tokens"] == reference
    assert sft["trl"]["total_real_tokens"] == trl
    # padding is computed but not counted: the padded Trainer computes more positions than it has real tokens
    ref = sft["reference"]
    assert sum(ref["step_computed_tokens"]) >= ref["total_real_tokens"]
    assert sft["kormed"]["settings"]["padding_free"] is True
    assert sum(sft["kormed"]["step_computed_tokens"]) == sft["kormed"]["total_real_tokens"]
    # the arms see the same examples in the same micro-batches (tokenizations differ by a token or two)
    for arm in ("reference", "trl"):
        for a, b in zip(sft["kormed"]["step_real_tokens"], sft[arm]["step_real_tokens"], strict=True):
            assert abs(a - b) <= 2 * BATCH, (arm, sft["kormed"]["step_real_tokens"], sft[arm]["step_real_tokens"])


def test_training_order_matches_kormeds_mix():
    """The references' file order is the order run_sft_step trains on (its single-source mix)."""
    from datasets import Dataset

    from kormed.data.mixture import mix_datasets

    examples = [{"user": f"u{i}", "answer": f"a{i}"} for i in range(11)]
    mixed = mix_datasets({"qa_cot": Dataset.from_list(examples)}, {"qa_cot": 1.0}, seed=bench.SEED)
    assert [dict(r) for r in mixed] == bench.training_order(examples)


def test_step3_examples_follow_the_step3_mix():
    examples, passed_over = bench.step3_examples(40)
    assert passed_over == 0
    sources = {e["source"] for e in examples}
    assert sources == {"qa_cot", "dict"}
    assert 0.45 < sum(e["source"] == "qa_cot" for e in examples) / len(examples) < 0.95  # 70 % by weight
    # examples that do not fit are passed over and counted; the others keep the mix's order
    only_dict, passed_over = bench.step3_examples(10, fits=lambda e: e["source"] == "dict")
    dict_in_order = [e for e in bench.step3_examples(40)[0] if e["source"] == "dict"][:10]
    assert only_dict == dict_in_order
    first_40 = bench.step3_examples(40)[0]
    assert passed_over == first_40.index(dict_in_order[-1]) + 1 - 10


def test_medgemma_4b_config_has_the_public_sizes():
    cfg = bench.medgemma_4b_config()
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
            t.intermediate_size, t.vocab_size, t.sliding_window) == (2560, 34, 8, 4, 256, 10240, 262208, 1024)
    assert (v.num_hidden_layers, v.hidden_size) == (27, 1152)


def test_bad_arguments_are_one_clear_error():
    from kormed.errors import KormedError

    with pytest.raises(KormedError, match="unknown arm 'trl'"):
        bench.run_bench(arch="tiny", modes=("cpt",), arms=("trl",), device="cpu")
    with pytest.raises(KormedError, match="unknown arch"):
        bench.ensure_bench_model("gemma9", "cpu")


def test_method_axis_picks_kormeds_arm_per_training_method():
    """`--method lora,full` runs kormed's LoRA and full fine-tuning arms side by side (each its own process and peak);
    the default stays LoRA only; an unknown method is one clear error."""
    from kormed.errors import KormedError

    assert "kormed-full" not in bench.default_arms("cpt", "cpu")
    both = bench.default_arms("sft", "cpu", ("lora", "full"))
    assert {"reference", "trl", "kormed", "kormed-full"} <= set(both)
    assert "kormed" not in bench.default_arms("cpt", "cpu", ("full",))
    with pytest.raises(KormedError, match="unknown method 'qlora'"):
        bench.run_bench(arch="tiny", modes=("cpt",), methods=("qlora",), device="cpu")
    row = bench.make_row("cpt", {"kormed": {"tokens_per_s": 90.0, "peak_memory_gib": 1.5},
                                 "kormed-full": {"tokens_per_s": 18.0, "peak_memory_gib": 3.0}}, {"arch": "tiny"})
    assert row["ratios_kormed_over"]["kormed-full"]["peak_memory"] == 0.5  # LoRA's peak over full fine-tuning's
    assert "kormed-full" in bench.format_table([row])


def test_targets_are_judged_from_the_ratios():
    common = {"device": "x", "device_type": "cpu", "arch": "gemma3-270m"}
    row = bench.make_row("cpt", {"reference": {"tokens_per_s": 100.0, "peak_memory_gib": 10.0},
                                 "kormed": {"tokens_per_s": 250.0, "peak_memory_gib": 6.0}}, common)
    assert row["ratios_kormed_over"]["reference"] == {"tokens_per_s": 2.5, "peak_memory": 0.6, "tokens_per_cpu_s": None}
    assert row["targets"]["tokens_per_s_vs_reference"]["met"] is True
    assert row["targets"]["memory_vs_reference"]["met"] is False


@pytest.mark.gpu
def test_bench_train_on_cuda_tiny_multimodal(tmp_path):
    """On CUDA: every arm, the seeds arm included, runs on the multimodal class and reports CUDA memory."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rows = bench.run_bench(arch="tiny-multimodal", steps=1, warmup_steps=1, batch_size=2, max_length=64,
                           device="cuda", work_dir=tmp_path, log=lambda m: None)
    assert "seeds" in rows[0]
    for row in rows:
        for arm in bench.ARMS[row["mode"]]:
            assert "error" not in row[arm], row[arm].get("error")
            assert row[arm]["memory"] == "torch.cuda.max_memory_allocated"
            assert row[arm]["settings"]["compute_dtype"] == "bfloat16"
