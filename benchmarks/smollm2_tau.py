"""tau of the SmolLM2 drafts (PARD-1 shipped draft; PARD-2 draft in both modes) without auto-disable.

    python benchmarks/smollm2_tau.py   # after `recipe smollm2` (K=8) and `recipe smollm2 --pard2 --init-from ...`

Greedy, fp32, K=8, 128 new tokens: the first 10 prompts of each ../shared/bench file, and 10 of the
recipe's held-out prompts. Writes benchmarks/results/smollm2-tau-pard1-vs-pard2.json.
"""

import json
import time

from transformers_pard import enable_pard
from transformers_pard.draft_io import load_draft
from transformers_pard.embedded import load_smollm2
from transformers_pard.training import load_prompts, measure_tau

BENCH = ("../shared/bench/gsm8k.jsonl", "../shared/bench/humaneval.jsonl")
HELDOUT = "runs/smollm2/heldout_prompts.jsonl"
DRAFTS = (
    ("pard1", "transformers_pard/assets/smollm2-pard-k8", None),
    ("pard2-dependent", "runs/smollm2/draft-k8-l3-pard2", "dependent"),
    ("pard2-independent", "runs/smollm2/draft-k8-l3-pard2", "independent"),
)


def main() -> None:
    target, tokenizer = load_smollm2()
    target = enable_pard(target)
    prompt_sets = {"bench": [p for path in BENCH for p in load_prompts(path)[:10]], "heldout": load_prompts(HELDOUT)[:10]}
    results = {}
    for name, path, mode in DRAFTS:
        draft = load_draft(path, target=target)
        for set_name, prompts in prompt_sets.items():
            start = time.time()
            report = measure_tau(target, draft, tokenizer, prompts, k=8, max_new_tokens=128, pard_mode=mode)
            results[f"{name}/{set_name}"] = {"tau": report.mean_tau, "histogram": list(report.histogram),
                                             "prompts": len(prompts)}
            print(name, set_name, report.summary(), f"{time.time() - start:.0f}s", flush=True)
    with open("benchmarks/results/smollm2-tau-pard1-vs-pard2.json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
