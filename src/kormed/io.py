"""Reading user files with precise errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kormed.errors import KormedError


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a clear error if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise KormedError(f"{what} does not exist", path=p)
    if not p.is_file():
        raise KormedError(f"{what} is not a regular file", path=p)
    return p


def iter_jsonl(
    path: str | Path, *, what: str = "JSONL file", start: int = 1
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, record) for each non-blank line from line `start` on; a malformed line raises
    KormedError naming the file and line (a caller that skips bad lines resumes with `start=line + 1`)."""
    p = require_file(path, what)
    with p.open("rb") as fh:
        yield from parse_jsonl_lines(fh, where=p, start=start)


def parse_jsonl_lines(
    lines: Iterable[bytes], *, where: str | Path, start: int = 1
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSONL parsing of :func:`iter_jsonl` over any byte lines (a file, stdin), errors naming `where`."""
    for lineno, raw in enumerate(lines, start=1):
        if lineno < start:
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KormedError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=where, line=lineno) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KormedError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=where, line=lineno) from None
        if not isinstance(record, dict):
            raise KormedError(f"expected a JSON object, got {type(record).__name__}", path=where, line=lineno)
        yield lineno, record


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Load a whole JSON file, with UTF-8 and syntax errors reported by file and line."""
    p = require_file(path, what)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KormedError(f"not valid UTF-8 ({exc.reason})", path=p, line=line) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KormedError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=p, line=exc.lineno) from None


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file beside `path`; on success rename it over `path`, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs = {"encoding": encoding, "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as pretty, key-sorted UTF-8 JSON, atomically (same object -> same bytes)."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, sort_keys=True)
        fh.write("\n")


def write_jsonl(path: str | Path, records: Any) -> int:
    """Write an iterable of dicts as JSONL atomically; returns the number of lines written."""
    n = 0
    with atomic_write(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n
