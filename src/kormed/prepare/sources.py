"""Readers for the plain-text Arrow sources with bounded memory.

A source is a directory written by `datasets` `save_to_disk`: a Dataset, or a DatasetDict whose `train` split
holds the shards (Namu Wiki: 38 shards, ~18 GB). Shards are memory-mapped Arrow files; we open ONE shard at a
time and close it before the next, so resident memory stays around one shard's touched pages however large the
corpus is. Sampling reads only the wanted rows (`take` by index); `--all` streams shard by shard.
The medical sources (KorMedMCQA JSONL, dictionaries) are read with `kormed.records`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kormed.errors import KormedError
from kormed.io import read_json

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.


@dataclass(frozen=True)
class Shard:
    path: Path
    rows: int


@dataclass
class Batch:
    """A batch of documents: global row numbers, texts and (if the dataset has one) namespaces."""

    rows: list[int]
    texts: list[Any]
    namespaces: list[Any] | None


def _open_shard(path: Path) -> Any:
    """A memory-mapped `datasets.Dataset` over one Arrow file."""
    from datasets import Dataset

    try:
        return Dataset.from_file(str(path))
    except Exception as exc:  # pyarrow raises several types for a broken file; report it as the user's input
        raise KormedError(f"cannot read Arrow shard ({type(exc).__name__}: {exc})", path=path) from None


def _saved_empty(path: Path, split: str) -> bool:
    """Whether `path` (or its `split`) is a dataset saved by save_to_disk with no data files (0 rows)."""

    for state in (path / "state.json", path / split / "state.json"):
        try:
            if state.is_file() and read_json(state).get("_data_files") == []:
                return True
        except (OSError, AttributeError, KormedError):
            continue
    return False


def _check_text_column(ds: Any, column: str, path: Path, name: str) -> None:
    """The text column must hold strings: a column of numbers would give 0 documents, each 'empty', silently."""
    feature = ds.features.get(column)
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string"):
        kind = dtype if dtype is not None else type(feature).__name__
        raise KormedError(
            f"source '{name}': column '{column}' holds {kind} values, not text (string)",
            path=path,
            field="text_field",
            hint="set the source's text_field to the column that holds the documents' text",
        )


def _check_listed_shards(path: Path, split: str) -> None:
    """Every shard a save_to_disk `state.json` lists must be there: a missing one would otherwise send the reader
    to the folder's other `.arrow` files, and the source would be read in part with no word said."""
    for state in (path / "state.json", path / split / "state.json"):
        if not state.is_file():
            continue  # no state.json here: load_from_disk reports it
        try:  # the guarded reader: a hostile state.json is one error line
            listed = read_json(state, what="dataset state file").get("_data_files") or []
            names = [str(entry["filename"]) for entry in listed]
        except (AttributeError, KeyError, TypeError):
            continue  # not one datasets wrote: load_from_disk reports it
        missing = [name for name in names if not (state.parent / name).is_file()]
        if missing:
            raise KormedError(
                f"{len(missing)} of the {len(names)} shards listed in {state.name} are missing "
                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); copy the dataset again, whole",
                path=state.parent / missing[0],
            )


def _shard_files(path: Path, split: str) -> list[Path]:
    """The shard files of a saved Dataset / DatasetDict (or a folder of bare `.arrow` files), in order."""
    from datasets import Dataset, DatasetDict, load_from_disk

    _check_listed_shards(path, split)
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError:
        ds = None  # not written by save_to_disk: accept a folder of bare .arrow files (checked below)
    except Exception as exc:
        if _saved_empty(path, split):  # datasets cannot load a saved 0-row dataset (IndexError)
            raise KormedError("the dataset is empty (0 rows)", path=path,
                              hint="point the source at a dataset with documents") from None
        raise KormedError(f"cannot open the dataset ({type(exc).__name__}: {exc})", path=path) from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise KormedError(
                f"the DatasetDict has no '{split}' split (splits: {', '.join(ds)})", path=path, field="split"
            )
        ds = ds[split]
    if isinstance(ds, Dataset):
        if ds._indices is not None:  # save_to_disk flattens indices; a mapping would make shard rows wrong
            raise KormedError("dataset has an indices mapping; re-save it with save_to_disk", path=path)
        files = [Path(f["filename"]) for f in ds.cache_files]
        del ds
        if files:
            return files
    files = sorted(path.glob("*.arrow")) or sorted((path / split).glob("*.arrow"))
    if not files:
        raise KormedError(
            "not an Arrow dataset (no dataset_dict.json/state.json and no .arrow files)",
            path=path,
            hint="point the source at the directory written by datasets' save_to_disk",
        )
    return files


class ArrowSource:
    """One plain-text source: its shards, row count, and row access one shard at a time."""

    def __init__(self, name: str, path: str | Path, *, text_field: str = "text", split: str = "train") -> None:
        self.name = name
        self.path = Path(path)
        self.text_field = text_field
        if not self.path.exists():
            raise KormedError(f"source '{name}' does not exist", path=self.path)
        if not self.path.is_dir():
            raise KormedError(f"source '{name}' must be a dataset directory", path=self.path)
        self.shards: list[Shard] = []
        columns: list[str] | None = None
        for f in _shard_files(self.path, split):
            ds = _open_shard(f)
            if columns is None:
                columns = list(ds.column_names)
            elif list(ds.column_names) != columns:
                raise KormedError(f"shard columns {ds.column_names} differ from {columns}", path=f)
            self.shards.append(Shard(f, len(ds)))
            del ds
        self.columns = columns or []
        if text_field not in self.columns:
            raise KormedError(
                f"no '{text_field}' column (columns: {', '.join(self.columns)})", path=self.path, field="text_field"
            )
        if self.shards:
            ds = _open_shard(self.shards[0].path)
            try:
                _check_text_column(ds, text_field, self.shards[0].path, name)
            finally:
                del ds
        self.has_namespace = "namespace" in self.columns
        self.offsets = np.cumsum([0] + [s.rows for s in self.shards])
        self.num_rows = int(self.offsets[-1])
        if self.num_rows == 0:
            raise KormedError(f"source '{name}' is empty (0 rows)", path=self.path,
                              hint="point the source at a dataset with documents")

    @property
    def _read_columns(self) -> list[str]:
        return [self.text_field] + (["namespace"] if self.has_namespace else [])

    def shard_of(self, row: int) -> tuple[Shard, int]:
        """The shard holding global `row` and the row's index inside it."""
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.shards[i], row - int(self.offsets[i])

    def take(self, rows: np.ndarray | list[int]) -> Batch:
        """Documents at the given global rows, in the given order (each shard opened once, then closed)."""
        rows = np.asarray(rows, dtype=np.int64)
        texts: list[Any] = [None] * len(rows)
        namespaces: list[Any] | None = [None] * len(rows) if self.has_namespace else None
        shard_ids = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard_ids):
            where = np.nonzero(shard_ids == s)[0]
            local = rows[where] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # read in file order, put back in request order
            ds = _open_shard(self.shards[s].path).select_columns(self._read_columns)
            got = ds[[int(x) for x in local[order]]]
            del ds
            for k, j in enumerate(where[order]):
                texts[j] = got[self.text_field][k]
                if namespaces is not None:
                    namespaces[j] = got["namespace"][k]
        return Batch([int(r) for r in rows], texts, namespaces)

    def iter_all(self, batch_size: int, skip: set[int] | None = None) -> Iterator[Batch]:
        """Every document in order, streamed shard by shard; rows in `skip` are left out."""
        skip = skip or set()
        for s, shard in enumerate(self.shards):
            base = int(self.offsets[s])
            ds = _open_shard(shard.path).select_columns(self._read_columns)
            start = 0
            for got in ds.iter(batch_size=batch_size):
                n = len(got[self.text_field])
                rows = list(range(base + start, base + start + n))
                start += n
                keep = [i for i, r in enumerate(rows) if r not in skip]
                if not keep:
                    continue
                yield Batch(
                    [rows[i] for i in keep],
                    [got[self.text_field][i] for i in keep],
                    [got["namespace"][i] for i in keep] if self.has_namespace else None,
                )
            del ds
