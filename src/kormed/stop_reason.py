"""Why a training run, an SFT step or the loop stopped: one enum for every stage.

Members are `str` values, so they compare equal to (and serialise as) the strings earlier runs wrote to
`training_info.json`, `sft_summary.json` and `loop_table.json`."""

from __future__ import annotations

from enum import StrEnum


class StopReason(StrEnum):
    """The stop reasons kormed writes. The value is what appears in result files and logs."""

    COMPLETED = "completed"  # max_steps or the epochs ran out
    EARLY_STOPPING = "early_stopping"  # no improvement for `patience` validations
    TARGET_PERPLEXITY = "target_perplexity"  # validation perplexity fell below the target
    INTERRUPTED = "interrupted"  # SIGINT / SIGTERM: a checkpoint was saved; rerun (or --resume) continues
    NON_FINITE_LOSS = "non_finite_loss"  # NaN/inf loss: stopped before the bad update, last good checkpoint kept
    CONDITIONS_MET = "conditions_met"  # an SFT step's stop conditions held
    MAX_STEPS = "max_steps"  # an SFT step ran out of its step budget before its conditions held
    ENDED = "ended"  # an SFT step's data/epochs ran out before its conditions held and before its budget
    TARGET_REACHED = "target_reached"  # the loop reached its target accuracy
    MAX_ROUNDS = "max_rounds"  # the loop ran all its rounds
    NO_IMPROVEMENT = "no_improvement"  # the loop's dev selection metric stopped improving (stop_after_no_improvement)

    @property
    def finished(self) -> bool:
        """True when the run ended on its own (not interrupted, not stopped by a non-finite loss)."""
        return self not in (StopReason.INTERRUPTED, StopReason.NON_FINITE_LOSS)
