"""Helper for tests/test_cpt.py: run `run_cpt` (optionally under `accelerate launch`) and record, per rank, the
training blocks each process saw and whether it wrote outputs. Not a test module itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    cfg_path, record_dir = sys.argv[1], Path(sys.argv[2])
    from kormed.config import load_config
    from kormed.train import cpt
    from kormed.train.engine import outputs

    rank = int(os.environ.get("RANK", "0"))
    seen: list[list[int]] = []
    writes: list[str] = []
    collator_cls = cpt.CausalCollator

    class RecordingCollator(collator_cls):
        def __call__(self, features):
            seen.extend([list(map(int, f["input_ids"][:8])) for f in features])
            return super().__call__(features)

    original_save = outputs.save_adapter

    def recording_save(*args, **kwargs):
        out = original_save(*args, **kwargs)
        if out is not None:
            writes.append(str(out))
        return out

    built: list[str] = []
    original_build = cpt.build_packed

    def recording_build(data, *args, **kwargs):
        built.append(str(data))
        return original_build(data, *args, **kwargs)

    cpt.CausalCollator = RecordingCollator  # the names run_cpt and finish_run call
    cpt.build_packed = recording_build
    outputs.save_adapter = recording_save
    cfg = load_config("cpt", cfg_path)
    info = cpt.run_cpt(cfg, log=lambda m: None)
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "seen": seen, "writes": writes, "built": built, "world_size": info["world_size"],
        "grad_accum": info["gradient_accumulation_steps"], "effective_batch": info["effective_batch_size"],
    }))


if __name__ == "__main__":
    main()
