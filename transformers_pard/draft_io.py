"""Compact PARD drafts that borrow the target's embedding (small enough to ship inside a package).

A draft cut from its target keeps the target's (frozen) token embedding / tied output head. That
matrix is most of a small draft's size (SmolLM2: 49152 x 576 = 28 M of a 39 M-parameter 3-layer
draft), so a *compact* draft folder stores everything except it, plus the one trainable row of the
mask token. Its ``config.json`` is a normal HF config with ``pard_token`` / ``spd_type`` and
``pard_embedding_from_target: true``. ``load_compact_draft(path, target=...)`` rebuilds the full
draft; ``export_full_draft`` writes a plain HF folder (for vLLM / TensorRT-LLM, which read
``pard_token`` from a normal model folder).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from .lookup import LookupStore, attach_lookup_store, lookup_store
from .pard2 import PROJ_PREFIX, load_projection, save_projection
from .vocab import VOCAB_SIZE_KEY, attach_vocab_subset, load_vocab_subset, save_vocab_subset, vocab_subset

COMPACT_KEY = "pard_embedding_from_target"
MASK_ROW_KEY = "pard.mask_embedding"
WEIGHTS = "model.safetensors"


def is_compact_draft(config) -> bool:
    return bool(getattr(config, COMPACT_KEY, False))


def _embedding_keys(model) -> set[str]:
    """State-dict keys of the input embedding and (if tied) the output head."""
    embedding = model.get_input_embeddings().weight
    return {name for name, tensor in model.state_dict().items() if tensor.data_ptr() == embedding.data_ptr()}


def save_compact_draft(draft, path: str, *, dtype: torch.dtype = torch.bfloat16, tokenizer=None) -> None:
    """Write ``draft`` without its embedding (borrowed from the target at load), in ``dtype``."""
    if not draft.config.tie_word_embeddings:
        raise ValueError("Compact drafts need tied input/output embeddings (the target's matrix serves both).")
    os.makedirs(path, exist_ok=True)
    state = draft.state_dict()
    skip = _embedding_keys(draft) | {k for k in state if k.startswith(PROJ_PREFIX)}  # PARD-2: own files
    mask_id = int(draft.config.pard_token)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in state.items() if k not in skip}
    tensors[MASK_ROW_KEY] = draft.get_input_embeddings().weight[mask_id].detach().to(dtype).clone()
    save_file(tensors, os.path.join(path, WEIGHTS), metadata={"format": "pt"})
    config = draft.config.to_dict()
    config[COMPACT_KEY] = True
    config["dtype"] = str(dtype).removeprefix("torch.")
    type(draft.config).from_dict(config).save_pretrained(path)
    if getattr(draft, "target_proj", None) is not None:  # PARD-2
        save_projection(draft, path)
    if vocab_subset(draft) is not None:
        save_vocab_subset(path, vocab_subset(draft))
    if lookup_store(draft) is not None:
        lookup_store(draft).save(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_draft_extras(draft, path: str):
    """Attach what a draft folder stores beside its weights: the PARD-2 projection, the vocabulary subset,
    the lookup store."""
    dtype, device = draft.get_input_embeddings().weight.dtype, draft.get_input_embeddings().weight.device
    if load_projection(draft, path) is not None:
        draft.target_proj.to(device=device, dtype=dtype)
    ids = load_vocab_subset(path)
    if ids is None and getattr(draft.config, VOCAB_SIZE_KEY, None):
        raise ValueError(f"{path}'s config.json sets {VOCAB_SIZE_KEY} but the folder has no vocabulary-subset "
                         "file: copy pard_vocab.safetensors with the draft, or delete the key to use the full vocabulary.")
    attach_vocab_subset(draft, ids)
    attach_lookup_store(draft, LookupStore.load(path))
    return draft


def load_compact_draft(path: str, *, target, dtype: torch.dtype | None = None):
    """The full draft: compact weights + ``target``'s embedding with the draft's own mask row."""
    config = AutoConfig.from_pretrained(path)
    if not is_compact_draft(config):
        raise ValueError(f"{path} is not a compact PARD draft (no {COMPACT_KEY} in its config.json).")
    target_embedding = target.get_input_embeddings().weight
    if tuple(target_embedding.shape) != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"This compact draft borrows a {config.vocab_size} x {config.hidden_size} embedding, but the target's "
            f"is {tuple(target_embedding.shape)}: it was made for another target family."
        )
    dtype = dtype or target_embedding.dtype
    draft = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    tensors = load_file(os.path.join(path, WEIGHTS))
    if MASK_ROW_KEY not in tensors:
        raise ValueError(f"{path} is marked as a compact draft but its {WEIGHTS} has no '{MASK_ROW_KEY}' (the "
                         "trained mask-token row); re-export it with transformers_pard.draft_io.save_compact_draft.")
    mask_row = tensors.pop(MASK_ROW_KEY)
    missing, unexpected = draft.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) - _embedding_keys(draft):
        raise ValueError(f"Compact draft weights do not fit its config: missing {missing}, unexpected {unexpected}.")
    with torch.no_grad():
        embedding = draft.get_input_embeddings().weight
        embedding.copy_(target_embedding.to(dtype))
        embedding[int(config.pard_token)] = mask_row.to(dtype)
    draft.tie_weights()
    return load_draft_extras(draft.to(target_embedding.device), path).eval()


def export_full_draft(draft, path: str, *, tokenizer=None) -> None:
    """A plain HF model folder (embedding included, full vocabulary: no subset file) that any PARD
    reader (vLLM, TensorRT-LLM) loads unchanged."""
    config = draft.config
    compact = config.__dict__.pop(COMPACT_KEY, None)  # the folder holds the embedding; the draft keeps its flag
    subset_size = config.__dict__.pop(VOCAB_SIZE_KEY, None)
    state_dict = None
    if getattr(draft, "target_proj", None) is not None:  # PARD-2: the projection goes in its own files
        state_dict = {k: v for k, v in draft.state_dict().items() if not k.startswith(PROJ_PREFIX)}
    try:
        draft.save_pretrained(path, state_dict=state_dict)
    finally:
        if compact is not None:
            setattr(config, COMPACT_KEY, compact)
        if subset_size is not None:
            setattr(config, VOCAB_SIZE_KEY, subset_size)
    if state_dict is not None:
        save_projection(draft, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_draft(path: str, *, target, dtype: torch.dtype | None = None):
    """Any draft folder: compact (borrowing ``target``'s embedding) or a plain HF model folder."""
    if is_compact_draft(AutoConfig.from_pretrained(path)):
        return load_compact_draft(path, target=target, dtype=dtype)
    dtype = dtype or next(target.parameters()).dtype
    draft = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return load_draft_extras(draft.to(next(target.parameters()).device), path).eval()
