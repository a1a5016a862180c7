"""PARD-2 draft training: target features, CAT weights and KD on top of the PARD-1 layout and trainer.

A PARD-2 draft adds ``scale * target_proj(feature)`` to its input embeddings, where a feature is the
concatenation of the target's hidden states over ``pard2_target_layers`` (PARD_NOTES section 3). The
training batch is the PARD-1 K-copy layout (``PardDataCollator(with_target_inputs=True)``); the target
runs once per batch, under ``no_grad``, on the real sequences ``x_0..x_{L-1}`` and gives

* the features: row (copy j, position t) gets ``feature(t-j-1)``, zeros when ``t-j-1 < 0``. For copy 0
  that is the feature of the token before x_t; for a mask row whose real prefix ends at p = t-j it is
  ``feature(p-1)``, the feature the inference engine gives every mask slot of a round::

      position t        0     1     2     3
      copy 0 input      x0    x1    x2    x3       feature  0    f0    f1    f2
      copy 1 input      -     M     M     M        feature  -    0     f0    f1
      copy 2 input      -     -     M     M        feature  -    -     0     f0

* the CAT weights: with ``g_u = p_target(x_u | x_<u)`` (``g_0 = 1``), row (copy i, position t), which
  predicts x_{t+1}, weighs ``g_t * g_{t-1} * ... * g_{t-i+1}``: the chance that verification reaches
  that slot (1 for copy 0; 0 for rows without a label);
* the KD teacher: the target's logits at position t, for every copy's row at position t.

Loss = ``ce_alpha * CAT-weighted CE(gold) + kd_alpha * CAT-weighted KL(target || draft)``, both summed
over the labelled rows and divided by their number (as ``pard_loss``). With probability
``target_feat_mask`` a whole sample trains without features (the draft input is the plain
embedding), so the same draft also works target-independent.

The target is kept on the trainer, never inside the draft: Trainer checkpoints and the saved folder
hold the draft only. The saved folder is a plain HF model + tokenizer whose config carries the
PARD-2 keys, plus ``pard2_proj.safetensors`` / ``warp_model.bin`` (``transformers_pard.pard2``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..pard2 import (
    PROJ_PREFIX,
    Pard2Config,
    StandardizedProjection,
    draft_inputs_embeds,
    load_projection_state,
    make_projection,
    read_projection_state,
    save_projection,
    target_features,
)
from .collator import IGNORE_INDEX, PardDataCollator
from .trainer import PardTrainConfig, PardTrainer, pard_loss, train_draft

#: How a target cache may store features (``Pard2Options.cache_dtype``).
CACHE_DTYPES = ("float16", "bfloat16", "float32")
#: The target layers of the published PARD-2 drafts (indices into ``output_hidden_states``).
DEFAULT_LAYERS = (-1, -8, -16, -24)


@dataclass(frozen=True)
class Pard2Options:
    """PARD-2 settings of a training run (the ``--pard2`` CLI flags).

    * ``target``: target model folder or Hub id (or pass a loaded model to ``train_pard2_draft``).
    * ``layers``: target hidden states to concatenate (indices into ``output_hidden_states``; -1 is
      the last layer's normed output). Feature size = target hidden size x ``len(layers)``.
    * ``scale``: the feature term is ``scale * target_proj(feature)``. 0.02, as in the published
      drafts: it keeps the term small next to the token embedding while the projection (zero at
      start) learns; with Adam the term grows by about ``scale * lr`` per feature entry per step.
    * ``proj_bias``: bias in ``target_proj``. Off by default: a bias would be added in dependent
      mode even where the feature is zero, and never in independent mode.
    * ``target_feat_mask``: probability of training a whole sample without features (dual mode).
    * ``ce_alpha``, ``kd_alpha``, ``kd_temperature``: loss mix and KD temperature T (the KL is taken
      between the softmaxes at T and multiplied by T**2 so its gradient scale does not depend on T).
    * ``standardize``: train the projection on standardized features (per-dimension mean / std of
      the target's features over the first ``STATS_EXAMPLES`` training examples), stored folded into
      a plain ``target_proj`` with a bias (``pard2.StandardizedProjection``); implies a bias.
    * ``projection_only``: train ``target_proj`` alone; every other weight of the draft stays as
      loaded. Turns an existing PARD-1 draft into a dual-mode one whose target-independent mode *is*
      that draft, unchanged; the backward pass computes no weight gradients for the draft.
    * ``cache``: folder of precomputed target passes (``training.target_cache``): built on first use
      from the training data, then every epoch reads features, gold probabilities and (through the
      target's output head) KD logits from it instead of running the target. ``cache_dtype``: how
      the features are stored (float16, bfloat16 or float32).
    """

    target: str | None = None
    layers: tuple[int, ...] = DEFAULT_LAYERS
    scale: float = 0.02
    proj_bias: bool = False
    target_feat_mask: float = 0.1
    ce_alpha: float = 0.1
    kd_alpha: float = 1.0
    kd_temperature: float = 1.0
    standardize: bool = False
    projection_only: bool = False
    cache: str | None = None
    cache_dtype: str = "float16"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"pard2 layers must be a non-empty list of distinct indices, got {self.layers!r}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"pard2 scale must be a positive number, got {self.scale!r}.")
        if not 0.0 <= self.target_feat_mask <= 1.0:
            raise ValueError(f"target_feat_mask is a probability in [0, 1], got {self.target_feat_mask!r}.")
        if self.ce_alpha < 0 or self.kd_alpha < 0 or self.ce_alpha + self.kd_alpha == 0:
            raise ValueError(f"ce_alpha and kd_alpha must be >= 0, not both 0; got {self.ce_alpha}, {self.kd_alpha}.")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature!r}.")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}.")


# ----------------------------------------------------------------------------------------------
# Pure functions of the batch
# ----------------------------------------------------------------------------------------------


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


def cat_weights(
    gold: torch.Tensor, copy_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """CAT weight of every row: ``prod_{s=t-i+1}^{t} g_s`` for row (copy i, position t): (B, N).

    1 for copy 0; 0 on padding rows (copy -1) and, given ``labels``, on rows labelled -100.
    ``gold`` (B, L) comes from ``gold_probs``; ``copy_ids`` / ``position_ids`` (B, N) from the collator.
    Exact products (no logs), one gather per copy.
    """
    weights = torch.ones(copy_ids.shape, dtype=gold.dtype, device=gold.device)  # (B, N)
    copies = int(copy_ids.max()) + 1 if copy_ids.numel() else 0
    for i in range(1, copies):
        factor = gold.gather(1, (position_ids - i + 1).clamp(min=0))  # (B, N) g_{t-i+1}
        weights = torch.where(copy_ids >= i, weights * factor, weights)
    valid = copy_ids >= 0
    if labels is not None:
        valid = valid & labels.ne(IGNORE_INDEX)
    return weights * valid.to(weights.dtype)


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


#: Rows of the vocabulary-wide KD tensors handled at once: about 2**24 floats (64 MB in fp32) per chunk.
KD_CHUNK_ELEMENTS = 1 << 24


def _kd_chunks(batch: int, rows: int, vocab: int):
    """(sample, row slice) pairs covering a (batch, rows) grid, ~``KD_CHUNK_ELEMENTS / vocab`` rows each."""
    step = max(1, KD_CHUNK_ELEMENTS // max(vocab, 1))
    for b in range(batch):
        for start in range(0, rows, step):
            yield b, slice(start, min(start + step, rows))


def _teacher_log_probs(teacher: torch.Tensor, vocab: int, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``log softmax(teacher / T)`` over the shared ids: (r, V')."""
    return F.log_softmax(teacher[:, :vocab].to(dtype) / temperature, dim=-1)


class _DistillKL(torch.autograd.Function):
    """Per-row ``T**2 KL(p_T || q_T)``, computed and differentiated chunk by chunk.

    Only the inputs are kept for backward; every vocabulary-wide temporary (softmaxes, the gathered
    teacher rows) lives for one chunk. The gradient w.r.t. the draft logits is
    ``T * (softmax(z / T) - p_T)`` per row (p_T is 0 on draft-only ids), scaled by the incoming grad.
    """

    @staticmethod
    def forward(ctx, draft_logits, teacher_logits, teacher_positions, temperature):
        batch, rows, vocab_draft = draft_logits.shape
        vocab = min(vocab_draft, teacher_logits.shape[-1])
        dtype = torch.promote_types(draft_logits.dtype, torch.float32)
        kl = draft_logits.new_empty((batch, rows), dtype=dtype)  # (B, n)
        for b, part in _kd_chunks(batch, rows, vocab_draft):
            log_q = F.log_softmax(draft_logits[b, part].to(dtype) / temperature, dim=-1)[:, :vocab]  # (r, V')
            log_p = _teacher_log_probs(teacher_logits[b, teacher_positions[b, part]], vocab, temperature, dtype)
            kl[b, part] = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
        ctx.save_for_backward(draft_logits, teacher_logits, teacher_positions)
        ctx.temperature = temperature
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        draft_logits, teacher_logits, teacher_positions = ctx.saved_tensors
        temperature = ctx.temperature
        batch, rows, vocab_draft = draft_logits.shape
        vocab = min(vocab_draft, teacher_logits.shape[-1])
        dtype = torch.promote_types(draft_logits.dtype, torch.float32)
        grad = torch.empty_like(draft_logits)  # (B, n, V)
        for b, part in _kd_chunks(batch, rows, vocab_draft):
            q = F.softmax(draft_logits[b, part].to(dtype) / temperature, dim=-1)  # (r, V)
            p = _teacher_log_probs(teacher_logits[b, teacher_positions[b, part]], vocab, temperature, dtype).exp()
            q[:, :vocab] -= p
            grad[b, part] = (q * (temperature * grad_kl[b, part, None].to(dtype))).to(grad.dtype)
        return grad, None, None, None


def distill_kl(
    draft_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    teacher_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row ``T**2 * KL(softmax(teacher / T) || softmax(draft / T))``: (B, n), float32 (or float64).

    Args:
        draft_logits: (B, n, V) draft logits (differentiable).
        teacher_logits: (B, n, V_t) teacher logits row by row, or, with ``teacher_positions``, (B, L, V_t)
            target logits from which row j takes position ``teacher_positions[:, j]`` (no (B, n, V_t)
            copy is made). The teacher is a constant: no gradient flows into it.
        teacher_positions: optional (B, n) long.

    Vocabularies may differ in size (the draft may carry extra rows, e.g. its mask token): the sum
    runs over the shared ids; the draft's softmax is over its whole vocabulary, so mass it puts on
    ids the target lacks is penalised. Exactly 0 where both logits are equal. Forward and backward
    run in row chunks, so memory beyond the logits themselves stays at one chunk.
    """
    if teacher_positions is None:
        teacher_positions = torch.arange(draft_logits.shape[1], device=draft_logits.device)
        teacher_positions = teacher_positions.expand(draft_logits.shape[0], -1)  # (B, n)
    return _DistillKL.apply(draft_logits, teacher_logits.detach(), teacher_positions, float(temperature))


def pard2_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_positions: torch.Tensor | None = None,
    ce_alpha: float = 0.1,
    kd_alpha: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``ce_alpha * CE + kd_alpha * KL``, both CAT-weighted and divided by the number of labelled rows.

    Args:
        logits: (B, n, V) draft logits of the scored rows.
        labels: (B, n) aligned gold ids, -100 where no loss.
        weights: (B, n) CAT weights (``cat_weights``).
        teacher_logits: (B, n, V_t) target logits at each row's position, or (B, L, V_t) target
            logits of the whole sequence with ``teacher_positions`` (B, n) naming each row's position.
    """
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce_alpha:
        loss = loss + ce_alpha * pard_loss(logits, labels, weights)
    if kd_alpha:
        labelled = labels.ne(IGNORE_INDEX)  # (B, n)
        kl = distill_kl(logits, teacher_logits, temperature, teacher_positions)  # (B, n)
        kl = kl * weights.to(kl.dtype) * labelled
        loss = loss + kd_alpha * kl.sum() / labelled.sum().clamp(min=1)
    return loss


# ----------------------------------------------------------------------------------------------
# Draft and target setup
# ----------------------------------------------------------------------------------------------


class TargetPass(NamedTuple):
    """One no-grad target forward on the real sequences of a batch (or its cached copy)."""

    logits: torch.Tensor | None  # (B, L, V_t); None from a target cache read without KD
    features: torch.Tensor  # (B, L, D) feature(u) at column u
    gold: torch.Tensor  # (B, L) g_u


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
    """Validate ``layers`` against the target's hidden states; returns the feature size."""
    text = target.config.get_text_config()
    states = text.num_hidden_layers + 1  # output_hidden_states: embeddings, then every layer
    bad = [layer for layer in layers if not -states <= layer < states]
    if bad:
        raise ValueError(f"pard2 layers {bad} are out of range for a target with {states} hidden states.")
    return text.hidden_size * len(layers)


def attach_pard2(draft, options: Pard2Options, *, target_dim: int) -> Pard2Config:
    """Write the PARD-2 config keys into ``draft.config`` and attach a zero ``draft.target_proj``.

    Zero init: the untrained projection adds nothing, so training starts from the PARD-1 draft and
    both modes agree; the gradient of the weight (``scale * dL/d embed x feature``) does not depend
    on its value, so it still learns.
    """
    config = draft.config
    config.spd_type = "pard2"
    config.pard2 = True
    config.pard2_scale = float(options.scale)
    config.pard2_target_dim = int(target_dim)
    config.pard2_target_layers = list(options.layers)
    config.pard2_proj_bias = bool(options.proj_bias or options.standardize)
    pard2 = Pard2Config.from_model_config(config)
    proj = make_projection(draft, pard2)
    with torch.no_grad():
        for param in proj.parameters():
            param.zero_()
    return pard2


#: Training examples whose target features give the standardization statistics.
STATS_EXAMPLES = 64


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


def feature_statistics(
    target, examples: Sequence[dict], layers: Sequence[int], *, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (D,) of the target's features over the real tokens of ``examples``
    (dicts with ``input_ids``, e.g. the first ``STATS_EXAMPLES`` of the training set)."""
    device = next(target.parameters()).device

    def chunks():
        for start in range(0, len(examples), batch_size):
            sequences = [torch.as_tensor(e["input_ids"]) for e in examples[start : start + batch_size]]
            ids, mask = pad_right(sequences, device)  # (B, L)
            yield run_target(target, ids, mask, layers).features[mask.bool()]  # (tokens, D)

    return feature_moments(chunks())


def load_target(path: str, *, bf16: bool = False):
    """The target for PARD-2 training (frozen, eval, sdpa; bf16 when training in bf16)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def setup_pard2(draft, options: Pard2Options, *, target=None, bf16: bool = False):
    """Load the target if needed, check the layers and attach the projection; returns the target."""
    if target is None:
        if options.target is None:
            raise ValueError("PARD-2 training needs a target: set Pard2Options.target (--target) or pass target=.")
        target = load_target(options.target, bf16=bf16)
    attach_pard2(draft, options, target_dim=check_target_layers(target, options.layers))
    return target


# ----------------------------------------------------------------------------------------------
# The trainer and the recipe
# ----------------------------------------------------------------------------------------------


def freeze_all_but_projection(draft) -> None:
    """``requires_grad`` only on ``target_proj``: the optimizer (built later by the Trainer from the
    parameters that require grad) then trains the projection alone."""
    for name, param in draft.named_parameters():
        param.requires_grad_(name.startswith(PROJ_PREFIX))


class Pard2Trainer(PardTrainer):
    """``PardTrainer`` with a frozen target: features in, CAT weights and KD in the loss.

    ``model`` must be PARD-2-ready (``attach_pard2`` or ``setup_pard2``); its config's layers and scale
    are the ones used. ``target`` is kept as ``self.target_model``, outside the model, and moved to
    the training device unless it was dispatched with a device map. A ``PardDataCollator`` is switched
    to ``with_target_inputs=True``. Checkpoints and ``save_model`` write the draft without
    ``target_proj`` in ``model.safetensors`` plus the projection files; resuming reads them back.
    """

    def __init__(self, *args, target, pard2: Pard2Options | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pard2_options = pard2 or Pard2Options()
        self.pard2 = Pard2Config.from_model_config(self.model.config)
        if self.pard2 is None or getattr(self.model, "target_proj", None) is None:
            raise ValueError(
                "Pard2Trainer needs a PARD-2 draft: call attach_pard2(draft, options, target_dim=...) first."
            )
        check_target_layers(target, self.pard2.target_layers)
        if isinstance(self.data_collator, PardDataCollator):
            self.data_collator.with_target_inputs = True
        if getattr(target, "hf_device_map", None) is None:
            target = target.to(self.args.device)
        self.target_model = target.eval().requires_grad_(False)
        self.target_cache = self.open_target_cache() if self.pard2_options.cache else None
        if self.pard2_options.standardize and not isinstance(self.model.target_proj, StandardizedProjection):
            self.standardize_projection()
        if self.pard2_options.projection_only:
            freeze_all_but_projection(self.model)
        seed = self.args.seed + 1_000_003 * self.args.process_index
        self.feature_generator = torch.Generator().manual_seed(seed)

    def open_target_cache(self):
        """The ``TargetCache`` of ``options.cache``, built first (by the main process) if missing."""
        from .target_cache import TargetCache, build_target_cache, is_target_cache

        options = self.pard2_options
        with self.args.main_process_first(desc="PARD-2 target cache"):
            if not is_target_cache(options.cache):
                build_target_cache(self.target_model, self.train_dataset, self.pard2.target_layers, options.cache,
                                   dtype=options.cache_dtype, max_length=self.collator_max_length())
        return TargetCache(options.cache, target=self.target_model, layers=self.pard2.target_layers,
                           need_logits=options.kd_alpha > 0)

    def collator_max_length(self) -> int | None:
        return getattr(self.data_collator, "max_length", None)

    def standardize_projection(self) -> None:
        """Reparameterise ``target_proj`` on standardized features (same function; folded when saved)."""
        if not self.pard2.proj_bias:
            raise ValueError("Standardized PARD-2 features need a bias in target_proj (attach_pard2 sets it).")
        examples = [self.train_dataset[i] for i in range(min(len(self.train_dataset), STATS_EXAMPLES))]
        if self.target_cache is not None:
            mean, std = feature_moments([self.target_cache.features_of(examples, self.collator_max_length())])
        else:
            mean, std = feature_statistics(self.target_model, examples, self.pard2.target_layers)
        draft = self.accelerator.unwrap_model(self.model)
        draft.target_proj = StandardizedProjection.wrap(draft.target_proj, mean, std)

    def target_pass(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The target's pass on the batch's real sequences (live, or from the cache); features of
        dropped samples zeroed."""
        if "target_input_ids" not in inputs:
            raise ValueError("PARD-2 batches need target_input_ids: use PardDataCollator(with_target_inputs=True).")
        ids, attention_mask = inputs["target_input_ids"], inputs["target_attention_mask"]  # (B, L)
        if self.target_cache is not None:
            out = self.target_cache.target_pass(ids, attention_mask)
        else:
            out = run_target(self.target_model, ids, attention_mask, self.pard2.target_layers)
        keep = feature_keep_mask(ids.shape[0], self.pard2_options.target_feat_mask, generator=self.feature_generator)
        keep = keep.to(ids.device)  # (B,)
        return {
            "target_logits": out.logits,
            "target_features": out.features * keep[:, None, None].to(out.features.dtype),
            "gold_probs": out.gold,
            "use_target_features": keep,
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, **self.target_pass(inputs)}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def draft_inputs(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs_embeds`` = embedding + scale * target_proj(row features); plain embedding for dropped samples."""
        draft = self.accelerator.unwrap_model(model)
        input_ids = inputs["input_ids"]  # (B, N)
        features = row_features(inputs["target_features"], inputs["copy_ids"], inputs["position_ids"])  # (B, N, D)
        with_features = draft_inputs_embeds(draft, input_ids, features, self.pard2.scale)  # (B, N, H)
        plain = draft.get_input_embeddings()(input_ids)  # (B, N, H) what independent mode feeds
        embeds = torch.where(inputs["use_target_features"][:, None, None], with_features, plain)
        return {
            "inputs_embeds": embeds,  # (B, N, H)
            "attention_mask": inputs["attention_mask"],
            "position_ids": inputs["position_ids"],
        }

    def loss_weights(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return cat_weights(inputs["gold_probs"], inputs["copy_ids"], inputs["position_ids"], inputs["labels"])

    def row_loss(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor], keep) -> torch.Tensor:
        options = self.pard2_options
        return pard2_loss(
            logits,  # (B, n, V)
            inputs["labels"][:, keep],
            self.loss_weights(inputs)[:, keep],
            inputs["target_logits"],  # (B, L, V_t): row j's teacher is the target at its position
            teacher_positions=inputs["position_ids"][:, keep],
            ce_alpha=options.ce_alpha,
            kd_alpha=options.kd_alpha,
            temperature=options.kd_temperature,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        draft = self.accelerator.unwrap_model(self.model)
        state_dict = draft.state_dict() if state_dict is None else state_dict
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(PROJ_PREFIX)}
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            save_projection(draft, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        draft = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_projection_state(draft.target_proj, read_projection_state(resume_from_checkpoint))

    def _issue_warnings_after_load(self, load_result) -> None:
        # target_proj is read from its own file by _load_from_checkpoint: not a missing key.
        missing = [key for key in load_result.missing_keys if not key.startswith(PROJ_PREFIX)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


def train_pard2_draft(config: PardTrainConfig, *, target=None, callbacks: Sequence | None = None) -> Path:
    """Train a PARD-2 draft end to end (``train_draft`` with ``config.pard2``, default options if unset).

    ``target`` is a loaded target model; without it the target is loaded from ``config.pard2.target``.
    Returns the output folder (plain HF draft + tokenizer + PARD-2 config keys + projection files),
    which ``transformers_pard.PardAutoModelForCausalLM.from_pretrained`` loads with its ``target_proj``.
    """
    if config.pard2 is None:
        config = dataclasses.replace(config, pard2=Pard2Options())
    return train_draft(config, target=target, callbacks=callbacks)
