"""Does the tokenizer extension pay? CPT arms on the embedded Gemma 3 270M at a fixed budget of training characters.

Every arm trains on the same characters of `train.jsonl` (same document order; the text is cut at the budget),
tokenized with its own tokenizer and packed into `--max-length` blocks, batch 2, LoRA (the CPT defaults: r 16,
alpha 32, rsLoRA, the seven linear layers) at the demo's learning rate, cosine decay. Held-out bits per character
(total NLL / ln 2 / characters; tokenizer-independent) on general Korean text (`test.jsonl`) and on medical text
(`medical_test.jsonl`), both from `scripts/fetch_korean_text.py`.

    python scripts/fetch_korean_text.py --out ~/.cache/kormed/korean_text
    python benchmarks/vocab_extension.py --text-dir ~/.cache/kormed/korean_text \
        --budgets 3500,20000 --seeds 0 --out benchmarks/results/vocab_extension_cpu.json
    python benchmarks/vocab_extension.py --budgets 100000 --seeds 0,1 --arms cpt,ext100_mean_lr10

The training loop is a plain optimizer loop (not `kormed train cpt`): it runs the same model preparation
(`resize_and_init_embeddings`, `peft_embedding_kwargs`, `embedding_param_groups`) and the same embeddings-first
phase (`kormed.train.cpt.embedding_warmup_trainables`) without the Trainer's checkpointing and validation, which
would cost more than the training at these budgets on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Arm:
    name: str
    new_tokens: int = 0  # 0: the base tokenizer
    init: str = "mean"
    embedding_lr: float | None = None  # None: lr / 4 (kormed's new-row default until 2026-12-03; now 10x lr)
    warmup_share: float = 0.0  # share of the steps that train only the new rows (embeddings-first phase)
    warmup_lr: float = 1e-3
    train: bool = True


ARMS = {
    a.name: a
    for a in [
        Arm("base", train=False),
        Arm("cpt"),
        Arm("ext2000_mean", 2000),
        Arm("ext2000_seq", 2000, init="sequence"),
        Arm("ext2000_mean_warm", 2000, embedding_lr=1e-3, warmup_share=0.25),
        Arm("ext100_mean", 100),
        Arm("ext100_seq", 100, init="sequence"),
        Arm("ext100_mean_warm", 100, embedding_lr=1e-3, warmup_share=0.25),
        Arm("ext100_mean_lr10", 100, embedding_lr=2e-3),  # new rows at 10x LoRA's rate, the literature's direction
        Arm("ext50_mean", 50),
        Arm("ext50_mean_warm", 50, embedding_lr=1e-3, warmup_share=0.25),
        Arm("ext2000_mean_step0", 2000, train=False),
        Arm("ext2000_seq_step0", 2000, init="sequence", train=False),
        Arm("ext100_mean_step0", 100, train=False),
        Arm("ext100_seq_step0", 100, init="sequence", train=False),
    ]
}


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def head_chars(texts: list[str], budget: int) -> list[str]:
    """The first `budget` characters of `texts`, in order (the last text cut)."""
    out, used = [], 0
    for text in texts:
        if used >= budget:
            break
        out.append(text[: budget - used])
        used += len(out[-1])
    return out


def extended_tokenizer(text_dir: Path, work: Path, new_tokens: int, dict_path: str) -> str:
    """An extended tokenizer with `new_tokens` entries learned on train.jsonl (cached under `work`)."""
    from kormed.tokenizer.config import TokenizerConfig
    from kormed.tokenizer.extend import extend_tokenizer

    out = work / f"tok{new_tokens}"
    if not (out / "tokenizer.json").is_file():
        cfg = TokenizerConfig(corpus=str(text_dir / "train.jsonl"), dict=dict_path, out=str(out),
                              max_new_tokens=new_tokens, max_dict_tokens=min(500, new_tokens // 4), min_frequency=2)
        extend_tokenizer(cfg, log=lambda m: None)
    return str(out)


def bits_per_char(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> float:
    from kormed.eval.perplexity import evaluate_perplexity, packed_eval_blocks

    blocks = packed_eval_blocks(tokenizer, texts, max_length=max_length)
    r = evaluate_perplexity(model, blocks, batch_size=4, progress=False, compute_dtype="bfloat16")
    return r["loss"] * r["tokens"] / math.log(2) / sum(len(t) for t in texts)


def run_arm(arm: Arm, budget: int, seed: int, ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from kormed.data.packing import pack_documents
    from kormed.embeddings import resize_and_init_embeddings
    from kormed.models import load_model, load_tokenizer
    from kormed.precision import autocast
    from kormed.train.config import GEMMA_LINEAR_MODULES
    from kormed.train.cpt import embedding_warmup_trainables
    from kormed.train.engine.model_setup import embedding_param_groups, peft_embedding_kwargs

    t0 = time.time()
    torch.manual_seed(seed)
    random.seed(seed)
    model = load_model(ctx["model_dir"], ctx["runtime"])
    base_tok = load_tokenizer(ctx["model_dir"])
    tok, new_ids = base_tok, []
    if arm.new_tokens:
        tok = load_tokenizer(extended_tokenizer(ctx["text_dir"], ctx["work"], arm.new_tokens, ctx["dict"]))
        new_ids = resize_and_init_embeddings(model, base_tok, tok, init=arm.init)
    row: dict[str, Any] = {**asdict(arm), "budget_chars": budget if arm.train else 0, "seed": seed,
                           "new_token_count": len(new_ids)}
    if arm.train:
        texts = head_chars(ctx["train_texts"], budget)
        docs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        eod = tok.convert_tokens_to_ids("<end_of_turn>")
        blocks = pack_documents(docs, max_length=ctx["max_length"], bos_id=int(tok.bos_token_id), eod_id=eod)
        random.Random(0).shuffle(blocks)  # the same order rule for every arm
        steps = math.ceil(len(blocks) / 2)
        warm = round(steps * arm.warmup_share) if new_ids else 0
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, use_rslora=True, task_type="CAUSAL_LM",
                         target_modules=list(GEMMA_LINEAR_MODULES),
                         **(peft_embedding_kwargs(model, new_ids) if new_ids else {}))
        model = get_peft_model(model, cfg)
        lr, emb_lr = ctx["lr"], arm.embedding_lr if arm.embedding_lr is not None else ctx["lr"] / 4
        losses = []

        def train_steps(batches: list[list[list[int]]], optimizer: Any, scheduler: Any) -> None:
            model.train()
            for batch in batches:
                width = max(len(b) for b in batch)
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for i, b in enumerate(batch):
                    ids[i, : len(b)] = torch.tensor(b)
                    mask[i, : len(b)] = 1
                labels = ids.masked_fill(mask == 0, -100)
                with autocast(torch.device("cpu"), "bfloat16"):
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(round(float(loss.detach()), 4))

        batches = [blocks[i:i + 2] for i in range(0, len(blocks), 2)]
        if warm:
            with embedding_warmup_trainables(model):
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=arm.warmup_lr,
                                        weight_decay=0.0)
                train_steps(batches[:warm], opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
        opt = torch.optim.AdamW(embedding_param_groups(model, lr, emb_lr))
        sched = get_cosine_schedule_with_warmup(opt, 0, max(1, steps - warm))
        train_steps(batches[warm:], opt, sched)
        row.update(steps=steps, embedding_only_steps=warm, train_tokens=sum(len(b) for b in blocks),
                   train_chars=sum(len(t) for t in texts), losses=losses)
    row["general_split"] = ctx["general_split"]
    row["bits_per_char_general"] = round(bits_per_char(model, tok, ctx["general"], ctx["eval_length"]), 5)
    row["bits_per_char_medical"] = round(bits_per_char(model, tok, ctx["medical"], ctx["eval_length"]), 5)
    row["seconds"] = round(time.time() - t0, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-dir", type=Path, default=Path.home() / ".cache" / "kormed" / "korean_text")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/vocab_extension_cpu.json"))
    ap.add_argument("--budgets", default="3500,20000", help="training characters per arm, comma-separated")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-length", type=int, default=128, help="training block length (the demo's)")
    ap.add_argument("--eval-length", type=int, default=256)
    ap.add_argument("--general-chars", type=int, default=8000, help="held-out general Korean characters")
    ap.add_argument("--general-split", default="test", choices=["dev", "test"],
                    help="split of the general text measured: dev to choose a setting, test to report it")
    ap.add_argument("--medical-chars", type=int, default=6000, help="held-out medical characters")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "kormed" / "vocab_bench")
    args = ap.parse_args()

    import torch

    from kormed.models import ensure_embedded_model, pick_runtime
    from kormed.sample_data import sample_data_root

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.work.mkdir(parents=True, exist_ok=True)
    train_texts = read_texts(args.text_dir / "train.jsonl")
    random.Random(0).shuffle(train_texts)  # one fixed document order for every arm
    ctx = {
        "model_dir": str(ensure_embedded_model(log=lambda m: None)),
        "runtime": pick_runtime("cpu", "float32"),
        "text_dir": args.text_dir, "work": args.work, "lr": args.lr, "max_length": args.max_length,
        "eval_length": args.eval_length, "train_texts": train_texts,
        "dict": str(sample_data_root() / "data" / "02_refined" / "01_medical_dict.json"),
        "general": head_chars(read_texts(args.text_dir / f"{args.general_split}.jsonl"), args.general_chars),
        "general_split": args.general_split,
        "medical": head_chars(read_texts(args.text_dir / "medical_test.jsonl"), args.medical_chars),
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    done = {(r["name"], r["budget_chars"], r["seed"]) for r in results["rows"]}
    for budget in [int(b) for b in args.budgets.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.arms.split(","):
                arm = ARMS[name]
                key = (name, budget if arm.train else 0, seed)
                if key in done:
                    continue
                row = run_arm(arm, budget, seed, ctx)
                results["rows"].append(row)
                done.add(key)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
                tmp.replace(args.out)
                print(f"{name:22s} budget {row['budget_chars']:>6} seed {seed} new {row['new_token_count']:>5} "
                      f"steps {row.get('steps', 0):>3} bpc general {row['bits_per_char_general']:.4f} "
                      f"medical {row['bits_per_char_medical']:.4f} ({row['seconds']}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
