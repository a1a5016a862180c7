"""Turn the target's verify logits into the scores stock ``generate`` would have used at each slot.

Stock ``generate`` applies its logits processors to fp32 logits with the whole prefix (left padding
included) as ``input_ids``. A verify forward scores K+1 slots at once, and the prefix of slot j is
``committed tokens + d_1..d_j``, different per row and per slot. Processors that ignore the prefix
(temperature, top-k, top-p, ...) are applied to all slots in one batched call; every other processor
is applied slot by slot with that slot's own prefix, so the result equals stock ``generate`` exactly.
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


class TargetScorer:
    """Applies a ``LogitsProcessorList`` to verify logits, slot by slot where the prefix matters."""

    def __init__(self, processors: LogitsProcessorList | None):
        processors = list(processors or [])
        self.prefix_free = all(isinstance(p, PREFIX_FREE) for p in processors)
        self.processors = LogitsProcessorList(processors)

    def scores(self, state, draft_tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed fp32 scores (B, K+1, V) for the verify slots."""
        logits = logits.float()
        if not self.processors:
            return logits
        batch, slots, vocab = logits.shape
        if self.prefix_free:
            dummy_ids = draft_tokens.new_zeros(batch * slots, 1)
            return self.processors(dummy_ids, logits.reshape(-1, vocab)).reshape(batch, slots, vocab)
        return self._per_slot(state, draft_tokens, logits)

    def _per_slot(self, state, draft_tokens, logits):
        """Slot j of row b is processed with ``committed_b + d_1..d_j``, in a batch of B rows so that
        processors holding per-row state (e.g. prompt lengths) see row b at index b."""
        batch, slots, _ = logits.shape
        ends = (state.prompt_len + state.num_generated).tolist()
        if len(set(ends)) == 1:  # rows in step: one call per slot, like stock generate
            committed = state.tokens[:, : ends[0]]
            return torch.stack(
                [self.processors(torch.cat([committed, draft_tokens[:, :j]], 1), logits[:, j].clone()) for j in range(slots)],
                dim=1,
            )
        out = torch.empty_like(logits)
        for b, end in enumerate(ends):
            for j in range(slots):
                prefix = torch.cat([state.tokens[b, :end], draft_tokens[b, :j]])  # (end + j,)
                scores = self.processors(prefix.expand(batch, -1), logits[b, j].expand(batch, -1).clone())
                out[b, j] = scores[b]
        return out

    def greedy_choice(self, state, draft_tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The token stock greedy ``generate`` would pick at every verify slot (B, K+1)."""
        return self.scores(state, draft_tokens, logits).argmax(-1)
