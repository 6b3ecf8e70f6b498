"""Extend the base model's tokenizer with Korean medical terms and the corpus's frequent Korean sub-words.

The Gemma 3 tokenizer is a `tokenizers` BPE model with byte fallback: a normalizer turns spaces into `▁`, the
model merges characters by ranked merges, and characters outside its vocabulary become UTF-8 byte tokens (only
1,733 of the 11,172 Hangul syllables are in its vocabulary, so a rare syllable costs three tokens).

Method `bpe` (the default) extends the BPE model itself, in three phases whose merges are appended after all
existing merges (lower priority), so existing ids and existing merges never change:

0. Hangul syllables that fall back to bytes and occur in the dictionary terms or often in the corpus are added as
   vocabulary entries (one token instead of three).
1. Dictionary phase: the Korean words of the medical terms (bare and in their word-start `▁` form) that the base
   splits get merges until each is one token (pairs shared by many terms first, so intermediates are shared).
2. Corpus phase: continued BPE training on the selection part of the corpus (most frequent adjacent pair of
   Korean pieces first) until `max_new_tokens` entries exist or pairs fall below `min_frequency`.

Method `added_tokens` adds whole words as added tokens instead (matched before the model; measured worse, see
docs/commands/tokenizer-extend.md). The merge learner is hand-written because the `tokenizers` trainers only
train a model from scratch; they cannot continue an existing model's merges.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from kormed.errors import KormedError
from kormed.io import Log, check_output_path, loads_json, read_texts, temp_dir, write_json
from kormed.models import load_tokenizer
from kormed.tokenizer.report import REPORT_FILE, format_report, text_efficiency

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

SPACE = "\u2581"  # ▁, what the Gemma normalizer makes of " "
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_HANGUL_ONLY = re.compile(r"[\uac00-\ud7a3]+")
_UNIT = re.compile(r"\u2581?[^\s\u2581]+")  # a space-delimited word, with its leading ▁ when it has one
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TERM_SPLIT = re.compile(r"[\s()\[\]{}<>.,;:!?'\"“”‘’·/\\|\-–—~…「」『』《》〈〉]+")

REPORT_CHARS = 5_000_000  # held-out characters the report measures
MAX_UNITS = 2_000_000  # distinct corpus words kept for the merge learner
# Sizing a null `max_new_tokens` to the CPT budget (auto_extension_size). Measured here (270M model): 100 new
# entries cost held-out bits per character against no extension after CPT on 3,500 characters (+8.9 points),
# 40,000 (+3.8) and 100,000 (+2.4, two seeds), the last two with the new rows at 10x lr; break-even was not
# reached (docs/commands/tokenizer-extend.md). Published: about 30K sentences (~3 M characters) -> 50-100
# entries (Yamaguchi et al. 2024); ~2 B tokens -> ~9,000 (EEVE).
CHARS_PER_NEW_TOKEN = 30_000  # 3 M characters -> 100 entries
MIN_AUTO_TOKENS = 50  # fewer entries than the smallest published recommendation: none at all
MAX_AUTO_TOKENS = 12_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


# ----------------------------------------------------------------------------------------------------- inputs


def _head(texts: list[str], max_chars: int) -> list[str]:
    """The first documents of `texts` up to `max_chars` characters (at least one)."""
    out: list[str] = []
    total = 0
    for text in texts:
        if out and total + len(text) > max_chars:
            break
        out.append(text)
        total += len(text)
    return out


def auto_extension_size(budget_chars: int) -> int:
    """New vocabulary entries for a CPT budget of `budget_chars` characters: one per CHARS_PER_NEW_TOKEN, 0 when
    that is under MIN_AUTO_TOKENS (no budget that small has been shown to pay back an extension), at most
    MAX_AUTO_TOKENS."""
    size = budget_chars // CHARS_PER_NEW_TOKEN
    return 0 if size < MIN_AUTO_TOKENS else min(size, MAX_AUTO_TOKENS)


def extension_budget(cfg: Any, texts: list[str], base_tok: Any) -> tuple[int, int, dict[str, Any]]:
    """(max_new_tokens, max_dict_tokens, sizing record) for `cfg`: the configured numbers, or, where null, sized
    to the CPT budget (`cfg.budget_tokens` at the corpus's characters per base token, else the corpus read)."""
    corpus_chars = sum(len(t) for t in texts)
    record: dict[str, Any] = {"corpus_characters": corpus_chars}
    if cfg.max_new_tokens is not None:
        size = cfg.max_new_tokens
        record["rule"] = "max_new_tokens"
    else:
        budget = corpus_chars
        if cfg.budget_tokens is not None:
            sample = _head(texts, 1_000_000)
            tokens = sum(len(e.ids) for e in base_tok.encode_batch(sample, add_special_tokens=False))
            chars_per_token = sum(len(t) for t in sample) / max(1, tokens)
            budget = round(cfg.budget_tokens * chars_per_token)
            record.update(budget_tokens=cfg.budget_tokens, chars_per_token=round(chars_per_token, 4))
        size = auto_extension_size(budget)
        record.update(rule=f"auto: 1 per {CHARS_PER_NEW_TOKEN:,} characters, 0 under {MIN_AUTO_TOKENS}, "
                           f"at most {MAX_AUTO_TOKENS:,}", budget_characters=budget)
    dict_size = cfg.max_dict_tokens if cfg.max_dict_tokens is not None else size // 4
    record.update(max_new_tokens=size, max_dict_tokens=dict_size)
    return size, dict_size, record


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split documents into (selection, held-out); the held-out part is never used to choose tokens."""
    if len(texts) < 2:
        raise KormedError(
            "the corpus needs at least 2 documents (one is held out for the efficiency report)",
            field="tokenizer.corpus",
        )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = min(len(texts) - 1, max(1, round(len(texts) * fraction)))
    held = set(order[:n_held])
    select = [t for i, t in enumerate(texts) if i not in held]
    heldout = [t for i, t in enumerate(texts) if i in held]
    return select, heldout


def dictionary_words(terms: Iterable[str]) -> list[str]:
    """The Korean words (runs of Hangul syllables, two or more) of dictionary terms, first occurrence order."""
    seen: dict[str, None] = {}
    for term in terms:
        for word in _TERM_SPLIT.split(term):
            if len(word) >= 2 and _HANGUL_ONLY.fullmatch(word):
                seen.setdefault(word, None)
    return list(seen)


def korean_units(texts: Iterable[str], max_units: int = MAX_UNITS) -> Counter[str]:
    """Count the space-delimited words (`▁` form when a space precedes) that contain Hangul.

    With more than `max_units` distinct words only the most frequent `max_units` are kept (bounds memory on a
    very large corpus; words that rare contribute almost nothing to pair frequencies).
    """
    from tqdm.auto import tqdm

    counts: Counter[str] = Counter()
    texts = list(texts)
    for text in tqdm(texts, desc="counting Korean words", unit="doc", disable=len(texts) < 10000):
        counts.update(u for u in _UNIT.findall(text.replace(" ", SPACE)) if _HANGUL.search(u))
    if len(counts) > max_units:
        counts = Counter(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_units]))
    return counts


# ------------------------------------------------------------------------------------------ base segmentation


def _bytes_to_chars(tokens: list[str]) -> list[str]:
    """Replace runs of byte-fallback tokens by the characters they encode (one symbol per character)."""
    out: list[str] = []
    buf = bytearray()
    for tok in tokens:
        m = _BYTE.fullmatch(tok)
        if m:
            buf.append(int(m.group(1), 16))
            continue
        if buf:
            out.extend(buf.decode("utf-8", errors="replace"))
            buf.clear()
        out.append(tok)
    if buf:
        out.extend(buf.decode("utf-8", errors="replace"))
    return out


def segment_units(tokenizer: Any, units: list[str], batch_size: int = 4096) -> dict[str, list[str]]:
    """How the base `tokenizers.Tokenizer` splits each unit (byte-fallback runs shown as characters)."""
    out: dict[str, list[str]] = {}
    for start in range(0, len(units), batch_size):
        batch = units[start : start + batch_size]
        encs = tokenizer.encode_batch([u.replace(SPACE, " ") for u in batch], add_special_tokens=False)
        for unit, enc in zip(batch, encs, strict=True):
            out[unit] = _bytes_to_chars(enc.tokens)
    return out


# ------------------------------------------------------------------------------------------------ merge learner


class MergeLearner:
    """Continued BPE training on weighted words: repeatedly merge the most frequent allowed adjacent pair.

    Pair counts are updated incrementally (only the words that contain the merged pair are recounted) and the
    best pair comes from a lazily invalidated heap; ties break on the pair's strings, so runs are reproducible.
    """

    def __init__(self, words: list[list[str]], weights: list[int], allowed: Callable[[str, str], bool]) -> None:
        self.words = words
        self.weights = weights
        self.allowed = allowed
        self.count: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        for i in range(len(words)):
            self._add(i, None)
        self.heap = [(-c, p) for p, c in self.count.items() if c > 0]
        heapq.heapify(self.heap)

    def _pairs(self, word: list[str]) -> list[tuple[str, str]]:
        return [(word[k], word[k + 1]) for k in range(len(word) - 1) if self.allowed(word[k], word[k + 1])]

    def _add(self, i: int, touched: set[tuple[str, str]] | None) -> None:
        for p in self._pairs(self.words[i]):
            self.count[p] += self.weights[i]
            self.where[p].add(i)
            if touched is not None:
                touched.add(p)

    def _remove(self, i: int, touched: set[tuple[str, str]]) -> None:
        for p in self._pairs(self.words[i]):
            self.count[p] -= self.weights[i]
            touched.add(p)

    def best(self, min_count: int = 1) -> tuple[str, str] | None:
        """The most frequent allowed pair with at least `min_count` occurrences, or None."""
        while self.heap:
            neg, pair = self.heap[0]
            if -neg != self.count.get(pair, 0) or -neg <= 0:
                heapq.heappop(self.heap)  # stale entry
                continue
            return pair if -neg >= min_count else None
        return None

    def merge(self, pair: tuple[str, str]) -> int:
        """Apply `pair` to every word containing it (left to right); returns the number of merged occurrences."""
        a, b = pair
        merged = a + b
        touched: set[tuple[str, str]] = set()
        n = 0
        for i in sorted(self.where.pop(pair, ())):
            word = self.words[i]
            if not any(word[k] == a and word[k + 1] == b for k in range(len(word) - 1)):
                continue
            self._remove(i, touched)
            new: list[str] = []
            k = 0
            while k < len(word):
                if k + 1 < len(word) and word[k] == a and word[k + 1] == b:
                    new.append(merged)
                    k += 2
                    n += self.weights[i]
                else:
                    new.append(word[k])
                    k += 1
            self.words[i] = new
            self._add(i, touched)
        self.count.pop(pair, None)
        for p in touched:
            c = self.count.get(p, 0)
            if c > 0:
                heapq.heappush(self.heap, (-c, p))
        return n


# ---------------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """What the extension adds: vocabulary entries (in new-id order) and merges (appended in this order)."""

    method: str
    new_tokens: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    added_chars: list[str] = field(default_factory=list)
    dict_tokens: int = 0  # entries spent on dictionary terms (phase 0 chars of terms + phase 1)
    dict_words: list[str] = field(default_factory=list)  # the dictionary words targeted (bare forms)
    dict_words_skipped: int = 0  # over the dictionary budget


def _korean_piece(s: str) -> bool:
    return bool(_HANGUL_ONLY.fullmatch(s))


def select_bpe(
    base_vocab: dict[str, int],
    segment: Callable[[list[str]], dict[str, list[str]]],
    corpus_counts: Counter[str],
    dict_words: list[str],
    *,
    max_new_tokens: int,
    max_dict_tokens: int,
    min_frequency: int,
    progress: Log | None = None,
) -> Selection:
    """Choose new vocabulary entries and merges (phases 0-2 of the module docstring)."""
    sel = Selection(method="bpe")
    new_vocab: dict[str, None] = {}

    def known(s: str) -> bool:
        return s in base_vocab or s in new_vocab

    def allowed(a: str, b: str) -> bool:
        # Korean pieces only (the left one may carry the word-start ▁); the result must be a string the base
        # vocabulary lacks (a pair whose join is an existing token already has a base merge, or is unreachable).
        if not (known(a) and known(b) and _korean_piece(b)):
            return False
        if not (a == SPACE or _korean_piece(a) or (a[0] == SPACE and _korean_piece(a[1:]))):
            return False
        return (a + b) not in base_vocab

    def add_token(s: str) -> bool:
        if s in base_vocab or s in new_vocab:
            return False
        new_vocab[s] = None
        return True

    # Dictionary words the base splits, most corpus-frequent first, within the dictionary budget (upper bound on
    # the entries each costs: its missing syllables + pieces - 1 for each of its two forms).
    dict_units = [u for w in dict_words for u in (w, SPACE + w)]
    seg = segment(dict_units)
    chosen: list[str] = []
    cost = 0
    ranked = sorted(dict_words, key=lambda w: -(corpus_counts.get(w, 0) + corpus_counts.get(SPACE + w, 0)))
    for w in ranked:
        pieces = [seg[w], seg[SPACE + w]]
        if all(len(p) == 1 for p in pieces):
            continue
        missing = {c for c in w if not known(c)}
        c = len(missing) + sum(len(p) - 1 for p in pieces)
        if cost + c > max_dict_tokens or cost + c > max_new_tokens:
            sel.dict_words_skipped += 1
            continue
        cost += c
        chosen.append(w)
    chosen_set = set(chosen)
    sel.dict_words = [w for w in dict_words if w in chosen_set]

    # Phase 0: Hangul syllables that fall back to bytes: those of the chosen terms, then the corpus's frequent ones.
    char_counts: Counter[str] = Counter()
    for unit, n in corpus_counts.items():
        for ch in unit:
            if _HANGUL.fullmatch(ch) and ch not in base_vocab:
                char_counts[ch] += n
    for w in sel.dict_words:
        for ch in w:
            if add_token(ch):
                sel.added_chars.append(ch)
    sel.dict_tokens = len(new_vocab)
    for ch, n in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n < min_frequency or len(new_vocab) >= max_new_tokens:
            break
        if add_token(ch):
            sel.added_chars.append(ch)

    # Phase 1: merges until every chosen dictionary word is one token (weights: corpus frequency + 1).
    units = [u for w in sel.dict_words for u in (w, SPACE + w)]
    learner = MergeLearner(
        [list(seg[u]) for u in units], [corpus_counts.get(u, 0) + 1 for u in units], allowed
    )
    while (pair := learner.best(1)) is not None:
        # register the merged token first: the learner re-pairs it with its neighbours during the merge
        if add_token(pair[0] + pair[1]):
            sel.dict_tokens += 1
        learner.merge(pair)
        sel.merges.append(pair)
    if progress:
        progress(f"dictionary: {len(sel.dict_words)} words as single tokens, {sel.dict_tokens} entries")

    # Phase 2: continued BPE training on the corpus (after the dictionary merges, which come first in rank).
    corpus_units = sorted(corpus_counts)
    cseg = segment(corpus_units)
    learner = MergeLearner(
        [list(cseg[u]) for u in corpus_units], [corpus_counts[u] for u in corpus_units], allowed
    )
    for pair in list(sel.merges):
        learner.merge(pair)
    from tqdm.auto import tqdm

    with tqdm(
        total=max(0, max_new_tokens - len(new_vocab)), desc="corpus merges", unit="token", disable=progress is None
    ) as bar:
        while len(new_vocab) < max_new_tokens:
            pair = learner.best(min_frequency)
            if pair is None:
                break
            added = add_token(pair[0] + pair[1])
            learner.merge(pair)
            sel.merges.append(pair)
            if added:
                bar.update(1)
    sel.new_tokens = list(new_vocab)
    return sel


def select_added_tokens(
    base_vocab: dict[str, int],
    segment: Callable[[list[str]], dict[str, list[str]]],
    corpus_counts: Counter[str],
    dict_words: list[str],
    *,
    max_new_tokens: int,
    max_dict_tokens: int,
    min_frequency: int,
) -> Selection:
    """Whole words as added tokens: dictionary words first, then corpus words by tokens saved (count x pieces-1)."""
    sel = Selection(method="added_tokens")
    chosen: dict[str, None] = {}
    dict_units = [u for w in dict_words for u in (w, SPACE + w)]
    seg = segment(dict_units)
    for w in dict_words:
        forms = [u for u in (w, SPACE + w) if len(seg[u]) > 1 and u not in base_vocab]
        if not forms:
            continue
        if len(chosen) + len(forms) > min(max_dict_tokens, max_new_tokens):
            sel.dict_words_skipped += 1
            continue
        sel.dict_words.append(w)
        for u in forms:
            chosen.setdefault(u, None)
    sel.dict_tokens = len(chosen)
    units = [u for u, n in corpus_counts.items() if n >= min_frequency and _korean_piece(u.lstrip(SPACE))]
    cseg = segment(units)
    scored = sorted(
        ((corpus_counts[u] * (len(cseg[u]) - 1), u) for u in units if len(cseg[u]) > 1), key=lambda t: (-t[0], t[1])
    )
    for _, u in scored:
        if len(chosen) >= max_new_tokens:
            break
        chosen.setdefault(u, None)
    sel.new_tokens = list(chosen)
    return sel


# ------------------------------------------------------------------------------------------------ build + save


def next_free_id(tokenizer_json: dict[str, Any]) -> int:
    """The first id after every id the tokenizer uses (model vocabulary and added tokens)."""
    ids = list(tokenizer_json["model"]["vocab"].values()) + [t["id"] for t in tokenizer_json.get("added_tokens", [])]
    return max(ids) + 1


def build_extended_json(base_json: dict[str, Any], sel: Selection) -> dict[str, Any]:
    """A copy of the base tokenizer.json with the selection appended (existing ids and merges untouched)."""
    model = base_json.get("model", {})
    if model.get("type") != "BPE":
        raise KormedError(f"only BPE tokenizers can be extended (this one is {model.get('type')!r})")
    out = dict(base_json)
    out["model"] = dict(model)
    first = next_free_id(base_json)
    if sel.method == "bpe":
        vocab = dict(model["vocab"])
        for k, tok in enumerate(sel.new_tokens):
            vocab[tok] = first + k
        merges = list(model["merges"])
        as_strings = bool(merges) and isinstance(merges[0], str)
        for a, b in sel.merges:
            merges.append(f"{a} {b}" if as_strings else [a, b])
        out["model"]["vocab"] = vocab
        out["model"]["merges"] = merges
    else:
        added = list(base_json.get("added_tokens", []))
        for k, tok in enumerate(sel.new_tokens):
            added.append(
                {
                    "id": first + k,
                    "content": tok.replace(SPACE, " "),
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": True,
                    "special": False,
                }
            )
        out["added_tokens"] = added
    return out


def check_extension(base_tok: Any, new_tok: Any, sel: Selection) -> None:
    """Existing ids unchanged and every new entry present with its planned id (raises on violation)."""
    base_vocab = base_tok.get_vocab(with_added_tokens=True)
    new_vocab = new_tok.get_vocab(with_added_tokens=True)
    changed = [t for t, i in base_vocab.items() if new_vocab.get(t) != i]
    if changed:
        raise KormedError(f"internal error: {len(changed)} existing token ids changed (e.g. {changed[0]!r})")
    first = max(base_vocab.values()) + 1
    for k, tok in enumerate(sel.new_tokens):
        content = tok if sel.method == "bpe" else tok.replace(SPACE, " ")
        if new_tok.token_to_id(content) != first + k:
            raise KormedError(f"internal error: new token {tok!r} did not get id {first + k}")


def tokenizer_json_text(tokenizer_json: dict[str, Any]) -> str:
    """The tokenizer.json text (compact, key order kept, so the same tokenizer gives the same bytes)."""
    return json.dumps(tokenizer_json, ensure_ascii=False, separators=(",", ":"))


def save_tokenizer_dir(base_dir: str | Path, tokenizer_json: dict[str, Any] | str, out: str | Path) -> None:
    """Write a standard HF tokenizer directory: the base's tokenizer files with the extended tokenizer.json.

    Each file is written to a temporary name and renamed into place, so an interrupted run leaves the previous
    files (or none), never a half-written tokenizer.json.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with temp_dir(out, "tokenizer") as tmp:  # kormed temp name: a killed run's leftover is cleaned next time
        tmp_path = Path(tmp)
        for name in TOKENIZER_FILES[1:]:
            src = Path(base_dir) / name
            if src.is_file():
                shutil.copyfile(src, tmp_path / name)
        if not isinstance(tokenizer_json, str):
            tokenizer_json = tokenizer_json_text(tokenizer_json)
        with (tmp_path / "tokenizer.json").open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(tokenizer_json)
            fh.flush()
            os.fsync(fh.fileno())
        for name in TOKENIZER_FILES:
            if (tmp_path / name).is_file():
                os.replace(tmp_path / name, out / name)


def export_base_tokenizer(model_path: str, dest: str | Path) -> Path:
    """The base model's text tokenizer as a plain directory with tokenizer.json (files copied from a local model
    directory; a hub model's tokenizer is loaded with AutoTokenizer and saved)."""

    src = Path(model_path)
    tok = load_tokenizer(model_path)  # the shared checks: a complete, loadable Gemma 3 tokenizer (cached per process)
    if (src / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(dest) / name)
        return Path(dest)
    if not getattr(tok, "is_fast", False):
        raise KormedError("the base tokenizer has no tokenizer.json (a fast tokenizer is needed)", path=model_path)
    tok.save_pretrained(str(dest))
    if not (Path(dest) / "tokenizer.json").is_file():
        raise KormedError("the base tokenizer did not save a tokenizer.json", path=model_path)
    return Path(dest)


def round_trip_failures(tokenizer: Any, texts: Iterable[str], limit: int = 5) -> list[str]:
    """Texts whose encode -> decode does not give the text back (at most `limit` examples)."""
    bad: list[str] = []
    texts = list(texts)
    for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
        if tokenizer.decode(enc.ids, skip_special_tokens=False) != text:
            bad.append(text[:80])
            if len(bad) >= limit:
                break
    return bad


# --------------------------------------------------------------------------------------------------- the command


def extend_tokenizer(cfg: Any, log: Log = print) -> dict[str, Any]:
    """`kormed tokenizer extend`: build the extended tokenizer in `cfg.out` and return the efficiency report."""
    from tokenizers import Tokenizer

    from kormed.models import load_tokenizer, resolve_model
    from kormed.records import read_dictionary

    for name in ("corpus", "dict", "out"):
        if not getattr(cfg, name):
            raise KormedError("is required", field=f"tokenizer.{name}", hint=f"pass --{name} or set it in the YAML")
    check_output_path(cfg.out, "dir", "--out",
                      inputs={"--model": cfg.model, "--corpus": cfg.corpus, "--dict": cfg.dict})
    entries, _ = read_dictionary(cfg.dict)
    texts = read_texts(cfg.corpus, max_chars=cfg.max_corpus_chars, what="corpus file")
    select_texts, heldout = split_heldout(texts, cfg.heldout_fraction, cfg.seed)
    model_path = resolve_model(cfg.model, log=log)
    out = Path(cfg.out)
    with tempfile.TemporaryDirectory(prefix="kormed-tok-") as tmp:
        base_dir = export_base_tokenizer(model_path, tmp)
        base_text = (base_dir / "tokenizer.json").read_text(encoding="utf-8")
        base_json = loads_json(base_text, where=base_dir / "tokenizer.json")
        base_tok = Tokenizer.from_str(base_text)
        del base_text
        base_vocab = base_tok.get_vocab(with_added_tokens=True)
        max_new, max_dict, sizing = extension_budget(cfg, texts, base_tok)
        if cfg.max_new_tokens is None:
            log(f"[kormed] extension sized to the CPT budget: {sizing['budget_characters']:,} characters -> "
                f"{max_new} new entries" + (" (too small a budget to pay back an extension; CPT keeps the base "
                                            "tokenizer)" if not max_new else ""))
        counts = korean_units(select_texts)
        words = dictionary_words(e.term for e in entries)
        log(
            f"[kormed] corpus: {len(texts)} documents ({len(heldout)} held out), {len(counts):,} distinct Korean "
            f"words; dictionary: {len(entries)} entries, {len(words)} Korean term words"
        )

        def segment(units: list[str]) -> dict[str, list[str]]:
            return segment_units(base_tok, units)

        kwargs = dict(max_new_tokens=max_new, max_dict_tokens=max_dict, min_frequency=cfg.min_frequency)
        if cfg.method == "bpe":
            sel = select_bpe(base_vocab, segment, counts, words, progress=log, **kwargs)
        else:
            sel = select_added_tokens(base_vocab, segment, counts, words, **kwargs)
        first_new = next_free_id(base_json)
        new_text = tokenizer_json_text(build_extended_json(base_json, sel))
        del base_json
        new_tok = Tokenizer.from_str(new_text)
        check_extension(base_tok, new_tok, sel)

        heldout = _head(heldout, REPORT_CHARS)  # the report measures at most this much held-out text
        checkable = [t for t in heldout if SPACE not in t]  # a literal ▁ decodes as a space in Gemma's tokenizer
        failures = round_trip_failures(base_tok, checkable) + round_trip_failures(new_tok, checkable)
        medical = [f"{e.term}: {e.definition}" for e in entries]
        single = sum(
            len(new_tok.encode(u, add_special_tokens=False).ids) == 1 for w in sel.dict_words for u in (w, " " + w)
        )
        report: dict[str, Any] = {
            "method": sel.method,
            "model": cfg.model or "embedded gemma3-270m",
            "corpus": str(cfg.corpus),
            "dictionary_file": str(cfg.dict),
            "base_vocab_size": len(base_vocab),
            "vocab_size": new_tok.get_vocab_size(with_added_tokens=True),
            "first_new_id": first_new,
            "new_tokens": len(sel.new_tokens),
            "new_merges": len(sel.merges),
            "new_hangul_characters": len(sel.added_chars),
            "sizing": sizing,
            "settings": {
                "max_new_tokens": max_new,
                "max_dict_tokens": max_dict,
                "min_frequency": cfg.min_frequency,
                "heldout_fraction": cfg.heldout_fraction,
                "seed": cfg.seed,
            },
            "dictionary": {
                "entries": sel.dict_tokens,
                "words": len(words),
                "words_targeted": len(sel.dict_words),
                "words_over_budget": sel.dict_words_skipped,
                "words_single_token": single // 2,
                "forms_single_token": single,
            },
            "heldout": text_efficiency(base_tok, new_tok, heldout, first_new),
            "medical": text_efficiency(base_tok, new_tok, medical, first_new),
            "selection_corpus_characters": sum(len(t) for t in select_texts),
            "round_trip_failures": failures,
            "examples": sel.new_tokens[:40],
        }
        save_tokenizer_dir(base_dir, new_text, out)
    # The directory must load with AutoTokenizer and encode exactly as the tokenizers object does.
    hf_tok = load_tokenizer(str(out))
    sample = heldout[:20]
    for text in sample:
        if hf_tok(text, add_special_tokens=False)["input_ids"] != new_tok.encode(text, add_special_tokens=False).ids:
            raise KormedError("internal error: AutoTokenizer encodes differently from tokenizer.json", path=out)
    write_json(out / REPORT_FILE, report)
    return report


# How `kormed tokenizer extend` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(report: dict[str, Any], cfg: Any) -> None:
    """The efficiency report table and where the tokenizer went."""

    typer.echo(format_report(report))
    typer.echo(f"extended tokenizer and tokenizer_report.json written to {cfg.out}")
