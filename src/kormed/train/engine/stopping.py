"""Why a run stops: the shared record the trainer and its callbacks fill in, the non-finite stop, and the
SIGINT/SIGTERM flag the interrupt callback polls."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from kormed.stop_reason import StopReason
from kormed.train.engine.checkpoints import latest_good_checkpoint
from kormed.train.engine.processes import is_main_process


class StopRecord:
    """Why a run stopped (first reason wins), shared by the callbacks and the trainer."""

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.step: int | None = None
        self.detail: str = ""

    def set(self, reason: StopReason, step: int, detail: str = "") -> None:
        # a non-finite stop also replaces an interrupt of the same step: its checkpoint is then not saved
        if self.reason is None or (reason == StopReason.NON_FINITE_LOSS and self.reason == StopReason.INTERRUPTED):
            self.reason, self.step, self.detail = reason, step, detail

    def as_dict(self) -> dict[str, Any]:
        return {"stop_reason": self.reason or StopReason.COMPLETED, "stop_step": self.step, "stop_detail": self.detail}


def non_finite_stop(stop: StopRecord, control: Any, step: int, what: str, ckpt_dir: str | Path) -> None:
    """Record a non-finite stop at `step` naming the last good checkpoint, say it once, and stop without saving."""
    first = stop.reason != StopReason.NON_FINITE_LOSS
    if first:
        last = latest_good_checkpoint(ckpt_dir)[0]
        stop.set(StopReason.NON_FINITE_LOSS, step, f"non-finite (NaN/inf) {what} at step {step}; last good checkpoint: "
                 f"{last or 'none'}")
    if first and stop.reason == StopReason.NON_FINITE_LOSS and is_main_process():
        print(f"\n[kormed] {stop.detail}. Stopping; lower the learning rate or check the data.", flush=True)
    control.should_save = False
    control.should_evaluate = False
    control.should_training_stop = True


class SignalFlag:
    """Install SIGINT/SIGTERM handlers that set a flag (a second Ctrl-C aborts at once); restore on uninstall."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = signum
        if is_main_process():
            print(f"\n[kormed] {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again aborts without saving)", flush=True)

    def uninstall(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
