"""Training a vocabulary-subset draft head (``transformers_pard.vocab``): logits for N ids only.

A small draft spends most of its loss on the output layer over the full vocabulary (SmolLM2: 49,152
x 576). With a subset of the N ids that carry most of the training labels, the loss needs only
``last hidden state @ head[ids].T``: (B, n, N) logits, the full-vocabulary logits are never formed.

* ``subset_ids(examples, size, vocab_size=, always=)``: the N most frequent label tokens of the
  training examples (the tokens that carry loss: ``labels[1:]`` not -100), ``always`` ids (EOS,
  the mask token) included, most frequent first.
* ``teacher_first(ids, vocab)``: the same ids, those below ``vocab`` (the target's vocabulary) first,
  so a PARD-2 KD teacher restricted to the subset is ``teacher[..., ids[:shared]]``.
* ``VocabSubset``: the trainer's view of the subset: ``labels`` in subset indices (labels outside
  the subset become -100, ignored), ``logits`` over the subset, ``teacher`` (target logits at the
  subset ids: their softmax is the teacher's distribution renormalised over the subset), and
  ``coverage`` of a dataset (logged once by the trainer).

Saved with the draft as ``pard_vocab.safetensors`` + ``pard_vocab_size`` in config.json
(``vocab.save_vocab_subset``); the engine then drafts from the subset only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..vocab import attach_vocab_subset, frequent_ids
from .collator import IGNORE_INDEX

logger = logging.getLogger(__name__)

#: ``logits_to_keep`` of the subset path's model call: one row, the cheapest the HF forward allows.
ONE_ROW = 1


def label_tokens(example: Mapping) -> list[int]:
    """The token ids of an example that carry loss: ``labels[1:]`` (or ``input_ids[1:]``) but -100."""
    labels = example.get("labels", example["input_ids"])
    return [int(t) for t in list(labels)[1:] if int(t) != IGNORE_INDEX]


def subset_ids(examples: Iterable[Mapping], size: int, *, vocab_size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent label tokens of ``examples`` (``vocab.frequent_ids``): (size,) int64."""
    return frequent_ids((label_tokens(e) for e in examples), size, vocab_size=vocab_size,
                        always=[int(t) for t in always if t is not None])


def teacher_first(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """``ids`` with those below ``vocab`` first (each part in its own order): (N,)."""
    inside = ids < vocab
    return torch.cat([ids[inside], ids[~inside]])


class Coverage(NamedTuple):
    """How many of a dataset's label tokens the subset holds."""

    inside: int
    total: int

    @property
    def fraction(self) -> float:
        return self.inside / max(self.total, 1)


class VocabSubset:
    """The subset ``ids`` (N,) of ``model``'s output head, attached to the model (``attach_vocab_subset``:
    config key ``pard_vocab_size``, buffer ``pard_vocab_ids``).

    Checks once, on a few tokens, that the model's logits are its output head applied to its last
    hidden state (what ``logits`` assumes; a soft-capping head is refused).
    """

    def __init__(self, model, ids: torch.Tensor):
        attach_vocab_subset(model, ids)
        head = model.get_output_embeddings()
        self.ids = ids.to(head.weight.device)  # (N,)
        self.index = torch.full((head.weight.shape[0],), IGNORE_INDEX, dtype=torch.long, device=self.ids.device)
        self.index[self.ids] = torch.arange(self.ids.numel(), device=self.ids.device)  # target id -> subset index
        self._check_head(model)

    @property
    def size(self) -> int:
        return self.ids.numel()

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, N) target ids -> subset indices; -100 stays, ids outside the subset become -100."""
        index = self.index.to(labels.device)
        return torch.where(labels.eq(IGNORE_INDEX), IGNORE_INDEX, index[labels.clamp(min=0)])

    def head_logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B, n, H) @ the subset rows of ``model``'s output head: (B, n, N), differentiable."""
        head = model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        return F.linear(hidden, head.weight.index_select(0, self.ids),
                        None if bias is None else bias.index_select(0, self.ids))

    def logits(self, draft, model, inputs: Mapping, keep) -> tuple[torch.Tensor, object]:
        """Subset logits (B, n, N) of the rows ``keep`` and the model's output. ``model`` is what the
        Trainer calls (maybe wrapped, e.g. DDP), ``draft`` the unwrapped model whose head is used."""
        outputs = model(**inputs, logits_to_keep=ONE_ROW, output_hidden_states=True, use_cache=False)
        hidden = outputs.hidden_states[-1][:, keep]  # (B, n, H) the final (normed) hidden state
        return self.head_logits(draft, hidden), outputs

    def teacher(self, logits: torch.Tensor) -> torch.Tensor:
        """Target logits (B, L, V_t) at the subset ids the target has: (B, L, N'), N' <= N.

        ``distill_kl`` takes their softmax (the teacher renormalised over the subset) against the
        draft's first N' ids, so the ids the target lacks must come last (``teacher_first``)."""
        inside = self.ids < logits.shape[-1]
        shared = int(inside.sum())
        if not bool(inside[:shared].all()):
            raise ValueError("The subset's ids outside the target's vocabulary must come last: order them "
                             "with training.subset.teacher_first(ids, target_vocab_size).")
        return logits.index_select(-1, self.ids[:shared])

    def coverage(self, examples: Iterable[Mapping]) -> Coverage:
        """How many of the label tokens of ``examples`` are in the subset."""
        member = set(self.ids.tolist())
        inside = total = 0
        for example in examples:
            tokens = label_tokens(example)
            inside, total = inside + sum(t in member for t in tokens), total + len(tokens)
        return Coverage(inside, total)

    def log_coverage(self, examples: Iterable[Mapping]) -> Coverage:
        coverage = self.coverage(examples)
        logger.warning(
            "Vocabulary subset: %d ids hold %.2f%% of the %d label tokens; the %d others are ignored by the loss.",
            self.size, 100 * coverage.fraction, coverage.total, coverage.total - coverage.inside,
        )
        return coverage

    def _check_head(self, model) -> None:
        tokens = self.ids[:4][None]  # (1, <=4) any valid ids
        training = model.training
        model.eval()
        with torch.no_grad():
            out = model(input_ids=tokens, output_hidden_states=True, use_cache=False)
            ours = self.head_logits(model, out.hidden_states[-1]).float()  # (1, T, N)
        model.train(training)
        theirs = out.logits.float()[..., self.ids]  # (1, T, N)
        if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max().clamp(min=1))):
            raise ValueError("This draft's logits are not its output head applied to its last hidden state (e.g. "
                             "logit soft-capping or scaling), so a vocabulary-subset head cannot be trained for it: "
                             "train without vocab_subset (--vocab-subset).")
