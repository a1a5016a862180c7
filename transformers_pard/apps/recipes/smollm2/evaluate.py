"""Stage 3, ``eval``: tau of the trained draft against the target on the held-out prompts (greedy,
fp32, the engine's own acceptance); a PARD-2 draft in both modes. Written to the run's ``tau.json``.
"""

from __future__ import annotations

import json
import os

from .... import enable_pard
from ....draft_io import load_draft
from ....training import load_prompts, measure_tau
from ...embedded import load_smollm2
from .common import HELDOUT_FILE, run_dir_name


def eval_stage(out_dir: str, *, k: int = 8, num_layers: int = 3, eval_k: int | None = None,
               max_new_tokens: int = 128, limit: int = 40, pard2: bool = False, run_name: str | None = None) -> dict:
    """tau of the trained draft on the held-out prompts (greedy, fp32); written to ``tau.json``.
    A PARD-2 draft is measured in both modes."""
    run_dir = os.path.join(out_dir, run_name or run_dir_name(k, num_layers, pard2))
    target, tokenizer = load_smollm2()
    draft = load_draft(run_dir, target=target)
    prompts = load_prompts(os.path.join(out_dir, HELDOUT_FILE))[:limit]
    target = enable_pard(target)
    result = {"k_trained": k, "prompts": len(prompts), "max_new_tokens": max_new_tokens}
    for mode in ("dependent", "independent") if pard2 else (None,):
        report = measure_tau(target, draft, tokenizer, prompts, k=eval_k or max(k, 8),
                             max_new_tokens=max_new_tokens, pard_mode=mode)
        suffix = "" if mode in (None, "dependent") else "_independent"
        result.update({"k_eval": report.k, f"tau{suffix}": report.mean_tau, f"histogram{suffix}": list(report.histogram)})
        print(mode or "pard", report.summary())
    with open(os.path.join(run_dir, "tau.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
