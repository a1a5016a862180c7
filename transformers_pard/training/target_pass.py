"""The frozen target's part of a PARD-2 step: one no-grad forward on the real sequences of a batch.

A PARD-2 draft adds ``scale * target_proj(feature)`` to its input embeddings, where a feature is the
concatenation of the target's hidden states over ``pard2_target_layers`` (PARD_NOTES section 3). The
training batch is the PARD-1 K-copy layout (``PardDataCollator(with_target_inputs=True)``); the target
runs on the real sequences ``x_0..x_{L-1}`` (``run_target``) and gives

* the features: row (copy j, position t) gets ``feature(t-j-1)``, zeros when ``t-j-1 < 0``
  (``row_features``). For copy 0 that is the feature of the token before x_t; for a mask row whose
  real prefix ends at p = t-j it is ``feature(p-1)``, the feature the inference engine gives every
  mask slot of a round::

      position t        0     1     2     3
      copy 0 input      x0    x1    x2    x3       feature  0    f0    f1    f2
      copy 1 input      -     M     M     M        feature  -    0     f0    f1
      copy 2 input      -     -     M     M        feature  -    -     0     f0

* the gold probabilities ``g_u = p_target(x_u | x_<u)`` of the CAT weights (``gold_probs``);
* the logits, the KD teacher of every copy's row at position t.

With probability ``target_feat_mask`` a whole sample trains without features (``feature_keep_mask``).
``feature_statistics`` measures the per-dimension mean / std used by standardized projections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from ..pard2 import Pard2Config, pard2_fit_problem, target_features

#: Training examples whose target features give the standardization statistics.
STATS_EXAMPLES = 64


class TargetPass(NamedTuple):
    """One no-grad target forward on the real sequences of a batch (or its cached copy)."""

    logits: torch.Tensor | None  # (B, L, V_t); None from a target cache read without KD
    features: torch.Tensor  # (B, L, D) feature(u) at column u
    gold: torch.Tensor  # (B, L) g_u


def gold_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``g_u = p(x_u | x_<u)`` under the target, ``g_0 = 1``: (B, L) float32.

    Args:
        logits: (B, L, V) target logits on ``input_ids`` (row u predicts x_{u+1}).
        input_ids: (B, L) the real sequences (padding columns get meaningless values, never read).
    """
    logits = logits[:, :-1].float()  # (B, L-1, V) predicting x_1..x_{L-1}
    gold = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    probs = (gold - logits.logsumexp(-1)).exp()  # (B, L-1)
    return torch.cat([probs.new_ones(probs.shape[0], 1), probs], dim=1)  # (B, L)


def row_features(features: torch.Tensor, copy_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Target feature of every row: ``feature(t - j - 1)`` for (copy j, position t), zeros if < 0: (B, N, D).

    ``features`` (B, L, D) holds feature(u) at column u (``target_features`` of the target pass).
    """
    source = position_ids - copy_ids - 1  # (B, N)
    valid = (copy_ids >= 0) & (source >= 0)  # (B, N); padding rows and rows before x_0 get zeros
    index = source.clamp(min=0)[..., None].expand(-1, -1, features.shape[-1])  # (B, N, D)
    return features.gather(1, index) * valid[..., None].to(features.dtype)


def feature_keep_mask(batch: int, drop_probability: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which samples keep their target features (True) this step: (B,) bool, drawn on the CPU."""
    return torch.rand(batch, generator=generator) >= drop_probability


def pad_right(sequences: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) ids (pad 0) and attention mask of 1-D id tensors, on ``device``."""
    ids = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)  # (B, L)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in sequences], batch_first=True)  # (B, L)
    return ids.to(device), mask.to(device)


def run_target(
    target, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
) -> TargetPass:
    """Logits, features over ``layers`` and gold probabilities of ``target`` on (B, L) right-padded ids."""
    with torch.no_grad():
        out = target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return TargetPass(out.logits, target_features(out.hidden_states, tuple(layers)), gold_probs(out.logits, input_ids))


def check_target_layers(target, layers: Sequence[int]) -> int:
    """Validate ``layers`` against the target's hidden states (``pard2.pard2_fit_problem``, the engine's
    own check); returns the feature size, target hidden size x ``len(layers)``."""
    layers = tuple(int(layer) for layer in layers)
    dim = target.config.get_text_config().hidden_size * len(layers)
    problem = pard2_fit_problem(target.config, Pard2Config(scale=1.0, target_dim=dim, target_layers=layers,
                                                           proj_bias=False))
    if problem is not None:
        raise ValueError(f"The pard2 layers are out of range for this target. {problem}")
    return dim


def feature_moments(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (D,) over the rows of (tokens, D) feature chunks."""
    total, total_sq, count = 0.0, 0.0, 0
    for features in chunks:
        features = features.double()
        total, total_sq, count = total + features.sum(0), total_sq + features.pow(2).sum(0), count + len(features)
    if not count:
        raise ValueError("Feature statistics need at least one example with tokens.")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp(min=0).sqrt().clamp(min=1e-3)  # a constant dimension stays finite
    return mean.float(), std.float()


def _feature_chunks(target, examples: Sequence[dict], layers: Sequence[int], batch_size: int):
    """The target's features of the real tokens of ``examples``, a (tokens, D) chunk per batch."""
    device = next(target.parameters()).device
    for start in range(0, len(examples), batch_size):
        sequences = [torch.as_tensor(e["input_ids"]) for e in examples[start : start + batch_size]]
        ids, mask = pad_right(sequences, device)  # (B, L)
        yield run_target(target, ids, mask, layers).features[mask.bool()]  # (tokens, D)


def feature_statistics(
    target, examples: Sequence[dict], layers: Sequence[int], *, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (D,) of the target's features over the real tokens of ``examples``
    (dicts with ``input_ids``, e.g. the first ``STATS_EXAMPLES`` of the training set)."""
    return feature_moments(_feature_chunks(target, examples, layers, batch_size))
