"""A PARD draft inside transformers' own assisted-generation loop (a stock, not enabled, target).

transformers' ``AssistedCandidateGenerator`` asks the assistant for up to n candidates by calling
``assistant.generate(input_ids, generation_config=<copy with is_assistant=True>, logits_processor=...,
cache=<DynamicCache>, ...)`` and reads ``sequences``, ``scores`` and ``cache`` (``past_key_values``
before transformers 5.24: ``GENERATE_CACHE_FIELD``).
A PARD-enabled draft answers that call with ONE forward over ``[uncached tokens] + [mask] * (n-1)``
instead of n autoregressive forwards, then drops the mask slots from its cache. The target's loop
verifies the candidates as usual, so the result stays the target's own (greedy: same tokens;
sampling: candidates are drawn from exactly the ``scores`` returned, which is the q the loop uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .cache import GENERATE_CACHE_FIELD, cache_keyword
from .draft_config import mask_token_id
from .scoring import Scorer


@dataclass
class _Prefix:
    """The minimal state ``Scorer.slot_scores`` reads: committed tokens of every row."""

    tokens: torch.Tensor
    prompt_len: int
    num_generated: torch.Tensor


def is_assisted_call(generation_config) -> bool:
    return generation_config is not None and bool(getattr(generation_config, "is_assistant", False))


def parallel_draft_candidates(draft, input_ids, generation_config, *, logits_processor=None, **kwargs):
    """Answer an assisted-generation request with n candidates from one draft forward."""
    if input_ids.shape[0] != 1:
        raise ValueError("transformers' assisted generation runs one sequence at a time; got a batch.")
    config, _ = draft._prepare_generation_config(generation_config)
    n = max(int(kwargs.get("max_new_tokens") or config.max_new_tokens or 1), 1)
    cache = kwargs.get(GENERATE_CACHE_FIELD) or DynamicCache(config=draft.config)
    cached = cache.get_seq_length()
    new_tokens = input_ids[:, cached:]  # (1, U) tokens the draft has not seen
    masks = input_ids.new_full((1, n - 1), mask_token_id(draft.config))
    step_ids = torch.cat([new_tokens, masks], dim=1)  # (1, U + n - 1)
    positions = torch.arange(cached, cached + step_ids.shape[1], device=input_ids.device)[None]
    with torch.no_grad():
        logits = draft(input_ids=step_ids, position_ids=positions, use_cache=True, logits_to_keep=n,
                       **{cache_keyword(draft): cache}).logits[:, -n:]  # (1, n, V)
    surplus = cache.get_seq_length() - input_ids.shape[1]
    if surplus > 0:
        cache.crop(-surplus)  # the mask slots' keys are discarded
    processors = draft._get_logits_processor(
        generation_config=config, input_ids_seq_length=input_ids.shape[1], logits_processor=logits_processor,
        device=input_ids.device,
    )
    tokens, scores = _draw(Scorer(processors), input_ids, logits, sample=bool(config.do_sample))
    return GenerateDecoderOnlyOutput(
        sequences=torch.cat([input_ids, tokens], dim=1), scores=tuple(scores.unbind(1)), **{GENERATE_CACHE_FIELD: cache}
    )


def _draw(scorer: Scorer, input_ids, logits, *, sample: bool):
    """Candidates one slot at a time (slot j's processors see d_1..d_{j}); returns tokens and scores."""
    prefix = _Prefix(tokens=input_ids, prompt_len=input_ids.shape[1], num_generated=input_ids.new_zeros(1))
    tokens = input_ids.new_zeros(1, 0)
    scores = []
    for j in range(logits.shape[1]):
        slot = scorer.slot_scores(prefix, tokens, logits[:, j])  # (1, V)
        choice = torch.multinomial(torch.softmax(slot, -1), 1) if sample else slot.argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, choice], dim=1)
        scores.append(slot)
    return tokens, torch.stack(scores, dim=1)
