"""Apply ``generate``'s logits processors to draft and verify logits, slot by slot where it matters.

Stock ``generate`` applies its processors to fp32 logits with the whole prefix (left padding
included) as ``input_ids``. In a PARD round, slot j (0-based) of the verify forward and slot j of
the draft forward both predict the token after ``committed + d_1..d_j``: that is the prefix each
slot is processed with, different per row and per slot. Processors that ignore the prefix
(temperature, top-k, top-p, ...) are applied to all slots in one batched call; every other processor
is applied slot by slot, so the scores equal those of stock ``generate`` exactly.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

#: Processors whose output does not depend on ``input_ids``.
PREFIX_FREE = (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
)


class Scorer:
    """Turns raw logits into the processed fp32 scores stock ``generate`` would use."""

    def __init__(self, processors: LogitsProcessorList | None):
        processors = list(processors or [])
        self.processors = LogitsProcessorList(processors)
        self.prefix_free = all(isinstance(p, PREFIX_FREE) for p in processors)

    def scores(self, state, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Scores (B, S, V) of ``logits`` (B, S, V), slot j's prefix being ``committed + tokens[:, :j]``."""
        logits = logits.float()
        if not self.processors:
            return logits
        batch, slots, vocab = logits.shape
        if self.prefix_free:
            dummy_ids = tokens.new_zeros(batch * slots, 1)
            return self.processors(dummy_ids, logits.reshape(-1, vocab)).reshape(batch, slots, vocab)
        return torch.stack([self.slot_scores(state, tokens[:, :j], logits[:, j]) for j in range(slots)], dim=1)

    def unconditioned_scores(self, state, logits: torch.Tensor) -> torch.Tensor:
        """``scores`` (B, S, V) with no drafted prefix: every slot seen after the committed text alone (a PARD
        draft's slots, a token tree's nodes; exact with prefix-free processors only)."""
        return self.scores(state, logits.new_zeros(logits.shape[0], 0, dtype=torch.long), logits)

    def slot_scores(self, state, drafted: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Scores (B, V) of one slot whose prefix is ``committed + drafted`` (B, j).

        Rows in step (same committed length) go through in one call, like stock ``generate``;
        otherwise row b is processed in a batch of B copies at index b, so that processors holding
        per-row state (e.g. prompt lengths) see it at its own index.
        """
        logits = logits.float()
        if not self.processors:
            return logits
        batch = logits.shape[0]
        ends = (state.prompt_len + state.num_generated).tolist()
        if len(set(ends)) == 1:
            prefix = torch.cat([state.tokens[:, : ends[0]], drafted], dim=1)  # (B, end + j)
            return self.processors(prefix, logits.clone())
        out = torch.empty_like(logits)
        for b, end in enumerate(ends):
            prefix = torch.cat([state.tokens[b, :end], drafted[b]])  # (end + j,)
            out[b] = self.processors(prefix.expand(batch, -1), logits[b].expand(batch, -1).clone())[b]
        return out
