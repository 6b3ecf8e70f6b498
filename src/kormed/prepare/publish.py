"""Publishing `kormed prepare`'s three outputs as one unit, and checking that a set belongs together.

`run_prepare` writes the corpus, `<name>.val.jsonl` and `<name>.stats.json` into a hidden work directory beside
them, then renames them into place in this order: the validation file, the corpus, and last the stats, which
record the size and sha256 of the other two (its `files` entry). A kill between two renames therefore leaves a
stats file that does not describe the files beside it (or, on the very first run, no stats and a corpus with its
own validation file). Readers -- CPT and the pipeline runner -- call :func:`check_prepared_set` and refuse such a
mixed set; a rerun of prepare replaces all three.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import file_sha256, read_json

MANIFEST_KEY = "files"


def stats_path_for(corpus: str | Path) -> Path:
    """`<name>.stats.json` beside a corpus `<name>.jsonl` (the layout `kormed prepare` writes)."""
    p = Path(corpus)
    return p.with_name(p.name.removesuffix(".jsonl") + ".stats.json")


def val_path_for(corpus: str | Path) -> Path:
    """`<name>.val.jsonl` beside a corpus `<name>.jsonl`."""
    p = Path(corpus)
    return p.with_name(p.name.removesuffix(".jsonl") + ".val.jsonl")


def manifest_entry(path: Path) -> dict[str, Any]:
    """What the stats file records of one published file: its name, size and sha256."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def publish(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each staged file over its target, in order (the stats file last), then sync the directory."""
    for src, dst in moves:
        os.replace(src, dst)
    with contextlib.suppress(OSError):  # durability against power loss; a kill needs nothing more
        fd = os.open(moves[-1][1].parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mismatch(path: Path, entry: dict[str, Any], sha256: str | None = None) -> str | None:
    if not path.is_file():
        return "the file is missing"
    if path.stat().st_size != entry.get("bytes"):
        return f"{path.stat().st_size} bytes, the stats record {entry.get('bytes')}"
    if (sha256 or file_sha256(path)) != entry.get("sha256"):
        return "same size, other sha256"
    return None


def check_prepared_set(corpus: str | Path, val: str | Path | None = None, *, corpus_sha256: str | None = None
                       ) -> None:
    """Raise KormedError when `corpus` (and `val`, when it is the corpus's own `.val.jsonl`) is not the set its
    `.stats.json` describes: an interrupted `kormed prepare` or a file changed afterwards. A corpus without a
    stats file, or with one from a kormed that recorded no sizes and hashes, is not checked. `corpus_sha256`:
    the corpus's digest when the caller has computed it already (a large corpus is then read once)."""
    corpus = Path(corpus)
    stats_path = stats_path_for(corpus)
    if not stats_path.is_file():
        return
    stats = read_json(stats_path, what="prepare stats")
    files = stats.get(MANIFEST_KEY) if isinstance(stats, dict) else None
    if not isinstance(files, dict):
        return
    checks: list[tuple[Path, dict[str, Any], str | None]] = []
    if isinstance(files.get("corpus"), dict) and files["corpus"].get("name") == corpus.name:
        checks.append((corpus, files["corpus"], corpus_sha256))
    entry = files.get("val")
    if val is not None and isinstance(entry, dict):
        own_val = corpus.parent / str(entry.get("name"))
        with contextlib.suppress(OSError):
            if Path(val).resolve() == own_val.resolve():
                checks.append((own_val, entry, None))
    for path, entry, sha256 in checks:
        problem = _mismatch(path, entry, sha256)
        if problem:
            raise KormedError(
                f"does not match {stats_path.name} ({problem}): an interrupted `kormed prepare` left a mixed "
                "set, or the file was changed after it",
                path=path,
                hint="rerun `kormed prepare` with the same settings to rebuild the corpus, its validation file and "
                "stats together (or delete the stats file to use the files as they are)",
            )
