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
        self.top_k_at = _compactable_top_k(processors) if self.prefix_free else None

    def _prefix_free(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The prefix-free processors on rows of scores (R, V).

        On a CPU, when top-k is followed by other warpers (generate's temperature -> top-k -> top-p), those
        run on top-k's survivors only: every warper after it acts on values, and the -inf entries add 0 to
        every softmax and cumulative sum, so the kept set is the same, while top-p sorts the survivors
        instead of all V logits (SmolLM2: 50 of 49,152 per verify slot). Survivors = the most finite entries
        of any row, so ties at the k-th value stay in. Where top-p or min-p cut through exactly equal logits,
        which of them stay follows ``torch.sort``'s tie order, as in transformers (its sort is not stable
        either). Elsewhere the warpers run as given (a GPU sorts fast, and counting the survivors would read
        the device from the host)."""
        if self.top_k_at is None or scores.device.type != "cpu":
            return self.processors(ids, scores)
        scores = LogitsProcessorList(self.processors[: self.top_k_at + 1])(ids, scores)
        survivors = int(torch.isfinite(scores).sum(-1).max())
        values, columns = scores.topk(survivors, dim=-1)  # (R, S)
        values = LogitsProcessorList(self.processors[self.top_k_at + 1:])(ids, values)
        return torch.full_like(scores, float("-inf")).scatter_(-1, columns, values)  # (R, V)

    def scores(self, state, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Scores (B, S, V) of ``logits`` (B, S, V), slot j's prefix being ``committed + tokens[:, :j]``."""
        logits = logits.float()
        if not self.processors:
            return logits
        batch, slots, vocab = logits.shape
        if self.prefix_free:
            dummy_ids = tokens.new_zeros(batch * slots, 1)
            return self._prefix_free(dummy_ids, logits.reshape(-1, vocab)).reshape(batch, slots, vocab)
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


def _compactable_top_k(processors: list) -> int | None:
    """Index of a top-k warper (filling -inf) that other warpers follow, or None."""
    for index, processor in enumerate(processors):
        if isinstance(processor, TopKLogitsWarper):
            followed = index + 1 < len(processors)
            return index if followed and processor.filter_value == float("-inf") else None
    return None
