"""Where a compiled PARD round's CPU time goes: torch.profiler over one `generate` of the fp32 SmolLM2 target
with the shipped draft (bf16 where native), `enable_pard(compile=True)`, 64 new tokens, the first held-out
self-instruct prompt (runs/smollm2-si/heldout_instruct.jsonl, from `recipe smollm2 --stage instruct`).
Inductor's generated kernels are named in the table (`cpp.enable_kernel_profile`).

    python benchmarks/profile_round.py [--rows 30]
"""
import argparse
import json

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from transformers_pard import enable_pard
from transformers_pard.apps.embedded import chat_prompt, load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.hardware import bf16_is_fast

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=30)
args = parser.parse_args()
inductor_config.cpp.enable_kernel_profile = True
target, tok = load_smollm2()
enable_pard(target, compile=True)
dtype = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
draft = load_draft("transformers_pard/assets/smollm2-pard-k8", target=target, dtype=dtype)
prompt = json.loads(open("runs/smollm2-si/heldout_instruct.jsonl").readline())["data"]
ids = tok(chat_prompt(tok, prompt), return_tensors="pt").input_ids
kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pard_draft=draft, pard_min_tau=None)
target.generate(ids, max_new_tokens=16, **kwargs)  # compile outside the profile
with profile(activities=[ProfilerActivity.CPU]) as prof:
    out = target.generate(ids, max_new_tokens=64, return_dict_in_generate=True, **kwargs)
print("rounds", out.pard_stats.rounds)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
