"""The recipe's data, pinned: rows, answer tokens and sha256 of every jsonl file in a recipe folder.

runs/ is not committed; the recipe regenerates its data deterministically (same seeds, same batches). This
manifest, committed, says what a regeneration must give back:

    python benchmarks/data_manifest.py runs/smollm2-si --write benchmarks/results/smollm2-data-manifest.json
    python benchmarks/data_manifest.py runs/smollm2-si --check benchmarks/results/smollm2-data-manifest.json
"""

import argparse
import glob
import hashlib
import json
import os
import sys

from transformers import AutoTokenizer

from transformers_pard.apps.embedded import GGUF_FILE, smollm2_dir
from transformers_pard.apps.recipes.smollm2.export import answer_counts


def describe(path: str, tokenizer) -> dict:
    """Rows, assistant-answer tokens (0 for prompt-only files) and the file's sha256."""
    with open(path, "rb") as f:
        raw = f.read()
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    _, tokens = answer_counts(rows, tokenizer)
    return {"rows": len(rows), "answer_tokens": tokens, "sha256": hashlib.sha256(raw).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--write", help="write the manifest here")
    parser.add_argument("--check", help="compare with this manifest (exit 1 on a difference)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    files = sorted(glob.glob(os.path.join(args.folder, "*.jsonl")))
    manifest = {os.path.basename(p): describe(p, tokenizer) for p in files}
    for name, entry in manifest.items():
        print(f"{name:32s} {entry['rows']:6d} rows {entry['answer_tokens']:9,d} answer tokens  {entry['sha256'][:12]}")
    if args.write:
        with open(args.write, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
    if args.check:
        with open(args.check) as f:
            expected = json.load(f)
        differ = sorted(name for name in expected if manifest.get(name) != expected[name])
        print("identical to the manifest" if not differ else f"differs from the manifest: {', '.join(differ)}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
