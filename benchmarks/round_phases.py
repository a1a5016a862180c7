"""Milliseconds a round per engine phase (draft, verify, other) of the compiled ranked tree (8 nodes, up to 8
lookup candidates, the draft's store; greedy, fp32 target, the shipped draft in bf16 where native), summed over
the first held-out prompts (runs/smollm2-si/heldout_instruct.jsonl, never the benchmark's), after one warm-up
call. A quick A/B of an engine change (run it on both commits); the README's bench is the measurement of record.

    python benchmarks/round_phases.py [--limit 4] [--repeats 2] [--threads 1] [--no-cpp-wrapper]
"""
import argparse
import json
import time

import torch

from transformers_pard import enable_pard
from transformers_pard.apps.embedded import chat_prompt, load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.hardware import bf16_is_fast

parser = argparse.ArgumentParser()
parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
parser.add_argument("--limit", type=int, default=4)
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--max-new-tokens", type=int, default=128)
parser.add_argument("--no-cpp-wrapper", action="store_true", help="enable_pard(cpp_wrapper=False)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
target, tok = load_smollm2()
enable_pard(target, compile=True, **({"cpp_wrapper": False} if args.no_cpp_wrapper else {}))
dtype = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
draft = load_draft("transformers_pard/assets/smollm2-pard-k8", target=target, dtype=dtype)
prompts = [json.loads(line)["data"] for line in open(args.prompts)][: args.limit]
kwargs = dict(do_sample=False, pard_draft=draft, pard_min_tau=None, pard_tree=8, pard_lookup=8, pard_lookup_store=True)


def run(prompt: str, max_new_tokens: int):
    ids = tok(chat_prompt(tok, prompt), return_tensors="pt").input_ids
    return target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           return_dict_in_generate=True, pard_timing=True, **kwargs).pard_stats


start = time.perf_counter()
run(prompts[0], 16)
print(f"warm-up {time.perf_counter() - start:.1f} s")
seconds, rounds = {}, 0
for _ in range(args.repeats):
    for prompt in prompts:
        stats = run(prompt, args.max_new_tokens)
        rounds += stats.rounds
        for phase, value in stats.phase_seconds.items():
            seconds[phase] = seconds.get(phase, 0.0) + value
per_round = {phase: round(1000 * value / rounds, 2) for phase, value in seconds.items()}
print(json.dumps({"rounds": rounds, "ms_per_round": per_round,
                  "round_ms": round(sum(v for k, v in per_round.items() if k != "prefill"), 2)}))
