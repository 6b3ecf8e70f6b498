"""`run_prepare`: the four sources become one cleaned, mixed CPT corpus (+ validation set and stats).

Plain sources (per source, in config order):
1. validation: walk a seeded permutation of the rows, clean each, and keep the first documents that pass the
   filters and have at least `val_min_chars` characters until the source's validation quota is met;
2. training: sampled mode walks the same permutation (validation rows left out) and keeps the first
   `quota` documents that pass; `--all` streams every shard in order instead. A training document whose text
   equals a validation text is dropped (`duplicate_of_val`), so the two sets are disjoint by row and by text.
With `decontaminate` on, every document (plain, in both steps, and medical) that shares a long word span with
an evaluation question is dropped and counted (`contaminated`, :mod:`kormed.prepare.decontaminate`).
Cleaning runs in `num_proc` worker processes over batches with bounded look-ahead; results are consumed in
order, so the output does not depend on `num_proc`, batch or chunk sizes. Kept documents go to a spool file,
never to memory; medical records are rendered and spooled `multiplier` times; `mix.shuffle_file` then writes
the output atomically in a seeded random order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import (
    Log,
    check_output_path,
    clean_stale_temps,
    make_temp_dir,
    os_error,
    report_stale,
    write_json,
    write_jsonl,
)
from kormed.prepare.clean import DROP_REASONS, FilterSpec, clean_batch
from kormed.prepare.config import DICT_SOURCES, MEDICAL_SOURCES, PLAIN_SOURCES, PlainSourceConfig, PrepareConfig
from kormed.prepare.decontaminate import (
    Decontaminator,
    EvalIndex,
    clean_and_match,
    init_worker,
    load_index,
    match_cleaned,
)
from kormed.prepare.mix import (
    CONTAMINATED,
    CONTAMINATED_CHARS,
    RNG_SAMPLE,
    RNG_VAL,
    Spool,
    allocate,
    distribution_rows,
    format_table,
    jsonl_line,
    rng,
    shuffle_file,
)
from kormed.prepare.publish import MANIFEST_KEY, manifest_entry, publish
from kormed.prepare.render import render_dictionary, render_mcq
from kormed.prepare.sources import ArrowSource, Batch

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.


class MissingSourceError(KormedError):
    """A required source does not exist. Its hint names `kormed prepare`'s flag; `kormed run` words its own."""

    def __init__(self, source: str, path: str | os.PathLike[str]) -> None:
        super().__init__(
            f"source '{source}' does not exist",
            path=path,
            hint=f"pass --{source.replace('_', '-')} PATH or --data-root DIR, or set prepare.{source}.optional: true "
            "to skip it",
        )
        self.source = source


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class _Cleaner:
    """Ordered, bounded parallel map of `clean_batch` plus the decontamination match of each kept document
    (in-process when num_proc is 1): results are (text, drop reason, evaluation-set mask) per document.

    Why not Pool.imap: its feeder thread drains the whole input iterator at once, which would read a whole
    corpus into memory; here at most `window` batches are in flight."""

    def __init__(self, num_proc: int, index: EvalIndex | None) -> None:
        self.num_proc = num_proc
        self.index = index
        self.pool: Any = None  # started on first use ("spawn": no fork of a process holding Arrow maps/threads)
        self.window = 4 * num_proc

    def map(self, spec: FilterSpec, batches: Iterable[Batch]) -> Iterator[tuple[Batch, list]]:
        if self.num_proc > 1 and self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(self.num_proc, initializer=init_worker, initargs=(self.index,))
        if self.pool is None:
            for b in batches:
                yield b, match_cleaned(self.index, clean_batch((spec, b.texts, b.namespaces)))
            return
        pending: deque = deque()
        for b in batches:
            pending.append((b, self.pool.apply_async(clean_and_match, ((spec, b.texts, b.namespaces),))))
            if len(pending) >= self.window:
                done, res = pending.popleft()
                yield done, res.get()
        while pending:
            done, res = pending.popleft()
            yield done, res.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _permutation_batches(
    src: ArrowSource, perm: Any, batch_size: int, skip: set[int], need: Callable[[], int]
) -> Iterator[Batch]:
    """Batches of rows in permutation order, read chunk by chunk (chunk sized to what is still needed)."""
    pos = 0
    n = len(perm)
    while pos < n:
        want = need()
        if want <= 0:
            return
        size = int(min(max(2 * want + batch_size, 4 * batch_size), 20_000))
        rows = [int(r) for r in perm[pos : pos + size] if int(r) not in skip]
        pos += size
        if not rows:
            continue
        got = src.take(rows)
        for i in range(0, len(rows), batch_size):
            yield Batch(
                got.rows[i : i + batch_size],
                got.texts[i : i + batch_size],
                got.namespaces[i : i + batch_size] if got.namespaces is not None else None,
            )


class _Run:
    def __init__(self, cfg: PrepareConfig, log: Log | None, progress: bool) -> None:
        self.cfg = cfg
        self.log = log or (lambda _m: None)
        self.progress = progress
        self.missing: dict[str, str] = {}
        self.sources: dict[str, dict[str, Any]] = {}
        self.drops: dict[str, dict[str, int]] = {}
        self.skipped: dict[str, Any] = {}
        self.errors: dict[str, list[str]] = {}
        self.decontam: Decontaminator | None = None
        self.missing_eval_sets: list[str] = []
        self.dictionaries: dict[str, tuple[list[Any], list[Any]]] = {}  # name -> (trained, held-out) entries

    # -- helpers ----------------------------------------------------------------------------------------------
    def present(self, name: str) -> bool:
        """Whether source `name` exists; a missing required source is an error, a missing optional one skipped."""
        path = self.cfg.source_path(name)
        src_cfg = getattr(self.cfg, name)
        if path.exists():
            return True
        if src_cfg.optional:
            self.missing[name] = str(path)
            self.log(f"source '{name}' not found at {path}: skipped (optional)")
            return False
        raise MissingSourceError(name, path)

    def load_eval_sets(self) -> None:
        """With `decontaminate` on, index the evaluation questions every document is checked against."""
        cfg = self.cfg
        if not cfg.decontaminate:
            return
        root = cfg.root()
        paths = [p if p.is_absolute() else root / p for p in (Path(x).expanduser() for x in cfg.decontam_eval_sets)]
        train = cfg.source_path("mcq")
        if train.is_file() and any(p.is_file() and p.samefile(train) for p in paths):
            raise KormedError(
                "an evaluation set is the training MCQ file: every training question would be dropped",
                path=train,
                field="prepare.decontam_eval_sets",
            )
        index, self.missing_eval_sets = load_index(
            paths, n=cfg.decontam_ngram, min_words=cfg.decontam_min_words, skip_bad=cfg.skip_bad, log=self.log
        )
        self.decontam = Decontaminator(index)

    def contaminated(self, source: str, text: str, question: Any = None) -> bool:
        """Whether `text` is dropped as contaminated (counted by the Decontaminator); False when it is off."""
        return self.decontam is not None and self.decontam.contaminated(source, text, question)

    def counted_contaminated(self, source: str, text: str, mask: int) -> bool:
        """Whether a plain document the cleaner matched (`mask`) is contaminated; counted if it is."""
        return self.decontam is not None and self.decontam.count(source, text, mask)

    def bar(self, total: int | None, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="doc", disable=not self.progress, dynamic_ncols=True, leave=False)

    def _clean_error(self, name: str, src: ArrowSource, row: int, reason: str, counts: Counter) -> None:
        message = reason.removeprefix("clean_error: ")
        shard, local = src.shard_of(row)
        if not self.cfg.skip_bad:
            raise KormedError(
                f"cleaning failed: {message}",
                path=shard.path,
                field=f"{src.text_field} (row {local})",
                hint="--skip-bad skips such documents (counted in the stats)",
            )
        counts["clean_error"] += 1
        examples = self.errors.setdefault(name, [])
        if len(examples) < 5:
            examples.append(f"{shard.path} row {local}: {message}")

    # -- plain sources ----------------------------------------------------------------------------------------
    def plain(self, cleaner: _Cleaner, spool: Spool) -> list[str]:
        cfg = self.cfg
        opened: dict[str, ArrowSource] = {}
        for name in PLAIN_SOURCES:
            if name in self.missing:
                continue
            sc: PlainSourceConfig = getattr(cfg, name)
            opened[name] = ArrowSource(name, cfg.source_path(name), text_field=sc.text_field, split=sc.split)
        names = list(opened)
        if cfg.plain_mix == "weights":
            weights = [getattr(cfg, n).weight for n in names]
        else:
            weights = [float(opened[n].num_rows) for n in names]
        total_rows = sum(opened[n].num_rows for n in names)
        planned = total_rows if cfg.all else min(cfg.plain_docs, total_rows)
        quotas = [None] * len(names) if cfg.all else allocate(cfg.plain_docs, weights)
        n_val = 0
        if cfg.val_fraction > 0 and planned > 0:
            n_val = min(cfg.val_max_docs, max(1, round(cfg.val_fraction * planned)))
        val_quotas = allocate(n_val, weights if not cfg.all else [float(opened[n].num_rows) for n in names])
        val_texts: list[str] = []
        for index, name in enumerate(names):
            val_texts += self._plain_source(
                PLAIN_SOURCES.index(name), opened[name], quotas[index], val_quotas[index], cleaner, spool
            )
        return val_texts

    def _plain_source(
        self, stream: int, src: ArrowSource, quota: int | None, val_quota: int, cleaner: _Cleaner, spool: Spool
    ) -> list[str]:
        cfg = self.cfg
        sc: PlainSourceConfig = getattr(cfg, src.name)
        spec = FilterSpec(sc.cleaner, cfg.min_chars, cfg.min_hangul_ratio, sc.main_namespace_only)
        perm = rng(cfg.seed, RNG_SAMPLE, stream).permutation(src.num_rows)
        bs = cfg.batch_size

        # 1. validation documents (the first in permutation order that pass, are long enough and are not
        # contaminated; a contaminated one is counted here and its row left out of step 2)
        val: list[str] = []
        val_rows: set[int] = set()
        done_rows: set[int] = set()  # validation and contaminated rows: never read again in step 2
        if val_quota > 0:
            batches = _permutation_batches(src, perm, bs, set(), lambda: 4 * (val_quota - len(val)))
            for batch, results in cleaner.map(spec, batches):
                for row, (text, _reason, mask) in zip(batch.rows, results, strict=True):
                    if text is not None and len(text) >= cfg.val_min_chars and len(val) < val_quota:
                        if not self.counted_contaminated(src.name, text, mask):
                            val.append(text)
                            val_rows.add(row)
                        done_rows.add(row)
                if len(val) >= val_quota:
                    break
        val_digests = {_digest(t) for t in val}

        # 2. training documents
        counts: Counter = Counter()
        kept = chars = read = 0
        target = quota if quota is not None else src.num_rows - len(done_rows)
        if quota is not None:
            batches = _permutation_batches(src, perm, bs, done_rows, lambda: quota - kept)
        else:
            batches = src.iter_all(bs, skip=done_rows)
        bar = self.bar(target, f"{src.name}")
        try:
            for batch, results in cleaner.map(spec, batches):
                for row, (text, reason, mask) in zip(batch.rows, results, strict=True):
                    if quota is not None and kept >= quota:
                        break
                    read += 1
                    if quota is None:
                        bar.update(1)
                    if text is None:
                        if reason and reason.startswith("clean_error"):
                            self._clean_error(src.name, src, row, reason, counts)
                        else:
                            counts[reason] += 1
                        continue
                    if self.counted_contaminated(src.name, text, mask):
                        continue
                    if val_digests and _digest(text) in val_digests:
                        counts["duplicate_of_val"] += 1
                        continue
                    spool.add(text, sc.multiplier)
                    kept += 1
                    chars += len(text)
                    if quota is not None:
                        bar.update(1)
                if quota is not None and kept >= quota:
                    break
        finally:
            bar.close()
        self.sources[src.name] = {
            "group": "plain",
            "path": str(src.path),
            "shards": len(src.shards),
            "rows": src.num_rows,
            "requested": quota if quota is not None else "all",
            "read": read,
            "base": kept,
            "multiplier": sc.multiplier,
            "final": kept * sc.multiplier,
            "characters": chars * sc.multiplier,
            "base_characters": chars,
            "val_docs": len(val),
            "exhausted": quota is not None and kept < quota,
            **self._contamination_stats(src.name),
        }
        counts[CONTAMINATED] = self._contamination_stats(src.name).get(CONTAMINATED, 0)
        self.drops[src.name] = {r: counts[r] for r in DROP_REASONS if counts[r]}
        if quota is not None and kept < quota:
            self.log(f"{src.name}: all {kept:,} documents that pass the filters used ({quota:,} requested)")
        return val

    def _contamination_stats(self, name: str) -> dict[str, int]:
        """A source's contaminated documents and characters (stats and table keys; none when it is off)."""
        if self.decontam is None:
            return {}
        return {CONTAMINATED: self.decontam.documents[name], CONTAMINATED_CHARS: self.decontam.characters[name]}

    # -- medical sources --------------------------------------------------------------------------------------
    def medical(self) -> list[tuple[str, int]]:
        """Read, validate and render the medical sources (small: read before the long plain pass, so their
        errors surface at once); returns (text, copies) pairs."""
        from kormed.records import read_dictionary, read_mcq_jsonl

        cfg = self.cfg
        out: list[tuple[str, int]] = []
        for name in MEDICAL_SOURCES:
            if name in self.missing:
                continue
            path = cfg.source_path(name)
            mult = getattr(cfg, name).multiplier
            questions: list[Any]
            if name == "mcq":
                questions, report = read_mcq_jsonl(path, skip_bad=cfg.skip_bad)
                texts = [render_mcq(r, cfg.mcq_style) for r in questions]
            else:
                entries, report = read_dictionary(path, skip_bad=cfg.skip_bad)
                entries, held = hold_out_entries(entries, cfg.dict_holdout, cfg.seed)
                self.dictionaries[name] = (entries, held)
                if held:
                    self.log(f"{name}: {len(held)} of {len(entries) + len(held)} entries held out of training "
                             f"(prepare.dict_holdout {cfg.dict_holdout}; recorded in {cfg.heldout_path()})")
                questions = [None] * len(entries)
                texts = render_dictionary(name, entries, cfg.char_particles)
            if report.total:
                self.skipped[name] = report.to_dict()
                self.log(f"{name}: skipped {report.total} bad record(s): {dict(report.reasons)} ({path})")
            texts = [t for t, q in zip(texts, questions, strict=True) if not self.contaminated(name, t, q)]
            texts, duplicates = _unique(texts, drop=cfg.duplicates == "drop")
            contamination = self._contamination_stats(name)
            drops = {CONTAMINATED: contamination.get(CONTAMINATED, 0)}
            if duplicates:
                if cfg.duplicates == "drop":
                    drops["duplicate"] = duplicates
                what = "dropped" if cfg.duplicates == "drop" else f"kept (each x{mult}; prepare.duplicates: keep)"
                self.log(f"{name}: {duplicates} duplicate record(s) {what} ({path})")
            out += [(t, mult) for t in texts]
            self.sources[name] = {
                "duplicates": duplicates,
                "group": "medical",
                "path": str(path),
                "base": len(texts),
                "multiplier": mult,
                "final": len(texts) * mult,
                "characters": sum(len(t) for t in texts) * mult,
                "base_characters": sum(len(t) for t in texts),
                **contamination,
            }
            if any(drops.values()):
                self.drops[name] = {r: c for r, c in drops.items() if c}
        return out


def hold_out_entries(entries: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(trained, held-out) dictionary entries: the distinct terms ordered by sha256 of seed and term, the first
    floor(fraction x terms) held out with every entry of theirs (a term listed twice is never on both sides);
    both keep the file's order. The same entries and seed give the same split."""
    terms = sorted({e.term for e in entries}, key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).hexdigest())
    held = set(terms[: int(fraction * len(terms))])
    return [e for e in entries if e.term not in held], [e for e in entries if e.term in held]


def _entries_json(entries: list[Any]) -> list[dict[str, str]]:
    return [{"term": e.term, "definition": e.definition} for e in entries]


def _unique(texts: list[str], *, drop: bool) -> tuple[list[str], int]:
    """(texts without repeats when `drop`, else unchanged; how many repeat an earlier text). A repeated medical
    record would otherwise be written `multiplier` times more, unnoticed."""
    seen: set[str] = set()
    unique: list[str] = []
    for text in texts:
        if text not in seen:
            seen.add(text)
            unique.append(text)
    return (unique if drop else texts), len(texts) - len(unique)


def _resolve_num_proc(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


def run_prepare(cfg: PrepareConfig, *, log: Log | None = print, progress: bool = True) -> dict[str, Any]:
    """Build the mixed CPT corpus described by `cfg`; returns the output paths and the stats.

    Writes `out` (JSONL `{"text"}` lines, shuffled), `<out>.val.jsonl` (held-out raw Korean text) and
    `<out>.stats.json` (distribution table, drop counts, and the size and sha256 of the other two), published as
    one unit (:mod:`kormed.prepare.publish`); leftovers of a killed run are removed first. Same inputs + seed =
    same bytes.
    """
    started = time.monotonic()
    root = cfg.root()
    if not root.is_dir():
        raise KormedError("data root does not exist or is not a directory", path=root, field="data_root")
    out = cfg.out_path()
    for path in cfg.output_paths():
        check_output_path(path, "file", "--out", inputs=cfg.input_paths())
    run = _Run(cfg, log, progress)
    num_proc = _resolve_num_proc(cfg.num_proc)
    for name in (*PLAIN_SOURCES, *MEDICAL_SOURCES):
        run.present(name)  # every required source checked before any work
    run.load_eval_sets()
    medical = run.medical()
    val_out, stats_out = cfg.val_path(), cfg.stats_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of a killed run (its work directory, half-written temp files) go first, reported
    report_stale(clean_stale_temps(out.parent, [p.name for p in cfg.output_paths()]), run.log)
    tmpdir = make_temp_dir(out.parent, out.name, ".work")
    cleaner = _Cleaner(num_proc, run.decontam.index if run.decontam is not None else None)
    publishing = False
    try:
        spool = Spool(tmpdir / "spool.jsonl")
        try:
            val_texts = run.plain(cleaner, spool)
            for text, copies in medical:
                spool.add(text, copies)
        finally:
            spool.close()
        if spool.lines == 0:
            raise KormedError("no documents to write: every source is missing, empty or filtered out", path=root)
        # all three outputs are staged in the work directory, then published together (kormed.prepare.publish)
        staged = {p: tmpdir / "publish" / p.name for p in (out, val_out, stats_out)}
        bar = run.bar(spool.lines, "shuffle")
        try:
            shuffle_file(
                spool.path,
                spool.lines,
                spool.bytes,
                staged[out],
                seed=cfg.seed,
                bucket_bytes=cfg.shuffle_bucket_mb << 20,
                tmpdir=tmpdir,
                progress=bar.update,
            )
        finally:
            bar.close()
        order = rng(cfg.seed, RNG_VAL).permutation(len(val_texts))
        write_jsonl(staged[val_out], ({"text": val_texts[i]} for i in order))

        rows = distribution_rows(
            {n: run.sources[n] for n in (*PLAIN_SOURCES, *MEDICAL_SOURCES) if n in run.sources}, PLAIN_SOURCES
        )
        stats: dict[str, Any] = {
            "out": str(out),
            "val": str(val_out),
            "seed": cfg.seed,
            "mode": "all" if cfg.all else "sampled",
            "lines": spool.lines,
            "bytes": spool.bytes,
            "table": rows,
            "sources": run.sources,
            "drops": run.drops,
            "skipped": run.skipped,
            "clean_errors": run.errors,
            "missing": run.missing,
            "val_docs": len(val_texts),
            "val_characters": sum(len(t) for t in val_texts),
            "filters": {"min_chars": cfg.min_chars, "min_hangul_ratio": cfg.min_hangul_ratio},
            "mcq_style": cfg.mcq_style,
            "decontamination": (
                run.decontam.stats(run.missing_eval_sets) if run.decontam is not None else {"enabled": False}
            ),
            MANIFEST_KEY: {"corpus": manifest_entry(staged[out]), "val": manifest_entry(staged[val_out])},
        }
        dict_moves = []
        for name in DICT_SOURCES:
            if name in run.dictionaries:
                target = cfg.dict_subset_path(name)
                write_json(tmpdir / "publish" / target.name, _entries_json(run.dictionaries[name][0]))
                dict_moves.append((tmpdir / "publish" / target.name, target))
        heldout = cfg.heldout_path()
        write_json(tmpdir / "publish" / heldout.name, {
            "fraction": cfg.dict_holdout, "seed": cfg.seed,
            **{name: _entries_json(run.dictionaries.get(name, ([], []))[1]) for name in DICT_SOURCES}})
        stats["dict_holdout"] = {
            "fraction": cfg.dict_holdout, "seed": cfg.seed, "record": str(heldout),
            **{name: {"trained": len(run.dictionaries[name][0]), "held_out": len(run.dictionaries[name][1]),
                      "trained_path": str(cfg.dict_subset_path(name))}
               for name in DICT_SOURCES if name in run.dictionaries}}
        write_json(staged[stats_out], stats)
        publishing = True
        publish([(staged[val_out], val_out), (staged[out], out), *dict_moves,
                 (tmpdir / "publish" / heldout.name, heldout), (staged[stats_out], stats_out)])
    except OSError as exc:  # a full disk in the work directory (spool, buckets, staged files): name the output
        kept = not publishing and out.exists()
        err = os_error(exc, out, note=" (nothing was published; the earlier output is unchanged)" if kept else "")
        if err is None:
            raise
        raise err from None
    finally:
        cleaner.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if log is not None:
        log(format_table(rows))
        drops = {n: d for n, d in run.drops.items() if d}
        if drops:
            parts = [f"{n}: " + ", ".join(f"{r} {c:,}" for r, c in d.items()) for n, d in drops.items()]
            log("dropped: " + "; ".join(parts))
        if run.decontam is not None:
            log(run.decontam.summary())
        log(
            f"wrote {spool.lines:,} lines ({spool.bytes / 1e6:.1f} MB) to {out}; "
            f"{len(val_texts):,} validation docs to {cfg.val_path()}; stats in {cfg.stats_path()} "
            f"({elapsed:.1f}s, {num_proc} proc)"
        )
    return {
        "out": str(out),
        "val": str(cfg.val_path()),
        "stats_path": str(cfg.stats_path()),
        "lines": spool.lines,
        "stats": stats,
        "elapsed_s": elapsed,
    }


__all__ = ["run_prepare", "jsonl_line"]
