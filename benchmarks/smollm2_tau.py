"""tau of SmolLM2 drafts (PARD-1, or PARD-2 in either mode) without auto-disable.

    python benchmarks/smollm2_tau.py \\
        --draft pard1=transformers_pard/assets/smollm2-pard-k8 \\
        --draft pard2-dependent=runs/smollm2/pard2-std:dependent \\
        --draft pard2-independent=runs/smollm2/pard2-std:independent \\
        --teacher-forced 40 --out OUT.json

Greedy, fp32, K=8, 128 new tokens: the first ``--limit`` (10) prompts of each ../shared/bench file, and
``--limit`` of the recipe's held-out prompts, measured by the engine. ``--teacher-forced N`` adds the
teacher-forced tau (``training.teacher_forced_tau``) on the target's greedy answers to the first N
held-out prompts. Each ``--draft`` is NAME=FOLDER[:MODE].
"""

import argparse
import json
import os
import time

from transformers_pard import enable_pard
from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.apps.recipes.smollm2 import HELDOUT_FILE
from transformers_pard.draft_io import load_draft
from transformers_pard.training import greedy_sequences, load_prompts, measure_tau, teacher_forced_tau

BENCH = ("../shared/bench/gsm8k.jsonl", "../shared/bench/humaneval.jsonl")
HELDOUT = os.path.join("runs/smollm2", HELDOUT_FILE)


def parse_draft(spec: str) -> tuple[str, str, str | None]:
    name, _, rest = spec.partition("=")
    path, _, mode = rest.partition(":")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--draft wants NAME=FOLDER[:MODE], got {spec!r}")
    return name, path, mode or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draft", type=parse_draft, action="append", required=True)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--teacher-forced", type=int, default=0, metavar="N")
    parser.add_argument("--heldout", action="append", default=None, metavar="FILE",
                        help=f"held-out prompt file(s) of ours (default {HELDOUT}); never the benchmark prompts")
    parser.add_argument("--sets", default="bench,heldout", help="engine-measured sets: bench, heldout, or none")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    heldout = [p for path in (args.heldout or [HELDOUT]) for p in load_prompts(path)]
    target, tokenizer = load_smollm2()
    target = enable_pard(target)
    sets = {"bench": lambda: [p for path in BENCH for p in load_prompts(path)[:args.limit]],
            "heldout": lambda: heldout[:args.limit]}
    prompt_sets = {name: sets[name]() for name in args.sets.split(",") if name in sets}
    texts = greedy_sequences(target, tokenizer, heldout[:args.teacher_forced], max_new_tokens=args.max_new_tokens)
    results = {"k": args.k, "max_new_tokens": args.max_new_tokens}
    for name, path, mode in args.draft:
        draft = load_draft(path, target=target)
        for set_name, prompts in prompt_sets.items():
            start = time.time()
            report = measure_tau(target, draft, tokenizer, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                                 pard_mode=mode)
            results[f"{name}/{set_name}"] = {"draft": path, "mode": mode, "tau": report.mean_tau,
                                             "histogram": list(report.histogram), "prompts": len(prompts)}
            print(name, set_name, report.summary(), f"{time.time() - start:.0f}s", flush=True)
        if texts:
            report = teacher_forced_tau(target, draft, texts, k=args.k, pard_mode=mode)
            results[f"{name}/heldout-teacher-forced"] = {"draft": path, "mode": mode, "tau": report.mean_tau,
                                                         "accuracy": list(report.accuracy), "texts": len(texts)}
            print(name, "heldout teacher-forced", report.summary(), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
