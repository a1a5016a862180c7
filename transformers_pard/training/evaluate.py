"""How good is a draft? Mean accepted length tau, measured by running the PARD engine (greedy).

tau = tokens committed per verify round (1 .. K+1); the ideal speedup over plain decoding is
tau x T_target(1) / (T_target(K+1) + T_draft). Prompts run one at a time (batch 1), so each prompt
gets its own tau; the overall tau is committed tokens / rounds over all prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import load_prompts

__all__ = ["TauReport", "load_prompts", "measure_tau", "prompt_ids"]


@dataclass(frozen=True)
class TauReport:
    """Acceptance of a draft on a prompt set at one K."""

    k: int
    #: committed tokens / verify rounds over all prompts
    mean_tau: float
    #: tau of each prompt, in prompt order
    per_prompt: tuple[float, ...]
    #: histogram[n] = rounds that committed n tokens (n = 1 .. K+1; index 0 unused)
    histogram: tuple[int, ...]
    rounds: int
    committed_tokens: int

    def summary(self) -> str:
        shares = ", ".join(f"{n}:{c}" for n, c in enumerate(self.histogram) if n and c)
        prompts = len(self.per_prompt)
        return f"K={self.k} tau={self.mean_tau:.2f} over {prompts} prompts, {self.rounds} rounds [{shares}]"


def prompt_ids(tokenizer, prompt: str, *, chat_template: bool) -> torch.Tensor:
    """Token ids (1, P) of a prompt, as a user turn of the chat template when asked and available."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def measure_tau(
    target,
    draft,
    tokenizer,
    prompts: Sequence[str],
    *,
    k: int = 8,
    max_new_tokens: int = 64,
    chat_template: bool = True,
    pard_mode: str | None = None,
) -> TauReport:
    """Greedy PARD generation of every prompt with ``draft`` drafting K tokens for ``target``.

    ``target`` is PARD-enabled in place if it is not already (``transformers_pard.enable_pard``).
    """
    from transformers_pard import PardGenerationMixin, enable_pard

    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}.")
    if not prompts:
        raise ValueError("measure_tau needs at least one prompt.")
    if not isinstance(target, PardGenerationMixin):
        enable_pard(target)
    device = next(target.parameters()).device
    per_prompt, histogram, rounds, committed = [], [0] * (k + 2), 0, 0
    for prompt in prompts:
        input_ids = prompt_ids(tokenizer, prompt, chat_template=chat_template).to(device)  # (1, P)
        out = target.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            pard_draft=draft,
            num_assistant_tokens=k,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            pard_min_tau=None,  # measure the draft, never the auto-disabled plain steps
            pard_mode=pard_mode,  # PARD-2 drafts: "dependent" / "independent" (None: the engine's default)
        )
        stats = out.pard_stats
        per_prompt.append(stats.tau)
        histogram = [a + b for a, b in zip(histogram, stats.accepted_histogram)]
        rounds += stats.rounds
        committed += stats.committed_tokens
    return TauReport(
        k=k,
        mean_tau=committed / max(rounds, 1),
        per_prompt=tuple(per_prompt),
        histogram=tuple(histogram),
        rounds=rounds,
        committed_tokens=committed,
    )
