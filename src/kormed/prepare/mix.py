"""Mixing: per-source quotas, multipliers, a deterministic bounded-memory shuffle, and the distribution table.

Documents are first appended to a spool file (each written `multiplier` times), then shuffled into the output
with a two-pass bucket shuffle: every line goes to a uniformly random bucket (a temp file of about
`bucket_bytes`), then each bucket is permuted in memory and appended to the output. Giving each line an
independent uniform bucket and then a uniform order inside it is a uniform random permutation of all lines,
and memory is bounded by one bucket, not by the corpus. All randomness comes from numpy generators seeded
from `--seed`, so the same inputs and seed give byte-identical output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kormed.io import atomic_write

# Display names of the seeds' distribution table.
LABELS = {
    "plain": "Korean Plain",
    "namu_wiki": "namu_wiki",
    "wikipedia_korean": "wikipedia_korean",
    "c4_korean": "c4_korean",
    "mcq": "MCQ",
    "medical_dict": "Medical Dict",
    "char_dict": "Char Dict",
}

# Keys of a source's stats and table row: documents dropped as contaminated, and their characters (before
# multipliers).
CONTAMINATED, CONTAMINATED_CHARS = "contaminated", "contaminated_characters"

# Stream ids for numpy generators, so each use of randomness is independent of the others.
RNG_SAMPLE, RNG_BUCKET, RNG_PERMUTE, RNG_VAL = 1, 2, 3, 4


def rng(seed: int, *stream: int) -> np.random.Generator:
    """A numpy generator for one named use of randomness under `seed`."""
    return np.random.default_rng([seed, *stream])


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; ties to the earlier index)."""
    if total <= 0 or not weights or sum(weights) <= 0:
        return [0] * len(weights)
    s = sum(weights)
    exact = [total * w / s for w in weights]
    out = [math.floor(x) for x in exact]
    rest = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out


def jsonl_line(text: str) -> bytes:
    """One output line: `{"text": ...}` as UTF-8 JSON with a newline."""
    return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


class Spool:
    """An append-only temp file of JSONL lines, counting lines and bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self.lines = 0
        self.bytes = 0

    def add(self, text: str, copies: int = 1) -> None:
        line = jsonl_line(text)
        for _ in range(copies):
            self._fh.write(line)
        self.lines += copies
        self.bytes += copies * len(line)

    def close(self) -> None:
        self._fh.close()


def shuffle_file(
    spool: Path,
    n_lines: int,
    n_bytes: int,
    out: Path,
    *,
    seed: int,
    bucket_bytes: int,
    tmpdir: Path,
    progress: Callable[[int], Any] | None = None,
) -> int:
    """Write the spool's lines to `out` (atomically) in a seeded uniform random order; returns the line count."""
    n_buckets = max(1, math.ceil(n_bytes / max(1, bucket_bytes)))
    if n_buckets == 1:
        bucket_paths = [spool]
    else:
        bucket_paths = [tmpdir / f"bucket-{b:05d}.jsonl" for b in range(n_buckets)]
        handles = [p.open("wb") for p in bucket_paths]
        r = rng(seed, RNG_BUCKET)
        try:
            with spool.open("rb") as fh:
                while True:
                    chunk = fh.readlines(64 << 20)
                    if not chunk:
                        break
                    for line, b in zip(chunk, r.integers(0, n_buckets, size=len(chunk)), strict=True):
                        handles[b].write(line)
        finally:
            for h in handles:
                h.close()
    written = 0
    with atomic_write(out, "wb") as dst:
        for b, path in enumerate(bucket_paths):
            lines = path.read_bytes().splitlines(keepends=True)
            for i in rng(seed, RNG_PERMUTE, b).permutation(len(lines)):
                dst.write(lines[i])
            written += len(lines)
            if progress is not None:
                progress(len(lines))
            del lines
            if path != spool:
                path.unlink()
    if written != n_lines:  # a short write would be a bug, never silently accepted
        raise RuntimeError(f"shuffle wrote {written} lines, expected {n_lines}")
    return written


def _ratio(final: int, total: int) -> str:
    if total <= 0:
        return "0%"
    r = 100.0 * final / total
    if 0 < r < 0.1:
        return "<0.1%"
    return f"{r:.1f}%"


def distribution_rows(sources: dict[str, dict[str, Any]], plain_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The seeds' table (source, base, multiplier, final, ratio, characters): Korean Plain (sum of the plain
    sources, each also listed), each medical source, and the total. `sources[name]` holds base, multiplier,
    final, characters, and with decontamination on `contaminated` and `contaminated_characters` (documents
    dropped as contaminated and their characters, before multipliers), which become two more columns."""
    total_final = sum(s["final"] for s in sources.values())
    decontaminated = any(CONTAMINATED in s for s in sources.values())
    rows: list[dict[str, Any]] = []

    def row(label: str, parts: list[dict[str, Any]], mult: Any, *, part_of: str | None = None) -> None:
        final = sum(p["final"] for p in parts)
        rows.append(
            {
                "source": label,
                "base": sum(p["base"] for p in parts),
                "multiplier": mult,
                "final": final,
                "ratio": round(final / total_final, 6) if total_final else 0.0,
                "ratio_text": _ratio(final, total_final),
                "characters": sum(p["characters"] for p in parts),
                **({k: sum(p.get(k, 0) for p in parts) for k in (CONTAMINATED, CONTAMINATED_CHARS)}
                   if decontaminated else {}),
                **({"part_of": part_of} if part_of else {}),
            }
        )

    plain = [sources[n] for n in plain_names if n in sources]
    if plain:
        mults = {s["multiplier"] for s in plain}
        row(LABELS["plain"], plain, mults.pop() if len(mults) == 1 else "mixed")
        for n in plain_names:
            if n in sources:
                row(LABELS.get(n, n), [sources[n]], sources[n]["multiplier"], part_of=LABELS["plain"])
    for n, s in sources.items():
        if n not in plain_names:
            row(LABELS.get(n, n), [s], s["multiplier"])
    row("Total", [r for r in rows if "part_of" not in r], "")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The distribution table as Markdown, like the seeds' (plain sources indented under Korean Plain), with the
    documents and characters dropped as contaminated when the rows have them."""
    decontaminated = any(CONTAMINATED in r for r in rows)
    head = ["Source", "Base", "Multiplier", "Final", "Ratio", "Characters"]
    head += ["Contaminated", "Contaminated chars"] if decontaminated else []
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        label = ("  - " if "part_of" in r else "") + r["source"]
        if r["source"] == "Total":
            label = "**Total**"
        mult = f"{r['multiplier']}x" if isinstance(r["multiplier"], int) else str(r["multiplier"])
        cells = [label, f"{r['base']:,}", mult, f"{r['final']:,}", r["ratio_text"], f"{r['characters']:,}"]
        cells += [f"{r[CONTAMINATED]:,}", f"{r[CONTAMINATED_CHARS]:,}"] if decontaminated else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
