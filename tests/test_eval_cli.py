"""`kormed eval kormedmcqa` (three modes) and `kormed eval ppl` end to end through the CLI.

The KorMedMCQA runs use the real embedded Gemma 3 270M on a couple of the bundled sample questions (the few
forward passes that the "done when" of the issue asks for); ppl uses the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kormed.cli import app

runner = CliRunner()


def _sample(name: str, tmp_path: Path, fallback: list[dict]) -> Path:
    from kormed.sample_data import sample_paths

    path = sample_paths()[name]
    if path.is_file():
        return path
    out = tmp_path / f"{name}.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fallback), encoding="utf-8")
    return out


FALLBACK = [
    {"question": f"질문 {i}", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": i % 5 + 1,
     "subject": s, "exam_type": s, "year": 2022 + i % 3}
    for i, s in enumerate(["doctor", "nurse", "pharm", "dentist", "doctor", "nurse"])
]


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("mode", ["generate", "loglik", "chat"])
def test_three_modes_on_the_embedded_model(mode, tmp_path, embedded_model_dir):
    test = _sample("mcq_test", tmp_path, FALLBACK)
    out = tmp_path / f"{mode}.json"
    args = ["eval", "kormedmcqa", "--data", str(test), "--mode", mode, "--limit", "2", "--batch-size", "2",
            "--max-new-tokens", "4", "--device", "cpu", "--output", str(out), "--quiet"]
    if mode == "generate":
        args += ["--fewshot-file", str(_sample("mcq_fewshot", tmp_path, FALLBACK)), "--num-fewshot", "1"]
    result = invoke(args)
    assert "overall" in result.output and "unparseable answers" in result.output
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["mode"] == mode and saved["total"] == 2 and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["model"] == "embedded:gemma3-270m" and saved["runtime"]["device"] == "cpu"
    assert sum(s["total"] for s in saved["per_subset"].values()) == 2
    for q in saved["questions"]:
        assert q["prompt"].startswith("<bos>") and q["prompt"].count("<bos>") == 1
        assert q["extracted"] in ("", "A", "B", "C", "D", "E")
    if mode == "generate":
        assert saved["harness_version"] == "kormedmcqa 3.0" and saved["num_fewshot"] == 1
        assert saved["questions"][0]["prompt"].endswith("정답：")
        assert saved["questions"][0]["prompt"].count("정답：") == 2
    if mode == "chat":
        assert saved["questions"][0]["prompt"].endswith("<start_of_turn>model\n")


def test_yaml_config_and_flags(tmp_path, tiny_gemma3_dir):
    test = tmp_path / "nurse.jsonl"
    rows = [{k: v for k, v in r.items() if k not in ("exam_type", "subject")} for r in FALLBACK[:3]]
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"eval:\n  model: {tiny_gemma3_dir}\n  mode: loglik\n  batch_size: 2\n  data: {test}\n")
    out = tmp_path / "r.json"
    invoke(["eval", "kormedmcqa", "--config", str(cfg), "--limit", "2", "--output", str(out), "--quiet"])
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["mode"] == "loglik" and saved["total"] == 2
    assert set(saved["per_subset"]) == {"nurse"}  # public schema without exam_type/subject: the file name


def test_ppl_command_matches_library_and_packing(tmp_path, tiny_gemma3_dir, real_tokenizer):
    from transformers import AutoModelForCausalLM

    from kormed.eval.perplexity import evaluate_perplexity, packed_eval_blocks

    texts = ["고혈압은 혈압이 높은 상태이다.", "당뇨병은 혈당이 높은 대사 질환이다. " * 5, "짧다"]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "ppl.json"
    result = invoke(["eval", "ppl", "--model", str(tiny_gemma3_dir), "--data", str(data), "--max-length", "16",
                     "--device", "cpu", "--dtype", "float32", "--output", str(out), "--quiet"])
    assert "perplexity" in result.output
    saved = json.loads(out.read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32")
    blocks = packed_eval_blocks(real_tokenizer, texts, max_length=16)
    ref = evaluate_perplexity(model, blocks, batch_size=1, progress=False)
    assert saved["blocks"] == len(blocks) and saved["tokens"] == ref["tokens"] == sum(len(b) - 1 for b in blocks)
    assert saved["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert saved["documents"] == 3 and saved["max_length"] == 16 and saved["eod_token"] == "<end_of_turn>"
    # per character: each text alone, no end-of-text target, the texts' own characters
    from kormed.eval.perplexity import score_documents, summarise_documents

    chars = summarise_documents(score_documents(model, real_tokenizer, texts, max_length=16, progress=False))
    assert saved["characters"] == sum(len(t) for t in texts)
    assert saved["bits_per_char"] == pytest.approx(chars["bits_per_char"], rel=1e-5)
    assert saved["hangul_bits_per_char"] == pytest.approx(chars["hangul_bits_per_char"], rel=1e-5)
    assert "bits per character" in result.output


def test_ppl_bad_input(tmp_path, tiny_gemma3_dir):
    data = tmp_path / "val.jsonl"
    data.write_text('{"text": "좋다"}\n{"body": "no text"}\n', encoding="utf-8")
    result = runner.invoke(app, ["eval", "ppl", "--model", str(tiny_gemma3_dir), "--data", str(data), "--quiet"])
    assert result.exit_code == 2 and f"kormed: error: {data}:2: field 'text'" in result.output
    data.write_text('{"text": "좋다"}\n', encoding="utf-8")
    result = runner.invoke(app, ["eval", "ppl", "--model", str(tiny_gemma3_dir), "--data", str(data), "--eod-token",
                                 "<nope>", "--quiet", "--device", "cpu"])
    assert result.exit_code == 2 and "not in the tokenizer" in result.output and "Traceback" not in result.output
