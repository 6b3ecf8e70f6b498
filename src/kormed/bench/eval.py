"""`kormed bench eval`: KorMedMCQA questions per second in each mode (generate, loglik, chat), in one run.

The model is loaded once; each mode first runs one untimed warm-up batch (kernel selection, the stop-string
tables of `generate`), then evaluates the same questions with progress bars off, timed with
`time.perf_counter` around the whole `evaluate_kormedmcqa` call (tokenization, padding and decoding included).
Questions/second is wall-clock; the process CPU time (all threads) and the 1-minute load average are recorded
beside it, because on a shared machine other processes slow the wall clock down.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import typer

from kormed.errors import KormedError
from kormed.eval.kormedmcqa import evaluate_kormedmcqa, load_questions
from kormed.sample_data import sample_paths

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

BENCH_MODES = ("generate", "loglik", "chat")


def default_questions_file() -> str:
    """The bundled sample test file (100 original questions in the KorMedMCQA schema)."""

    path = sample_paths()["mcq_test"]
    if not path.is_file():
        raise KormedError("the bundled sample questions are missing; pass --data test.jsonl", path=path)
    return str(path)


def run_bench(
    *,
    model: str | None = None,
    adapter: str | None = None,
    data: str | None = None,
    limit: int | None = 40,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    device: str = "auto",
    modes: tuple[str, ...] = BENCH_MODES,
    log: Any = print,
) -> dict[str, Any]:
    """Time every mode on the same questions; returns the figures (questions/second per mode)."""

    import torch

    from kormed.models import load_model_and_tokenizer, pick_runtime

    for mode in modes:
        if mode not in BENCH_MODES:
            raise KormedError(f"unknown mode '{mode}' (use {', '.join(BENCH_MODES)})", field="modes")
    data = data or default_questions_file()
    questions = load_questions(data, limit=limit)
    runtime = pick_runtime(device)
    net, tokenizer, runtime = load_model_and_tokenizer(model, adapter=adapter, runtime=runtime, log=log)
    n_params = sum(p.numel() for p in net.parameters())
    results: dict[str, Any] = {}
    for mode in modes:
        kwargs = dict(mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False,
                      compute_dtype=runtime.compute_dtype)
        evaluate_kormedmcqa(net, tokenizer, questions[:batch_size], **kwargs)  # warm-up, untimed
        if runtime.device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        res = evaluate_kormedmcqa(net, tokenizer, questions, **kwargs)
        if runtime.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        results[mode] = {
            "questions": res["total"],
            "seconds": round(seconds, 6),
            "cpu_seconds": round(cpu_seconds, 3),
            "questions_per_second": round(res["total"] / seconds, 3),
            "accuracy": round(res["accuracy"], 4),
            "unparseable": res["unparseable"],
            "load_average_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
    return {
        "model": model or "embedded:gemma3-270m",
        "adapter": adapter,
        "parameters": n_params,
        "data": data,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "runtime": {"device": runtime.device, "dtype": runtime.dtype,
                    "attn_implementation": runtime.attn_implementation},
        "host": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                 "gpu": torch.cuda.get_device_name(0) if runtime.device.startswith("cuda") else None},
        "modes": results,
    }


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed bench eval`."""

    @subapps["bench"].command("eval")
    def bench_eval(
        model: str = typer.Option(None, "--model", help="Model (hub id or dir); default: embedded Gemma 3 270M."),
        adapter: str = typer.Option(None, "--adapter", help="kormed adapter directory to load on the base."),
        data: str = typer.Option(None, "--data", help="KorMedMCQA JSONL (default: the bundled 40 sample questions)."),
        limit: int = typer.Option(40, "--limit", min=1, help="Questions timed per mode."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Questions per batch."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Generation limit (generate, chat)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        modes: str = typer.Option(",".join(BENCH_MODES), "--modes", help="Comma-separated modes to time."),
        output: str = typer.Option(None, "--output", help="Also write the figures to this JSON file."),
    ) -> None:
        """KorMedMCQA questions/second for each mode (generate, loglik, chat), same model and questions."""
        from kormed.config import check_device

        check_device(device)
        if output:
            from kormed.io import check_output_path

            check_output_path(output, "file", "--output", inputs={"--model": model, "--adapter": adapter,
                                                                  "--data": data})
        wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
        res = run_bench(model=model, adapter=adapter, data=data, limit=limit, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, device=device, modes=wanted,
                        log=lambda m: typer.echo(m, err=True))
        rt = res["runtime"]
        typer.echo(f"model {res['model']} ({res['parameters'] / 1e6:.0f}M parameters) on {rt['device']} "
                   f"({rt['dtype']}, {rt['attn_implementation']}, {res['host']['cpu_threads']} threads); "
                   f"batch {res['batch_size']}, max_new_tokens {res['max_new_tokens']}")
        typer.echo(f"{'mode':<9} {'questions':>9} {'seconds':>9} {'q/s':>9} {'cpu s':>9} {'accuracy':>9} {'load':>6}")
        for mode, r in res["modes"].items():
            typer.echo(f"{mode:<9} {r['questions']:>9} {r['seconds']:>9.2f} {r['questions_per_second']:>9.2f} "
                       f"{r['cpu_seconds']:>9.1f} {r['accuracy'] * 100:>8.1f}% {r['load_average_after']:>6}")
        if output:
            from kormed.io import write_json

            write_json(output, res)
            typer.echo(f"wrote {output}", err=True)
