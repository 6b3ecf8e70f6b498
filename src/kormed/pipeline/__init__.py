"""`kormed run` / `kormed demo` / `kormed report`: the whole pipeline from one YAML file, in one run directory.

The runner is thin: each stage is a call into that stage's own API with its own config dataclass; the runner only
wires one stage's outputs into the next stage's inputs, records what ran (state.json) and skips what is current.
"""

from kormed.pipeline.run import STAGE_ORDER, Pipeline, load_pipeline, run_pipeline

__all__ = ["STAGE_ORDER", "Pipeline", "load_pipeline", "run_pipeline"]
