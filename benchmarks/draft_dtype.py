"""Draft dtype on the real model: the shipped draft in fp32 and in bf16 against the fp32 SmolLM2 target, on the
first 4 held-out self-instruct prompts (runs/smollm2-si/heldout_instruct.jsonl, from `recipe smollm2 --stage
instruct`), 64 new tokens: identical to plain generate, tau, draft and verify ms per round (pard_timing).

    python benchmarks/draft_dtype.py [--compile]
"""
import torch, time, json, sys
from transformers_pard.apps.embedded import load_smollm2, chat_prompt
from transformers_pard import enable_pard
from transformers_pard.draft_io import load_draft
target, tok = load_smollm2()
enable_pard(target, compile="--compile" in sys.argv)
drafts = {dt: load_draft("transformers_pard/assets/smollm2-pard-k8", target=target, dtype=dt) for dt in (torch.float32, torch.bfloat16)}
prompts = [json.loads(l)["data"] for l in open("runs/smollm2-si/heldout_instruct.jsonl")][:4]
from transformers import GenerationMixin
for p in prompts:
    ids = tok(chat_prompt(tok, p), return_tensors="pt").input_ids
    am = torch.ones_like(ids)
    t0=time.perf_counter(); ref = GenerationMixin.generate(target, ids, attention_mask=am, max_new_tokens=64, do_sample=False); tp=time.perf_counter()-t0
    n = ref.shape[1]-ids.shape[1]
    row = {"plain_ms_step": round(tp/n*1e3,1)}
    for dt, d in drafts.items():
        target.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False, pard_draft=d, pard_min_tau=None)
        out = target.generate(ids, attention_mask=am, max_new_tokens=64, do_sample=False, pard_draft=d, pard_min_tau=None, pard_timing=True, return_dict_in_generate=True)
        st = out.pard_stats; ph = st.phase_seconds
        row[str(dt)[6:]] = dict(same=torch.equal(ref, out.sequences), tau=round(st.tau,2), draft_ms=round(ph["draft"]/st.rounds*1e3,1), verify_ms=round(ph["verify"]/st.rounds*1e3,1))
    print(row, flush=True)
