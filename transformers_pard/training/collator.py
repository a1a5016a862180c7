"""PARD training layout: K copies of each sequence, conditional drop (COD), and a boolean attention mask.

PARD trains a draft to predict ``x_{t+1}`` from "real prefix ``x_0..x_{t-j}``, then j mask tokens" for
every j < K in one forward pass. A sequence ``x_0..x_{L-1}`` becomes K copies laid side by side, all
with position ids ``0..L-1``:

* copy 0 is the real sequence, plain causal attention;
* copy j (1..K-1) is all mask tokens; copy j at position t attends to copy 0 at positions ``0..t-j``
  (the real prefix) and to copy m at position ``t-j+m`` for m = 1..j (its chain of masks, itself last);
* every copy at position t is labelled ``x_{t+1}`` (already aligned: the loss must not shift);
* copy j has no real prefix at positions ``t < j``; those rows are never built.

Example, K = 3, L = 4 with no COD. Rows are copy-major (``a`` = copy 0, ``b`` = copy 1, ``c`` = copy 2,
digit = position); ``1`` = attend::

           a0 a1 a2 a3 b1 b2 b3 c2 c3      input   position  label
      a0 [ 1  .  .  .  .  .  .  .  . ]     x0      0         x1
      a1 [ 1  1  .  .  .  .  .  .  . ]     x1      1         x2
      a2 [ 1  1  1  .  .  .  .  .  . ]     x2      2         x3
      a3 [ 1  1  1  1  .  .  .  .  . ]     x3      3         -100
      b1 [ 1  .  .  .  1  .  .  .  . ]     mask    1         x2
      b2 [ 1  1  .  .  .  1  .  .  . ]     mask    2         x3
      b3 [ 1  1  1  .  .  .  1  .  . ]     mask    3         -100
      c2 [ 1  .  .  .  1  .  .  1  . ]     mask    2         x3
      c3 [ 1  1  .  .  .  1  .  .  1 ]     mask    3         -100

COD (conditional drop) keeps every row of copy 0 and, for copy i >= 1, a random subset of
``round(L * max(r**i, r_min))`` rows (capped at what is available) drawn only from positions t whose
predecessor ``t-1`` was kept in copy i-1. Row (j, t) attends to chain keys (m, t-j+m); by induction
over m those are exactly the kept predecessors, so every key a kept row needs is itself kept (the
integrity property, checked when the mask is built). Dropped rows and columns are never materialised:
the mask of one sample is an (N, N) boolean with N = number of kept rows, never a dense float
(K*L)^2 matrix.

Everything here is a pure function of its inputs except ``PardDataCollator``, which owns a seeded
``torch.Generator`` for COD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

#: Label value that carries no loss (the HF / PyTorch convention).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PardLayoutConfig:
    """How one sequence is expanded: K copies, COD ratio r and floor r_min.

    ``cod_ratio=1.0`` disables COD (every copy keeps all of its L - j rows).
    """

    k: int
    cod_ratio: float = 1.0
    cod_min: float = 0.0

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"K (number of copies / draft tokens per round) must be an integer >= 1, got {self.k!r}.")
        if not 0.0 < self.cod_ratio <= 1.0:
            raise ValueError(f"cod_ratio must be in (0, 1] (1 disables COD), got {self.cod_ratio!r}.")
        if not 0.0 <= self.cod_min <= 1.0:
            raise ValueError(f"cod_min must be in [0, 1], got {self.cod_min!r}.")


@dataclass(frozen=True)
class PardRows:
    """The kept rows of one sample, copy-major: row n is copy ``copy[n]`` at position ``position[n]``."""

    copy: torch.Tensor  # (N,) long
    position: torch.Tensor  # (N,) long
    column: torch.Tensor  # (K, L) long: row index of (copy, position), -1 where dropped

    @property
    def size(self) -> int:
        return self.copy.numel()


def cod_target_size(length: int, copy: int, config: PardLayoutConfig) -> int:
    """Rows COD wants to keep in ``copy``: L for copy 0, else round(L * max(r**i, r_min))."""
    if copy == 0:
        return length
    fraction = max(config.cod_ratio**copy, config.cod_min)
    return math.floor(length * fraction + 0.5)  # round half up, the same on every platform


def cod_keep_positions(
    length: int, *, config: PardLayoutConfig, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Kept positions of each copy (sorted, long), following COD.

    Copy 0 keeps ``0..L-1``. Copy i keeps a random subset of the positions t whose predecessor t-1 was
    kept in copy i-1 (so t >= i). With ``cod_ratio == 1`` every candidate is kept and no random numbers
    are drawn.
    """
    if length < 1:
        raise ValueError(f"Cannot lay out an empty sequence (length {length}).")
    keep = [torch.arange(length)]  # copy 0: (L,)
    for copy in range(1, config.k):
        candidates = keep[-1] + 1  # (n_prev,) successors of the kept rows of the previous copy
        candidates = candidates[candidates < length]
        size = min(cod_target_size(length, copy, config), candidates.numel())
        if size < candidates.numel():
            chosen = torch.randperm(candidates.numel(), generator=generator)[:size]
            candidates = candidates[chosen].sort().values
        keep.append(candidates)
    return keep


def layout_rows(keep: Sequence[torch.Tensor], length: int) -> PardRows:
    """Concatenate the kept positions copy by copy and index where each (copy, position) landed."""
    copy = torch.cat([torch.full_like(positions, j) for j, positions in enumerate(keep)])  # (N,)
    position = torch.cat(list(keep))  # (N,)
    column = torch.full((len(keep), length), -1, dtype=torch.long)  # (K', L)
    column[copy, position] = torch.arange(copy.numel())
    return PardRows(copy=copy, position=position, column=column)


def layout_input_ids(input_ids: torch.Tensor, rows: PardRows, mask_token_id: int) -> torch.Tensor:
    """Copy 0 rows carry the real token, every other row the mask token: (N,)."""
    tokens = input_ids[rows.position]  # (N,)
    return torch.where(rows.copy == 0, tokens, torch.full_like(tokens, mask_token_id))


def layout_labels(labels: torch.Tensor, rows: PardRows) -> torch.Tensor:
    """Aligned labels: row (j, t) predicts ``labels[t+1]`` (-100 at the last position): (N,)."""
    shifted = torch.cat([labels[1:], labels.new_full((1,), IGNORE_INDEX)])  # (L,) label of x_{t+1} at t
    return shifted[rows.position]


def layout_attention(rows: PardRows, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (N, N) mask, True = attend, for the kept rows (see the module docstring's literal matrix).

    Built column block by column block, without any (K*L)^2 intermediate: copy 0 occupies the first L
    columns in position order (it keeps everything), then one scatter per chain step m.
    Raises ``AssertionError`` if a kept row would attend to a dropped key (a COD integrity bug).
    """
    n = rows.size
    length = rows.column.shape[1]
    mask = torch.zeros(n, n, dtype=torch.bool) if out is None else out  # (N, N)
    anchor = rows.position - rows.copy  # (N,) last real position each row sees
    mask[:, :length] = torch.arange(length)[None, :] <= anchor[:, None]  # (N, L) real prefix 0..t-j
    for m in range(1, rows.column.shape[0]):
        query = (rows.copy >= m).nonzero().squeeze(1)  # (n_m,) rows whose chain passes through copy m
        key = rows.column[m, anchor[query] + m]  # (n_m,) row index of (m, t-j+m)
        if bool((key < 0).any()):
            raise AssertionError("COD integrity violated: a kept row attends to a dropped row.")
        mask[query, key] = True
    return mask


@dataclass(frozen=True)
class PardExample:
    """One sample in the PARD layout (N kept rows); the mask is built into the batch tensor later."""

    input_ids: torch.Tensor  # (N,)
    position_ids: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    rows: PardRows


def build_example(
    input_ids: torch.Tensor, labels: torch.Tensor, *, keep: Sequence[torch.Tensor], mask_token_id: int
) -> PardExample:
    """Lay one tokenised sequence out on the kept rows ``keep`` (from ``cod_keep_positions``)."""
    rows = layout_rows(keep, input_ids.numel())
    return PardExample(
        input_ids=layout_input_ids(input_ids, rows, mask_token_id),
        position_ids=rows.position.clone(),
        labels=layout_labels(labels, rows),
        rows=rows,
    )


def collate_examples(examples: Sequence[PardExample], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest one and stack; build the (B, 1, N, N) boolean mask in place.

    Padding rows: token ``pad_token_id``, position 0, label -100, copy -1, and they attend only to
    themselves (a query with no key would give NaN in sdpa). Real rows never attend to padding.
    """
    batch, width = len(examples), max(example.rows.size for example in examples)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)  # (B, N)
    position_ids = torch.zeros((batch, width), dtype=torch.long)  # (B, N)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)  # (B, N)
    copy_ids = torch.full((batch, width), -1, dtype=torch.long)  # (B, N)
    attention_mask = torch.zeros((batch, 1, width, width), dtype=torch.bool)  # (B, 1, N, N)
    for b, example in enumerate(examples):
        n = example.rows.size
        input_ids[b, :n] = example.input_ids
        position_ids[b, :n] = example.position_ids
        labels[b, :n] = example.labels
        copy_ids[b, :n] = example.rows.copy
        layout_attention(example.rows, out=attention_mask[b, 0, :n, :n])
        pad = torch.arange(n, width)  # (width - n,)
        attention_mask[b, 0, pad, pad] = True
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "copy_ids": copy_ids,
    }


def collate_target_inputs(examples: Sequence[PardExample], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """The real sequences (copy 0 of each sample), right-padded: what a PARD-2 target reads.

    ``target_input_ids`` (B, L) holds ``x_0..x_{L_b-1}`` of sample b at columns 0..L_b-1 (column = position,
    so the layout's ``position_ids`` index it directly), ``pad_token_id`` after; ``target_attention_mask``
    (B, L) is 1 on real tokens, 0 on padding.
    """
    sequences = [example.input_ids[example.rows.copy == 0] for example in examples]  # copy 0 = positions 0..L_b-1
    length = max(sequence.numel() for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (B, L)
    for b, sequence in enumerate(sequences):
        input_ids[b, : sequence.numel()] = sequence
        attention_mask[b, : sequence.numel()] = 1
    return {"target_input_ids": input_ids, "target_attention_mask": attention_mask}


def _as_long_tensor(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.long)
    if tensor.ndim != 1:
        raise ValueError(f"`{name}` of one example must be a flat list of token ids, got shape {tuple(tensor.shape)}.")
    return tensor


class PardDataCollator:
    """Turn tokenised examples into PARD training batches (K copies, COD, boolean 4D mask).

    Each example is a mapping with ``input_ids`` (token ids) and optionally ``labels`` (same length;
    ``-100`` marks tokens that must not be predicted, e.g. prompt tokens of chat data; default: all
    tokens carry loss). Sequences are truncated to ``max_length`` real tokens *before* expansion, so a
    sample has at most ``K * max_length`` rows (far fewer with COD).

    The batch holds ``input_ids``, ``position_ids``, ``labels`` (B, N) — labels already aligned, the
    loss must not shift them — ``attention_mask`` (B, 1, N, N) bool (True = attend; pass it to an sdpa
    model, transformers uses a 4D mask as is) and ``copy_ids`` (B, N) (copy index, -1 on padding; not a
    model input). Padding is per batch (each sample its own row); see ``collate_examples``.

    With ``with_target_inputs=True`` (PARD-2 training) the batch also carries the real sequences for the
    target, ``target_input_ids`` and ``target_attention_mask`` (B, L) (see ``collate_target_inputs``).

    COD draws come from a ``torch.Generator`` seeded with ``seed`` (plus ``seed_offset``, which the
    trainer sets to the process index so data-parallel ranks draw differently, plus the DataLoader
    worker id), so a run is reproducible.
    """

    def __init__(
        self,
        *,
        mask_token_id: int,
        k: int = 8,
        cod_ratio: float = 0.7,
        cod_min: float = 0.2,
        seed: int = 0,
        pad_token_id: int | None = None,
        max_length: int | None = None,
        seed_offset: int = 0,
        with_target_inputs: bool = False,
    ):
        if mask_token_id is None or int(mask_token_id) < 0:
            raise ValueError(
                f"PardDataCollator needs the draft's mask token id (a non-negative int), got {mask_token_id!r}; "
                "get it from transformers_pard.training.prepare_draft."
            )
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length!r}.")
        self.config = PardLayoutConfig(k=k, cod_ratio=cod_ratio, cod_min=cod_min)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = self.mask_token_id if pad_token_id is None else int(pad_token_id)
        self.max_length = max_length
        self.seed = seed
        self.seed_offset = seed_offset
        self.with_target_inputs = with_target_inputs
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int] | None = None

    @property
    def k(self) -> int:
        return self.config.k

    def generator(self) -> torch.Generator:
        """The COD generator of this process / DataLoader worker, created on first use."""
        info = torch.utils.data.get_worker_info()
        key = (self.seed_offset, 0 if info is None else info.id)
        if self._generator is None or self._generator_key != key:
            self._generator = torch.Generator().manual_seed(self.seed + 1_000_003 * key[0] + 7919 * key[1])
            self._generator_key = key
        return self._generator

    def example(self, features: Mapping) -> PardExample:
        """Lay out one tokenised example (truncated to ``max_length``) with fresh COD draws."""
        input_ids = _as_long_tensor(features["input_ids"], "input_ids")
        labels = features.get("labels")
        labels = input_ids.clone() if labels is None else _as_long_tensor(labels, "labels")
        if labels.shape != input_ids.shape:
            raise ValueError(f"`labels` ({labels.numel()}) and `input_ids` ({input_ids.numel()}) differ in length.")
        if self.max_length is not None:
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if bool((input_ids == self.mask_token_id).any()):
            raise ValueError(
                f"The data contains the mask token id {self.mask_token_id}: the mask token must be an id that "
                "never occurs in real text (see prepare_draft)."
            )
        keep = cod_keep_positions(input_ids.numel(), config=self.config, generator=self.generator())
        return build_example(input_ids, labels, keep=keep, mask_token_id=self.mask_token_id)

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        examples = [self.example(f) for f in features]
        batch = collate_examples(examples, pad_token_id=self.pad_token_id)
        if self.with_target_inputs:
            # The mask id may lie beyond the target's vocabulary (a row added to the draft): never pad with it.
            target_pad = 0 if self.pad_token_id == self.mask_token_id else self.pad_token_id
            batch.update(collate_target_inputs(examples, pad_token_id=target_pad))
        return batch
