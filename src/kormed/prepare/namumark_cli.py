"""`kormed namumark [FILE] [--jsonl] [--out FILE]`: print the plain text of NamuMark, or map a JSONL of records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from kormed.errors import KormedError
from kormed.io import atomic_write, check_output_path, decode_utf8, iter_jsonl, parse_jsonl_lines
from kormed.prepare.namumark import namumark_to_text


def _read_text(path: Path | None) -> str:
    """Read FILE (or stdin) as UTF-8 with a clear error for bad bytes."""
    if path is None:
        data = sys.stdin.buffer.read()
        where: str | Path = "<stdin>"
    else:
        from kormed.io import require_file

        p = require_file(path, "NamuMark file")
        data = p.read_bytes()
        where = p
    return decode_utf8(data, where)


def convert_jsonl(path: Path | None, field: str = "text") -> Any:
    """Yield each record of the JSONL at path (stdin if None) with its `field` converted to plain text (order and
    count kept, other fields untouched)."""

    where = "<stdin>" if path is None else path
    lines = parse_jsonl_lines(sys.stdin.buffer, where=where) if path is None else iter_jsonl(path, what="JSONL file")
    for lineno, rec in lines:
        value = rec.get(field)
        if not isinstance(value, str):
            problem = "missing" if field not in rec else f"must be a string, got {type(value).__name__}"
            raise KormedError(problem, path=where, line=lineno, field=field)
        rec[field] = namumark_to_text(value)
        yield rec


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed namumark` to the app."""

    @app.command("namumark")
    def namumark(
        file: Path = typer.Argument(None, help="NamuMark document (JSONL with --jsonl); stdin when omitted."),
        jsonl: bool = typer.Option(False, "--jsonl", help='FILE is JSONL of {"text": ...}: convert each record.'),
        field: str = typer.Option("text", "--field", help="With --jsonl: the field holding the NamuMark text."),
        out: Path = typer.Option(None, "--out", help="Write the result here (atomically) instead of stdout."),
    ) -> None:
        """Convert NamuMark to plain text (kormed's rendering policy; a redirect gives empty output)."""

        if out is not None:
            check_output_path(out, "file", "--out", inputs={"FILE": file})
        if jsonl:
            from tqdm import tqdm

            # progress on stderr only when it is a terminal (stdout may carry the records)
            records = tqdm(convert_jsonl(file, field), unit=" docs", file=sys.stderr, disable=None, desc="namumark")
            if out is not None:
                with atomic_write(out) as fh:
                    for rec in records:
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            else:
                for rec in records:
                    sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
            return
        text = namumark_to_text(_read_text(file))
        if out is not None:
            with atomic_write(out) as fh:
                fh.write(text + "\n" if text else "")
        else:
            typer.echo(text)
