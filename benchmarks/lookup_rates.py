"""How often lookup candidates are right, by source and matched n-gram length: the estimates behind the
ranked tree (``lookup.OWN_RATES``, ``lookup.STORE_RATES``). Teacher-forced: at every answer position of the
target's cached greedy answers to a held-out split of our own prompts (never the benchmark's), the row's own
continuation (prompt lookup) and the store's, and how many of their first L candidates are the answer's next
tokens. Prints one JSON line per (source, n): positions, ``first`` = P(candidate 1 right) and ``next`` =
P(candidate j + 1 right | candidates 1..j right), pooled over j (the geometric run's maximum-likelihood rate).

    python benchmarks/lookup_rates.py [--prompts FILE] [--offset 12] [--limit 28] [--store DIR]
"""
import argparse
import json

import torch
from greedy_cache import cached_answers

from transformers_pard import LookupStore
from transformers_pard.lookup import ngram_continuation

parser = argparse.ArgumentParser()
parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
parser.add_argument("--answers", type=int, default=40, help="the cached greedy answers' --limit")
parser.add_argument("--offset", type=int, default=12, help="skip the first N prompts (engine_tau.py's tuning split)")
parser.add_argument("--limit", type=int, default=28)
parser.add_argument("--store", default="transformers_pard/assets/smollm2-pard-k8")
parser.add_argument("--length", type=int, default=8)
parser.add_argument("--max-new-tokens", type=int, default=128)
args = parser.parse_args()


def missing():
    raise SystemExit(f"No cached answers for {args.prompts}: run benchmarks/tf_tau.py or engine_tau.py first.")


sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.answers, answer=missing)
store = LookupStore.load(args.store)
counts = {}  # (source, n) -> [positions, right prefixes of length 1..L]
for ids, start in sequences[args.offset: args.offset + args.limit]:
    text = torch.tensor(ids)
    end = torch.arange(start, len(ids) - args.length + 1)  # (P,) rounds whose L next tokens are known
    tokens = text.expand(len(end), -1)  # (P, S)
    begin = torch.zeros_like(end)
    truth = text[end[:, None] + torch.arange(args.length)]  # (P, L)
    sources = {"own": ngram_continuation(tokens, begin, end, length=args.length)}
    if store is not None:
        sources["store"] = store.continuation(tokens, begin, end, length=args.length)
    for source, (candidates, matched) in sources.items():
        right = (candidates == truth).long().cumprod(1)  # (P, L) the first j + 1 all right
        for n in matched.unique().tolist():
            if n == 0:
                continue
            rows = matched == n
            entry = counts.setdefault((source, n), [0] + [0] * args.length)
            entry[0] += int(rows.sum())
            for j, total in enumerate(right[rows].sum(0).tolist()):
                entry[1 + j] += total
for (source, n), (positions, *prefix) in sorted(counts.items()):
    first = prefix[0] / positions
    following = sum(prefix[1:]) / max(sum(prefix[:-1]), 1)
    print(json.dumps({"source": source, "n": n, "positions": positions, "first": round(first, 3),
                      "next": round(following, 3), "right_prefixes": prefix}))
