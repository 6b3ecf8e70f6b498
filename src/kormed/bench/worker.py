"""Run one benchmark task in a fresh Python process (`python -m MODULE TASK.json RESULT.json`), offline, with its
output in a log file: the one process runner of `kormed bench train` and `kormed bench quality`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import read_json


@contextlib.contextmanager
def _terminate_as_exit():
    """While the worker runs, SIGTERM to this process (a `kill`, a job scheduler) raises SystemExit instead of ending
    the interpreter on the spot: `subprocess.run` then kills its child, so no arm goes on training orphaned into a
    work directory its parent has given up on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_worker(module: str, task: dict[str, Any], work: Path, name: str,
               timeout: float | None = None) -> tuple[dict[str, Any], float]:
    """Write `work/<name>.task.json`, run `module` on it (log in `work/<name>.log`) and return its result and the
    process's wall seconds; a failure or timeout is a KormedError with the last lines of the log."""
    work.mkdir(parents=True, exist_ok=True)
    task_file, result_file, log_file = work / f"{name}.task.json", work / f"{name}.result.json", work / f"{name}.log"
    task_file.write_text(json.dumps(task), encoding="utf-8")
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as fh, _terminate_as_exit():
        try:
            rc: int | None = subprocess.run([sys.executable, "-m", module, str(task_file), str(result_file)],
                                            stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                            check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.perf_counter() - start
    if rc != 0 or not result_file.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        why = "timed out" if rc is None else f"exit code {rc}"
        raise KormedError(f"{name} failed ({why}); last lines of {log_file}:\n  " + "\n  ".join(tail))
    return read_json(result_file, what="bench result"), wall
