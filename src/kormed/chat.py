"""`kormed chat`: talk to a base model, a base + adapter, or a merged directory, in the Gemma chat format kormed
trains (kormed.data.chat). Tokens stream as they are generated (transformers' TextIteratorStreamer).

The conversation is kept as token ids: `<bos>`, then per turn `<start_of_turn>user\\n{text}<end_of_turn>\\n
<start_of_turn>model\\n` and the model's own generated ids up to its `<end_of_turn>`, then `\\n` -- what the model
generated is fed back unchanged, never re-tokenized from its text. Gemma has no system role: `--system` text goes
in front of the first user turn followed by a blank line, as Gemma's own chat template does. Greedy by default;
`--temperature > 0` samples (with `--top-p`). Interactive when stdin is a terminal and no `--prompt` is given;
otherwise one-shot: the answer to `--prompt` (or to all of stdin) on stdout, and exit.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from kormed.config import DEVICE_PATTERN, opt
from kormed.data.chat import chat_prompt
from kormed.errors import KormedError
from kormed.io import check_text, decode_utf8

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

COMMANDS_HELP = "/reset starts a new conversation, /exit (or Ctrl-D) quits."


@dataclass
class ChatConfig:
    """`kormed chat`: the model to talk to and how it generates."""

    model: str | None = opt(None, "Base or merged model (hub id or local dir); default: the adapter's base, else "
                                  "the embedded Gemma 3 270M.")
    adapter: str | None = opt(None, "kormed adapter directory loaded on the base model.")
    system: str = opt("", "Text put in front of the first user turn (Gemma has no system role).")
    max_new_tokens: int = opt(512, "Most tokens generated per answer.", bounds=(1, None))
    temperature: float = opt(0.0, "0 = greedy (deterministic); > 0 samples at this temperature.", bounds=(0, None))
    top_p: float = opt(1.0, "Nucleus sampling mass when temperature > 0.", bounds=(0, 1, "(]"))
    device: str = opt("auto", "auto | cpu | cuda | cuda:N.", pattern=DEVICE_PATTERN)
    dtype: Literal["auto", "float32", "bfloat16"] = opt(
        "auto", "Weight precision, as train.dtype: auto = bf16 on CUDA and on a CPU with native bf16 matmul\n"
        "(AMX-BF16 / AVX512-BF16), else fp32. bfloat16 halves the memory (MedGemma-4B: 8.6 GB instead of 17 GB);\n"
        "on a CPU without native bf16 the matmuls then run in fp32 over the bf16 weights.",
    )


class Chat:
    """A conversation with one loaded model (history as token ids)."""

    def __init__(self, model: Any, tokenizer: Any, cfg: ChatConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if end is None or end == tokenizer.unk_token_id:
            raise KormedError("the tokenizer has no <end_of_turn> token; kormed chat needs the Gemma chat format")
        self.end_of_turn = int(end)
        self.stop_ids = [self.end_of_turn] + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None
                                              else [])
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = [int(self.tokenizer.bos_token_id)]
        self.turns = 0

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, user_text: str) -> list[int]:
        """The conversation so far plus this user turn and the model-turn header (what generation starts from)."""

        if self.turns == 0 and self.cfg.system.strip():
            user_text = f"{self.cfg.system.strip()}\n\n{user_text}"
        check_text(user_text, "<chat input>")  # a lone surrogate would reach the tokenizer as a TypeError
        return self.ids + self._encode(chat_prompt(user_text))

    def ask(self, user_text: str, out: TextIO | None = None) -> str:
        """Answer one user turn, streaming the text to `out` as it is generated; returns the answer text."""

        import torch
        from transformers import TextIteratorStreamer

        prompt = self.prompt_ids(user_text)
        device = self.model.device if hasattr(self.model, "device") else "cpu"
        input_ids = torch.tensor([prompt], device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = self.cfg.temperature > 0
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.cfg.max_new_tokens,
            do_sample=sample, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
        )
        if sample:
            kwargs.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=None)
        else:  # greedy: clear the sampling defaults a generation_config may carry, so transformers does not warn
            kwargs.update(temperature=None, top_p=None, top_k=None)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    result["ids"] = self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            if out is not None:
                out.write(piece)
                out.flush()
        worker.join()
        if "error" in result:
            raise result["error"]
        new = result["ids"][0, len(prompt):].tolist()
        if not new or new[-1] not in self.stop_ids:
            new.append(self.end_of_turn)  # stopped at max_new_tokens: close the turn
        elif new[-1] != self.end_of_turn:
            new[-1] = self.end_of_turn  # <eos>: the history keeps the chat format
        self.ids = prompt + new + self._encode("\n")
        self.turns += 1
        return "".join(pieces)


def load_chat(cfg: ChatConfig, log: Any = print) -> Chat:
    """Load the model (base / base + adapter / merged directory) and its tokenizer for chatting."""
    from kormed.export.merge import check_adapter_base
    from kormed.models import load_model_and_tokenizer, pick_runtime

    model = cfg.model
    if cfg.adapter is not None:
        model = check_adapter_base(cfg.adapter, model)
    elif model is not None and Path(model).is_dir() and (Path(model) / "adapter_config.json").is_file():
        raise KormedError("this is an adapter directory, not a model", path=model, hint="pass it with --adapter")
    net, tokenizer, _ = load_model_and_tokenizer(model, adapter=cfg.adapter,
                                                 runtime=pick_runtime(cfg.device, cfg.dtype), log=log)
    net.eval()
    return Chat(net, tokenizer, cfg)


def interactive(chat: Chat, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """The read-answer loop: `/reset`, `/exit`, Ctrl-D quits; Ctrl-C stops the program."""
    with contextlib.suppress(ImportError):  # line editing and history for input(); not on every platform
        import readline  # noqa: F401
    out.write(f"kormed chat: {COMMANDS_HELP}\n")
    out.flush()
    while True:
        try:
            line = input("> ")
        except EOFError:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.reset()
            out.write("(new conversation)\n")
            out.flush()
            continue
        try:
            check_text(line, "<stdin>")
        except KormedError as exc:  # the session goes on: say why this line was not sent
            out.write(f"kormed: error: {exc.message}; type it again\n")
            out.flush()
            continue
        chat.ask(line, out=out)
        out.write("\n")
        out.flush()


def run_chat(cfg: ChatConfig, *, prompt: str | None = None, log: Any = print) -> None:
    """`kormed chat`: one-shot when given a prompt or a piped stdin, else interactive in the terminal."""
    one_shot = prompt
    if one_shot is not None:
        check_text(one_shot, "--prompt")
    elif not sys.stdin.isatty():
        raw = getattr(sys.stdin, "buffer", None)  # bytes, so that bad UTF-8 is an error naming its line
        one_shot = check_text(decode_utf8(raw.read(), "<stdin>") if raw is not None else sys.stdin.read(), "<stdin>")
        if not one_shot.strip():
            raise KormedError("no prompt: stdin was empty", hint="pass --prompt TEXT, or run in a terminal")
    check_text(cfg.system, "--system")  # before the model loads: bad text is known now
    session = load_chat(cfg, log=log)
    if one_shot is not None:
        session.ask(one_shot.strip("\n"), out=sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    interactive(session)
