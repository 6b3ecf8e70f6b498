"""safetensors files: the header check every weights file kormed reads goes through, and the atomic writer every
safetensors file kormed writes (adapters, Trainer checkpoints, `export --merge`, the embedded model's cache) goes
through.

The check reads only the header (never a tensor, never a pickle): a truncated file, or one whose header lies about
its tensors' shapes, dtypes or offsets, is named in one line instead of the library's `SafetensorError`.
The writer lets the safetensors library write into a hidden temp file beside the target (kormed's temp naming), gives
it the umask's mode (the library creates its files 0600), syncs it and renames it into place; on any error the temp
file is removed and a full disk becomes one line naming the target (:func:`kormed.io.os_error`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import clean_stale_temps, current_umask, loads_json, os_error, report_stale, temp_prefix

# bytes per element of each safetensors dtype (the format's own table)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_SUB_BYTE_DTYPES = {"F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses longer headers too


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header, header length, file size); ValueError saying why it cannot be read."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("empty" if not head else "truncated header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"unreadable header (it claims {n:,} bytes)")
        if n > size - 8:
            raise ValueError("truncated header")
        raw = fh.read(n)
    try:  # the guarded reader: a header nested thousands deep or with huge integers is unreadable, not a crash
        header = loads_json(raw.decode("utf-8"), where=path)
    except (UnicodeDecodeError, KormedError):
        raise ValueError("unreadable header") from None
    if not isinstance(header, dict):
        raise ValueError("unreadable header")
    return header, n, size


def _tensor_problem(name: str, entry: Any) -> str | None:
    """Why one header entry does not describe a tensor (dtype, shape, offsets that agree), or None."""
    if not isinstance(entry, dict):
        return f"header entry {name!r} is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    width = _DTYPE_BYTES.get(dtype) or _SUB_BYTE_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if width is None:
        return f"header entry {name!r}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return f"header entry {name!r}: shape is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        return f"header entry {name!r}: data_offsets is not [begin, end]"
    expected = math.prod(shape) * width
    if offsets[1] - offsets[0] != expected:
        return (f"header entry {name!r} says shape {shape} {dtype} ({expected:g} bytes) but its data_offsets hold "
                f"{offsets[1] - offsets[0]} bytes")
    return None


def safetensors_problem(path: str | Path) -> str | None:
    """Why a .safetensors file is not whole and truthful, or None: its header unreadable, a tensor whose dtype, shape
    and offsets disagree, tensors that overlap or leave gaps, or a file shorter/longer than its header says."""
    p = Path(path)
    try:
        header, n, size = _read_header(p)
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "header __metadata__ is not an object of strings"
            continue
        problem = _tensor_problem(name, entry)
        if problem:
            return problem
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            return f"header entry {name!r} starts at byte {begin}, not {end} (tensors overlap or leave a gap)"
        end = stop
    return None if size == 8 + n + end else f"{size} bytes, its header says {8 + n + end}"


def check_safetensors(path: str | Path, what: str = "weights file") -> dict[str, list[int]]:
    """The tensor shapes of a .safetensors file whose header checks out (:func:`safetensors_problem`); a file that
    does not gives one KormedError naming it."""
    p = Path(path)
    problem = safetensors_problem(p)
    if problem is not None:
        raise KormedError(f"{what} is damaged: {problem}", path=p,
                          hint="the file was cut short or altered; copy or write it again")
    header, _, _ = _read_header(p)
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def _as_os_error(exc: BaseException, path: Path) -> OSError | None:
    """The OSError inside the safetensors library's `SafetensorError` ("... (os error 28)"), or None."""
    if isinstance(exc, OSError):
        return exc
    m = _OS_ERROR_RE.search(str(exc))
    if type(exc).__name__ == "SafetensorError" and m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code), str(path))
    return None


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A hidden temp path beside `path` for a library that writes a file by name (kormed's :func:`atomic_write`
    hands out an open file, which the safetensors writer cannot take). On success the file gets the umask's mode,
    is synced and renamed over `path`; on error it is removed, and a full disk, permission or read-only error
    becomes one KormedError naming `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    report_stale(clean_stale_temps(target.parent, [target.name]))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        oserr = _as_os_error(exc, target)
        err = (os_error(oserr, target, note=" (the partial output was removed)", temp=tmp, as_output=False)
               if oserr else None)  # the target as it is: staged_as names it under the output directory
        if err is not None:
            raise err from None
        raise


_ORIGINAL_SAVE_FILE: Any = None


def save_file(tensors: dict[str, Any], filename: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, written atomically (:func:`atomic_file`)."""
    with atomic_file(filename) as tmp:
        _ORIGINAL_SAVE_FILE(tensors, str(tmp), metadata=metadata)


# where transformers, PEFT and the Trainer look up the safetensors writer (module, attribute)
_WRITER_SITES = (("safetensors.torch", "save_file"), ("transformers.modeling_utils", "safe_save_file"),
                 ("peft.peft_model", "safe_save_file"), ("peft.utils.save_and_load", "safe_save_file"))


def route_safetensors_writes() -> None:
    """Make every safetensors file transformers, PEFT and the Trainer write go through :func:`save_file`.

    Hand-written because neither library offers a hook for how a file is written: their writer is looked up by name
    in the sites above, so it is replaced there (once per process; idempotent)."""
    global _ORIGINAL_SAVE_FILE
    import importlib

    import safetensors.torch

    if _ORIGINAL_SAVE_FILE is None:
        current = safetensors.torch.save_file
        _ORIGINAL_SAVE_FILE = current if current is not save_file else None
    for module_name, attr in _WRITER_SITES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - an older library without that site
            continue
        if hasattr(module, attr):
            setattr(module, attr, save_file)



@contextlib.contextmanager
def staged_as(stage: str | Path, out: str | Path) -> Iterator[None]:
    """Errors about a file in the hidden staging directory `stage` (a full disk while a library writes there) name
    where that file was going, under `out`, rather than the temp name the user never sees."""
    stage, out = Path(stage), Path(out)

    def outside(where: str | None) -> str | None:
        if where is None or not Path(where).is_relative_to(stage):
            return where
        return str(out / Path(where).relative_to(stage))

    try:
        yield
    except KormedError as exc:
        exc.path = outside(exc.path)
        exc.args = (str(exc),)
        raise
    except OSError as exc:
        err = os_error(exc, out, as_output=False)
        if err is None:
            raise
        err.path = outside(err.path)
        err.args = (str(err),)
        raise err from None
