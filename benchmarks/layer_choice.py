"""The draft issue's layer-choice lever, untrained: for each choice of target layers, the cut draft (those layers,
the target's final norm and tied head, nothing trained) and its teacher-forced agreement with the target on the
target's greedy answers to a held-out split of our own prompts (default runs/smollm2-si/heldout_instruct.jsonl;
never the benchmark prompts). Slot 1 is the next-token agreement; the later slots read untrained mask rows, so
only slot 1 says anything about the choice. One JSON line per choice.

    python benchmarks/layer_choice.py [--prompts FILE] [--limit 40] -- 0,1,2 0,1,-1 -3,-2,-1   # "--": choices may start with "-"
"""
import argparse
import json

import torch
from greedy_cache import cached_answers

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.apps.recipes.smollm2 import MASK_TOKEN, build_cut_draft
from transformers_pard.training import greedy_sequences, load_prompts, teacher_forced_tau

parser = argparse.ArgumentParser()
parser.add_argument("choices", nargs="+", help="comma-separated target layers, e.g. 0,1,-1")
parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
parser.add_argument("--limit", type=int, default=40)
parser.add_argument("--max-new-tokens", type=int, default=128)
args = parser.parse_args()

target, tokenizer = load_smollm2()
sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.limit, answer=lambda: (
    greedy_sequences(target, tokenizer, load_prompts(args.prompts)[: args.limit], max_new_tokens=args.max_new_tokens)))
for choice in args.choices:
    layers = [int(i) for i in choice.split(",")]
    draft = build_cut_draft(target, len(layers), layers=layers).eval()
    draft.config.pard_token, draft.config.spd_type = tokenizer.convert_tokens_to_ids(MASK_TOKEN), "pard"
    with torch.no_grad():
        report = teacher_forced_tau(target, draft, sequences, k=8)
    print(json.dumps({"layers": layers, "next_token_agreement": round(report.accuracy[0], 3),
                      "positions": report.positions}), flush=True)
