"""Where a compiled PARD round's CPU time goes: torch.profiler over one `generate` of the fp32 SmolLM2 target
with the shipped draft (bf16 where native), `enable_pard(compile=True)`, 64 new tokens, the first held-out
self-instruct prompt (runs/smollm2-si/heldout_instruct.jsonl, from `recipe smollm2 --stage instruct`).
Inductor's generated kernels are named in the table (`cpp.enable_kernel_profile`).

    python benchmarks/profile_round.py [--rows 30] [--tree-nodes 8 --lookup-nodes 8 [--lookup-store]] [--python] [--threads 1]

``--tree-nodes`` / ``--lookup-nodes``: the token tree (``pard_tree`` / ``pard_lookup``) instead of the chain.
``--python``: cProfile's cumulative table of the round's Python functions instead (where the host time
between the forwards goes), plus the engine's own phase seconds per round.
"""
import argparse
import cProfile
import json
import pstats

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from transformers_pard import enable_pard
from transformers_pard.apps.embedded import chat_prompt, load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.hardware import bf16_is_fast

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=30)
parser.add_argument("--tree-nodes", type=int, default=None)
parser.add_argument("--lookup-nodes", type=int, default=None)
parser.add_argument("--lookup-store", action="store_true", help="the draft's lookup store too (pard_lookup_store=True)")
parser.add_argument("--python", action="store_true")
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--max-new-tokens", type=int, default=64)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
inductor_config.cpp.enable_kernel_profile = True
target, tok = load_smollm2()
enable_pard(target, compile=True)
dtype = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
draft = load_draft("transformers_pard/assets/smollm2-pard-k8", target=target, dtype=dtype)
prompt = json.loads(open("runs/smollm2-si/heldout_instruct.jsonl").readline())["data"]
ids = tok(chat_prompt(tok, prompt), return_tensors="pt").input_ids
kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pard_draft=draft, pard_min_tau=None,
              pard_tree=args.tree_nodes, pard_lookup=args.lookup_nodes,
              **({"pard_lookup_store": True} if args.lookup_store else {}))
target.generate(ids, max_new_tokens=16, **kwargs)  # compile outside the profile
call = dict(max_new_tokens=args.max_new_tokens, return_dict_in_generate=True, pard_timing=True, **kwargs)
if args.python:
    profiler = cProfile.Profile()
    out = profiler.runcall(target.generate, ids, **call)
    stats = out.pard_stats
    print("rounds", stats.rounds, "ms a round:", {k: round(1000 * v / stats.rounds, 2) for k, v in stats.phase_seconds.items()})
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.rows)
else:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = target.generate(ids, **call)
    print("rounds", out.pard_stats.rounds)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
