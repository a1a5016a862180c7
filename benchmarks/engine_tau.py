"""Engine tau: tokens committed per round by real ``generate`` (greedy, fp32, no auto-disable), per
verify configuration, on a held-out split of our own prompts (default runs/smollm2-si/heldout_instruct.jsonl,
never the benchmark's). Unlike the teacher-forced replays (tf_tau.py, slot_topk.py), this is what decoding
gets: rounds start where the previous one ended. Every output is checked against the target's cached
greedy answer (greedy_cache.py).

    python benchmarks/engine_tau.py [--limit 12] [--offset 0] [--draft DIR] [--store DIR] [--draft-weight W] \\
        --configs chain tree:8 lookup:8:4 lookup:8:4:store

``chain`` = K draft tokens; ``tree:N`` = an N-node tree; ``lookup:N:L`` = N nodes and up to L lookup candidates
(the row's own text; greedy: the ranked tree); ``lookup:N:L:store`` = the same with a lookup store (``--store`` DIR's
``pard_lookup.safetensors``, else the draft's own).
"""
import argparse
import json

import torch
from greedy_cache import cached_answers

from transformers_pard import LookupStore, enable_pard, verification
from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.training import greedy_sequences, load_prompts

parser = argparse.ArgumentParser()
parser.add_argument("--configs", nargs="+", default=["chain", "tree:8", "lookup:8:4", "lookup:8:4:own"])
parser.add_argument("--draft", default="transformers_pard/assets/smollm2-pard-k8")
parser.add_argument("--store", default=None, help="a folder with pard_lookup.safetensors (default: the draft's own)")
parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
parser.add_argument("--limit", type=int, default=12)
parser.add_argument("--offset", type=int, default=0, help="skip the first N prompts")
parser.add_argument("--answers", type=int, default=40, help="the cached greedy answers' --limit")
parser.add_argument("--k", type=int, default=8)
parser.add_argument("--max-new-tokens", type=int, default=128)
parser.add_argument("--draft-weight", type=float, default=None,
                    help="the ranked tree's weight on the draft's path log-probabilities (verification.RANKED_DRAFT_WEIGHT)")
args = parser.parse_args()
if args.draft_weight is not None:
    verification.RANKED_DRAFT_WEIGHT = args.draft_weight

target, tokenizer = load_smollm2()
enable_pard(target)
sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.answers, answer=lambda: (
    greedy_sequences(target, tokenizer, load_prompts(args.prompts)[: args.answers], max_new_tokens=args.max_new_tokens)))
draft = load_draft(args.draft, target=target, dtype=torch.float32)
store = LookupStore.load(args.store) if args.store else None


def keywords(config: str) -> dict:
    kind, *numbers = config.split(":")
    stored = numbers[-1:] == ["store"]
    numbers = [int(n) for n in numbers if n != "store"]
    if kind == "chain":
        return {}
    if kind == "tree":
        return {"pard_tree": numbers[0]}
    lookup = {"pard_tree": numbers[0], "pard_lookup": numbers[1]}
    return {**lookup, "pard_lookup_store": store or True} if stored else lookup


for config in args.configs:
    committed = rounds = lookup_tokens = identical = 0
    for ids, start in sequences[args.offset: args.offset + args.limit]:
        prompt = torch.tensor([ids[:start]])
        out = target.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, pard_draft=draft,
                              num_assistant_tokens=args.k, pard_min_tau=None, max_new_tokens=args.max_new_tokens,
                              return_dict_in_generate=True, **keywords(config))
        stats = out.pard_stats
        committed, rounds, lookup_tokens = committed + stats.committed_tokens, rounds + stats.row_rounds, \
            lookup_tokens + stats.lookup_tokens
        identical += out.sequences[0, : len(ids)].tolist() == list(ids)
    print(json.dumps({"config": config, "tau": round(committed / rounds, 3), "rounds": rounds,
                      "lookup_tokens_per_round": round(lookup_tokens / rounds, 3),
                      "identical": f"{identical}/{args.limit}"}), flush=True)
