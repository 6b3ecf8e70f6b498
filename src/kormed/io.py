"""Reading user files with precise errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kormed.errors import KormedError

Log = Callable[[str], Any]  # where kormed writes its progress lines (print, a file, a test's list.append)


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a clear error if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise KormedError(f"{what} does not exist", path=p)
    if not p.is_file():
        raise KormedError(f"{what} is not a regular file", path=p)
    return p


BOM = "\ufeff"


def bom_error(path: str | Path) -> KormedError:
    """The error for a file that starts with a UTF-8 byte-order mark (JSON forbids it), saying how to remove it."""
    return KormedError(
        "the file starts with a UTF-8 byte-order mark (BOM)",
        path=path,
        line=1,
        hint=f"save it as UTF-8 without BOM, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {shlex.quote(str(path))}",
    )


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
        if lineno == 1 and line.startswith(BOM):
            raise bom_error(where)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KormedError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=where, line=lineno) from None
        if not isinstance(record, dict):
            raise KormedError(f"expected a JSON object, got {type(record).__name__}", path=where, line=lineno)
        yield lineno, record


def record_text(record: dict[str, Any], field: str, path: str | Path, lineno: int) -> str:
    """`record[field]` as a string; missing or not a string raises a KormedError naming the file, line and field
    (the one check of :func:`read_texts` and of CPT's parallel reader, :mod:`kormed.data.corpus_cache`)."""
    text = record.get(field)
    if not isinstance(text, str):
        problem = "missing" if text is None else f"must be a string, got {type(text).__name__}"
        raise KormedError(problem, path=path, line=lineno, field=field)
    return text


def read_texts(path: str | Path, *, field: str = "text", limit: int | None = None, max_chars: int | None = None,
               what: str = "text file") -> list[str]:
    """The non-blank `field` strings of a JSONL file (`{"text": ...}` per line), in file order.

    Reading stops once `limit` texts are kept or once the kept texts reach `max_chars` characters (the text that
    crosses it is kept), so later lines are not read. A line whose `field` is missing or not a string, or a file with
    no text at all, raises a KormedError naming the file (and line)."""
    texts: list[str] = []
    total = 0
    for lineno, record in iter_jsonl(path, what=what):
        text = record_text(record, field, path, lineno)
        if not text.strip():
            continue
        texts.append(text)
        total += len(text)
        if (limit is not None and len(texts) >= limit) or (max_chars is not None and total >= max_chars):
            break
    if not texts:
        raise KormedError(f"no non-empty '{field}' records in the {what}", path=path,
                          hint=f'expected lines like {{"{field}": "..."}}')
    return texts


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Load a whole JSON file, with UTF-8 and syntax errors reported by file and line."""
    p = require_file(path, what)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KormedError(f"not valid UTF-8 ({exc.reason})", path=p, line=line) from None
    if text.startswith(BOM):
        raise bom_error(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KormedError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=p, line=exc.lineno) from None


# -- kormed's temporary names ----------------------------------------------------------------------------------
# Every temp file/dir kormed creates beside an output is named `.NAME.kormed-HOST-PID-RANDOM[.SUFFIX]` (HOST: a
# short hash of the host name), so that a later run can tell its own leftovers of a killed process (same host,
# dead pid; or, from another host, untouched for STALE_FOREIGN_S) from the work of a live one, and remove them.
STALE_FOREIGN_S = 24 * 3600
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.kormed-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[A-Za-z0-9_]+(?:\.[a-z]+)?$")
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?:tmp|work)$")  # before the pid was in the name


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode("utf-8"), digest_size=3).hexdigest()


def temp_prefix(name: str) -> str:
    """Prefix of kormed's hidden temp names for an output called `name`: `.NAME.kormed-HOST-PID-`."""
    return f".{name}.kormed-{_host_tag()}-{os.getpid()}-"


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else by setting it back."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def _is_stale(entry: os.DirEntry, names: set[str] | None, now: float) -> bool:
    m = _TEMP_RE.match(entry.name)
    legacy = None if m else _LEGACY_RE.match(entry.name)
    match = m or legacy
    if match is None or (names is not None and match["name"] not in names):
        return False
    if legacy is not None and names is None:
        return False  # an old-style name is recognised only beside an output kormed is about to write
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    if m is not None and m["host"] == _host_tag():
        return not _pid_alive(int(m["pid"]))
    return age > STALE_FOREIGN_S


def clean_stale_temps(directory: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove kormed's temp files/dirs in `directory` left by killed runs (for the outputs `names`, or all);
    a temp of a live process is kept. Returns what was removed."""
    d = Path(directory)
    wanted = set(names) if names is not None else None
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not _is_stale(entry, wanted, now):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # removed by another run at the same time
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        removed.append(Path(entry.path))
    return removed


def report_stale(removed: list[Path], log: Any = None) -> None:
    """Say how many leftovers of an interrupted run were removed (nothing when none were)."""
    if not removed:
        return
    message = (f"removed {len(removed)} stale temporary file(s) left by an interrupted run in {removed[0].parent}: "
               + ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    if log is not None:
        log(f"[kormed] {message}")
    else:
        print(f"kormed: {message}", file=sys.stderr)


def make_temp_dir(parent: str | Path, name: str, suffix: str = "") -> Path:
    """A new hidden work directory beside the output `parent/name` (kormed's temp naming; stale leftovers of
    killed runs for `name` removed first), with the umask's normal directory mode (not mkdtemp's 0700), so that
    a directory renamed into place as an output gets the permissions any new directory gets."""
    p = Path(parent)
    p.mkdir(parents=True, exist_ok=True)
    report_stale(clean_stale_temps(p, [name]))
    d = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=suffix, dir=p))
    os.chmod(d, 0o777 & ~current_umask())
    return d


@contextlib.contextmanager
def temp_dir(parent: str | Path, name: str, suffix: str = "") -> Iterator[Path]:
    """:func:`make_temp_dir`, removed with its content on exit."""
    d = make_temp_dir(parent, name, suffix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def replace_path(src: str | Path, dst: str | Path) -> None:
    """Move `src` (a file or directory) over `dst` by renames (atomic per step on one filesystem): a directory
    `dst` is first renamed aside to `.NAME.old-PID`, then removed once `src` is in its place."""
    src, dst = Path(src), Path(dst)
    if dst.is_dir() and not dst.is_symlink():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- output paths and the environment's write errors -----------------------------------------------------------
# OSErrors the user's environment causes while writing, as (what happened, what to do).
_ENV_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full (no space left on device)", "free some space or write the output elsewhere"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or write the output elsewhere"),
    errno.EFBIG: ("the file is too large for this file system", "write the output to another file system"),
    errno.EACCES: ("permission denied", "fix the permissions or use another location"),
    errno.EPERM: ("operation not permitted", "fix the permissions or use another location"),
    errno.EROFS: ("the file system is read-only", "choose a location on a writable file system"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose a path under a directory"),
    errno.EISDIR: ("is a directory where a file is expected", "give a file path"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
}


def os_error(exc: OSError, path: str | Path | None = None, *, note: str = "", temp: str | None = None
             ) -> KormedError | None:
    """The one-line KormedError for an OSError the environment caused (disk full, permissions, read-only file system,
    a file where a directory is expected), naming `exc.filename` (`path` instead when it has none or it is the
    hidden temp file `temp`); None for any other OSError."""
    known = _ENV_ERRORS.get(exc.errno or 0)
    if known is None:
        return None
    what, todo = known
    where = exc.filename if exc.filename is not None and str(exc.filename) != temp else path
    return KormedError(f"{what}{note}; {todo}", path=where)


def check_output_path(path: str | Path, kind: str = "file", flag: str = "--output") -> Path:
    """Check, before any work starts, that `path` can take an output of `kind` ("file" or "dir"): an existing path
    is of that kind, the nearest existing ancestor is a directory, and it (or an existing "dir") is writable.
    Creates nothing; raises a KormedError naming `flag` and the path."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    p = Path(path).expanduser()
    writable = os.W_OK | os.X_OK
    if p.is_dir():
        if kind == "file":
            raise KormedError(f"{flag} is a directory, but it must be a file path; give a file name", path=p)
        if not os.access(p, writable):
            raise KormedError(f"{flag}: cannot write in this directory (permission denied or read-only file "
                              "system); choose a writable location", path=p)
        return p
    if kind == "dir" and p.exists():
        raise KormedError(f"{flag} is an existing file, but it must be a directory; remove the file or choose "
                          "another path", path=p)
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise KormedError(f"{flag}: {ancestor} is a file, not a directory; choose a path under a directory", path=p)
    if not os.access(ancestor, writable):
        raise KormedError(f"{flag}: cannot write in {ancestor} (permission denied or read-only file system); "
                          "choose a writable location", path=p)
    return p


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file beside `path`; on success rename it over `path`, on error remove it.

    The file gets the mode any new file gets under the umask (0644 under umask 022), not mkstemp's 0600; stale
    temp files of this output left by a killed run are removed (and reported on stderr). A full disk, a permission or
    read-only error, or a directory under the name becomes one KormedError naming `path` (:func:`os_error`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    report_stale(clean_stale_temps(target.parent, [target.name]))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    try:
        kwargs = {"encoding": encoding, "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        err = (os_error(exc, target, note=" (the partial output was removed)", temp=tmp)
               if isinstance(exc, OSError) else None)
        if err is not None:
            raise err from None
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
