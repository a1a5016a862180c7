"""Vocabulary-subset draft heads (FR-Spec, arXiv 2502.14856): logits for the frequent ids only.

A PARD draft's output layer over the full vocabulary is most of its forward on a small model (SmolLM2:
49,152 x 576 of a 3-layer draft). A draft may carry a subset of target ids (chosen by frequency in its
training data, most frequent first); it then computes logits for those ids only and maps them back to
target ids, every other id getting -inf: the draft never proposes it (q = 0 there), which keeps greedy
verification token-identical and speculative sampling exact (the rule only needs q(d) > 0 for the
drafted token d).

Stored with the draft: ``pard_vocab.safetensors`` (tensor ``ids``, int64, (N,)) and the config key
``pard_vocab_size`` = N. A full-vocabulary export (``draft_io.export_full_draft``) is what vLLM /
TensorRT-LLM read; they ignore both.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VOCAB_FILE = "pard_vocab.safetensors"
VOCAB_SIZE_KEY = "pard_vocab_size"


def frequent_ids(token_lists: Iterable[Iterable[int]], size: int, *, vocab_size: int,
                 always: Iterable[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent ids of ``token_lists`` (ties: lower id first), ``always`` ids included
    (e.g. EOS): (size,) int64, most frequent first. Ids never seen fill the rest in id order."""
    if not 0 < size <= vocab_size:
        raise ValueError(f"A vocabulary subset must have 1..{vocab_size} ids, got {size}.")
    counts = Counter()
    for tokens in token_lists:
        counts.update(int(t) for t in tokens)
    forced = list(dict.fromkeys(int(t) for t in always))
    ranked = forced + [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if t not in forced]
    chosen = dict.fromkeys(t for t in ranked if 0 <= t < vocab_size)
    for t in range(vocab_size):  # pad with unseen ids so the subset has exactly `size` entries
        if len(chosen) >= size:
            break
        chosen.setdefault(t, None)
    return torch.tensor(list(chosen)[:size], dtype=torch.long)


def save_vocab_subset(folder: str, ids: torch.Tensor, config=None) -> None:
    """Write ``ids`` next to a draft (and record its size in ``config`` when given)."""
    ids = _check_ids(ids)
    os.makedirs(folder, exist_ok=True)
    save_file({"ids": ids.cpu().contiguous()}, os.path.join(folder, VOCAB_FILE), metadata={"format": "pt"})
    if config is not None:
        setattr(config, VOCAB_SIZE_KEY, int(ids.numel()))


def load_vocab_subset(folder: str) -> torch.Tensor | None:
    """The subset stored in ``folder``, or None when the draft has the full vocabulary."""
    path = os.path.join(folder, VOCAB_FILE)
    if not os.path.exists(path):
        return None
    return _check_ids(load_file(path)["ids"])


def _check_ids(ids: torch.Tensor) -> torch.Tensor:
    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64) or ids.numel() == 0:
        raise ValueError("A vocabulary subset is a non-empty 1-D integer tensor of token ids.")
    if (ids < 0).any() or ids.unique().numel() != ids.numel():
        raise ValueError("A vocabulary subset must hold distinct, non-negative token ids.")
    return ids.long()


def attach_vocab_subset(draft, ids: torch.Tensor | None) -> None:
    """Give ``draft`` the subset ``ids`` (a non-persistent buffer ``pard_vocab_ids``, so it follows
    ``.to(device)``), after checking it fits the draft's vocabulary; None removes it."""
    if ids is None:
        if "pard_vocab_ids" in draft._buffers:
            del draft._buffers["pard_vocab_ids"]
        draft.config.__dict__.pop(VOCAB_SIZE_KEY, None)
        return
    ids = _check_ids(ids)
    weight = draft.get_output_embeddings().weight
    if int(ids.max()) >= weight.shape[0]:
        raise ValueError(f"The draft's vocabulary subset holds id {int(ids.max())}, outside its vocabulary "
                         f"({weight.shape[0]}).")
    draft.register_buffer("pard_vocab_ids", ids.to(weight.device), persistent=False)
    setattr(draft.config, VOCAB_SIZE_KEY, int(ids.numel()))


def vocab_subset(draft) -> torch.Tensor | None:
    """The draft's subset ids (N,), or None for a full-vocabulary draft."""
    return draft._buffers.get("pard_vocab_ids") if isinstance(draft, nn.Module) else None


class SubsetHead(nn.Module):
    """``hidden -> logits`` over ``ids`` only, (.., N); ``to_full`` scatters them into (.., V) with -inf
    elsewhere. The weight rows are gathered once (a copy of N x H), not per call."""

    def __init__(self, head: nn.Module, ids: torch.Tensor):
        super().__init__()
        weight = head.weight.detach()
        self.register_buffer("ids", ids.to(weight.device), persistent=False)  # (N,)
        self.register_buffer("weight", weight[self.ids].clone(), persistent=False)  # (N, H)
        bias = getattr(head, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach()[self.ids].clone(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)  # (.., N)

    def to_full(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))  # (.., V)
        return full.index_copy_(-1, self.ids, logits)
