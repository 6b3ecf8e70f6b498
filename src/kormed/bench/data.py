"""`kormed bench data`: CPT's data path at corpus sizes (peak RSS, tokenize+pack MB/s per core, first step).

The bench writes its own Korean corpus at each size (default 0.1, 1 and 5 GB): documents assembled from real
Korean sentences (the bundled sample sources -- namu wiki, Wikipedia, C4 and the medical questions -- or
`--source` JSONL such as scripts/fetch_korean_text.py's train.jsonl), shuffled, varied in
length and with numbers changed, so no two documents are alike. Each arm runs in a fresh process
(:func:`kormed.bench.worker.run_worker`) so that its peak RSS is its own:

* `tokenizer`: the single-process tokenizer speed (MB/s) on the first `--probe-mb` MB, the reference for the
  parallel target (MB/s >= 0.9 x num_proc x this);
* `new`: :func:`kormed.train.cpt.build_packed_dataset` (sharded, `num_proc` workers, Arrow cache), then a
  second call that hits the cache;
* `old`: the path kormed used before (all texts read into Python lists, `Dataset.from_dict`, `map`, packing
  through `Dataset.from_generator`), kept here only as the comparison, at sizes up to `--old-max-gb`;
* `first_step`: `kormed train cpt` on the cached corpus (the embedded Gemma 3 270M, one step): seconds from the
  process start to the end of the first optimizer step;
* `stream` (`--streaming`): `kormed train cpt --streaming`'s reader (:func:`kormed.data.corpus_stream.stream_blocks`,
  one process, no cache) over the whole corpus -- MB/s, peak RSS, seconds to the first block -- and its
  `first_step_streaming`: `kormed train cpt --streaming` from nothing (no cache) to the end of the first step.

Peak RSS is the process's own (`ru_maxrss`) and the largest of its worker processes'. The host's CPU model, flags,
core count and load average are recorded with the figures: on a shared machine the wall-clock rates are lower
bounds.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer

from kormed.errors import KormedError

DEFAULT_SIZES_GB = (0.1, 1.0, 5.0)
GB = 1_000_000_000
MB = 1_000_000


# -- the corpus ---------------------------------------------------------------------------------------------------

def source_sentences(source: str | None = None) -> list[str]:
    """Korean sentences from `source` (JSONL with "text") or from the bundled sample sources."""
    from kormed.io import read_texts

    texts: list[str] = []
    if source:
        texts = read_texts(source, what="source text")
    else:
        from datasets import load_from_disk

        from kormed.sample_data import sample_paths

        paths = sample_paths()
        for name in ("namu_wiki", "wikipedia_korean", "c4_korean"):
            ds = load_from_disk(str(paths[name]))
            ds = ds["train"] if hasattr(ds, "keys") else ds
            texts += [t for t in ds["text"] if isinstance(t, str)]
        for name in ("mcq_train", "mcq_test", "mcq_fewshot"):
            for line in paths[name].read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                texts.append(" ".join(str(r.get(k) or "") for k in ("question", "A", "B", "C", "D", "E", "cot")))
    sentences = [s.strip() for t in texts for s in re.split(r"(?<=[.?!다])\s+|\n+", t)]
    sentences = [s for s in sentences if len(s) >= 8 and re.search("[가-힣]", s)]
    if len(sentences) < 50:
        raise KormedError("too little Korean text to build a corpus from", path=source)
    return sentences


def write_corpus(path: Path, size_bytes: int, sentences: list[str], seed: int = 0) -> Path:
    """Write a JSONL corpus of about `size_bytes` bytes: documents of 3-60 random sentences (some numbers
    replaced), kept if already written for these arguments (a `.done` marker)."""
    done = path.with_suffix(".done")
    stamp = json.dumps({"size": size_bytes, "seed": seed, "sentences": len(sentences)})
    if path.is_file() and done.is_file() and done.read_text() == stamp:
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        while written < size_bytes:
            doc = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 60)))
            doc = re.sub(r"\d+", lambda m: str(rng.randint(1, 2030)), doc)
            line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            fh.write(line)
            written += len(line.encode("utf-8"))
    os.replace(tmp, path)
    done.write_text(stamp)
    return path


# -- the arms (each in its own process) -------------------------------------------------------------------------

def _peak_rss() -> dict[str, float]:
    """Peak RSS in MiB of this process and of the largest of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": round(own, 1), "peak_child_rss_mib": round(kids, 1)}


def legacy_build(data: Path, tokenizer: Any, cache: Path, *, max_length: int, num_proc: int) -> dict[str, Any]:
    """kormed's CPT data path before the sharded cache (train/cpt.py at aa870ca), for comparison only: every text
    read into a Python list, `Dataset.from_dict`, `map` (one process under 2,000 texts), packing via
    `Dataset.from_generator`, `save_to_disk`."""
    from datasets import Dataset, Features, Sequence, Value

    from kormed.data.packing import pack_token_stream, resolve_eod_id
    from kormed.io import read_texts

    eod_id = resolve_eod_id(tokenizer, "<end_of_turn>")
    bos_id = int(tokenizer.bos_token_id)
    texts = read_texts(data, what="training text")
    n_proc = 1 if len(texts) < 2000 else num_proc
    docs = Dataset.from_dict({"text": texts})
    del texts

    def tok(batch: dict[str, list[str]]) -> dict[str, Any]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": ids, "n": [len(x) for x in ids]}

    tokenized = docs.map(tok, batched=True, batch_size=1000, num_proc=n_proc if n_proc > 1 else None,
                         remove_columns=["text"], new_fingerprint="kormed-bench-legacy")
    n_doc_tokens = int(sum(tokenized["n"]))

    def gen(token_lists: Any) -> Any:
        for block in pack_token_stream((r["ids"] for r in token_lists), max_length=max_length, bos_id=bos_id,
                                       eod_id=eod_id):
            yield {"input_ids": block}

    packed = Dataset.from_generator(gen, gen_kwargs={"token_lists": tokenized},
                                    features=Features({"input_ids": Sequence(Value("int32"))}),
                                    cache_dir=str(cache / "gen"))
    blocks = len(packed)
    packed.save_to_disk(str(cache / "packed"))
    return {"documents": len(docs), "blocks": blocks, "tokens": n_doc_tokens + len(docs) + blocks}


def _arm_tokenizer(task: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    texts: list[str] = []
    size = 0
    with open(task["data"], encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            size += len(line.encode("utf-8"))
            if size >= task["probe_mb"] * MB:
                break
    start = time.perf_counter()
    for i in range(0, len(texts), 1000):
        tokenizer(texts[i : i + 1000], add_special_tokens=False)
    seconds = time.perf_counter() - start
    return {"mb": round(size / MB, 3), "seconds": round(seconds, 3), "mb_per_s": round(size / MB / seconds, 3)}


def _arm_new(task: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    from kormed.train.cpt import build_packed_dataset

    cache = Path(task["cache"])
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    _, info = build_packed_dataset(task["data"], tokenizer, max_length=task["max_length"],
                                   num_proc=task["num_proc"], cache_dir=cache, log=print)
    seconds = time.perf_counter() - start
    rss = _peak_rss()
    start = time.perf_counter()
    ds, again = build_packed_dataset(task["data"], tokenizer, max_length=task["max_length"], cache_dir=cache,
                                     log=print)
    reload_s = time.perf_counter() - start
    from kormed.data.corpus_cache import dir_bytes

    return {"seconds": round(seconds, 2), "build_seconds": info["seconds"], "documents": info["documents"],
            "blocks": info["blocks"], "tokens": info["tokens"], "cache_bytes": dir_bytes(cache),
            "cache_hit_seconds": round(reload_s, 2), "cache_hit": again["cache_hit"], "rows": len(ds), **rss}


def _arm_stream(task: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """One pass of `--streaming`'s reader over the corpus (what each training process does, spread over the run)."""
    from kormed.data.corpus_stream import stream_blocks

    ids = {"bos_id": int(tokenizer.bos_token_id), "eod_id": tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    counts: dict[str, int] = {}
    blocks = tokens = 0
    first_block = None
    start = time.perf_counter()
    for block in stream_blocks(task["data"], tokenizer, max_length=task["max_length"], counts=counts, **ids):
        if first_block is None:
            first_block = round(time.perf_counter() - start, 3)
        blocks += 1
        tokens += len(block)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "seconds_to_first_block": first_block, "documents": counts["documents"],
            "blocks": blocks, "tokens": tokens, "cache_bytes": 0, **_peak_rss()}


def _arm_old(task: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    cache = Path(task["cache"])
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    start = time.perf_counter()
    info = legacy_build(Path(task["data"]), tokenizer, cache, max_length=task["max_length"],
                        num_proc=task["num_proc"])
    seconds = time.perf_counter() - start
    rss = _peak_rss()
    shutil.rmtree(cache, ignore_errors=True)
    return {"seconds": round(seconds, 2), **info, **rss}


def _arm_first_step(task: dict[str, Any]) -> dict[str, Any]:
    from transformers import TrainerCallback

    from kormed.train.config import CPTConfig, LoraOptions, TrainOptions
    from kormed.train.cpt import run_cpt

    t0 = task["t0"]

    class FirstStep(TrainerCallback):
        """Records the first step's end and ends the process there (no final validation or saving to time)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seconds = round(time.time() - t0, 2)
            Path(task["result"]).write_text(json.dumps({"seconds_to_first_step": seconds, **_peak_rss()}))
            os._exit(0)

    cfg = CPTConfig(data=task["data"], val=task["val"], model=task.get("model"), output=task["output"],
                    max_length=task["max_length"], cache_dir=task["cache"], streaming=task.get("streaming", False),
                    lora=LoraOptions(),
                    train=TrainOptions(batch_size=1, grad_accum=1, max_steps=1, eval_steps=1000, report_to=[],
                                       device="cpu", eval_on_start=False, gradient_checkpointing=False,
                                       save_checkpoints=False))
    run_cpt(cfg, callbacks=[FirstStep()], log=print)
    raise KormedError("internal error: training ended before its first step")


def _worker_main(argv: list[str]) -> int:
    task = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    task.setdefault("t0", time.time())
    task["result"] = argv[1]
    if task["arm"] == "first_step":
        result = _arm_first_step(task)
    else:
        from kormed.models import load_tokenizer

        tokenizer = load_tokenizer(task["tokenizer"])
        arms = {"tokenizer": _arm_tokenizer, "new": _arm_new, "old": _arm_old, "stream": _arm_stream}
        result = arms[task["arm"]](task, tokenizer)
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


# -- the bench ----------------------------------------------------------------------------------------------------

def host_info() -> dict[str, Any]:
    """CPU model, flags that matter for tokenization and bf16, core count, load average."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "bmi", "fma", "sha")))
    return {"cpu": model, "cpu_flags": keep, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0]}


def run_bench(*, sizes_gb: tuple[float, ...] = DEFAULT_SIZES_GB, work: Path, num_proc: int, max_length: int = 512,
              old_max_gb: float = 1.0, source: str | None = None, tokenizer: str | None = None,
              probe_mb: float = 8.0, first_step: bool = True, streaming: bool = False,
              log: Any = print) -> dict[str, Any]:
    """Run every arm at every size; returns the figures."""
    from kormed.bench.worker import run_worker
    from kormed.models import ensure_embedded_model

    tok_dir = tokenizer or str(ensure_embedded_model(log=log))
    sentences = source_sentences(source)
    rows: list[dict[str, Any]] = []
    for size in sizes_gb:
        tag = f"{size:g}gb"
        data = write_corpus(work / "corpus" / f"korean-{tag}.jsonl", int(size * GB), sentences)
        nbytes = data.stat().st_size
        log(f"[bench data] {tag}: corpus {data} ({nbytes / MB:.0f} MB)")
        row: dict[str, Any] = {"size_gb": size, "bytes": nbytes, "num_proc": num_proc, "host_before": host_info()}
        base = {"data": str(data), "tokenizer": tok_dir, "max_length": max_length, "num_proc": num_proc}
        row["tokenizer"], _ = run_worker("kormed.bench.data", {**base, "arm": "tokenizer", "probe_mb": probe_mb},
                                         work / "tasks", f"{tag}-tokenizer")
        cache = work / "cache" / tag
        new, _ = run_worker("kormed.bench.data", {**base, "arm": "new", "cache": str(cache)}, work / "tasks",
                            f"{tag}-new")
        new["mb_per_s"] = round(nbytes / MB / new["seconds"], 3)
        new["mb_per_s_per_proc"] = round(new["mb_per_s"] / num_proc, 3)
        new["vs_target"] = round(new["mb_per_s"] / (0.9 * num_proc * row["tokenizer"]["mb_per_s"]), 3)
        row["new"] = new
        log(f"[bench data] {tag} new: {new['seconds']} s, {new['mb_per_s']} MB/s, peak RSS {new['peak_rss_mib']} MiB "
            f"(workers {new['peak_child_rss_mib']} MiB), cache {new['cache_bytes'] / MB:.0f} MB")
        val = work / "corpus" / "val.jsonl"
        if (first_step or streaming) and not val.is_file():
            with data.open(encoding="utf-8") as src, val.open("w", encoding="utf-8") as dst:
                for _, line in zip(range(20), src, strict=False):
                    dst.write(line)
        if first_step:
            row["first_step"], _ = run_worker("kormed.bench.data", {
                **base, "arm": "first_step", "cache": str(cache), "val": str(val),
                "output": str(work / "runs" / tag), "t0": time.time()}, work / "tasks", f"{tag}-first-step")
            log(f"[bench data] {tag} first step after {row['first_step']['seconds_to_first_step']} s")
        if streaming:
            stream, _ = run_worker("kormed.bench.data", {**base, "arm": "stream"}, work / "tasks", f"{tag}-stream")
            stream["mb_per_s"] = round(nbytes / MB / stream["seconds"], 3)
            row["stream"] = stream
            log(f"[bench data] {tag} streaming reader: {stream['seconds']} s, {stream['mb_per_s']} MB/s, peak RSS "
                f"{stream['peak_rss_mib']} MiB, first block after {stream['seconds_to_first_block']} s")
            shutil.rmtree(work / "runs" / f"{tag}-streaming", ignore_errors=True)
            row["first_step_streaming"], _ = run_worker("kormed.bench.data", {
                **base, "arm": "first_step", "streaming": True, "cache": str(work / "no-cache"), "val": str(val),
                "output": str(work / "runs" / f"{tag}-streaming"), "t0": time.time()}, work / "tasks",
                f"{tag}-first-step-streaming")
            log(f"[bench data] {tag} --streaming: first step after "
                f"{row['first_step_streaming']['seconds_to_first_step']} s")
        if size <= old_max_gb:
            old, _ = run_worker("kormed.bench.data", {**base, "arm": "old", "cache": str(work / "old-cache")},
                                work / "tasks", f"{tag}-old")
            old["mb_per_s"] = round(nbytes / MB / old["seconds"], 3)
            row["old"] = old
            log(f"[bench data] {tag} old: {old['seconds']} s, {old['mb_per_s']} MB/s, peak RSS "
                f"{old['peak_rss_mib']} MiB")
        row["host_after"] = host_info()
        rows.append(row)
        shutil.rmtree(cache, ignore_errors=True)
    return {"bench": "data", "max_length": max_length, "host": host_info(), "rows": rows}


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed bench data`."""

    @subapps["bench"].command("data")
    def bench_data(
        sizes: str = typer.Option(",".join(f"{s:g}" for s in DEFAULT_SIZES_GB), "--sizes",
                                  help="Corpus sizes in GB (10^9 bytes), comma-separated."),
        work: str = typer.Option("bench-data", "--work", help="Working directory (corpora, caches, logs)."),
        num_proc: int = typer.Option(min(8, os.cpu_count() or 1), "--num-proc", min=1,
                                     help="Tokenization processes of the new path (cpt.num_proc)."),
        max_length: int = typer.Option(512, "--max-length", min=2, help="Tokens per packed block."),
        old_max_gb: float = typer.Option(1.0, "--old-max-gb",
                                         help="Run the old in-memory path only up to this size (it needs ~8x RAM)."),
        source: str = typer.Option(None, "--source", help="Korean JSONL to build the corpus from (default: the "
                                   "bundled sample sources)."),
        tokenizer: str = typer.Option(None, "--tokenizer", help="Tokenizer directory (default: embedded Gemma 3)."),
        first_step: bool = typer.Option(True, "--first-step/--no-first-step",
                                        help="Also time `kormed train cpt` to its first step on the cached corpus."),
        streaming: bool = typer.Option(False, "--streaming/--no-streaming",
                                       help="Also measure `kormed train cpt --streaming`: its reader over the whole "
                                       "corpus (MB/s, peak RSS) and its first step from nothing."),
        output: str = typer.Option(None, "--output", help="Write the figures to this JSON file."),
    ) -> None:
        """Peak RSS and tokenize+pack MB/s of CPT's data path at corpus sizes, old path beside new."""
        from kormed.io import check_output_path, write_json

        if output:
            check_output_path(output, "file", "--output")
        try:
            wanted = tuple(float(s) for s in sizes.split(",") if s.strip())
        except ValueError:
            raise KormedError(f"--sizes must be numbers in GB, got {sizes!r}") from None
        if not wanted or any(s <= 0 for s in wanted):
            raise KormedError("--sizes must be positive numbers in GB")
        res = run_bench(sizes_gb=wanted, work=Path(work), num_proc=num_proc, max_length=max_length,
                        old_max_gb=old_max_gb, source=source, tokenizer=tokenizer, first_step=first_step,
                        streaming=streaming, log=lambda m: typer.echo(m, err=True))
        typer.echo(format_table(res))
        if output:
            write_json(output, res)
            typer.echo(f"wrote {output}", err=True)


def format_table(res: dict[str, Any]) -> str:
    """A Markdown table of the figures."""
    lines = ["| corpus | path | seconds | MB/s | MB/s per process | peak RSS MiB (main / largest worker) | "
             "cache MB | first step s |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        size = f"{r['bytes'] / MB:.0f} MB"
        n = r["new"]
        fs = r.get("first_step", {}).get("seconds_to_first_step", "")
        lines.append(f"| {size} | new ({r['num_proc']} proc) | {n['seconds']} | {n['mb_per_s']} | "
                     f"{n['mb_per_s_per_proc']} | {n['peak_rss_mib']:.0f} / {n['peak_child_rss_mib']:.0f} | "
                     f"{n['cache_bytes'] / MB:.0f} | {fs} |")
        if "stream" in r:
            st = r["stream"]
            sfs = r.get("first_step_streaming", {}).get("seconds_to_first_step", "")
            lines.append(f"| {size} | streaming (1 proc, no cache) | {st['seconds']} | {st['mb_per_s']} | "
                         f"{st['mb_per_s']} | {st['peak_rss_mib']:.0f} / - | 0 | {sfs} |")
        if "old" in r:
            o = r["old"]
            lines.append(f"| {size} | old | {o['seconds']} | {o['mb_per_s']} | | {o['peak_rss_mib']:.0f} / "
                         f"{o['peak_child_rss_mib']:.0f} | | |")
        lines.append(f"| {size} | tokenizer alone (1 proc) | {r['tokenizer']['seconds']} | "
                     f"{r['tokenizer']['mb_per_s']} | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
