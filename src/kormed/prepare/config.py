"""Configuration of `kormed prepare` (section `prepare`). Defaults follow seed 001; `--preset seed-000` gives 000."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kormed.config import opt, read_yaml, seed_opt
from kormed.errors import KormedError

PLAIN_SOURCES = ("namu_wiki", "wikipedia_korean", "c4_korean")
MEDICAL_SOURCES = ("mcq", "medical_dict", "char_dict")
DICT_SOURCES = ("medical_dict", "char_dict")
ALL_SOURCES = PLAIN_SOURCES + MEDICAL_SOURCES
DEFAULT_OUT = "data/01_raw/00_korean/korean/raw_text_mixed.jsonl"
EVAL_SETS = ("data/01_raw/02_kor_med_test/test.jsonl", "data/01_raw/02_kor_med_test/dev.jsonl")


@dataclass
class PlainSourceConfig:
    """One plain-text Arrow source (a `save_to_disk` Dataset, or a DatasetDict with a `train` split)."""

    path: str = opt("", "Dataset directory; a relative path is taken under data_root.")
    optional: bool = opt(False, "If true a missing source is reported and skipped; if false it is an error.")
    multiplier: int = opt(
        1, "Each kept document is written this many times (seed 001: 1, seed 000: 5).", bounds=(0, None)
    )
    weight: float = opt(
        1.0, "Share of plain_docs taken from this source when plain_mix is 'weights'.", bounds=(0, None)
    )
    cleaner: Literal["namumark", "wiki", "none"] = opt(
        "wiki", "namumark: NamuMark parser (redirects skipped); wiki: Wikipedia/C4 leftovers removed; none."
    )
    text_field: str = opt("text", "Column holding the document text.")
    split: str = opt("train", "Split used when the directory holds a DatasetDict.")
    main_namespace_only: bool = opt(
        False, "Keep only namespace 0 (main articles) when the dataset has a `namespace` column (Namu Wiki)."
    )


@dataclass
class FileSourceConfig:
    """One medical source: the KorMedMCQA JSONL or a `[{term, definition}]` dictionary."""

    path: str = opt("", "File; a relative path is taken under data_root.")
    optional: bool = opt(False, "If true a missing source is reported and skipped; if false it is an error.")
    multiplier: int = opt(
        5, "Each record is written this many times (medical data x5 in both seeds).", bounds=(0, None)
    )


def _plain(path: str, cleaner: str, *, namespace: bool = False, help: str, flag: str) -> Any:  # noqa: A002
    return dataclasses.field(
        default_factory=lambda: PlainSourceConfig(
            path=path,
            cleaner=cleaner,
            main_namespace_only=namespace,  # type: ignore[arg-type]
        ),
        metadata={"help": help, "flags": (flag,), "path": True},  # `--namu-wiki DIR` sets namu_wiki.path
    )


def _file(path: str, help: str, flag: str) -> Any:  # noqa: A002
    return dataclasses.field(
        default_factory=lambda: FileSourceConfig(path=path), metadata={"help": help, "flags": (flag,), "path": True}
    )


@dataclass
class PrepareConfig:
    """Everything `kormed prepare` reads: sources, filters, sampling, mixing and outputs."""

    data_root: str = opt(".", "Directory in the seeds' layout (data/01_raw/..., data/02_refined/...).", cli_path=True)
    out: str = opt(
        "",
        f"Output JSONL; empty = {DEFAULT_OUT} under data_root. Beside it go <name>.val.jsonl and <name>.stats.json.",
        cli_path=True,
    )
    namu_wiki: PlainSourceConfig = _plain(
        "data/01_raw/00_korean/namu_wiki", "namumark", namespace=True, help="Namu Wiki dump (NamuMark markup).",
        flag="--namu-wiki",
    )
    wikipedia_korean: PlainSourceConfig = _plain(
        "data/01_raw/00_korean/wikipedia-korean", "wiki", help="Korean Wikipedia (plain text with leftovers).",
        flag="--wikipedia-korean",
    )
    c4_korean: PlainSourceConfig = _plain(
        "data/01_raw/00_korean/c4_korean", "wiki", help="Korean C4 web text.", flag="--c4-korean"
    )
    mcq: FileSourceConfig = _file(
        "data/01_raw/02_kor_med_test/train.jsonl",
        "KorMedMCQA questions (train split only: the test split is for evaluation and never enters the corpus).",
        "--mcq",
    )
    medical_dict: FileSourceConfig = _file(
        "data/02_refined/01_medical_dict.json", "Medical dictionary.", "--medical-dict"
    )
    char_dict: FileSourceConfig = _file(
        "data/02_refined/02_char_dict.json", "Medical symbol dictionary.", "--char-dict"
    )
    plain_docs: int = opt(
        100_000, "Plain-text documents sampled across the plain sources (after filtering).", bounds=(0, None)
    )
    all: bool = opt(
        False,
        "Use every plain document that passes the filters instead of sampling plain_docs.",
        flags=("--all/--sample",),
    )
    plain_mix: Literal["proportional", "weights"] = opt(
        "proportional",
        "How plain_docs is split across plain sources: in proportion to their row counts, or by their `weight`.",
    )
    min_chars: int = opt(100, "Drop cleaned plain documents shorter than this many characters.", bounds=(0, None))
    min_hangul_ratio: float = opt(
        0.1, "Drop cleaned plain documents whose Hangul characters are below this share of non-space characters.",
        bounds=(0, 1),
    )
    mcq_style: Literal["korean_only", "with_english"] = opt(
        "korean_only", "Options in `선택지:`: Korean names only (seed 001) or with their English (seed 000)."
    )
    char_particles: Literal["seed", "rule"] = opt(
        "seed", "Symbol sentences: the seeds' fixed 는/를, or particles by the documented rule."
    )
    val_fraction: float = opt(
        0.02, "Held-out validation documents, as a share of the plain documents used (0 disables).",
        bounds=(0, 1, "[)"),
    )
    val_min_chars: int = opt(300, "Validation documents have at least this many characters.", bounds=(0, None))
    val_max_docs: int = opt(5000, "At most this many validation documents.", bounds=(0, None))
    dict_holdout: float = opt(
        0.2,
        "Share of each dictionary's entries (medical, symbol; seeded, rounded down) held out of every training\n"
        "stage: left out of the corpus, and of <out>.medical_dict.json / <out>.char_dict.json (the trained\n"
        "entries the pipeline's SFT, loop and tokenizer stages read); recorded in <out>.dict_heldout.json for\n"
        "`kormed eval knowledge --heldout` (the control). 0 holds nothing out.",
        bounds=(0, 1, "[)"),
    )
    seed: int = seed_opt(
        42, "Random seed for sampling, validation split and shuffle (same inputs + seed = same bytes)."
    )
    num_proc: int = opt(0, "Worker processes for cleaning; 0 = all CPU cores.", bounds=(0, None))
    batch_size: int = opt(256, "Documents per cleaning task sent to a worker.", bounds=(1, None))
    shuffle_bucket_mb: int = opt(
        256, "Memory bound of the shuffle: the corpus is shuffled in random buckets of about this many MB.",
        bounds=(1, None),
    )
    skip_bad: bool = opt(False, "Skip bad records (counted and reported) instead of stopping at the first one.")
    duplicates: Literal["drop", "keep"] = opt(
        "drop",
        "A medical record whose document repeats an earlier one of its source (a question or entry listed twice):\n"
        "drop it, or keep it (each copy x multiplier). Either way counted in the stats and the log.",
    )
    decontaminate: bool = opt(
        True,
        "Drop every document (plain text, MCQ, dictionary entry) that shares a decontam_ngram-word span with a\n"
        "question of decontam_eval_sets, or repeats one of its questions with the same answer; counted by source.",
    )
    decontam_eval_sets: list[str] = opt(
        list(EVAL_SETS),
        "KorMedMCQA JSONL files whose questions (and correct options) must not appear in the corpus; relative\n"
        "paths are under data_root; a file that does not exist is reported and skipped.",
    )
    decontam_ngram: int = opt(
        13, "Words (NFKC, case-folded, punctuation ignored) a shared span needs to mark a document.", bounds=(1, None)
    )
    decontam_min_words: int = opt(
        8,
        "A question shorter than decontam_ngram words (even with its answer) is matched whole if it has at least\n"
        "this many words, else not used: no document is dropped for sharing fewer words.",
        bounds=(1, None),
    )

    def validate(self) -> None:
        if self.decontam_min_words > self.decontam_ngram:
            raise KormedError("must be <= decontam_ngram", field="prepare.decontam_min_words")

    # -- resolved paths ---------------------------------------------------------------------------------------
    def root(self) -> Path:
        return Path(self.data_root).expanduser()

    def source_path(self, name: str) -> Path:
        """Absolute-or-root-relative path of source `name` (relative paths are under data_root)."""
        p = Path(getattr(self, name).path).expanduser()
        return p if p.is_absolute() else self.root() / p

    def input_paths(self) -> list[tuple[str, Path]]:
        """(flag, path) of every file or directory `kormed prepare` reads (the sources and the evaluation sets,
        read or not): the outputs must be none of them."""
        root = self.root()
        evals = [p if p.is_absolute() else root / p for p in (Path(x).expanduser() for x in self.decontam_eval_sets)]
        return ([(f"--{name.replace('_', '-')}", self.source_path(name)) for name in ALL_SOURCES]
                + [("--decontam-eval-sets", p) for p in evals])

    def out_path(self) -> Path:
        p = Path(self.out or DEFAULT_OUT).expanduser()
        return p if p.is_absolute() else self.root() / p

    def val_path(self) -> Path:
        out = self.out_path()
        return out.with_name(out.name.removesuffix(".jsonl") + ".val.jsonl")

    def stats_path(self) -> Path:
        out = self.out_path()
        return out.with_name(out.name.removesuffix(".jsonl") + ".stats.json")

    def dict_subset_path(self, name: str) -> Path:
        """The trained entries of dictionary `name` (medical_dict, char_dict): `<out>.<name>.json`."""
        out = self.out_path()
        return out.with_name(out.name.removesuffix(".jsonl") + f".{name}.json")

    def heldout_path(self) -> Path:
        """The record of the dictionary entries held out of training: `<out>.dict_heldout.json`."""
        out = self.out_path()
        return out.with_name(out.name.removesuffix(".jsonl") + ".dict_heldout.json")

    def output_paths(self) -> list[Path]:
        """Every file `kormed prepare` writes."""
        return [self.out_path(), self.val_path(), self.stats_path(), *map(self.dict_subset_path, DICT_SOURCES),
                self.heldout_path()]


def presets_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "presets"


def load_preset(name: str, section: str = "prepare") -> dict[str, Any]:
    """The `section` mapping of a preset: a bundled name (`seed-000`) or a YAML file path."""
    p = Path(name)
    if not p.suffix:
        p = presets_dir() / f"{name}.yaml"
        if not p.is_file():
            known = sorted(f.stem for f in presets_dir().glob("*.yaml"))
            raise KormedError(f"unknown preset '{name}' (bundled: {', '.join(known) or 'none'})")
    data = read_yaml(p)
    values = data.get(section) or {}
    if not isinstance(values, dict):
        raise KormedError("section must be a mapping", path=p, field=section)
    return values
