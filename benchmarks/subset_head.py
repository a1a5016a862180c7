"""Vocabulary-subset head on the shipped draft, no retraining: the N most frequent answer tokens of the recipe's
distillation data (runs/smollm2-si/distill.jsonl, from `recipe smollm2 --stage data`) against the full 49,152-row
head. fp32 SmolLM2 target, bf16 draft where the CPU has native bf16 (else fp32), first 4 held-out self-instruct
prompts (runs/smollm2-si/heldout_instruct.jsonl), 64 new tokens, K=8: identical to plain generate, tau, draft and
verify ms per round (pard_timing).

    python benchmarks/subset_head.py [--compile] [--max-cache-len N] [--sizes 0,32768,16384,8192]
"""
import argparse, json, time

import torch
from transformers import GenerationMixin

from transformers_pard import enable_pard
from transformers_pard.apps.embedded import chat_prompt, load_smollm2
from transformers_pard.draft_io import load_draft
from transformers_pard.hardware import bf16_is_fast
from transformers_pard.vocab import attach_vocab_subset, frequent_ids

parser = argparse.ArgumentParser()
parser.add_argument("--compile", action="store_true")
parser.add_argument("--sizes", default="0,32768,16384,8192")
parser.add_argument("--max-cache-len", type=int, default=None, help="enable_pard(max_cache_len=)")
parser.add_argument("--prompts", type=int, default=4)
parser.add_argument("--max-new-tokens", type=int, default=64)
args = parser.parse_args()

target, tok = load_smollm2()
enable_pard(target, compile=args.compile, max_cache_len=args.max_cache_len)
dtype = torch.bfloat16 if bf16_is_fast(torch.device("cpu")) else torch.float32
answers = [json.loads(line)["messages"][-1]["content"] for line in open("runs/smollm2-si/distill.jsonl")]
token_lists = [tok(a).input_ids + [tok.eos_token_id] for a in answers]
n_tokens = sum(map(len, token_lists))
prompts = [json.loads(line)["data"] for line in open("runs/smollm2-si/heldout_instruct.jsonl")][:args.prompts]
encoded = [tok(chat_prompt(tok, p), return_tensors="pt").input_ids for p in prompts]
refs, plain_s, plain_n = [], 0.0, 0
for ids in encoded:
    t0 = time.perf_counter()
    refs.append(GenerationMixin.generate(target, ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=args.max_new_tokens, do_sample=False))
    plain_s += time.perf_counter() - t0
    plain_n += refs[-1].shape[1] - ids.shape[1]
print({"draft_dtype": str(dtype), "answer_tokens": n_tokens, "plain_ms_step": round(plain_s / plain_n * 1e3, 1)}, flush=True)

for size in (int(s) for s in args.sizes.split(",")):
    draft = load_draft("transformers_pard/assets/smollm2-pard-k8", target=target, dtype=dtype)
    ids_subset = frequent_ids(token_lists, size, vocab_size=49152, always=[tok.eos_token_id]) if size else None
    attach_vocab_subset(draft, ids_subset)
    kept = set(ids_subset.tolist()) if size else None
    coverage = sum(t in kept for ts in token_lists for t in ts) / n_tokens if size else 1.0
    kw = dict(do_sample=False, pard_draft=draft, pard_min_tau=None)
    t0 = time.perf_counter()
    target.generate(encoded[0], attention_mask=torch.ones_like(encoded[0]), max_new_tokens=16, **kw)  # warm-up
    warm = time.perf_counter() - t0
    same, accepted, rounds, draft_s, verify_s, total_s = 0, 0, 0, 0.0, 0.0, 0.0
    for ids, ref in zip(encoded, refs):
        t0 = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                              pard_timing=True, return_dict_in_generate=True, **kw)
        total_s += time.perf_counter() - t0
        st = out.pard_stats
        same += torch.equal(ref, out.sequences)
        accepted += st.tau * st.rounds
        rounds += st.rounds
        draft_s += st.phase_seconds["draft"]
        verify_s += st.phase_seconds["verify"]
    print({"subset": size or "full", "label_coverage": round(coverage, 4), "identical": f"{same}/{len(encoded)}",
           "tau": round(accepted / rounds, 2), "draft_ms": round(draft_s / rounds * 1e3, 1),
           "verify_ms": round(verify_s / rounds * 1e3, 1), "round_ms": round(total_s / rounds * 1e3, 1),
           "warmup_s": round(warm, 1)}, flush=True)
