"""The draft, resolved once per call: what goes into its forward and what comes out of it.

``resolve_draft(target, draft, pard_mode=...)`` checks that the draft fits the target and returns a
``Drafter``, the one object the engine asks for draft logits. It combines
* an *input strategy*: ``PlainInputs`` (PARD: token embeddings only) or ``Pard2Inputs`` (PARD-2
  target-dependent mode: ``+ scale * target_proj(target feature of the predecessor)``), and
* an *output head*: the draft's own (full vocabulary) or a ``SubsetHead`` (``vocab.py``: logits for
  the draft's frequent ids only, mapped back to target ids).
A new draft kind is a new input strategy or head; the loop in ``engine.py`` does not change.

The draft input of a round is right-aligned (``DraftLayout``)::

    column:  0 .. W-u-K  | W-u-K+1 .. W-K | W-K+1 .. W-1
    content: filler      | u unseen tokens | K-1 mask tokens
so the K positions whose logits are needed are the last K of every row.

Its output is a ``DraftLogits``: the K slot logits as the head gave them, over the draft's own ids when
it has a subset head. Greedy proposals (the chain's argmax, a tree's top-k) are taken there, on N
columns instead of V; only what needs the target's vocabulary (sampling's q, logits processors) asks
for the scattered ``full()`` view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cache import PardStaticCache, cache_keyword
from .draft_config import DraftSpec, validate_draft
from .pard2 import MODES, Pard2Config, draft_inputs_embeds, pard2_fit_problem, shift_right
from .vocab import SubsetHead, vocab_subset
from .weights import weights_version


@dataclass
class DraftLayout:
    """One round's right-aligned draft input and where each column goes; all (B, W)."""

    input_ids: torch.Tensor  # (B, W) filler | unseen | masks
    slots: torch.Tensor  # (B, W) cache slot per column (filler -> the trash slot)
    rel: torch.Tensor  # (B, W) index into the unseen tokens (masks: >= num_unseen)
    is_unseen: torch.Tensor  # (B, W) bool
    is_mask: torch.Tensor  # (W,) bool
    num_unseen: torch.Tensor  # (B,)


def draft_layout(unseen, num_unseen, cache: PardStaticCache, k: int, mask_token_id: int, width: int) -> DraftLayout:
    """``[filler] [unseen] [mask]*(K-1)`` right-aligned in ``width`` columns, and its slots."""
    cols = torch.arange(width, device=unseen.device)  # (W,)
    first_real = width - (k - 1) - num_unseen[:, None]  # (B, 1)
    rel = cols - first_real  # (B, W)
    is_unseen = (rel >= 0) & (rel < num_unseen[:, None])
    is_mask = cols >= width - (k - 1)  # (W,)
    unseen_idx = rel.clamp(0, unseen.shape[1] - 1)
    input_ids = torch.where(is_unseen, unseen.gather(1, unseen_idx), mask_token_id)  # (B, W)
    slots = torch.where(is_unseen | is_mask, cache.length[:, None] + rel, cache.trash_slot)  # (B, W)
    return DraftLayout(input_ids, slots, rel, is_unseen, is_mask, num_unseen)


@dataclass
class DraftLogits:
    """One round's K draft distributions: column c of ``values`` is target id ``ids[c]`` (a subset head),
    or target id c itself (``ids`` None)."""

    values: torch.Tensor  # (B, K, N) float32; N = V when ids is None
    ids: torch.Tensor | None  # (N,) target id of each column
    vocab_size: int  # V, the target's vocabulary

    def full(self) -> torch.Tensor:
        """(B, K, V): -inf at the ids the draft cannot propose."""
        return self.on_vocab(self.values, float("-inf"))

    def on_vocab(self, columns: torch.Tensor, fill: float) -> torch.Tensor:
        """Per-column values (B, K, N) on the target's vocabulary (B, K, V), ``fill`` at the ids the draft
        cannot propose (e.g. probabilities: 0)."""
        if self.ids is None:
            return columns
        full = columns.new_full((*columns.shape[:-1], self.vocab_size), fill)  # (B, K, V)
        return full.index_copy_(-1, self.ids, columns)

    def target_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """Column indices (any shape) as target token ids."""
        return columns if self.ids is None else self.ids[columns]


# ----------------------------------------------------------------------------------------------
# Input strategies
# ----------------------------------------------------------------------------------------------


class PlainInputs:
    """PARD: the draft reads token ids only."""

    feature_layers: tuple[int, ...] | None = None  # target hidden states it needs: none

    def prefill_embeds(self, draft, body_ids, features, attention_mask):
        return None

    def round_embeds(self, draft, layout: DraftLayout):
        return None

    def observe(self, features: torch.Tensor | None) -> None:
        """Features of the verify slots of the round just committed (PARD-2 only)."""


class Pard2Inputs(PlainInputs):
    """PARD-2 target-dependent mode (PARD_NOTES section 3): every draft input embedding gets the
    projected target feature of its predecessor; the mask slots get the last real token's."""

    def __init__(self, config: Pard2Config):
        self.config = config
        self.feature_layers = config.target_layers
        self.unseen_features: torch.Tensor | None = None  # (B, <=K+1, D) predecessor of each unseen token

    def prefill_embeds(self, draft, body_ids, features, attention_mask):
        """Prompt embeddings with features shifted right; keeps the last prompt token's predecessor."""
        if features is None:  # one-token prompt: the only token has no predecessor
            weight = draft.get_input_embeddings().weight
            self.unseen_features = weight.new_zeros(attention_mask.shape[0], 1, self.config.target_dim)
            return None
        self.unseen_features = features[:, -1:] * attention_mask[:, -2, None, None].to(features.dtype)  # (B, 1, D)
        shifted = shift_right(features, attention_mask[:, :-1])  # (B, P-1, D)
        return draft_inputs_embeds(draft, body_ids, shifted, self.config.scale)

    def round_embeds(self, draft, layout: DraftLayout):
        index = torch.where(layout.is_mask, layout.num_unseen[:, None] - 1, layout.rel)  # (B, W)
        index = index.clamp(0, self.unseen_features.shape[1] - 1)
        dim = self.unseen_features.shape[-1]
        features = self.unseen_features.gather(1, index[..., None].expand(-1, -1, dim))  # (B, W, D)
        features = features * (layout.is_unseen | layout.is_mask)[..., None].to(features.dtype)  # filler: zeros
        return draft_inputs_embeds(draft, layout.input_ids, features, self.config.scale)

    def observe(self, features: torch.Tensor | None) -> None:
        # Verify slot j holds the feature of the token before committed token j: exactly the unseen
        # tokens' predecessors. Finished rows commit nothing and never read theirs.
        self.unseen_features = features


# ----------------------------------------------------------------------------------------------
# Output head
# ----------------------------------------------------------------------------------------------


class SubsetHeadDraft(nn.Module):
    """A causal LM whose output layer is a ``SubsetHead``: called like the HF model (the keywords the
    engine uses), returns ``.logits`` over the subset (B, keep, N). The base model runs unchanged."""

    def __init__(self, model, head: SubsetHead):
        super().__init__()
        self.model = model
        self.base = model.get_decoder()
        self.head = head
        self.pard_cache_keyword = cache_keyword(self.base)  # read by the engine's ForwardFn

    @property
    def dtype(self):
        return self.model.dtype

    def forward(self, *, logits_to_keep: int = 0, output_hidden_states: bool = False, **kwargs):
        hidden = self.base(**kwargs).last_hidden_state  # (B, T, H)
        return _Logits(self.head(hidden[:, -logits_to_keep:]))  # (B, keep, N)


@dataclass
class _Logits:
    logits: torch.Tensor
    hidden_states: tuple | None = None


# ----------------------------------------------------------------------------------------------
# The drafter
# ----------------------------------------------------------------------------------------------


@dataclass
class Drafter:
    """Everything the engine needs about the draft of one call (see module docstring)."""

    model: nn.Module
    spec: DraftSpec
    inputs: PlainInputs
    head: SubsetHead | None = None

    @property
    def feature_layers(self) -> tuple[int, ...] | None:
        return self.inputs.feature_layers

    @property
    def forward_source(self) -> nn.Module:
        """The module whose hooks and identity decide whether the draft's forward must be rebuilt."""
        return self.model

    @property
    def forward_module(self) -> nn.Module:
        """What the draft's forward function calls (the HF model, or it with the subset head)."""
        return self.model if self.head is None else SubsetHeadDraft(self.model, self.head)

    def draft_logits(self, logits: torch.Tensor) -> DraftLogits:
        """The head's logits (B, K, V_draft or N) as a round's ``DraftLogits`` (subset columns kept as they are)."""
        if self.head is not None:
            return DraftLogits(logits, self.head.ids, self.spec.target_vocab_size)
        return DraftLogits(self.to_target_vocab(logits), None, self.spec.target_vocab_size)

    def to_target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft logits (B, K, V_draft or N) as (B, K, V_target): ids the draft cannot propose get -inf."""
        vocab = self.spec.target_vocab_size
        if self.head is not None:
            return self.head.to_full(logits, vocab)
        if logits.shape[-1] >= vocab:
            return logits[..., :vocab]
        missing = logits.new_full((*logits.shape[:-1], vocab - logits.shape[-1]), float("-inf"))
        return torch.cat([logits, missing], dim=-1)


def resolve_pard2(target, draft, requested: str | None) -> Pard2Config | None:
    """The PARD-2 settings for target-dependent mode, or None for the draft alone."""
    if requested is not None and requested not in MODES:
        raise ValueError(f"pard_mode must be one of {MODES}, got {requested!r}.")
    pard2 = Pard2Config.from_model_config(draft.config)
    if requested == "independent" or (pard2 is None and requested is None):
        return None
    if pard2 is None or getattr(draft, "target_proj", None) is None:
        raise ValueError(
            "pard_mode='dependent' needs a PARD-2 draft with its target projection (config key pard2 and "
            "pard2_proj.safetensors / warp_model.bin); load it with PardAutoModelForCausalLM.from_pretrained."
        )
    problem = pard2_fit_problem(target.config, pard2)
    if problem is None:
        return pard2
    if requested == "dependent":
        raise ValueError(f"{problem} It was trained for another target: use pard_mode='independent'.")
    return None  # documented fallback: the draft alone (target-independent mode)


def resolve_draft(target, draft, *, pard_mode: str | None = None, head_cache: dict | None = None) -> Drafter:
    """Validate ``draft`` against ``target`` and build its ``Drafter`` (raises ``ValueError`` with the fix).

    ``head_cache`` (owned by the runtime) keeps the subset head's gathered weight rows across calls.
    """
    spec = validate_draft(target, draft)
    pard2 = resolve_pard2(target, draft, pard_mode)
    inputs = Pard2Inputs(pard2) if pard2 is not None else PlainInputs()
    return Drafter(model=draft, spec=spec, inputs=inputs, head=subset_head(draft, head_cache))


MAX_HEADS = 6  # subset heads kept per runtime (least recently used dropped), one per draft in use


def subset_head(draft, head_cache: dict | None = None) -> SubsetHead | None:
    """The draft's ``SubsetHead``, built once per draft and subset when a cache dict is given.

    The head's identity keys the draft's (compiled) forward function, so drafts used in turn must each
    keep theirs: a head rebuilt every call would compile a new graph every call.
    """
    ids = vocab_subset(draft)
    if ids is None:
        return None
    head = draft.get_output_embeddings()
    key = (id(draft), ids.data_ptr())
    version = weights_version(head)
    cached = head_cache.pop(key, None) if head_cache is not None else None
    built = cached[1] if cached is not None and cached[0] == version else SubsetHead(head, ids)
    if head_cache is not None:
        head_cache[key] = (version, built)  # most recently used last
        while len(head_cache) > MAX_HEADS:
            head_cache.pop(next(iter(head_cache)))
    return built
