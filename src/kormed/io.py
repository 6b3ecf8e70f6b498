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
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def optional_file(path: str | Path, what: str = "file", *, field: str | None = None) -> Path | None:
    """An input that may be absent (reported and skipped by the caller): None when nothing is at `path`, the path
    when it is a regular file, and a KormedError when something else is there (a directory, a FIFO): that is a
    mistake to tell the user, never an input to skip in silence."""
    p = Path(path)
    if not p.exists():
        return None
    if not p.is_file():
        kind = "a directory" if p.is_dir() else "not a regular file"
        raise KormedError(f"{what} is {kind}; give the file itself", path=p, field=field)
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


def _bounded_lines(lines: Iterable[bytes], where: str | Path) -> Iterator[bytes]:
    """The lines of a binary file (or any byte lines), a line longer than MAX_LINE_BYTES refused before it is read
    whole (a file with no newline would otherwise be read into memory at once)."""
    readline = getattr(lines, "readline", None)
    if readline is None:
        yield from lines
        return
    lineno = 0
    while True:
        raw = readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES:
            raise KormedError(f"line longer than {MAX_LINE_BYTES >> 20} MiB", path=where, line=lineno)
        yield raw


def parse_jsonl_lines(
    lines: Iterable[bytes], *, where: str | Path, start: int = 1
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSONL parsing of :func:`iter_jsonl` over any byte lines (a file, stdin), errors naming `where`; each
    line goes through :func:`loads_json`'s guards."""
    for lineno, raw in enumerate(_bounded_lines(lines, where), start=1):
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
        record = loads_json(line, where=where, line=lineno)
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


def iter_texts(path: str | Path, *, field: str = "text", limit: int | None = None, what: str = "text file",
               blank: list[int] | None = None) -> Iterator[str]:
    """The non-blank `field` strings of a JSONL file, one at a time in file order (memory independent of the file's
    size); the first `limit` only. A line whose `field` is missing or not a string, or a file with no text at all,
    raises a KormedError naming the file (and line). `blank`: a one-item counter of the blank texts skipped."""
    kept = 0
    for lineno, record in iter_jsonl(path, what=what):
        text = record_text(record, field, path, lineno)
        if not text.strip():
            if blank is not None:
                blank[0] += 1
            continue
        kept += 1
        yield text
        if limit is not None and kept >= limit:
            return
    if not kept:
        raise KormedError(f"no non-empty '{field}' records in the {what}", path=path,
                          hint=f'expected lines like {{"{field}": "..."}}')


def read_texts(path: str | Path, *, field: str = "text", limit: int | None = None, max_chars: int | None = None,
               what: str = "text file") -> list[str]:
    """The non-blank `field` strings of a JSONL file (`{"text": ...}` per line), in file order (:func:`iter_texts`).

    Reading stops once `limit` texts are kept or once the kept texts reach `max_chars` characters (the text that
    crosses it is kept), so later lines are not read. A line whose `field` is missing or not a string, or a file with
    no text at all, raises a KormedError naming the file (and line)."""
    texts: list[str] = []
    total = 0
    for text in iter_texts(path, field=field, limit=limit, what=what):
        texts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return texts


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Load a whole JSON file through :func:`loads_json`'s guards, with UTF-8, syntax, size, nesting, integer and
    surrogate errors reported by file and line."""
    p = require_file(path, what)
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise KormedError(f"{what} is {size >> 20} MiB, more than the {MAX_JSON_BYTES >> 20} MiB kormed reads", path=p)
    text = decode_utf8(p.read_bytes(), p)
    if text.startswith(BOM):
        raise bom_error(p)
    return loads_json(text, where=p)


# -- the guarded readers ---------------------------------------------------------------------------------------
# Every JSON / JSONL / YAML a user supplies or a run reads back is parsed here, with limits that turn hostile input
# (nesting thousands deep, 5,000-digit integers, "billion laughs" aliases, lone surrogates) into one KormedError
# naming the file and line, never a RecursionError / ValueError / hang. The limits are far above any real file.
MAX_NESTING = 100  # arrays/objects (YAML sequences/mappings) inside each other
MAX_INT_DIGITS = 64  # digits of one integer (Python refuses int() of 4,300+ digits with a ValueError)
MAX_JSON_BYTES = 4 << 30  # one JSON file
MAX_LINE_BYTES = 512 << 20  # one JSONL line
MAX_YAML_BYTES = 16 << 20  # one YAML config / pipeline file
YAML_ALIAS_NODES = 10_000  # nodes that YAML aliases may repeat in all (a "billion laughs" repeats 10^9)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a decoded str, any surrogate is lone (pairs decode to one)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONG_INT = re.compile(rf"\d{{{MAX_INT_DIGITS + 1},}}")


class YamlSyntaxError(KormedError):
    """Text that is not YAML at all (a caller reading a command-line value may take it as a plain string)."""


class _Refused(ValueError):
    """A guard's refusal inside a parser's callback (carried out of json.loads, then made a KormedError)."""


def decode_utf8(data: bytes, where: str | Path) -> str:
    """`data` decoded as strict UTF-8, or a KormedError naming `where` and the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KormedError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=where, line=line) from None


def check_text(text: str, where: str | Path, *, field: str | None = None, line: int | None = None) -> str:
    """`text`, or a KormedError when it holds a lone surrogate (from a `\\ud800` escape, or undecodable bytes of a
    terminal / argument that Python kept as surrogates): such a string cannot be encoded, so no tokenizer takes
    it. The error names `where` and the line within `text` (or `line`)."""
    m = _LONE_SURROGATE.search(text)
    if m is None:
        return text
    at = line if line is not None else text.count("\n", 0, m.start()) + 1
    raise KormedError(f"not valid Unicode text: a lone surrogate U+{ord(m.group()):04X} (invalid UTF-8, or a "
                      "\\uD800-\\uDFFF escape without its pair)", path=where, line=at, field=field)


def _json_int(digits: str) -> int:
    n = len(digits) - digits.startswith("-")
    if n > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {n} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def _line_at(text: str, pattern: re.Pattern[str]) -> int | None:
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _too_deep(data: Any) -> bool:
    """Whether containers nest more than MAX_NESTING levels (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        obj, depth = stack.pop()
        children = obj.values() if isinstance(obj, dict) else obj
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_NESTING:
                    return True
                stack.append((child, depth + 1))
    return False


def _strings(data: Any) -> Iterator[str]:
    stack = [data]
    while stack:
        obj = stack.pop()
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)


def loads_json(text: str, *, where: str | Path, line: int | None = None) -> Any:
    """`json.loads(text)` under kormed's guards: nesting at most MAX_NESTING deep, integers of at most
    MAX_INT_DIGITS digits, no lone surrogate (`"\\ud800"`) in any string. Every failure is one KormedError naming
    `where` and the line (`line` for one JSONL line, else the line in `text`)."""
    try:
        data = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise KormedError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=where,
                          line=line if line is not None else exc.lineno) from None
    except _Refused as exc:
        raise KormedError(str(exc), path=where, line=line if line is not None else _line_at(text, _LONG_INT)) from None
    except RecursionError:
        data = None
        deep = True
    else:
        deep = isinstance(data, (dict, list)) and text.count("[") + text.count("{") > MAX_NESTING and _too_deep(data)
    if deep:
        raise KormedError(f"JSON nested more than {MAX_NESTING} levels deep", path=where, line=line)
    if _SURROGATE_ESCAPE.search(text) is not None:  # only an escape can make a lone surrogate in decoded JSON
        for value in _strings(data):
            if _LONE_SURROGATE.search(value):
                check_text(value, where, line=line if line is not None else _line_at(text, _SURROGATE_ESCAPE))
    return data


def _yaml_loader() -> type:
    """A yaml.SafeLoader that refuses, each with one KormedError naming the line: nesting deeper than MAX_NESTING,
    aliases that repeat more than YAML_ALIAS_NODES nodes in all or refer to a node that contains them, duplicate
    keys, integers longer than MAX_INT_DIGITS digits and lone surrogates. (PyYAML's own SafeLoader expands aliases
    without a bound, lets the last duplicate key win, and recurses without a limit.)"""
    import yaml

    class GuardedLoader(yaml.SafeLoader):
        def __init__(self, stream: str, where: str | Path) -> None:
            super().__init__(stream)
            self.where = where
            self.depth = 0
            self.repeated = 0
            self.open_anchors: list[str] = []
            self.sizes: dict[int, int] = {}

        def refuse(self, message: str, mark: Any) -> KormedError:
            return KormedError(message, path=self.where, line=mark.line + 1 if mark is not None else None)

        def size(self, node: Any) -> int:
            """Nodes under `node`, aliases counted as often as they appear (memoised: linear in the document)."""
            known = self.sizes.get(id(node))
            if known is None:
                children = node.value if isinstance(node, yaml.SequenceNode) else (
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
                known = self.sizes[id(node)] = 1 + sum(self.size(c) for c in children)
            return known

        def fetch_flow_collection_start(self, token_class: Any) -> None:
            if self.flow_level >= MAX_NESTING:  # checked while scanning: PyYAML's scanner is quadratic in depth
                raise self.refuse(f"YAML nested more than {MAX_NESTING} levels deep", self.get_mark())
            super().fetch_flow_collection_start(token_class)

        def add_indent(self, column: int) -> bool:
            if len(self.indents) >= MAX_NESTING:
                raise self.refuse(f"YAML nested more than {MAX_NESTING} levels deep", self.get_mark())
            return super().add_indent(column)

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self.open_anchors:
                    raise self.refuse(f"the alias *{event.anchor} refers to a node that contains it", event.start_mark)
                node = self.anchors.get(event.anchor)
                if node is not None:
                    self.repeated += self.size(node)
                    if self.repeated > YAML_ALIAS_NODES:
                        raise self.refuse(f"aliases repeat more than {YAML_ALIAS_NODES} nodes (at *{event.anchor}); "
                                          "write the values out", event.start_mark)
                return super().compose_node(parent, index)
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.refuse(f"YAML nested more than {MAX_NESTING} levels deep", event.start_mark)
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                self.open_anchors.append(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1
                if anchor is not None:
                    self.open_anchors.pop()

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: PyYAML's own error follows
                        continue
                    if first is not None:
                        raise self.refuse(f"duplicate key '{key}' (first at line {first}); keep one",
                                          key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

        def construct_scalar(self, node: Any) -> Any:
            value = super().construct_scalar(node)
            if isinstance(value, str) and _LONE_SURROGATE.search(value):
                check_text(value, self.where, line=node.start_mark.line + 1)
            return value

        def construct_yaml_int(self, node: Any) -> int:
            digits = str(self.construct_scalar(node)).replace("_", "").lstrip("+-")
            if len(digits) > MAX_INT_DIGITS:
                raise self.refuse(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})", node.start_mark)
            return super().construct_yaml_int(node)

    GuardedLoader.add_constructor("tag:yaml.org,2002:int", GuardedLoader.construct_yaml_int)
    return GuardedLoader


_YAML_LOADER: type | None = None


def load_yaml(text: str, *, where: str | Path) -> Any:
    """`yaml.safe_load(text)` under kormed's guards (:func:`_yaml_loader`), every failure one KormedError naming
    `where` and the line."""
    import yaml

    global _YAML_LOADER
    if _YAML_LOADER is None:
        _YAML_LOADER = _yaml_loader()
    check_text(text, where)
    loader = None
    try:
        loader = _YAML_LOADER(text, where)
        return loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlSyntaxError(f"malformed YAML: character U+{exc.character:04X} is not allowed", path=where,
                              line=line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
        raise YamlSyntaxError(f"malformed YAML: {problem}", path=where, line=line) from None
    except RecursionError:
        raise KormedError(f"YAML nested more than {MAX_NESTING} levels deep", path=where) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, *, what: str = "YAML file") -> Any:
    """Load a whole YAML file through :func:`load_yaml`'s guards, with size and UTF-8 errors naming the file."""
    p = require_file(path, what)
    size = p.stat().st_size
    if size > MAX_YAML_BYTES:
        raise KormedError(f"{what} is {size >> 20} MiB, more than the {MAX_YAML_BYTES >> 20} MiB kormed reads", path=p)
    return load_yaml(decode_utf8(p.read_bytes(), p), where=p)


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


def file_key(path: str | Path, full_hash_limit: int) -> str:
    """A file's content key for reuse decisions: its sha256 (:func:`file_sha256`), or, above `full_hash_limit`
    bytes, the sha256 of its first and last MiB plus its size and mtime (so a rerun does not read 8 GB of weights or
    18 GB of Arrow shards to decide that nothing changed)."""
    path = Path(path)
    st = path.stat()
    if st.st_size <= full_hash_limit:
        return file_sha256(path)
    h = hashlib.sha256()
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(st.st_size - (1 << 20))
        h.update(fh.read(1 << 20))
    return f"{h.hexdigest()}:{st.st_size}:{st.st_mtime_ns}"


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


def os_error(exc: OSError, path: str | Path | None = None, *, note: str = "", temp: str | None = None,
             as_output: bool = True) -> KormedError | None:
    """The one-line KormedError for an OSError the environment caused (disk full, permissions, read-only file system,
    a file where a directory is expected), naming `exc.filename` (`path` instead when it has none or it is the
    hidden temp file `temp`) as the output it stands for (:func:`output_named`; `as_output=False` keeps the path
    for a caller that maps it itself); None for any other OSError."""
    known = _ENV_ERRORS.get(exc.errno or 0)
    if known is None:
        return None
    what, todo = known
    where = exc.filename if exc.filename is not None and str(exc.filename) != temp else path
    if where is not None and as_output:
        where = output_named(where)
    return KormedError(f"{what}{note}; {todo}", path=where)


def output_named(path: str | Path) -> str:
    """The output a path stands for: a file inside one of kormed's hidden temp names (`.NAME.kormed-...`, a staged
    file or a work directory beside the output) is reported as `NAME` in that directory, the path the user gave;
    any other path as it is. Errors name what the user knows, not a staging file that is removed on the way out."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        m = _TEMP_RE.match(part)
        if m is not None:
            return str(Path(*parts[:i], m["name"]))
    return str(path)


Inputs = Mapping[str, "str | Path | None"] | Iterable[tuple[str, "str | Path | None"]]


def check_output_path(path: str | Path, kind: str = "file", flag: str = "--output", *, inputs: Inputs = (),
                      holds_inputs: bool = True) -> Path:
    """Check, before any work starts, that `path` can take an output of `kind` ("file" or "dir"): an existing path
    is a regular file or directory of that kind (never a device node, FIFO or socket: outputs are regular files or
    directories kormed creates), the nearest existing ancestor is a directory, and it (or an existing "dir") is
    writable; and that it is none of the command's `inputs` (flag -> path; see :func:`check_not_an_input`).
    Creates nothing; raises a KormedError naming `flag` and the path."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    p = Path(path).expanduser()
    if p.exists() and not p.is_file() and not p.is_dir():  # exists/is_file/is_dir follow symlinks
        raise KormedError(f"{flag} names a device, FIFO or socket, not a regular {kind}; outputs are regular files "
                          "or directories that kormed creates, choose another path", path=p)
    check_not_an_input(p, flag, inputs, holds_inputs=kind == "dir" and holds_inputs)
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


def check_not_an_input(output: str | Path, flag: str, inputs: Inputs, *, holds_inputs: bool = False) -> None:
    """Refuse an output path that is one of the command's inputs (`inputs`: flag -> path, None or "" skipped),
    compared resolved, symlinks followed: writing it would replace the user's file. With `holds_inputs` (an
    output directory that kormed replaces or fills) an input inside it is refused too."""
    out = Path(output).expanduser().resolve()
    for name, value in inputs.items() if isinstance(inputs, Mapping) else inputs:
        if value is None or str(value) == "":
            continue
        source = Path(value).expanduser().resolve()
        if source == out:
            raise KormedError(f"{flag} is the input {name} ({value}): writing it would overwrite your input; "
                              "choose another output path", path=output)
        if holds_inputs and source.is_relative_to(out):
            raise KormedError(f"{flag} holds the input {name} ({value}): writing the output directory would "
                              "overwrite your input; choose another output directory", path=output)


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
