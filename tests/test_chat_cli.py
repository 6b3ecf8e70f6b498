"""`kormed chat`: one-shot output equals `generate`, multi-turn history in the Gemma format, /reset, --system,
bad input; the interactive mode in a real terminal (tmux; skipped without it)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kormed.chat import Chat, ChatConfig, load_chat
from kormed.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def chat(tiny_gemma3_dir):
    return load_chat(ChatConfig(model=str(tiny_gemma3_dir), max_new_tokens=6, device="cpu"), log=lambda m: None)


def _generate(session: Chat, ids: list[int], n: int) -> list[int]:
    import torch

    x = torch.tensor([ids])
    out = session.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                 eos_token_id=session.stop_ids, pad_token_id=session.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_one_shot_answer_equals_generate(chat):
    tok = chat.tokenizer
    chat.reset()
    expected_ids = _generate(chat, tok("<start_of_turn>user\n고혈압의 정의는?<end_of_turn>\n<start_of_turn>model\n")
                             ["input_ids"], 6)
    buf = io.StringIO()
    answer = chat.ask("고혈압의 정의는?", out=buf)
    assert answer == buf.getvalue() == tok.decode(expected_ids, skip_special_tokens=True)


def test_history_system_and_reset(chat):
    tok = chat.tokenizer
    chat.cfg.system = "당신은 의학 도우미입니다."
    try:
        chat.reset()
        first = chat.prompt_ids("질문1")
        assert tok.decode(first) == ("<bos><start_of_turn>user\n당신은 의학 도우미입니다.\n\n질문1<end_of_turn>\n"
                                     "<start_of_turn>model\n")
        chat.ask("질문1")
        history = list(chat.ids)
        assert history[: len(first)] == first and history[-2] == chat.end_of_turn  # the model turn is closed
        second = chat.prompt_ids("질문2")
        assert second[: len(history)] == history  # generated ids fed back unchanged
        assert tok.decode(second[len(history):]) == "<start_of_turn>user\n질문2<end_of_turn>\n<start_of_turn>model\n"
        chat.reset()
        assert chat.prompt_ids("질문1") == first  # system text again in front of the (new) first turn
    finally:
        chat.cfg.system = ""


def test_cli_one_shot_prints_the_answer(tiny_gemma3_dir, chat):
    chat.reset()
    expected = chat.ask("안녕하세요")
    result = runner.invoke(app, ["chat", "--model", str(tiny_gemma3_dir), "--prompt", "안녕하세요",
                                 "--max-new-tokens", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "model directory does not exist"),
    (["--temperature", "-1"], "field '--temperature'"),
    (["--top-p", "0"], "field '--top-p'"),
])
def test_cli_bad_input(args, message):
    result = runner.invoke(app, ["chat", "--prompt", "x", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_adapter_errors(tmp_path, tiny_gemma3_dir):
    import json

    from kormed.errors import KormedError

    with pytest.raises(KormedError, match="not an adapter directory"):
        load_chat(ChatConfig(adapter=str(tiny_gemma3_dir)), log=lambda m: None)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone/medgemma-27b"}))
    with pytest.raises(KormedError, match="base model cannot be found: /gone/medgemma-27b"):
        load_chat(ChatConfig(adapter=str(orphan)), log=lambda m: None)
    with pytest.raises(KormedError, match="adapter directory, not a model"):
        load_chat(ChatConfig(model=str(orphan)), log=lambda m: None)


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, predicate, timeout: float = 600) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        screen = _screen(session)
        if predicate(screen):
            return screen
        time.sleep(1)
    raise AssertionError(f"timed out; screen:\n{_screen(session)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_interactive_in_a_real_terminal(tiny_gemma3_dir, chat):
    chat.reset()
    expected = chat.ask("안녕")
    session = f"kormed-chat-test-{time.monotonic_ns()}"
    kormed = str(Path(sys.executable).with_name("kormed"))
    cmd = (f"{kormed} chat --model {tiny_gemma3_dir} --max-new-tokens 6 --device cpu 2>/dev/null; "
           "echo CHAT-ENDED; sleep 120")  # the pane stays open to be read
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd], check=True)
    try:
        _wait_for(session, lambda s: "/reset starts" in s and s.rstrip().endswith(">"))
        subprocess.run(["tmux", "send-keys", "-t", session, "안녕", "Enter"], check=True)
        # (capture-pane drops trailing blanks: the fresh prompt "> " shows as ">")
        screen = _wait_for(session, lambda s: sum(ln.startswith(">") for ln in s.splitlines()) >= 2
                           and s.rstrip().endswith(">"))
        lines = screen.splitlines()
        i = lines.index("> 안녕")
        assert lines[i + 1].strip(), screen  # the streamed answer, then a fresh prompt
        first = expected.strip().splitlines()[0][:8] if expected.strip() else ""
        if first.isprintable() and first.isascii():  # (a random model's text may hold characters tmux draws wide)
            assert first in lines[i + 1], screen
        subprocess.run(["tmux", "send-keys", "-t", session, "/reset", "Enter"], check=True)
        _wait_for(session, lambda s: "(new conversation)" in s)
        subprocess.run(["tmux", "send-keys", "-t", session, "/exit", "Enter"], check=True)
        _wait_for(session, lambda s: "CHAT-ENDED" in s, timeout=60)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_dtype_bfloat16_loads_the_weights_in_bf16(tiny_gemma3_dir):
    """`--dtype bfloat16` holds the weights in bf16 on a CPU without native bf16 (a 4B model: 8.6 GB, not 17 GB)."""
    import torch

    session = load_chat(ChatConfig(model=str(tiny_gemma3_dir), max_new_tokens=3, device="cpu", dtype="bfloat16"),
                        log=lambda m: None)
    assert {p.dtype for p in session.model.parameters()} == {torch.bfloat16}
    assert isinstance(session.ask("고혈압의 정의는?"), str)
    result = runner.invoke(app, ["chat", "--model", str(tiny_gemma3_dir), "--prompt", "안녕", "--max-new-tokens", "2",
                                 "--device", "cpu", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
