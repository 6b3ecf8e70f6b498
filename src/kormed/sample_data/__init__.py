"""The small, original sample data bundled with kormed, laid out like the seeds' data root.

`sample_data_root()` is a directory you can pass as `--data-root`: under it lie `data/01_raw/...` and
`data/02_refined/...` exactly as in the seeds. Everything in it was written for this project and is built
deterministically by `scripts/build_sample_data.py` from the authored files in `scripts/sample_data_sources/` (in a
source checkout; only the built data is installed).
"""

from __future__ import annotations

from pathlib import Path

# Paths of each source relative to a data root, in the seeds' layout.
RELATIVE_PATHS: dict[str, str] = {
    "namu_wiki": "data/01_raw/00_korean/namu_wiki",
    "wikipedia_korean": "data/01_raw/00_korean/wikipedia-korean",
    "c4_korean": "data/01_raw/00_korean/c4_korean",
    "mcq_train": "data/01_raw/02_kor_med_test/train.jsonl",
    "mcq_dev": "data/01_raw/02_kor_med_test/dev.jsonl",
    "mcq_test": "data/01_raw/02_kor_med_test/test.jsonl",
    "mcq_fewshot": "data/01_raw/02_kor_med_test/fewshot.jsonl",
    "medical_dict": "data/02_refined/01_medical_dict.json",
    "char_dict": "data/02_refined/02_char_dict.json",
}

# Extra files that only the tests use (not a source of `kormed prepare`).
MCQ_TEST_PUBLIC_SCHEMA = "data/01_raw/02_kor_med_test/test_public_schema.jsonl"


def sample_data_root() -> Path:
    """The bundled data root: the directory that holds `data/01_raw/...` and `data/02_refined/...`."""
    return Path(__file__).resolve().parent


def sample_paths() -> dict[str, Path]:
    """Absolute path of every bundled source, keyed by source name (namu_wiki, ..., char_dict)."""
    root = sample_data_root()
    return {name: root / rel for name, rel in RELATIVE_PATHS.items()}
