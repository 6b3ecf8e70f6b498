"""`kormed bench quality`: does each training stage make the model better? Base vs CPT (with and without the
tokenizer extension) vs SFT vs the loop, on held-out general Korean, held-out medical Korean and KorMedMCQA.

Arms (each in its own Python process, in this order; a later arm starts from an earlier arm's adapter, as the
pipeline chains its stages):

- `base`: the model as it is (no training).
- `cpt`: :func:`kormed.train.cpt.run_cpt` from the base model, base tokenizer.
- `cpt_extended`: :func:`kormed.tokenizer.extend.extend_tokenizer` on the CPT training text (+ the medical
  dictionary; 100 entries unless `--set tokenizer.max_new_tokens=N`), then `run_cpt` with that tokenizer (the new
  rows trained as the `tokenizer` section says).
- `sft`: :func:`kormed.train.sft.run_sft` (the staged steps) from the `cpt` adapter by default, as the default
  pipeline does at this budget (its `tokenizer` stage sizes the extension to CPT's budget: none at 40,000
  characters); `--sft-from cpt_extended` chains from the extended-tokenizer CPT arm instead.
- `loop`: :func:`kormed.train.loop.run_loop` from the CPT arm SFT would continue (`--loop-from sft`: from the SFT
  adapter): dictionary rounds in three surface forms with the training text mixed in (LOOP_ROUNDS, the measured
  recipe); its best round is chosen on DEV knowledge; the row measures the chosen adapter like every other arm.
- variants (`--variant NAME:SECTION.KEY=VALUE,...`, `--variants FILE.yaml`): the arms again with overrides on top,
  rows `<arm>@NAME`; every arm is keyed by its settings (data files by content) and its upstream arm's key
  (:func:`arm_key`), and an arm whose key was already run is reused (`reused_from`), not run again.

Without `--arms` the bench runs base, cpt and loop (DEFAULT_ARMS: what 45 minutes hold on a 2-core CPU).

Data (written under the work directory; the same seed gives the same files; docs/commands/bench-quality.md):

- General Korean: `--korean-text DIR` holding `train.jsonl`, `dev.jsonl`, `test.jsonl` (`{"text": ...}` per line).
  The default is `scripts/fetch_assembly_bills.py`'s directory: National Assembly bills, train = 20th-21st
  Assembly, held out = 22nd (decontaminated against train), general = every committee but Health & Welfare.
  Without it (or when the directory is missing), the bundled sample's general documents (Namu Wiki pages that are
  not medical, Wikipedia and C4 samples, cleaned by `kormed prepare`'s cleaners) are split by sha256 of the text:
  2 in 8 test, 1 in 8 dev, the rest train. `--eval-chars` caps each held-out test text (whole documents, in file
  order); a general training text over TRAIN_POOL_CHARS keeps its first documents by sha256.
- Medical Korean: with the bills directory, `medical_law_test.jsonl` (22nd-Assembly bills amending medical laws;
  `medical_law_train.jsonl` joins the training text) is `medical`, and the bundled sample's medical Namu Wiki pages
  (main namespace, a category naming a disease, infection, drug, first aid, hormone, injury or medicine; authored
  for kormed) are `medical_authored`; without it those pages are `medical`. Ordered by sha256 of the title, every
  third page is held out, the others join the training text. No arm trains on a held-out text.
- Dictionaries: a seeded `--dict-holdout` (20 %) of the bundled medical and symbol dictionaries' entries is held
  out of every arm (`kormed prepare`'s rule, :func:`kormed.prepare.corpus.hold_out_entries`; `dict_heldout.json`);
  SFT, the loop and the tokenizer read the trained entries (`medical_dict.json`, `char_dict.json`).
- CPT training text (:func:`cpt_corpus`): exactly `--cpt-chars` characters, `--medical-share` of them medical (the
  trained entries rendered as `kormed prepare` renders them, x5, then medical train documents in seeded passes),
  the rest general train documents in seeded passes (a new order each pass, the last document cut), in a seeded
  order, trained for one epoch: both CPT arms read the same characters whatever their tokenizer. SFT's raw source
  and the tokenizer extension use the training documents once (`train_text.jsonl`); CPT validation and SFT's
  raw-perplexity checks use the general dev split.
- KorMedMCQA: the bundled questions. Train trains SFT and the loop, the bundled DEV split is what the loop chooses
  its best round on, and the bundled TEST questions (all of them) are only ever measured, never selected on.

Measures of each arm (its final adapter reloaded from disk, `--dtype` precision):

- `bits_per_char_<set>`: total next-token NLL (nats) over the held-out texts, each scored alone (`<bos>` + its
  tokens in `--eval-max-length` windows, no end-of-text target) / ln 2 / the texts' characters; per character,
  not per token, so arms with different tokenizers compare. `hangul_bits_per_char_<set>`: the Hangul syllables'
  share of it per Hangul syllable.
- `accuracy` (harness loglik, 0-shot, :func:`kormed.eval.kormedmcqa.evaluate_kormedmcqa`) with `accuracy_ci95`
  (Wilson, :func:`kormed.eval.kormedmcqa.wilson_interval`); `accuracy_cyclic` / `accuracy_chat_loglik` and their
  `mean_margin_*`: under the 5 cyclic option rotations, in the harness and the SFT chat format.
- `knowledge_trained` / `knowledge_held_out` (+ `_ci95`, `_mean_margin`): `kormed eval knowledge` on the TEST
  forms for the trained and the held-out entries (the control), `--knowledge-per-group` questions per form and
  group (:func:`evaluate_arm_knowledge`).
- `paired_vs_base`: each arm minus the base on the same documents and questions (and knowledge questions),
  bootstrap 95 % intervals.
- `training_chars` / `training_tokens`: characters (decoded, special tokens left out) and real tokens of the
  input of every training forward pass of the arm, counted by a forward hook, cumulative through its chain
  (sft includes its CPT arm; loop includes sft). SFT counts the prompts it reads, not only the answers learned.

Stage settings: the stages' own defaults, with the bench's budgets (`--cpt-chars`, `--sft-steps`,
`--loop-rounds`, `--loop-steps`, `--batch-size`, `--max-length`, `--lr`, `--seed`, `--dtype`) on top and then
`--set SECTION.KEY=VALUE` / `--overrides FILE.yaml` (sections `cpt` (both CPT arms), `cpt_extended` (that arm
only), `tokenizer`, `sft`, `loop`), e.g. `--set cpt.lora.r=8 --set tokenizer.max_new_tokens=100`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from kormed.bench.worker import run_worker
from kormed.config import _deep_update, build, check_device, merge, read_yaml
from kormed.errors import KormedError
from kormed.eval.config import DEFAULT_KNOWLEDGE_SCORING, KNOWLEDGE_SCORING_HELP, KNOWLEDGE_SCORINGS
from kormed.eval.kormedmcqa import evaluate_kormedmcqa, load_questions, wilson_interval
from kormed.eval.perplexity import score_documents, summarise_documents
from kormed.io import (
    Log,
    YamlSyntaxError,
    check_output_path,
    iter_jsonl,
    load_yaml,
    optional_file,
    read_json,
    read_texts,
    write_jsonl,
)
from kormed.models import load_tokenizer
from kormed.prepare.clean import FilterSpec, clean_document
from kormed.sample_data import sample_paths
from kormed.tokenizer.config import TokenizerConfig
from kormed.train.config import CPTConfig
from kormed.train.sft_config import LoopConfig, SFTConfig

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

ARMS = ("base", "cpt", "cpt_extended", "sft", "loop")
# what `kormed bench quality` runs without --arms: the three arms the 45-minute budget holds on a 2-core CPU (base
# ~4, CPT ~12, the loop from CPT ~28 idle minutes); sft and cpt_extended are added with --arms
DEFAULT_ARMS = ("base", "cpt", "loop")
CPT_ARMS = ("cpt", "cpt_extended")
OVERRIDE_SECTIONS = ("cpt", "cpt_extended", "tokenizer", "sft", "loop")
# options the bench sets from its own data and chain: overriding them would measure something else
WIRED_KEYS = {"data", "val", "model", "output", "tokenizer_path", "adapter", "from_adapter", "mcq", "dict",
              "char_dict", "raw", "raw_val", "eval_data", "dev_data", "corpus", "out", "dict_heldout",
              "knowledge_scoring"}
MEDICAL_CATEGORY = re.compile(r"질환|감염병|약물|응급처치|의학|호르몬|외상")
CATEGORY_LINK = re.compile(r"\[\[분류:([^\]|#]+)")
EVAL_EOD_TOKEN = "<end_of_turn>"  # CPT's end-of-document token (cpt.eod_token's default)
DEFAULT_OUTPUT = Path("benchmarks/results/quality_cpu.json")
DEFAULT_KOREAN_TEXT = "~/.cache/kormed/assembly_bills"  # scripts/fetch_assembly_bills.py
TRAIN_POOL_CHARS = 2_000_000  # general training text kept (sha256 order) when a fetched set is larger
HELDOUT_SETS = ("general", "medical", "medical_authored")
LOOP_FROM = ("sft", "cpt")
KNOWLEDGE_GROUPS = ("trained", "held_out")


@dataclasses.dataclass
class Budget:
    """The bench's budgets and shared settings (recorded in every row)."""

    # the measured recipe (benchmarks/README.md, 2026-12-07): 100,000 characters, 60 % medical (the dictionary renders
    # x5 then medical-law bills) lowered held-out medical bits/char by 9.5 % with an interval excluding zero; 29
    # optimizer steps of 4 x 512, ~6 idle minutes here (500,000 would be ~30 of the bench's 45)
    cpt_chars: int = 100_000
    medical_share: float = 0.6  # of cpt_chars: dictionary renders x5 (~50,000), then medical-law bills + pages
    sft_steps: int = 6
    # the measured loop (benchmarks/README.md, "The loop at a lower learning rate", 2026-12-07): dictionary rounds
    # of 308 steps x 4 (about two passes over the trained entries in three surface forms, 40 % raw text by learned
    # tokens) at lr 1e-4, from CPT; 3e-4 reached the same knowledge per pass with 2-3x the perplexity damage
    loop_rounds: int = 4
    loop_steps: int = 308
    loop_lr: float = 1e-4
    batch_size: int = 4
    max_length: int = 512
    lr: float = 2e-4
    eval_max_length: int = 512
    eval_chars: int = 30_000
    eval_batch_size: int = 4
    seed: int = 42
    dtype: str = "auto"
    device: str = "auto"
    sft_from: str = "cpt"
    loop_from: str = "cpt"  # cpt (the measured recipe) | sft (after the SFT arm's steps)
    dict_holdout: float = 0.2  # of each dictionary's entries, seeded: never trained, the knowledge control
    knowledge_per_group: int = 10  # knowledge questions per form and entry group (seeded), ~1 min an arm here
    knowledge_scoring: str = DEFAULT_KNOWLEDGE_SCORING  # letter | cloze: the bench's columns and the loop's selection

    def validate(self) -> None:
        for name in ("cpt_chars", "sft_steps", "loop_rounds", "loop_steps", "batch_size", "eval_chars",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise KormedError("must be at least 1", field=name)
        if self.max_length < 16 or self.eval_max_length < 16:
            raise KormedError("max_length and eval_max_length must be at least 16", field="max_length")
        for name in ("lr", "loop_lr"):
            if not getattr(self, name) > 0:
                raise KormedError("must be positive", field=name)
        if self.sft_from not in CPT_ARMS:
            raise KormedError(f"must be one of {', '.join(CPT_ARMS)}", field="sft_from")
        if self.loop_from not in LOOP_FROM:
            raise KormedError(f"must be one of {', '.join(LOOP_FROM)}", field="loop_from")
        if not 0.0 <= self.medical_share <= 1.0:
            raise KormedError("must be between 0 and 1", field="medical_share")
        if not 0.0 <= self.dict_holdout < 1.0:
            raise KormedError("must be at least 0 and below 1", field="dict_holdout")
        if self.knowledge_per_group < 1:
            raise KormedError("must be at least 1", field="knowledge_per_group")
        if self.knowledge_scoring not in KNOWLEDGE_SCORINGS:
            raise KormedError(f"must be one of {', '.join(KNOWLEDGE_SCORINGS)}", field="knowledge_scoring")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise KormedError("must be auto, float32 or bfloat16", field="dtype")


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_texts(path: Path, texts: list[str]) -> Path:

    write_jsonl(path, ({"text": t} for t in texts))
    return path


def sample_documents() -> tuple[list[str], list[tuple[str, str]]]:
    """(general texts, medical (title, text) pairs) of the bundled sample, cleaned by `kormed prepare`'s cleaners
    and filters; a Namu Wiki page is medical when one of its categories names a disease, drug, ... (see
    MEDICAL_CATEGORY)."""
    from datasets import load_from_disk


    paths = sample_paths()
    general: list[str] = []
    medical: list[tuple[str, str]] = []
    namu = load_from_disk(str(paths["namu_wiki"]))["train"]
    spec = FilterSpec(cleaner="namumark", main_namespace_only=True)
    for page in namu:
        text, _ = clean_document(page["text"], page["namespace"], spec)
        if text is None:
            continue
        if any(MEDICAL_CATEGORY.search(c) for c in CATEGORY_LINK.findall(page["text"])):
            medical.append((page["title"], text))
        else:
            general.append(text)
    for name in ("wikipedia_korean", "c4_korean"):
        for doc in load_from_disk(str(paths[name])):
            text, _ = clean_document(doc["text"], None, FilterSpec(cleaner="wiki"))
            if text is not None:
                general.append(text)
    return general, medical


def split_general(texts: list[str]) -> dict[str, list[str]]:
    """Unique texts ordered by sha256: positions 0-1 of every 8 test, 2 dev, the rest train."""
    parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for i, text in enumerate(sorted(set(texts), key=_sha)):
        parts["test" if i % 8 < 2 else "dev" if i % 8 == 2 else "train"].append(text)
    return parts


def split_medical(pages: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(train, held-out) medical texts: pages ordered by sha256 of the title, every third held out."""
    train: list[str] = []
    test: list[str] = []
    for i, (_, text) in enumerate(sorted(pages, key=lambda p: _sha(p[0]))):
        (test if i % 3 == 0 else train).append(text)
    return train, test


def read_korean_text(directory: Path) -> dict[str, list[str]]:
    """train/dev/test texts of a `scripts/fetch_korean_text.py` directory."""

    return {part: read_texts(directory / f"{part}.jsonl", what=f"general Korean {part} text")
            for part in ("train", "dev", "test")}


def cap_chars(texts: list[str], limit: int) -> list[str]:
    """The first whole texts until `limit` characters are reached (at least one)."""
    out: list[str] = []
    total = 0
    for text in texts:
        if out and total >= limit:
            break
        out.append(text)
        total += len(text)
    return out


def budget_texts(texts: list[str], chars: int, seed: int) -> list[str]:
    """Exactly `chars` characters of `texts`: seeded passes over them (a new order each pass), the last cut."""
    if not texts:
        raise KormedError("no training text for CPT")
    out: list[str] = []
    left = chars
    rounds = 0
    while left > 0:
        for text in sorted(texts, key=lambda t: _sha(f"{seed}:{rounds}:{t}")):
            piece = text[:left]
            out.append(piece)
            left -= len(piece)
            if left <= 0:
                break
        rounds += 1
    return out


def prepare_data(work: Path, *, korean_text: Path | None, budget: Budget, log: Log = print) -> dict[str, Any]:
    """Write every data file of the bench under `work/data` and return their paths and sizes."""

    data = work / "data"
    (data / "mcq").mkdir(parents=True, exist_ok=True)
    general_docs, medical_pages = sample_documents()
    medical_train, medical_test = split_medical(medical_pages)
    authored_test: list[str] = []
    medical_source = "bundled sample: medical Namu Wiki pages (authored sample)"
    if korean_text is not None and (korean_text / "medical_law_test.jsonl").is_file():
        # scripts/fetch_assembly_bills.py: held-out medical = 22nd-Assembly bills amending medical laws; the
        # authored pages are reported beside them (medical_authored), and the 20th-21st bills join the training text
        authored_test = medical_test
        medical_test = read_texts(korean_text / "medical_law_test.jsonl", what="held-out medical-law bills")
        medical_test = cap_chars(medical_test, budget.eval_chars)
        medical_train = medical_train + read_texts(korean_text / "medical_law_train.jsonl",
                                                   what="medical-law bills (training)")
        medical_source = f"{korean_text}/medical_law_test.jsonl (22nd-Assembly bills amending medical laws)"
    if korean_text is not None and optional_file(korean_text / "train.jsonl", "general Korean train text"):
        general = read_korean_text(korean_text)
        general_source = str(korean_text)
    else:
        if korean_text is not None:
            log(f"[kormed] bench quality: {korean_text} has no train.jsonl (run scripts/fetch_korean_text.py); "
                "using the bundled sample's general text")
        general = split_general(general_docs)
        general_source = "bundled sample (general documents split by sha256)"
    general_train = general["train"]
    if sum(len(t) for t in general_train) > TRAIN_POOL_CHARS:  # e.g. 23 M characters of bills: a seeded share
        general_train = cap_chars(sorted(general_train, key=_sha), TRAIN_POOL_CHARS)
    train_text = general_train + medical_train
    dictionaries = hold_out_dictionaries(data, budget, log)
    pools = {"general": general_train, "medical": medical_train, "renders": dictionaries.pop("renders")}
    cpt_path, cpt_info = write_cpt_corpus(data, pools, budget, log)
    paths = {
        "train_text": _write_texts(data / "train_text.jsonl", train_text),
        "cpt_train": cpt_path,
        "val": _write_texts(data / "val.jsonl", general["dev"]),
        "general_test": _write_texts(data / "general_test.jsonl", cap_chars(general["test"], budget.eval_chars)),
        "medical_test": _write_texts(data / "medical_test.jsonl", medical_test),
    }
    if authored_test:
        paths["medical_authored_test"] = _write_texts(data / "medical_authored_test.jsonl", authored_test)
    sample = sample_paths()
    # KorMedMCQA-format questions: the bundled train (SFT, loop), dev (the loop's selection) and test (reported only)
    for name in ("train", "dev", "test"):
        shutil.copyfile(sample[f"mcq_{name}"], data / "mcq" / f"{name}.jsonl")
        paths[f"mcq_{name}"] = data / "mcq" / f"{name}.jsonl"
    paths.update(dictionaries.pop("paths"))  # the trained entries (SFT, the loop, the tokenizer) and the held-out

    def size(path: Path) -> dict[str, int]:
        texts = [rec["text"] for _, rec in iter_jsonl(path)]
        return {"documents": len(texts), "characters": sum(len(t) for t in texts)}

    info = {"general_source": general_source, "medical_source": medical_source,
            **{name: size(paths[name]) for name in ("train_text", "cpt_train", "val", "general_test",
                                                     "medical_test", "medical_authored_test") if name in paths},
            "mcq": {name: sum(1 for ln in paths[f"mcq_{name}"].read_text(encoding="utf-8").splitlines()
                              if ln.strip()) for name in ("train", "dev", "test")},
            "cpt_corpus": cpt_info, "dictionaries": dictionaries}
    return {"paths": {k: str(v) for k, v in paths.items()}, "info": info, "pools": pools}


def hold_out_dictionaries(data: Path, budget: Budget, log: Log = print) -> dict[str, Any]:
    """Hold out a seeded `budget.dict_holdout` of the bundled medical and symbol dictionaries' entries with
    `kormed prepare`'s rule (:func:`kormed.prepare.corpus.hold_out_entries`), write the trained entries
    (`medical_dict.json`, `char_dict.json`: what SFT, the loop and the tokenizer read) and the held-out record
    (`dict_heldout.json`, `kormed prepare`'s format: never trained, the knowledge control), and render the trained
    entries as `kormed prepare` does (:func:`kormed.prepare.render.render_dictionary`, distinct sentences)."""
    from kormed.io import write_json
    from kormed.prepare.config import PrepareConfig
    from kormed.prepare.corpus import hold_out_entries
    from kormed.prepare.render import render_dictionary
    from kormed.records import read_dictionary

    sample = sample_paths()
    particles = PrepareConfig().char_particles
    record: dict[str, Any] = {"fraction": budget.dict_holdout, "seed": budget.seed}
    paths: dict[str, Path] = {}
    renders: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for source, key in (("medical_dict", "dict"), ("char_dict", "char_dict")):
        entries, _ = read_dictionary(sample[source])
        trained, held = hold_out_entries(entries, budget.dict_holdout, budget.seed)
        paths[key] = data / f"{source}.json"
        write_json(paths[key], [{"term": e.term, "definition": e.definition} for e in trained])
        record[source] = [{"term": e.term, "definition": e.definition} for e in held]
        renders += render_dictionary(source, trained, particles)
        counts[source] = {"trained": len(trained), "held_out": len(held)}
        log(f"[kormed] bench quality: {source}: {len(held)} of {len(entries)} entries held out of every arm")
    paths["dict_heldout"] = data / "dict_heldout.json"
    write_json(paths["dict_heldout"], record)
    return {"paths": paths, "renders": list(dict.fromkeys(renders)), "fraction": budget.dict_holdout,
            "entries": counts}


def cpt_corpus(pools: dict[str, list[str]], *, chars: int, medical_share: float, seed: int,
               copies: int) -> tuple[list[str], dict[str, Any]]:
    """Exactly `chars` characters of CPT text in a seeded order: `medical_share` of them medical (the dictionary
    renders `copies` times each, as `kormed prepare` writes them, then the medical texts in seeded passes), the
    rest general text in seeded passes. A medical share too small for every render copy keeps the first copies."""
    medical_chars = round(chars * medical_share)
    render_total = copies * sum(len(t) for t in pools["renders"])
    render_chars = min(medical_chars, render_total)
    medical = budget_texts(pools["renders"], render_chars, seed) if render_chars else []
    if medical_chars > render_chars:
        if not pools["medical"]:
            raise KormedError("no medical training text for the medical share of CPT", field="medical_share")
        medical += budget_texts(pools["medical"], medical_chars - render_chars, seed)
    general = budget_texts(pools["general"], chars - medical_chars, seed) if chars > medical_chars else []
    texts = general + medical
    order = sorted(range(len(texts)), key=lambda i: _sha(f"{seed}:cpt-mix:{i}:{texts[i]}"))
    info = {"characters": chars, "medical_share": medical_share, "general_characters": chars - medical_chars,
            "medical_characters": medical_chars, "dictionary_render_characters": render_chars,
            "dictionary_renders": len(pools["renders"]), "dictionary_render_copies": copies,
            "dictionary_render_copies_complete": render_chars // max(1, sum(len(t) for t in pools["renders"]))}
    return [texts[i] for i in order], info


def cpt_corpus_name(budget: Budget, main: Budget) -> str:
    """The CPT corpus file of a budget: `cpt_train.jsonl` for the main one, else named by what makes it."""
    if (budget.cpt_chars, budget.medical_share) == (main.cpt_chars, main.medical_share):
        return "cpt_train.jsonl"
    return f"cpt_train-{budget.cpt_chars}-{budget.medical_share:g}.jsonl"


def write_cpt_corpus(data: Path, pools: dict[str, list[str]], budget: Budget, log: Log = print,
                     name: str = "cpt_train.jsonl") -> tuple[Path, dict[str, Any]]:
    """Write :func:`cpt_corpus` of `budget` as `data/name`; returns (path, its composition)."""
    from kormed.prepare.config import FileSourceConfig

    copies = FileSourceConfig().multiplier  # `kormed prepare`'s medical x5 (the seeds' figure)
    texts, info = cpt_corpus(pools, chars=budget.cpt_chars, medical_share=budget.medical_share, seed=budget.seed,
                             copies=copies)
    if info["dictionary_render_characters"] < copies * sum(len(t) for t in pools["renders"]):
        log(f"[kormed] bench quality: the medical share of CPT ({info['medical_characters']:,} characters) holds "
            f"only {info['dictionary_render_characters']:,} characters of the dictionary renders x{copies}")
    return _write_texts(data / name, texts), info


# --------------------------------------------------------------------------------------------------------------
# stage configurations
# --------------------------------------------------------------------------------------------------------------


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`SECTION.KEY[.KEY]=VALUE` items -> {section: nested mapping}; values are read as YAML scalars/lists."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            raise KormedError(f"expected SECTION.KEY=VALUE, got {item!r}", field="--set")
        try:
            value = load_yaml(raw, where="--set") if raw.strip() else None
        except YamlSyntaxError:
            value = raw
        node = out.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def read_overrides(path: str | None, items: list[str]) -> dict[str, dict[str, Any]]:
    """The override sections of `--overrides FILE.yaml`, then `--set` items on top; unknown sections and the
    keys the bench wires itself are refused."""

    merged: dict[str, dict[str, Any]] = {}
    sources = ([(read_yaml(path), path)] if path else []) + [(parse_set(items), None)]
    for values, where in sources:
        check_sections(values, where)
        for section, body in values.items():
            _deep_update(merged.setdefault(section, {}), body)
    return merged


def check_sections(values: dict[str, Any], where: str | None, prefix: str = "") -> None:
    """Refuse unknown override sections, a section that is not a mapping, and the keys the bench wires itself."""
    for section, body in values.items():
        if section not in OVERRIDE_SECTIONS:
            raise KormedError(f"{prefix}unknown section '{section}' (known: {', '.join(OVERRIDE_SECTIONS)})",
                              path=where, field=str(section))
        if not isinstance(body, dict):
            raise KormedError(f"{prefix}expected a mapping of options", path=where, field=str(section))
        for key in body:
            if str(key).replace("-", "_") in WIRED_KEYS:
                raise KormedError(f"{prefix}is set by the bench (its data and chain); it cannot be overridden",
                                  path=where, field=f"{section}.{key}")


# --------------------------------------------------------------------------------------------------------------
# variants: extra chains with overrides on top of the main ones
# --------------------------------------------------------------------------------------------------------------

# the bench budgets a variant may change (training only: every arm is measured on the same held-out data)
VARIANT_BUDGET_KEYS = ("cpt_chars", "medical_share", "sft_steps", "loop_rounds", "loop_steps", "batch_size",
                       "max_length", "lr", "loop_lr", "sft_from", "loop_from")
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass
class Variant:
    """A named variant: stage overrides (sections as `--set`) and bench budgets, on top of the main run's."""

    name: str
    overrides: dict[str, dict[str, Any]]
    budget: dict[str, Any]


def _split_top(body: str) -> list[str]:
    """`body` split at the commas outside brackets (`a=[x,y],b=1` -> `a=[x,y]`, `b=1`)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _budget_value(name: str, key: str, raw: Any) -> Any:
    """A variant's budget value as its Budget field's type."""
    if key not in VARIANT_BUDGET_KEYS:
        raise KormedError(f"--variant {name}: '{key}' is not a budget a variant may change (known: "
                          f"{', '.join(VARIANT_BUDGET_KEYS)})", field="--variant")
    kind = type(getattr(Budget(), key))
    try:
        if kind is int and (isinstance(raw, bool) or float(raw) != int(float(raw))):
            raise ValueError
        return int(float(raw)) if kind is int else float(raw) if kind is float else str(raw)
    except (TypeError, ValueError):
        raise KormedError(f"--variant {name}: {key} expects a {kind.__name__}, got {raw!r}",
                          field="--variant") from None


def parse_variant(item: str) -> Variant:
    """`NAME:SECTION.KEY=VALUE[,SECTION.KEY=VALUE...]` (a value may be a bracketed list; `--BUDGET=VALUE` items
    change a bench budget, e.g. `--medical-share=0.5`) -> a Variant; each error one line naming the item."""
    name, sep, body = item.partition(":")
    name = name.strip()
    if not sep or not VARIANT_NAME.fullmatch(name):
        raise KormedError(f"expected NAME:SECTION.KEY=VALUE[,...] (NAME of letters, digits, _ . -), got {item!r}",
                          field="--variant")
    pieces = _split_top(body)
    if not pieces:
        raise KormedError(f"--variant {name}: sets nothing (give SECTION.KEY=VALUE or --BUDGET=VALUE items)",
                          field="--variant")
    budget: dict[str, Any] = {}
    stage: list[str] = []
    for piece in pieces:
        if piece.startswith("--"):
            key, eq, raw = piece[2:].partition("=")
            if not eq or not raw.strip():
                raise KormedError(f"--variant {name}: expected --BUDGET=VALUE, got {piece!r}", field="--variant")
            budget[key.strip().replace("-", "_")] = _budget_value(name, key.strip().replace("-", "_"), raw.strip())
        else:
            stage.append(piece)
    try:
        overrides = read_overrides(None, stage)
    except KormedError as err:
        raise KormedError(f"--variant {name}: {err.message}", field=err.field) from None
    return Variant(name, overrides, budget)


def read_variants(items: list[str], path: str | None = None) -> list[Variant]:
    """The `--variant` items, then the variants of `--variants FILE.yaml` (`NAME: {budget: {...}, SECTION:
    {...}}`); names must be distinct."""
    variants = [parse_variant(i) for i in items]
    if path:
        values = read_yaml(path)
        for name, body in values.items():
            name = str(name)
            if not VARIANT_NAME.fullmatch(name) or not isinstance(body, dict) or not body:
                raise KormedError("expected a variant name of letters, digits, _ . - mapping to its sections",
                                  path=path, field=name)
            body = dict(body)
            raw_budget = body.pop("budget", None) or {}
            if not isinstance(raw_budget, dict):
                raise KormedError("expected a mapping of budgets", path=path, field=f"{name}.budget")
            check_sections(body, path, prefix=f"variant {name}: ")
            try:
                budget = {str(k).replace("-", "_"): _budget_value(name, str(k).replace("-", "_"), v)
                          for k, v in raw_budget.items()}
            except KormedError as err:
                raise KormedError(err.message, path=path, field=f"{name}.budget") from None
            variants.append(Variant(name, body, budget))
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise KormedError(f"variant '{v.name}' is given twice", field="--variant")
        seen.add(v.name)
    return variants


ARM_KEY_IGNORED = {"output", "out", "tokenizer_path", "cache_dir"}  # where an arm writes, not what it trains


def _content(value: Any) -> Any:
    """`value` with its output locations left out and each data file replaced by its content's sha256."""
    from kormed.io import file_sha256

    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items() if k not in ARM_KEY_IGNORED}
    if isinstance(value, list):
        return [_content(v) for v in value]
    if isinstance(value, str) and value and Path(value).is_file():
        return f"sha256:{file_sha256(value)}"
    return value


def arm_settings(arm: str, cfgs: dict[str, Any]) -> dict[str, Any]:
    """The stage settings an arm trains with (as in its row)."""
    if arm in CPT_ARMS:
        return {"cpt": cfgs[arm]} | ({"tokenizer": cfgs["tokenizer"]} if arm == "cpt_extended" else {})
    return {arm: cfgs[arm]} if arm in ("sft", "loop") else {}


def arm_key(arm: str, cfgs: dict[str, Any], budget: Budget, parent_key: str | None) -> str:
    """What an arm's adapter depends on: its stage settings (data files by content), the seed and precision, and
    its upstream arm's key. Two arms with one key train the same adapter: the second is not run."""
    payload = {"arm": arm, "settings": _content(arm_settings(arm, cfgs)), "seed": budget.seed,
               "dtype": budget.dtype, "device": budget.device, "from": parent_key}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The loop the bench trains (measured 2026-12-07, benchmarks/README.md): dictionary rounds only, each entry in three
# surface forms (none an exam form), the bench's training text 40 % of the learned tokens against forgetting. The
# seeds' MCQ round is left out: it teaches a letter format the 270M model cannot use (its exam stays at chance).
# Each round runs --loop-steps steps (the stop condition is checked once, at the round's end).
LOOP_DICT_FORMS = ("meaning", "term", "english")
LOOP_ROUNDS = ({"name": "dict", "description": "train_01: dictionary SFT in three surface forms, 40 % raw text",
                "mix": {"dict": 0.6, "raw": 0.4}, "mode": "interleave", "stop": ["eval_dict_loss < 0.3"]},)


def stage_configs(paths: dict[str, str], budget: Budget, *, model: str | None, work: Path,
                  overrides: dict[str, dict[str, Any]], tag: str = "") -> dict[str, Any]:
    """The config dataclass of every stage: defaults, then the bench's settings, then `overrides`; each arm's
    outputs under `work/arms/<arm><tag>` (a variant's tag: `@NAME`)."""

    arms = work / "arms"
    never = 10**9  # no validation or checkpoint during the run: the bench measures the final adapter
    # no warm-up in any stage: at the bench's budgets (CPT ~100 optimizer steps, SFT and the loop a few) a linear
    # warm-up spends its first step at learning rate 0 and a share of the run below the learning rate measured
    train = {"batch_size": budget.batch_size, "grad_accum": 1, "lr": budget.lr, "warmup_ratio": 0.0,
             "seed": budget.seed, "device": budget.device, "dtype": budget.dtype, "report_to": [],
             "logging_steps": 5}
    cpt = {"data": paths["cpt_train"], "val": paths["val"], "model": model, "max_length": budget.max_length,
           "max_val_samples": 8, "cache_dir": str(work / "packed"),
           "train": {**train, "epochs": 1.0, "max_steps": None, "eval_steps": never,
                     "save_steps": never,
                     "eval_on_start": False, "load_best_at_end": False}}
    chat = {"mcq": paths["mcq_train"], "dict": paths["dict"], "char_dict": paths["char_dict"], "model": model,
            "max_length": budget.max_length, "val_max": 8, "raw_val_max_texts": 4}
    sft = {**chat, "raw": paths["train_text"], "raw_val": paths["val"], "max_steps_per_step": budget.sft_steps,
           "output": str(arms / f"sft{tag}"),
           "train": {**train, "eval_steps": budget.sft_steps, "save_steps": budget.sft_steps}}
    # the loop mixes the training text into its rounds (source `raw`, against forgetting: LOOP_ROUNDS) and
    # reports its perplexity on the general dev text
    loop = {**chat, "raw": paths["train_text"], "raw_val": paths["val"], "raw_val_max_texts": 4,
            "eval_data": paths["mcq_test"], "dev_data": paths["mcq_dev"], "max_rounds": budget.loop_rounds,
            "max_steps_per_round": budget.loop_steps, "eval_mode": "loglik", "output": str(arms / f"loop{tag}"),
            "templates": {"dict_forms": list(LOOP_DICT_FORMS)}, "rounds": [dict(r) for r in LOOP_ROUNDS],
            "train": {**train, "lr": budget.loop_lr, "eval_steps": budget.loop_steps,
                      "save_steps": budget.loop_steps}}
    # The loop selects on dev knowledge of the TRAINED dictionaries (paths["dict"], paths["char_dict"]); the
    # held-out record is only reported by it (and measured by evaluate_arm), never trained or selected on.
    loop["dict_heldout"] = paths["dict_heldout"]
    # the loop selects on knowledge scored as the bench's columns are
    loop["knowledge_scoring"] = sft["knowledge_scoring"] = budget.knowledge_scoring
    # a fixed extension of the published low-budget size (a null max_new_tokens would size it to the budget,
    # which gives none at these budgets, and the arm would measure nothing)
    tokenizer = {"model": model, "corpus": paths["train_text"], "dict": paths["dict"],
                 "out": str(arms / f"cpt_extended{tag}" / "tokenizer"), "max_new_tokens": 100,
                 "max_dict_tokens": 25}
    values = {"cpt": cpt, "tokenizer": tokenizer, "sft": sft, "loop": loop}
    for section in ("sft", "loop"):  # they continue an arm's adapter, whose LoRA settings win (model_setup)
        if "lora" in overrides.get(section, {}):
            raise KormedError(f"{section}.lora: SFT and the loop continue the CPT adapter and keep its LoRA "
                              "settings, so this would change nothing; set cpt.lora (and cpt_extended.lora)",
                              field=f"{section}.lora")
    for section in ("cpt", "tokenizer", "sft", "loop"):
        _deep_update(values[section], overrides.get(section, {}))
    classes = {"cpt": CPTConfig, "tokenizer": TokenizerConfig, "sft": SFTConfig, "loop": LoopConfig}
    configs = {s: merge(cls(), values[s], prefix=f"{s}.") for s, cls in classes.items()}
    ext = json.loads(json.dumps(values["cpt"]))
    _deep_update(ext, overrides.get("cpt_extended", {}))
    configs["cpt"] = dataclasses.replace(configs["cpt"], output=str(arms / f"cpt{tag}" / "adapter"))
    configs["cpt_extended"] = dataclasses.replace(
        merge(CPTConfig(), ext, prefix="cpt_extended."), output=str(arms / f"cpt_extended{tag}" / "adapter"),
        tokenizer_path=configs["tokenizer"].out)
    return configs


# --------------------------------------------------------------------------------------------------------------
# the arm process
# --------------------------------------------------------------------------------------------------------------


class TextMeter:
    """Counts the real tokens and the characters (decoded, special tokens left out) of every TRAINING forward
    pass: a global forward hook on the outermost transformers model called in a pass (PEFT wrappers call the
    model's own `forward`, so the outermost model *module* called may be its inner decoder; it is counted once)."""

    def __init__(self) -> None:
        self.tokenizer: Any = None
        self.tokens = 0
        self.chars = 0
        self._depth = 0
        self._handles: list[Any] = []

    def install(self) -> None:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from transformers import PreTrainedModel

        def enter(module: Any, args: Any) -> None:
            if isinstance(module, PreTrainedModel):
                self._depth += 1

        def leave(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            if not isinstance(module, PreTrainedModel):
                return
            self._depth -= 1
            if self._depth == 0 and module.training and self.tokenizer is not None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                self._count(ids, kwargs.get("attention_mask"))

        self._handles = [register_module_forward_pre_hook(enter),
                         register_module_forward_hook(leave, with_kwargs=True, always_call=True)]

    def _count(self, ids: Any, mask: Any) -> None:
        if ids is None or getattr(ids, "dim", lambda: 0)() != 2:
            return
        for row in range(ids.shape[0]):
            real = ids[row] if mask is None or mask.dim() != 2 else ids[row][mask[row].bool()]
            self.tokens += int(real.numel())
            self.chars += len(self.tokenizer.decode(real.tolist(), skip_special_tokens=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _tokenizer_of(model_dir: str, adapter: str | None) -> Any:
    """The tokenizer an adapter trains with: its own `tokenizer/` (an extended one), else the base model's."""

    if adapter and (Path(adapter) / "tokenizer" / "tokenizer_config.json").is_file():
        return load_tokenizer(str(Path(adapter) / "tokenizer"))
    return load_tokenizer(model_dir)


def _train_arm(task: dict[str, Any], meter: TextMeter, log: Log) -> tuple[str | None, dict[str, Any]]:
    """Train the arm; returns (its final adapter directory, what the training recorded)."""
    from kormed.models import load_tokenizer, resolve_model

    arm, cfgs = task["arm"], task["configs"]
    model_dir = resolve_model(task["model"], log=log)
    if arm in CPT_ARMS:
        from kormed.tokenizer.config import TokenizerConfig
        from kormed.train.config import CPTConfig
        from kormed.train.cpt import run_cpt

        cfg = build(CPTConfig, cfgs[arm])
        tok_cfg = None
        extension: dict[str, Any] = {}
        if arm == "cpt_extended":
            from kormed.tokenizer.extend import extend_tokenizer

            tok_cfg = build(TokenizerConfig, cfgs["tokenizer"])
            report = extend_tokenizer(tok_cfg, log=log)
            extension = {k: report[k] for k in ("method", "new_tokens", "base_vocab_size", "vocab_size")
                         if k in report}
        meter.tokenizer = load_tokenizer(cfg.tokenizer_path or model_dir)
        info = run_cpt(cfg, tokenizer_options=tok_cfg, log=log)
        return str(cfg.output), {"optimizer_steps": info.get("global_step"), "stop_reason": info.get("stop_reason"),
                                 "blocks": (info.get("data") or {}).get("train", {}).get("blocks"),
                                 **({"tokenizer_extension": extension} if extension else {})}
    if arm == "sft":
        from kormed.train.sft import run_sft
        from kormed.train.sft_config import SFTConfig

        cfg = build(SFTConfig, {**cfgs["sft"], "from_adapter": task["from_adapter"]})
        meter.tokenizer = _tokenizer_of(model_dir, task["from_adapter"])
        summary = run_sft(cfg, log=log)
        steps = summary.get("steps") or []
        return summary.get("final_adapter"), {
            "optimizer_steps": sum(int(s.get("global_step") or 0) for s in steps),
            "steps": [{"step": s.get("step"), "stop_reason": s.get("stop_reason"),
                       "optimizer_steps": s.get("global_step")} for s in steps],
            "finished": summary.get("finished")}
    if arm == "loop":
        from kormed.train.loop import run_loop
        from kormed.train.sft_config import LoopConfig

        cfg = build(LoopConfig, {**cfgs["loop"], "from_adapter": task["from_adapter"]})
        meter.tokenizer = _tokenizer_of(model_dir, task["from_adapter"])
        result = run_loop(cfg, log=log)
        rounds = result.get("rounds") or []
        return result.get("best_adapter"), {
            "optimizer_steps": sum(int(r.get("global_step") or 0) for r in rounds),
            "selected_on": result.get("selected_on"), "best_round": result.get("best_round"),
            "stop_reason": result.get("stop_reason"),
            "rounds": [{k: r.get(k) for k in ("round", "kind", "global_step", "dev_accuracy", "dev_correct",
                                              "dev_total", "test_accuracy") if k in r} for r in rounds]}
    return None, {}


def evaluate_arm(task: dict[str, Any], adapter: str | None, log: Log) -> dict[str, Any]:
    """Bits per character (each text alone, no end-of-text target) and Hangul bits per Hangul character on the
    held-out texts, and KorMedMCQA: harness loglik, loglik under the 5 cyclic option rotations and chat-loglik (the
    SFT format, rotated), of the base model + `adapter`. Per-document NLL and per-question margins are returned
    for the paired comparison with the base arm."""
    from kormed.models import load_model_and_tokenizer, pick_runtime

    ev = task["eval"]
    runtime = pick_runtime(task["budget"]["device"], task["budget"]["dtype"])
    model, tokenizer, runtime = load_model_and_tokenizer(task["model"], adapter=adapter, runtime=runtime, log=log)
    out: dict[str, Any] = {}
    for name in HELDOUT_SETS:
        if not ev.get(f"{name}_test"):
            continue
        texts = read_texts(ev[f"{name}_test"], what=f"held-out {name} text")
        docs = score_documents(model, tokenizer, texts, max_length=ev["max_length"], batch_size=ev["batch_size"],
                               progress=False, compute_dtype=runtime.compute_dtype)
        summary = summarise_documents(docs)
        out[f"bits_per_char_{name}"] = summary["bits_per_char"]
        out[f"hangul_bits_per_char_{name}"] = summary["hangul_bits_per_char"]
        out[f"heldout_{name}"] = {"texts": len(texts), "characters": summary["characters"],
                                  "hangul_characters": summary["hangul_characters"], "tokens": summary["tokens"],
                                  "nll_nats": summary["nll_nats"], "hangul_nll_nats": summary["hangul_nll_nats"]}
        out[f"documents_{name}"] = {"nll": [d["nll"] for d in docs], "hangul_nll": [d["hangul_nll"] for d in docs],
                                    "characters": [d["characters"] for d in docs],
                                    "hangul_characters": [d["hangul_characters"] for d in docs]}
        log(f"[kormed] {task['arm']}: {name} held-out {summary['bits_per_char']:.4f} bits/char, Hangul "
            f"{summary['hangul_bits_per_char']:.4f} ({summary['tokens']} tokens, {summary['characters']} characters)")
    questions = load_questions(ev["mcq_test"])
    kwargs = {"batch_size": ev["batch_size"], "progress": False, "compute_dtype": runtime.compute_dtype}
    res = evaluate_kormedmcqa(model, tokenizer, questions, mode="loglik", **kwargs)
    low, high = wilson_interval(res["correct"], res["total"])
    out.update(accuracy=res["accuracy"], accuracy_ci95=[low, high], correct=res["correct"], questions=res["total"],
               vocab_size=len(tokenizer), runtime={"device": runtime.device, "compute_dtype": runtime.compute_dtype})
    log(f"[kormed] {task['arm']}: KorMedMCQA loglik {res['correct']}/{res['total']} "
        f"(95% CI {low:.3f}-{high:.3f})")
    for key, mode in (("cyclic", "loglik"), ("chat_loglik", "chat-loglik")):
        res = evaluate_kormedmcqa(model, tokenizer, questions, mode=mode, permutations="cyclic", **kwargs)
        low, high = wilson_interval(res["correct"], res["total"])
        out[f"accuracy_{key}"] = res["accuracy"]
        out[f"accuracy_{key}_ci95"] = [low, high]
        out[f"mean_margin_{key}"] = res["mean_margin"]
        out[f"margins_{key}"] = [q["margin"] for q in res["questions"]]
        log(f"[kormed] {task['arm']}: KorMedMCQA {mode} (5 rotations) {res['correct']}/{res['total']}, mean margin "
            f"{res['mean_margin']:.4f}")
    if ev.get("dict_heldout"):
        out.update(evaluate_arm_knowledge(model, tokenizer, ev, runtime.compute_dtype, task["arm"], log))
    return out


def evaluate_arm_knowledge(model: Any, tokenizer: Any, ev: dict[str, Any], compute_dtype: str, arm: str,
                           log: Log) -> dict[str, Any]:
    """`kormed eval knowledge` on the TEST forms (:func:`kormed.eval.knowledge.evaluate_knowledge`): the trained
    entries and the held-out ones (the control), a seeded `knowledge_per_group` questions per form and group;
    per-question margins and keys are returned for the paired comparison with the base."""
    from kormed.eval.knowledge import evaluate_knowledge, knowledge_dictionaries

    # the question pool `kormed eval knowledge --heldout` builds: trained entries, then the held-out ones
    dictionaries, held_terms = knowledge_dictionaries(ev["dict"], ev["char_dict"], ev["dict_heldout"])
    res = evaluate_knowledge(model, tokenizer, dictionaries, split="test", seed=ev["knowledge_seed"],
                             held_out=held_terms, batch_size=ev["batch_size"], per_group=ev["knowledge_per_group"],
                             progress=False, compute_dtype=compute_dtype, scoring=ev["knowledge_scoring"])
    out: dict[str, Any] = {"knowledge": res["summary"], "knowledge_questions": res["questions_total"]}
    for group in KNOWLEDGE_GROUPS:
        s = res["summary"].get(f"all/{group}")
        if s is None:
            continue
        out[f"knowledge_{group}"] = s["accuracy"]
        out[f"knowledge_{group}_ci95"] = s["ci95"]
        out[f"knowledge_{group}_mean_margin"] = s["mean_margin"]
        records = [r for r in res["questions"] if r["group"] == group]
        out[f"knowledge_margins_{group}"] = [r["margin"] for r in records]
        out[f"knowledge_items_{group}"] = [f"{r['form']}:{r['term']}" for r in records]
        log(f"[kormed] {arm}: knowledge ({group} entries, test forms) {s['correct']}/{s['total']}, mean margin "
            f"{s['mean_margin']:.4f}")
    return out


def paired_vs_base(res: dict[str, Any], base: dict[str, Any], seed: int) -> dict[str, Any]:
    """The arm minus the base on the same documents / questions, with bootstrap 95 % intervals over them:
    bits/char and Hangul bits/char per held-out set, and the MCQ margins (cyclic loglik, chat-loglik)."""
    from kormed.eval.paired import mean_difference, ratio_difference

    out: dict[str, Any] = {}
    ln2 = math.log(2)
    for name in HELDOUT_SETS:
        a, b = res.get(f"documents_{name}"), base.get(f"documents_{name}")
        if not a or not b or a["characters"] != b["characters"]:
            continue
        out[f"bits_per_char_{name}"] = ratio_difference([x / ln2 for x in a["nll"]], [x / ln2 for x in b["nll"]],
                                                        a["characters"], seed=seed)
        if sum(a["hangul_characters"]):
            out[f"hangul_bits_per_char_{name}"] = ratio_difference(
                [x / ln2 for x in a["hangul_nll"]], [x / ln2 for x in b["hangul_nll"]], a["hangul_characters"],
                seed=seed)
    for key in ("cyclic", "chat_loglik"):
        a, b = res.get(f"margins_{key}"), base.get(f"margins_{key}")
        if a and b and len(a) == len(b):
            out[f"margin_{key}"] = mean_difference(a, b, seed=seed)
    for group in KNOWLEDGE_GROUPS:  # the same knowledge questions (form and term) of both, else nothing to pair
        a, b = res.get(f"knowledge_margins_{group}"), base.get(f"knowledge_margins_{group}")
        if a and b and res.get(f"knowledge_items_{group}") == base.get(f"knowledge_items_{group}"):
            out[f"knowledge_margin_{group}"] = mean_difference(a, b, seed=seed)
    return out


def run_arm(task: dict[str, Any]) -> dict[str, Any]:
    """Train (except `base`) and measure one arm in this process."""

    import torch

    log = lambda m: print(m, flush=True)  # noqa: E731
    torch.manual_seed(task["budget"]["seed"])
    start = time.perf_counter()
    meter = TextMeter()
    meter.install()
    try:
        adapter, training = _train_arm(task, meter, log)
    finally:
        meter.remove()
    train_s = time.perf_counter() - start
    gc.collect()
    metrics = evaluate_arm(task, adapter, log)
    return {**metrics, "adapter": adapter, "training": training, "own_training_chars": meter.chars,
            "own_training_tokens": meter.tokens, "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - start - train_s, 1)}


def _worker_main(argv: list[str]) -> int:
    task_file, result_file = argv
    task = read_json(task_file, what="bench task")
    result = run_arm(task)
    Path(result_file).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------


def upstream(arm: str, budget: Budget) -> str | None:
    """The arm whose adapter `arm` continues (the loop: SFT's, or with `loop_from` cpt the CPT arm SFT would
    continue)."""
    return {"sft": budget.sft_from, "loop": "sft" if budget.loop_from == "sft" else budget.sft_from}.get(arm)


def arms_to_run(wanted: tuple[str, ...], budget: Budget) -> list[str]:
    """`wanted` with the arms they continue from, in chain order."""
    for a in wanted:
        if a not in ARMS:
            raise KormedError(f"unknown arm '{a}' (use {', '.join(ARMS)})", field="arms")
    need = set(wanted)
    for a in reversed(ARMS):
        if a in need and upstream(a, budget):
            need.add(upstream(a, budget))
    return [a for a in ARMS if a in need]


def run_bench(*, budget: Budget, arms: tuple[str, ...] = DEFAULT_ARMS, model: str | None = None,
              korean_text: str | None = None, overrides: dict[str, dict[str, Any]] | None = None,
              variants: list[Variant] | None = None, work_dir: str | Path | None = None,
              arm_timeout: float | None = None, output: str | Path | None = None,
              log: Log = print) -> list[dict[str, Any]]:
    """Run the arms (each in its own process, chained), then each variant's chain (`<arm>@<variant>`), and return
    one row per arm; an arm whose key (:func:`arm_key`) equals an arm already run is not run again (its row says
    `reused_from`). `output` (a JSON file) is rewritten after every arm, so an interrupted run keeps its rows."""
    from kormed.config import to_dict

    budget.validate()
    overrides = overrides or {}
    chains: list[tuple[Variant | None, Budget, dict[str, dict[str, Any]], list[str]]] = [
        (None, budget, overrides, arms_to_run(arms, budget))]
    for v in variants or []:  # every variant checked before any work
        try:
            vb = dataclasses.replace(budget, **v.budget)
            vb.validate()
        except KormedError as err:
            raise KormedError(f"--variant {v.name}: {err.message}", field=err.field) from None
        merged = json.loads(json.dumps(overrides))
        for section, body in v.overrides.items():
            _deep_update(merged.setdefault(section, {}), body)
        chains.append((v, vb, merged, [a for a in arms_to_run(arms, vb) if a != "base"]))
    own_work = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kormed-bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = prepare_data(work, korean_text=Path(korean_text).expanduser() if korean_text else None,
                            budget=budget, log=log)
        p = data["paths"]
        plans = []
        for v, vb, over, order in chains:
            paths = dict(p)
            name = cpt_corpus_name(vb, budget)
            if name != "cpt_train.jsonl":
                paths["cpt_train"] = str(write_cpt_corpus(work / "data", data["pools"], vb, log, name)[0])
            try:
                configs = stage_configs(paths, vb, model=model, work=work, overrides=over,
                                        tag=f"@{v.name}" if v else "")
            except KormedError as err:
                if v is None:
                    raise
                raise KormedError(f"--variant {v.name}: {err.message}", path=err.path, field=err.field) from None
            plans.append((v, vb, over, order, {k: to_dict(c) for k, c in configs.items()}))
        common = {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "model": model or "embedded:gemma3-270m", "seed": budget.seed, "data": data["info"],
                  "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                           "python": platform.python_version()}}
        evaluation = {"general_test": p["general_test"], "medical_test": p["medical_test"],
                      "medical_authored_test": p.get("medical_authored_test"), "mcq_test": p["mcq_test"],
                      "max_length": budget.eval_max_length, "batch_size": budget.eval_batch_size,
                      "dict": p["dict"], "char_dict": p["char_dict"], "dict_heldout": p["dict_heldout"],
                      "knowledge_per_group": budget.knowledge_per_group, "knowledge_seed": budget.seed,
                      "knowledge_scoring": budget.knowledge_scoring}
        rows: list[dict[str, Any]] = []
        done: dict[str, dict[str, Any]] = {}  # label -> the result of the run that trained it
        keys: dict[str, str] = {}  # label -> arm key
        ran: dict[str, str] = {}  # arm key -> the label that ran it
        for v, vb, over, order, cfg_dicts in plans:
            tag = f"@{v.name}" if v else ""
            for arm in order:
                label, parent = arm + tag, upstream(arm, vb)
                keys[label] = arm_key(arm, cfg_dicts, vb, keys[parent + tag] if parent else None)
                reused = ran.get(keys[label])
                if reused:
                    log(f"[kormed] bench quality: arm {label}: the same settings and upstream as {reused}, not run "
                        "again")
                    done[label] = done[reused]
                else:
                    log(f"[kormed] bench quality: arm {label}" + (f" (from {parent + tag})" if parent else "") +
                        " ...")
                    shutil.rmtree(work / "arms" / label, ignore_errors=True)  # a kept --work-dir: never resume
                    task = {"arm": arm, "model": model, "budget": dataclasses.asdict(vb), "configs": cfg_dicts,
                            "from_adapter": done[parent + tag]["adapter"] if parent else None, "eval": evaluation}
                    start = time.perf_counter()
                    res, _ = run_worker("kormed.bench.quality", task, work / "tasks", label, arm_timeout)
                    res["wall_s"] = round(time.perf_counter() - start, 1)
                    done[label], ran[keys[label]] = res, label
                row = make_row(arm, done[label], done, vb, common, cfg_dicts, tag=tag)
                row.update(key=keys[label], reused_from=reused, budget=dataclasses.asdict(vb), overrides=over,
                           variant=dataclasses.asdict(v) if v else None)
                if arm != "base" and "base" in done:
                    row["paired_vs_base"] = paired_vs_base(done[label], done["base"], budget.seed)
                rows.append(row)
                if output:
                    from kormed.io import write_json

                    write_json(output, rows)
                log(f"[kormed]   {label}: general {row['bits_per_char_general']:.4f}, medical "
                    f"{row['bits_per_char_medical']:.4f} bits/char, accuracy {row['accuracy']:.3f}, knowledge "
                    f"trained {_fmt(row.get('knowledge_trained'), '.3f')} / held-out "
                    f"{_fmt(row.get('knowledge_held_out'), '.3f')}, {row['wall_s']:.0f} s")
        return rows
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def make_row(arm: str, res: dict[str, Any], done: dict[str, dict[str, Any]], budget: Budget,
             common: dict[str, Any], cfgs: dict[str, Any], tag: str = "") -> dict[str, Any]:
    """One JSON row: the arm's measures, its chain and cumulative training text, and the settings it ran with
    (`tag`: a variant's `@NAME`, on the arm and its chain)."""
    chain = [arm]
    while upstream(chain[-1], budget):
        chain.append(upstream(chain[-1], budget))
    chain = [a + tag for a in reversed(chain)]
    return {
        "arm": arm + tag,
        "stage": arm,
        "chain": chain,
        "bits_per_char_general": res["bits_per_char_general"],
        "bits_per_char_medical": res["bits_per_char_medical"],
        "accuracy": res["accuracy"],
        "accuracy_ci95": res["accuracy_ci95"],
        "correct": res["correct"],
        "questions": res["questions"],
        "training_chars": sum(done[a]["own_training_chars"] for a in chain),
        "training_tokens": sum(done[a]["own_training_tokens"] for a in chain),
        "own_training_chars": res["own_training_chars"],
        "own_training_tokens": res["own_training_tokens"],
        "vocab_size": res["vocab_size"],
        "medical_share": budget.medical_share if arm != "base" else None,
        **{k: v for k, v in res.items() if k.startswith(("hangul_bits_per_char_", "bits_per_char_medical_authored",
                                                          "heldout_", "accuracy_cyclic", "accuracy_chat_loglik",
                                                          "mean_margin_"))},
        **{k: v for k, v in res.items() if k == "knowledge" or k == "knowledge_questions" or any(
            k.startswith(f"knowledge_{g}") for g in KNOWLEDGE_GROUPS)},
        "knowledge_per_group": budget.knowledge_per_group,
        "knowledge_scoring": budget.knowledge_scoring,
        "training": res["training"],
        "wall_s": res["wall_s"],
        "train_s": res["train_s"],
        "eval_s": res["eval_s"],
        "runtime": res["runtime"],
        **common,
        "settings": arm_settings(arm, cfgs),
    }


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _delta(pair: dict[str, Any] | None) -> str:
    """`+0.0123 [-0.0040, +0.0290]`: a paired difference and its bootstrap interval."""
    if not pair:
        return "-"
    lo, hi = pair["ci95"]
    return f"{pair['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed tables: one line per arm; then each arm minus the base, paired, with bootstrap intervals."""
    w = max([13, *(len(r["arm"]) for r in rows)])
    lines = [f"{'arm':<{w}} {'bits/char general':>17} {'bits/char medical':>17} {'Hangul gen.':>11} "
             f"{'Hangul med.':>11} {'accuracy':>8} {'95% CI':>13} {'rotated':>7} {'chat':>6} "
             f"{'know. trained':>13} {'know. held-out':>14} {'training chars':>14} {'wall s':>7} reused from"]
    for r in rows:
        lo, hi = r["accuracy_ci95"]
        lines.append(f"{r['arm']:<{w}} {r['bits_per_char_general']:>17.4f} {r['bits_per_char_medical']:>17.4f} "
                     f"{_fmt(r.get('hangul_bits_per_char_general')):>11} "
                     f"{_fmt(r.get('hangul_bits_per_char_medical')):>11} "
                     f"{r['accuracy']:>8.3f} {f'{lo:.3f}-{hi:.3f}':>13} {_fmt(r.get('accuracy_cyclic'), '.3f'):>7} "
                     f"{_fmt(r.get('accuracy_chat_loglik'), '.3f'):>6} "
                     f"{_fmt(r.get('knowledge_trained'), '.3f'):>13} {_fmt(r.get('knowledge_held_out'), '.3f'):>14} "
                     f"{r['training_chars']:>14,} {r['wall_s']:>7.0f} {r.get('reused_from') or '-'}")
    paired = [r for r in rows if r.get("paired_vs_base")]
    if paired:
        lines.append("")
        lines.append("minus base, same documents / questions (bootstrap 95% interval):")
        lines.append(f"{'arm':<{w}} {'bits/char general':>28} {'bits/char medical':>28} "
                     f"{'margin (rotated loglik)':>28} {'margin (chat-loglik)':>28} "
                     f"{'knowledge margin trained':>28} {'knowledge margin held-out':>28}")
        for r in paired:
            p = r["paired_vs_base"]
            lines.append(f"{r['arm']:<{w}} {_delta(p.get('bits_per_char_general')):>28} "
                         f"{_delta(p.get('bits_per_char_medical')):>28} {_delta(p.get('margin_cyclic')):>28} "
                         f"{_delta(p.get('margin_chat_loglik')):>28} "
                         f"{_delta(p.get('knowledge_margin_trained')):>28} "
                         f"{_delta(p.get('knowledge_margin_held_out')):>28}")
    return "\n".join(lines)


def _acc(r: dict[str, Any], key: str) -> str:
    """`0.450 (0.310-0.600)`: an accuracy with its Wilson interval, `-` when not measured."""
    if r.get(key) is None:
        return "-"
    lo, hi = r[f"{key}_ci95"]
    return f"{r[key]:.3f} ({lo:.3f}-{hi:.3f})"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the Markdown table of benchmarks/README.md."""
    out = ["| arm | continues | bits/char general | bits/char medical | accuracy (correct / questions) | 95% CI | "
           "rotated accuracy | knowledge, trained entries (test forms) | knowledge, held-out entries | "
           "training characters | training tokens | wall s | reused from |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["accuracy_ci95"]
        prev = r["chain"][-2] if len(r["chain"]) > 1 else "-"
        tokens = r.get("training_tokens")
        out.append(f"| {r['arm']} | {prev} | {r['bits_per_char_general']:.4f} | {r['bits_per_char_medical']:.4f} | "
                   f"{r['accuracy']:.3f} ({r['correct']} / {r['questions']}) | {lo:.3f}-{hi:.3f} | "
                   f"{_fmt(r.get('accuracy_cyclic'), '.3f')} | {_acc(r, 'knowledge_trained')} | "
                   f"{_acc(r, 'knowledge_held_out')} | {r['training_chars']:,} | "
                   f"{'-' if tokens is None else f'{tokens:,}'} | {r['wall_s']:.0f} | {r.get('reused_from') or '-'} |")
    return "\n".join(out)


def paired_markdown_table(rows: list[dict[str, Any]]) -> str:
    """Each arm minus the base (paired, bootstrap 95 % intervals) as a Markdown table."""
    out = ["| arm | Δ bits/char general | Δ bits/char medical | Δ Hangul bits/char medical | "
           "Δ margin (rotated loglik) | Δ margin (chat-loglik) | Δ knowledge margin, trained | "
           "Δ knowledge margin, held-out |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("paired_vs_base") or {}
        if p:
            out.append(f"| {r['arm']} | {_delta(p.get('bits_per_char_general'))} | "
                       f"{_delta(p.get('bits_per_char_medical'))} | {_delta(p.get('hangul_bits_per_char_medical'))} | "
                       f"{_delta(p.get('margin_cyclic'))} | {_delta(p.get('margin_chat_loglik'))} | "
                       f"{_delta(p.get('knowledge_margin_trained'))} | {_delta(p.get('knowledge_margin_held_out'))} |")
    return "\n".join(out)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip()) or ARMS


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed bench quality`."""
    d = Budget()

    @subapps["bench"].command("quality")
    def bench_quality(
        arms: str = typer.Option(",".join(DEFAULT_ARMS), "--arms", help=f"Comma-separated arms of "
                                 f"{', '.join(ARMS)}; the arms they continue from run too. The default holds the "
                                 "45-minute budget on a 2-core CPU; sft adds ~5 minutes, cpt_extended ~12."),
        korean_text: str = typer.Option(DEFAULT_KOREAN_TEXT, "--korean-text",
                                        help="Directory with train/dev/test.jsonl of general Korean text "
                                        "(scripts/fetch_assembly_bills.py: National Assembly bills, with "
                                        "medical_law_*.jsonl as the medical held-out set; "
                                        "scripts/fetch_korean_text.py: software help pages); missing: the "
                                        "bundled sample's."),
        model: str = typer.Option(None, "--model", help="Base model (default: the embedded Gemma 3 270M)."),
        cpt_chars: int = typer.Option(d.cpt_chars, "--cpt-chars", min=1, help="Characters of training text each "
                                      "CPT arm reads (one epoch over exactly this much)."),
        medical_share: float = typer.Option(d.medical_share, "--medical-share", min=0.0, max=1.0,
                                            help="Share of --cpt-chars that is medical: the trained dictionary "
                                            "entries rendered as sentences x5 (as kormed prepare writes them), "
                                            "then medical-law bills and medical pages; the rest general bills."),
        dict_holdout: float = typer.Option(d.dict_holdout, "--dict-holdout", min=0.0, max=0.99,
                                           help="Share of the medical and symbol dictionary entries (seeded) no "
                                           "arm trains on: the knowledge columns' control."),
        knowledge_per_group: int = typer.Option(d.knowledge_per_group, "--knowledge-per-group", min=1,
                                                help="Dictionary-knowledge questions per form and entry group "
                                                "(trained, held-out; a seeded sample, test forms): ~1 minute an "
                                                "arm on 2 cores at 10."),
        knowledge_scoring: str = typer.Option(d.knowledge_scoring, "--knowledge-scoring",
                                              help=KNOWLEDGE_SCORING_HELP.replace("\n", " ")
                                              + " The loop arm selects on the same."),
        sft_steps: int = typer.Option(d.sft_steps, "--sft-steps", min=1, help="Optimizer steps per SFT step."),
        loop_rounds: int = typer.Option(d.loop_rounds, "--loop-rounds", min=1, help="Loop rounds."),
        loop_steps: int = typer.Option(d.loop_steps, "--loop-steps", min=1, help="Optimizer steps per round "
                                       "(308 x --batch-size 4: about two passes over the trained entries)."),
        loop_lr: float = typer.Option(d.loop_lr, "--loop-lr", help="Learning rate of the loop (measured: 1e-4 "
                                      "learns as much per pass as 3e-4 with a third to a half of the forgetting)."),
        batch_size: int = typer.Option(d.batch_size, "--batch-size", min=1, help="Sequences per optimizer step."),
        max_length: int = typer.Option(d.max_length, "--max-length", min=16, help="Tokens per training block."),
        lr: float = typer.Option(d.lr, "--lr", help="Learning rate of CPT and SFT (the loop: --loop-lr)."),
        eval_max_length: int = typer.Option(d.eval_max_length, "--eval-max-length", min=16,
                                            help="Tokens per held-out block."),
        eval_chars: int = typer.Option(d.eval_chars, "--eval-chars", min=1,
                                       help="Characters of each fetched held-out test text measured (whole "
                                       "documents; general, and the medical-law bills)."),
        sft_from: str = typer.Option(d.sft_from, "--sft-from", help="CPT arm SFT continues: cpt_extended | cpt."),
        loop_from: str = typer.Option(d.loop_from, "--loop-from", help="What the loop continues: cpt (the CPT "
                                      "arm SFT would continue: the loop without the SFT steps; measured) | sft."),
        seed: int = typer.Option(d.seed, "--seed", help="Seed of every stage and of the data order."),
        dtype: str = typer.Option(d.dtype, "--dtype", help="auto | float32 | bfloat16 (training and measuring)."),
        device: str = typer.Option(d.device, "--device", help="auto | cpu | cuda."),
        set_: list[str] = typer.Option(None, "--set", help="SECTION.KEY=VALUE stage option (sections: cpt, "
                                       "cpt_extended, tokenizer, sft, loop); repeatable."),
        overrides: str = typer.Option(None, "--overrides", help="YAML file of those sections."),
        variant: list[str] = typer.Option(None, "--variant", help="NAME:SECTION.KEY=VALUE[,...] extra chains "
                                          "on top of the main settings, rows labelled ARM@NAME (a value may be a "
                                          "[list]; --BUDGET=VALUE items change a bench budget, e.g. "
                                          "med50:--medical-share=0.5); an arm whose settings and upstream equal an "
                                          "arm already run is reused, not run again; repeatable."),
        variants: str = typer.Option(None, "--variants", help="YAML file of named variants: NAME: {budget: "
                                     "{KEY: VALUE}, SECTION: {KEY: VALUE}}."),
        output: str = typer.Option(str(DEFAULT_OUTPUT), "--output", help="JSON file of the rows."),
        work_dir: str = typer.Option(None, "--work-dir", help="Keep the data, adapters and logs here."),
        arm_timeout: float = typer.Option(None, "--arm-timeout", help="Seconds before an arm is stopped."),
    ) -> None:
        """Held-out bits per character (general, medical), KorMedMCQA accuracy and dictionary knowledge (trained
        and held-out entries) of base, CPT, CPT with the extended tokenizer, SFT and the loop, and of variants."""

        check_device(device)
        inputs = {"--korean-text": korean_text, "--model": model, "--overrides": overrides, "--variants": variants}
        check_output_path(output, "file", "--output", inputs=inputs)
        if work_dir:
            check_output_path(work_dir, "dir", "--work-dir", inputs=inputs)
        budget = Budget(cpt_chars=cpt_chars, sft_steps=sft_steps, loop_rounds=loop_rounds, loop_steps=loop_steps,
                        loop_lr=loop_lr, batch_size=batch_size, max_length=max_length, lr=lr,
                        eval_max_length=eval_max_length, eval_chars=eval_chars, seed=seed, dtype=dtype,
                        device=device, sft_from=sft_from,
                        loop_from=loop_from, medical_share=medical_share, dict_holdout=dict_holdout,
                        knowledge_per_group=knowledge_per_group, knowledge_scoring=knowledge_scoring)
        rows = run_bench(budget=budget, arms=_csv(arms), model=model, korean_text=korean_text,
                         overrides=read_overrides(overrides, set_ or []),
                         variants=read_variants(variant or [], variants), work_dir=work_dir,
                         arm_timeout=arm_timeout, output=output, log=lambda m: typer.echo(m, err=True))
        typer.echo(format_table(rows))
        typer.echo(f"wrote {output}", err=True)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
