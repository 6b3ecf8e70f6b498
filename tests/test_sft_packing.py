"""Padding-free SFT (kormed.data.padding_free): packed rows give the same per-example losses as unpacked ones on
tiny random Gemma 3 models (text-only and multimodal, sliding-window and full layers) with the real tokenizer,
labels are ignored at every example boundary, and a `kormed train sft` run gives the same curves either way."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from kormed.data.chat import IGNORE_INDEX, encode_chat_example, encode_raw_text, render_dict_entry, render_mcq
from kormed.data.padding_free import CountingCollator, PaddingFreeCollator
from kormed.records import read_dictionary, read_mcq_jsonl
from kormed.sample_data import sample_paths
from kormed.train.engine.trainer import CausalCollator
from kormed.train.sft_config import SFTConfig
from tests.conftest import tiny_text_config
from tests.test_sft_data import RAW_SENTENCES, write_raw
from tests.test_sft_pipeline import _cli

SLIDING_WINDOW = 32  # the MCQs (~150 tokens) are longer than the window, the dictionary entries (~20) shorter


@pytest.fixture(scope="module")
def examples(real_tokenizer) -> list[dict[str, list[int]]]:
    """Real chat examples of both sizes (answer-only labels) and one raw full-loss example."""
    p = sample_paths()
    entries, _ = read_dictionary(p["medical_dict"])
    questions, _ = read_mcq_jsonl(p["mcq_train"])
    pairs = [render_dict_entry(e) for e in entries[:3]] + [render_mcq(q) for q in questions[:2]]
    rows = [encode_chat_example(real_tokenizer, u, a, 512) for u, a in pairs]
    rows.insert(2, encode_raw_text(real_tokenizer, RAW_SENTENCES[0] * 2, 512)[0])
    lengths = [len(r["input_ids"]) for r in rows]
    assert max(lengths) > SLIDING_WINDOW > min(lengths)
    return rows


def _text_config():
    return tiny_text_config(sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"])


def _model(kind: str):
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    if kind == "text":
        model = Gemma3ForCausalLM(_text_config())
    else:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        cfg = Gemma3Config(text_config=_text_config().to_dict(), vision_config=vision.to_dict(),
                           mm_tokens_per_image=4, image_token_index=262143, boi_token_index=255999,
                           eoi_token_index=256000)
        model = Gemma3ForConditionalGeneration(cfg)
    assert model.config._attn_implementation == "sdpa"
    return model.eval()


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token NLL at every position of [rows, T] (0 where the target label is -100), shape [rows, T-1]."""
    shift = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), shift.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view(shift.shape)
    return nll * shift.ne(IGNORE_INDEX)


def _per_example_packed(model, batch) -> list[float]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        nll = _token_nll(model(**inputs).logits, batch["labels"])[0]
    starts = batch["position_ids"][0].eq(0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    # the target at flat position t+1 belongs to the example holding t+1
    return [float(nll[max(a - 1, 0) : b - 1].sum()) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _per_example_padded(model, batch) -> list[float]:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return _token_nll(out, batch["labels"]).sum(dim=1).tolist()


def _per_example_alone(model, rows) -> list[float]:
    out = []
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        out.append(float(_token_nll(logits, torch.tensor([r["labels"]])).sum()))
    return out


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_packed_rows_give_the_per_example_losses_of_unpacked_ones(examples, real_tokenizer, kind):
    model = _model(kind)
    packed = PaddingFreeCollator()(examples)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in examples))
    assert "attention_mask" not in packed and packed["use_cache"] is False
    alone = _per_example_alone(model, examples)
    got = _per_example_packed(model, packed)
    padded = _per_example_padded(model, CausalCollator(real_tokenizer)(examples))
    assert all(v > 1.0 for v in alone)  # real losses (a random model over 262K tokens), not empty sums
    torch.testing.assert_close(torch.tensor(got), torch.tensor(alone), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(padded), torch.tensor(alone), rtol=1e-5, atol=1e-4)


def test_text_model_would_attend_across_examples_without_use_cache_false(examples):
    """Why the collator sends use_cache=False: with the config's default cache, transformers ignores the packing."""
    model = _model("text")
    assert model.config.use_cache
    packed = PaddingFreeCollator()(examples)
    packed.pop("use_cache")
    alone = _per_example_alone(model, examples)
    got = _per_example_packed(model, packed)
    assert abs(got[0] - alone[0]) < 1e-3  # the first example has nothing before it
    assert max(abs(a - b) for a, b in zip(got[1:], alone[1:], strict=True)) > 1e-2


def test_labels_are_ignored_at_every_example_boundary(examples, real_tokenizer):
    counted = CountingCollator(PaddingFreeCollator())
    batch = counted(examples)
    assert counted.stats.batches == 0 and len(counted.pending) == 1  # built, not yet trained on
    counted.consume(1)
    labels, pos, ids = batch["labels"][0], batch["position_ids"][0], batch["input_ids"][0]
    starts = pos.eq(0).nonzero().flatten().tolist()
    assert len(starts) == len(examples)
    offset = 0
    for start, row in zip(starts, examples, strict=True):
        n = len(row["input_ids"])
        assert start == offset
        assert pos[start : start + n].tolist() == list(range(n))
        assert ids[start : start + n].tolist() == row["input_ids"]
        assert labels[start] == IGNORE_INDEX  # nothing before it predicts this token (not even the raw <bos>)
        assert labels[start + 1 : start + n].tolist() == row["labels"][1:]  # kormed's labels kept
        offset += n
    assert examples[2]["labels"][0] == examples[2]["input_ids"][0]  # the raw example labels its <bos>
    # the Trainer's num_items_in_batch (labels[..., 1:] != -100) is the same for packed and padded batches
    padded = CountingCollator(CausalCollator(real_tokenizer))
    pad_batch = padded(examples)
    padded(examples[:2])  # a prefetched batch that is never trained on is not counted
    padded.consume(1)
    targets = sum(sum(x != IGNORE_INDEX for x in r["labels"][1:]) for r in examples)
    assert int(labels[1:].ne(IGNORE_INDEX).sum()) == int(pad_batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()) == targets
    # token counts: same real tokens; no padding when packed, padding to the longest otherwise
    real = sum(len(r["input_ids"]) for r in examples)
    assert counted.stats.to_dict()["real_tokens"] == padded.stats.real_tokens == real
    assert counted.stats.target_tokens == padded.stats.target_tokens == targets
    assert counted.stats.padding_fraction == 0.0
    width = max(len(r["input_ids"]) for r in examples)
    assert padded.stats.padding_fraction == pytest.approx(1 - real / (len(examples) * width))


def _sft_run(tmp: Path, model_dir: Path, padding_free: bool, capsys) -> Path:
    # Lean on purpose: step 1 trains 3 optimizer steps x 2 micro-batches of 2 examples, steps 2-4 one step each,
    # and every step evaluates once at its end (no 'maintained' condition, so no evaluation at step 0).
    train = {"eval_steps": 100, "batch_size": 2, "grad_accum": 2, "report_to": [], "gradient_checkpointing": False,
             "lr": 1e-3, "logging_steps": 1, "seed": 7}
    later = {"max_steps": 1, "stop": ["eval_qa_loss < 0.001"], "stable_evals": 1, "stable_metrics": []}
    steps = [dataclasses.asdict(s) for s in SFTConfig().steps]  # the seeds' four steps, budgets changed
    steps[0]["max_steps"] = 3
    for step in steps[1:]:
        step.update(later)
    config = {"sft": {"val_max": 1, "max_length": 96, "train": train, "lora": {"dropout": 0.0}, "steps": steps}}
    cfg_path = tmp / "sft.yaml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    p = sample_paths()
    out = tmp / ("packed" if padding_free else "padded")
    code, _, err = _cli(["train", "sft", "--config", str(cfg_path), "--mcq", str(p["mcq_train"]),
                         "--dict", str(p["medical_dict"]), "--raw", write_raw(tmp / "raw.jsonl", n=12),
                         "--model", str(model_dir), "--output", str(out), "--device", "cpu",
                         "--padding-free" if padding_free else "--no-padding-free"], capsys)
    assert code == 0, err
    assert ("padding-free batches" if padding_free else "padded batches") in err
    return out


@pytest.mark.heavy
def test_sft_run_padding_free_matches_padded(tmp_path, tiny_gemma3_dir, capsys):
    """`kormed train sft`, same seed, padding-free on and off: the same loss curves, validation metrics and
    token counts; only the padding differs. Gradient accumulation 2 checks the token weighting across rows."""
    runs = {pf: _sft_run(tmp_path, tiny_gemma3_dir, pf, capsys) for pf in (True, False)}
    for step, n_steps in (("step1", 3), ("step2", 1), ("step3", 1), ("step4", 1)):
        info = {pf: json.loads((out / step / "training_info.json").read_text()) for pf, out in runs.items()}
        packed, padded = info[True]["batches"], info[False]["batches"]
        assert packed["padding_free"] and not padded["padding_free"]
        assert packed["micro_batches"] == padded["micro_batches"] == 2 * n_steps  # only the trained ones
        assert packed["padding_fraction"] == 0.0 < padded["padding_fraction"]
        for key in ("examples", "real_tokens", "target_tokens", "real_tokens_all_processes"):
            assert packed[key] == padded[key] > 0, key
        assert packed["real_tokens"] == packed["real_tokens_all_processes"]  # one process: the Trainer's count
        assert packed["real_tokens"] == packed["batch_tokens"] < padded["batch_tokens"]
        assert packed["real_tokens_per_s"] > 0 and padded["real_tokens_per_s"] > 0
        logs = {pf: info[pf]["batches"]["train_log"] for pf in info}
        assert [e["step"] for e in logs[True]] == [e["step"] for e in logs[False]] == list(range(1, n_steps + 1))
        torch.testing.assert_close(torch.tensor([e["loss"] for e in logs[True]]),
                                   torch.tensor([e["loss"] for e in logs[False]]), rtol=1e-4, atol=1e-5)
        assert [e["real_tokens_per_batch"] for e in logs[True]] == [e["real_tokens_per_batch"] for e in logs[False]]
        assert all(e["padding_fraction"] == 0.0 for e in logs[True])
        assert any(e["padding_fraction"] > 0.0 for e in logs[False])
        evals = {pf: [(e["step"], e["eval_qa_loss"], e["eval_dict_loss"], e["eval_raw_loss"])
                      for e in info[pf]["eval_history"]] for pf in info}
        assert len(evals[True]) == len(evals[False]) >= 1
        for a, b in zip(evals[True], evals[False], strict=True):
            assert a[0] == b[0]
            torch.testing.assert_close(torch.tensor(a[1:]), torch.tensor(b[1:]), rtol=1e-4, atol=1e-5)
