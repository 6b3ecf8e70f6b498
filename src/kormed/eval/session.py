"""One model load for many evaluations: the eval stage scores the base and every adapter of a run.

:class:`AdapterSwap` loads a base once and swaps adapters on it with PEFT's own API (`PeftModel.from_pretrained`
for the first, then `load_adapter` / `set_adapter` / `delete_adapter`), so N adapters cost one load instead of 2N.
Adapters whose base is built differently -- an extended tokenizer (embedding rows added and initialised at load
time), a different embedding row count, a 4-bit base, another base model -- get a fresh load through
:func:`kormed.models.load_model_and_tokenizer` (one per distinct build, in the order they come): resizing a shared
base in place under loaded adapters would be weight surgery, and the fresh load is what a per-adapter run does.
An adapter's own copy of the base's tokenizer (every adapter kormed saves has one) is the same build: tokenizers
are compared by what they do (:func:`tokenizer_key`), not by their files.

:class:`BaseCache` keeps the base model's results keyed by the model's files, the data files' contents, the eval
options and the runtime, so a rerun -- or another run directory on the same base and the same data, wherever its
files lie -- does not score the base again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import file_key, read_json, write_json

EVAL_CACHE_VERSION = 3  # bump when what an eval result holds or how it is scored changes (2: knowledge; 3: data
# keyed by content, results carry the data paths they name)
FULL_HASH_LIMIT = 64 << 20  # model files above this are keyed by size, mtime and both ends (a 4B model is 8 GB)


def model_file_key(path: Path) -> str:
    """sha256 of a file; above FULL_HASH_LIMIT, of its first and last MiB plus its size and mtime."""
    return file_key(path, FULL_HASH_LIMIT)


def tree_key(path: str | Path) -> str:
    """The key of a file, or of every file in a directory (relative names included)."""
    p = Path(path)
    if p.is_file():
        return model_file_key(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + model_file_key(f).encode() + b"\n")
    return "dir:" + h.hexdigest()


# tokenizer_config.json entries that say how a tokenizer was loaded or where from, not how it tokenizes: every
# adapter kormed saves carries its own copy of the tokenizer (tokenizer/), differing from the base's in these only
_TOKENIZER_LOAD_KEYS = ("name_or_path", "local_files_only", "is_local", "tokenizer_file", "vocab_file",
                        "_commit_hash")


def tokenizer_key(tokenizer: Any) -> str:
    """sha256 of what a tokenizer does: its whole fast-tokenizer definition (vocabulary, merges, normalizer, added
    tokens) and its settings (special tokens, chat template), without where it was loaded from."""
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _TOKENIZER_LOAD_KEYS}
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _real(model_path: str) -> str:
    """A local model directory by its real path (a symlinked cache and its target are one base); a hub id as is."""
    p = Path(model_path)
    return str(p.resolve()) if p.exists() else model_path


class AdapterSwap:
    """A base model loaded once per distinct build, with each adapter swapped onto it in turn."""

    def __init__(self, model: str | None, *, device: str, dtype: str, log: Any = print) -> None:
        self.model, self.device, self.dtype, self.log = model, device, dtype, log
        self.net: Any = None
        self.tokenizer: Any = None
        self.runtime: Any = None
        self.key: tuple[str, ...] | None = None
        self.active: str | None = None  # PEFT name of the adapter in use; None = the plain base
        self.loads = 0
        self._swaps = 0
        self._tokenizer_keys: dict[int, tuple[Any, str]] = {}

    def key_of(self, adapter: str | Path | None) -> tuple[str, ...]:
        """What the base an adapter needs is built from, as :func:`kormed.models.load_model_and_tokenizer` builds
        it: the model, the adapter's own tokenizer, the embedding rows (when resized) and the quantization."""
        from kormed.models import (
            adapter_base,
            check_adapter_dir,
            load_model_config,
            load_tokenizer,
            read_adapter_meta,
            resolve_model,
            text_config,
        )

        if adapter is None:
            model_path = _real(resolve_model(self.model, log=self.log))
            return (model_path, self._tokenizer_key(load_tokenizer(model_path)), "", "")
        adapter = check_adapter_dir(adapter)
        model_path = _real(resolve_model(adapter_base(self.model, adapter), log=self.log))
        meta = read_adapter_meta(adapter)
        tokenizer = self.tokenizer_of(adapter)
        rows = getattr(text_config(load_model_config(model_path)), "vocab_size", None)
        resized = isinstance(rows, int) and (len(tokenizer) > rows or (meta.get("embedding_rows") or rows) != rows)
        return (model_path, self._tokenizer_key(tokenizer), str(meta.get("embedding_rows")) if resized else "",
                str(meta.get("quantization") or ""))

    def tokenizer_of(self, adapter: str | Path | None) -> Any:
        """The tokenizer the model built for `adapter` uses (its own copy when it has one), without loading weights."""
        from kormed.models import adapter_base, load_tokenizer, resolve_model

        model_path = resolve_model(adapter_base(self.model, adapter) if adapter is not None else self.model,
                                   log=self.log)
        tok_dir = Path(adapter) / "tokenizer" if adapter is not None else None
        use_own = tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file()
        return load_tokenizer(str(tok_dir) if use_own else model_path)

    def _tokenizer_key(self, tokenizer: Any) -> str:
        """:func:`tokenizer_key`, once per tokenizer object (load_tokenizer hands out one object per directory)."""
        if id(tokenizer) not in self._tokenizer_keys:  # the object is kept beside its key, so its id stays its own
            self._tokenizer_keys[id(tokenizer)] = (tokenizer, tokenizer_key(tokenizer))
        return self._tokenizer_keys[id(tokenizer)][1]

    def use(self, adapter: str | Path | None) -> tuple[Any, Any, Any]:
        """(model, tokenizer, runtime) with `adapter` (None = the base alone) active: swapped onto the loaded base
        when it is built the same way, else a fresh load."""
        key = self.key_of(adapter)
        if self.net is None or key != self.key or (adapter is None and self.active is not None):
            return self._load(adapter, key)
        if adapter is not None:
            self._swap(adapter)
        return self.net, self.tokenizer, self.runtime

    def _load(self, adapter: str | Path | None, key: tuple[str, ...]) -> tuple[Any, Any, Any]:
        from kormed.models import load_model_and_tokenizer, pick_runtime

        self.close()
        runtime = pick_runtime(self.device, self.dtype)
        self.net, self.tokenizer, self.runtime = load_model_and_tokenizer(self.model, adapter=adapter,
                                                                          runtime=runtime, log=self.log)
        self.key, self.active = key, ("default" if adapter is not None else None)
        self.loads += 1
        return self.net, self.tokenizer, self.runtime

    def _swap(self, adapter: str | Path) -> None:
        from peft import PeftModel

        from kormed.models import check_adapter_fits, hub_offline

        base = self.net.get_base_model() if self.active is not None else self.net
        check_adapter_fits(adapter, base)
        with hub_offline():  # a local directory (check_adapter_dir): nothing is looked up on the hub
            if self.active is None:  # the plain base so far: wrapped exactly as a per-adapter load wraps it
                self.net = PeftModel.from_pretrained(self.net, str(adapter), is_trainable=False)
                self.active = "default"
            else:
                self._swaps += 1
                name = f"swap{self._swaps}"
                self.net.load_adapter(str(adapter), adapter_name=name, is_trainable=False)
                self.net.set_adapter(name)
                self.net.delete_adapter(self.active)
                self.active = name
        self.net.to(self.runtime.device)

    def close(self) -> None:
        """Drop the loaded model (and free its accelerator memory)."""
        if self.net is None:
            return
        self.net = self.tokenizer = self.key = self.active = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class BaseCache:
    """The base model's eval results, stored under kormed's cache dir (`eval-base/<key>.json`) and reused while
    the model's files, the data files' contents, the options and the runtime are the same; any change is a new key.

    Data files are keyed by content, not path: every run directory holds its own copy of the prepared data, and
    the base scores the same on a copy. A reused result names the current run's files, not the run that scored it
    (:func:`rename_paths`)."""

    PATH_OPTIONS = ("data", "fewshot_file", "dict", "char_dict", "heldout")  # options keyed by content

    def __init__(self, cfg: Any, model_path: str, data: list[str | None], runtime: Any) -> None:
        import torch
        import transformers

        from kormed import __version__
        from kormed.models import cache_root

        options = {k: v for k, v in asdict(cfg).items() if k not in ("output", "adapter")}
        for name in self.PATH_OPTIONS:  # by content whatever `data` lists: a file left out must not go unkeyed
            if options.get(name) and Path(options[name]).exists():
                options[name] = tree_key(options[name])
        self.data = [str(d) if d else None for d in data]
        payload = {
            "version": EVAL_CACHE_VERSION, "kormed": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "options": options,
            "model": [model_path, tree_key(model_path) if Path(model_path).exists() else "hub"],
            "data": [tree_key(d) if d else None for d in self.data],
            "runtime": {"device": runtime.device, "dtype": runtime.dtype, "compute_dtype": runtime.compute_dtype},
        }
        self.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        self.path = cache_root() / "eval-base" / f"{self.key}.json"

    def read(self, log: Any = print) -> dict[str, Any] | None:
        """The cached results, or None (absent, or unreadable: then logged and scored again)."""
        if not self.path.is_file():
            return None
        try:
            data = read_json(self.path, what="cached base result")
        except (KormedError, OSError) as exc:
            log(f"[eval] ignoring an unreadable cached base result ({exc}); scoring the base again")
            return None
        if not (isinstance(data, dict) and isinstance(data.get("kormedmcqa"), dict)
                and isinstance(data.get("ppl"), dict | None) and isinstance(data.get("knowledge"), dict | None)):
            log(f"[eval] ignoring a cached base result that is not one ({self.path}); scoring the base again")
            return None
        scored_on = data.pop("data_paths", None)
        if isinstance(scored_on, list) and len(scored_on) == len(self.data):
            data = rename_paths(data, {old: new for old, new in zip(scored_on, self.data, strict=True)
                                       if isinstance(old, str) and new and old != new})
        return data

    def write(self, results: dict[str, Any]) -> None:
        """Store `results` with the data paths they name (replaced by the reader's own on reuse)."""
        write_json(self.path, {**results, "data_paths": self.data})


def rename_paths(value: Any, renames: dict[str, str]) -> Any:
    """`value` with every string that is one of `renames`' paths, or starts with one and `:` (a `file:line`
    source), naming the new path instead."""
    if not renames:
        return value
    if isinstance(value, dict):
        return {k: rename_paths(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [rename_paths(v, renames) for v in value]
    if isinstance(value, str):
        for old, new in renames.items():
            if value == old:
                return new
            if value.startswith(old + ":"):
                return new + value[len(old):]
    return value
