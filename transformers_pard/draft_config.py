"""What makes a model a PARD draft, and whether a draft fits a target.

A PARD draft is a normal HF causal LM whose ``config.json`` carries ``pard_token`` (the mask token id)
and ``spd_type`` ("pard" or "pard2"); this is what the published ``amd/PARD-*`` drafts, vLLM and
TensorRT-LLM read. The checks here run once per ``generate`` call, never in the decoding loop.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default number of draft tokens per round when neither the call nor a generation config sets it.
DEFAULT_K = 8
#: ``spd_type`` values that mark a PARD draft.
PARD_TYPES = ("pard", "pard2")
#: Config keys holding the mask token id, in the order we read them (``pard_token`` is what we write).
MASK_TOKEN_KEYS = ("pard_token", "mask_token_id", "ptd_token_id")
#: Vocabulary sizes may differ by embedding padding (e.g. Qwen2.5 0.5B vs 7B); beyond this the
#: tokenizers cannot be the same.
VOCAB_TOLERANCE = 0.01


def mask_token_id(config) -> int | None:
    """The mask token id a draft config declares, or None."""
    for key in MASK_TOKEN_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def is_pard_draft(model) -> bool:
    """True when ``model``'s config marks it as a PARD draft (``pard_token`` + ``spd_type``)."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and getattr(config, "pard_token", None) is not None
        and getattr(config, "spd_type", None) in PARD_TYPES
    )


@dataclass(frozen=True)
class DraftSpec:
    """The facts about a draft that the engine needs, validated against the target."""

    mask_token_id: int
    draft_vocab_size: int
    target_vocab_size: int
    spd_type: str


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _special_ids(config, generation_config) -> dict[str, object]:
    ids = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(generation_config, name, None) if generation_config is not None else None
        if value is None:
            value = getattr(config, name, None)
        if value is not None:
            ids[name] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return ids


def _check_mask_is_unused(mask_id: int, *special: dict[str, tuple]) -> None:
    """The mask token must be an id the text never uses: never EOS / BOS / pad (the engine would stop at,
    or pad with, a mask slot's id, and the draft could not tell a real EOS from a mask)."""
    for ids in special:
        for name, values in ids.items():
            if mask_id in values:
                raise ValueError(
                    f"The draft's mask token id {mask_id} (pard_token) is also its {name.removesuffix('_id')} id: "
                    "a PARD mask must be a reserved token the text never contains. Set `pard_token` in the draft's "
                    "config.json to the id it was trained with, or retrain it with an unused token "
                    "(transformers_pard.training.prepare_draft picks one)."
                )


def validate_draft(target, draft) -> DraftSpec:
    """Check that ``draft`` can serve ``target``; raise ``ValueError`` naming the problem and the fix."""
    if getattr(target.config, "is_encoder_decoder", False):
        raise ValueError("PARD drafting supports decoder-only targets; this target is an encoder-decoder model.")
    if getattr(draft.config, "is_encoder_decoder", False):
        raise ValueError("A PARD draft must be a decoder-only causal LM; this draft is an encoder-decoder model.")
    mask_id = mask_token_id(draft.config)
    if mask_id is None:
        raise ValueError(
            "The draft has no mask token id: its config sets none of "
            f"{MASK_TOKEN_KEYS}. Use a PARD-trained draft (see transformers_pard.training.prepare_draft), "
            "or set `draft.config.pard_token = <mask id>` if you know the id it was trained with."
        )
    draft_vocab = _text_config(draft.config).vocab_size
    target_vocab = _text_config(target.config).vocab_size
    if not 0 <= mask_id < draft_vocab:
        raise ValueError(
            f"The draft's mask token id {mask_id} is outside its vocabulary (size {draft_vocab}). "
            "Fix `pard_token` in the draft's config.json to the id the draft was trained with."
        )
    if abs(draft_vocab - target_vocab) > VOCAB_TOLERANCE * max(draft_vocab, target_vocab):
        raise ValueError(
            f"The draft's vocabulary ({draft_vocab} tokens) does not match the target's ({target_vocab}). "
            "A PARD draft must share the target's tokenizer: use a draft of the same model family."
        )
    draft_ids = _special_ids(draft.config, getattr(draft, "generation_config", None))
    target_ids = _special_ids(target.config, getattr(target, "generation_config", None))
    _check_mask_is_unused(mask_id, draft_ids, target_ids)
    for name in ("bos_token_id", "eos_token_id"):
        if name in draft_ids and name in target_ids and not set(draft_ids[name]) & set(target_ids[name]):
            raise ValueError(
                f"The draft's {name} {list(draft_ids[name])} differs from the target's {list(target_ids[name])}: "
                "the two models do not share a tokenizer. Use a draft of the target's model family."
            )
    draft_device = next(draft.parameters()).device
    target_device = next(target.parameters()).device
    if draft_device != target_device:
        raise ValueError(
            f"The draft is on {draft_device} but the target is on {target_device}: "
            f"move the draft with `draft.to('{target_device}')`."
        )
    spd_type = getattr(draft.config, "spd_type", None) or "pard"
    return DraftSpec(mask_id, draft_vocab, target_vocab, spd_type)
