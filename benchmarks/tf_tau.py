"""Teacher-forced tau (``training.teacher_forced_tau``, K=8) of draft folders on the target's greedy answers to a
held-out split of our own prompts (default runs/smollm2-si/heldout_instruct.jsonl, from `recipe smollm2 --stage
instruct`; never the benchmark prompts). The answers are generated once (fp32 target, 128 new tokens) and cached
next to the prompts file. Prints one JSON line per draft: tau and the per-slot accuracy.

    python benchmarks/tf_tau.py DRAFT_FOLDER [DRAFT_FOLDER ...] [--prompts FILE] [--limit 40]
"""
import argparse
import json

import torch
from greedy_cache import cached_answers

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.training import greedy_sequences, load_prompts, teacher_forced_tau

parser = argparse.ArgumentParser()
parser.add_argument("drafts", nargs="+")
parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
parser.add_argument("--limit", type=int, default=40)
parser.add_argument("--max-new-tokens", type=int, default=128)
args = parser.parse_args()

target, tokenizer = load_smollm2()
sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.limit, answer=lambda: (
    greedy_sequences(target, tokenizer, load_prompts(args.prompts)[: args.limit], max_new_tokens=args.max_new_tokens)))
for folder in args.drafts:
    draft = load_draft(folder, target=target, dtype=torch.float32)
    with torch.no_grad():
        report = teacher_forced_tau(target, draft, sequences, k=8)
    print(json.dumps({"draft": folder, "tau": round(report.mean_tau, 3), "positions": report.positions,
                      "accuracy": [round(a, 3) for a in report.accuracy]}), flush=True)
