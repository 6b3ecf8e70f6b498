"""`kormed bench eval` reports questions/second for each mode from one model load (tiny model, 2 questions)."""

from __future__ import annotations

import json

import pytest

from kormed.errors import KormedError


def test_bench_eval_all_modes(tmp_path, tiny_gemma3_dir):
    from typer.testing import CliRunner

    from kormed.cli import app

    data = tmp_path / "q.jsonl"
    rows = [{"question": f"질문 {i}", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": 2}
            for i in range(3)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "eval", "--model", str(tiny_gemma3_dir), "--data", str(data),
                                      "--limit", "2", "--batch-size", "2", "--max-new-tokens", "2",
                                      "--device", "cpu", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert set(saved["modes"]) == {"generate", "loglik", "chat"}
    for mode, fig in saved["modes"].items():
        assert fig["questions"] == 2 and fig["seconds"] > 0, mode
        assert fig["questions_per_second"] == pytest.approx(2 / fig["seconds"], rel=0.01)
        assert f"\n{mode}" in result.output


def test_bench_eval_rejects_unknown_mode(tiny_gemma3_dir):
    from kormed.bench.eval import run_bench

    with pytest.raises(KormedError, match="unknown mode"):
        run_bench(model=str(tiny_gemma3_dir), modes=("fast",))
