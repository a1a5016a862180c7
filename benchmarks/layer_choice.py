"""Which target layers a SmolLM2 draft should start from (draft issue, capacity lever): the untrained agreement
of each cut of the target (``build_cut_draft``: the chosen decoder layers in order, the target's embedding,
final norm and tied head, nothing trained).

    python benchmarks/layer_choice.py [--prompts FILE] [--limit 40] -- 0,1,2 0,1,-1 -3,-2,-1   # "--": choices may start with "-"

Agreement = share of the answer positions of the target's greedy answers (``greedy_cache``: our held-out
self-instruct split, never the benchmark prompts) where the cut's argmax is the target's next token: PARD's
draft slot 1 before its mask slots learn anything. One JSON line per cut.
"""

import argparse
import json

import torch
from greedy_cache import cached_answers

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.apps.recipes.smollm2 import build_cut_draft
from transformers_pard.training import greedy_sequences, load_prompts


@torch.no_grad()
def agreement(draft, sequences) -> tuple[float, int]:
    hits = positions = 0
    for sequence, start in sequences:
        ids = torch.tensor(sequence)[None]  # (1, L)
        guess = draft(ids).logits[0, start - 1:-1].argmax(-1)  # (A,) after each answer prefix
        hits += int((guess == ids[0, start:]).sum())
        positions += guess.numel()
    return hits / max(positions, 1), positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("choices", nargs="+", help="comma-separated target layers, one cut each (negative: from the last)")
    parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    target, tokenizer = load_smollm2(dtype=torch.float32)
    sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.limit, answer=lambda: (
        greedy_sequences(target, tokenizer, load_prompts(args.prompts)[: args.limit], max_new_tokens=args.max_new_tokens)))
    for choice in args.choices:
        layers = [int(i) for i in choice.split(",")]
        share, positions = agreement(build_cut_draft(target, len(layers), layers=layers).eval(), sequences)
        print(json.dumps({"layers": layers, "agreement": round(share, 4), "positions": positions}), flush=True)


if __name__ == "__main__":
    main()
