"""Turn a small causal LM into a PARD draft-to-be: choose the mask token and record it in the config.

The mask token is the input of every slot after the last real token (copies 1..K-1 in training,
positions p+1..p+K-1 at inference). It must be an id that never occurs in real text. In order of
preference, ``prepare_draft`` uses:

1. ``mask_token`` given explicitly (a token string, added if new, or an id);
2. the id the model's config already declares (re-preparing a PARD draft keeps its mask token);
3. an unused reserved token of the vocabulary, e.g. Llama-3's ``<|reserved_special_token_N|>``,
   Gemma's ``<unusedN>`` or BERT-style ``[unusedN]`` (the lowest such id that is not a declared special
   token and does not occur in the chat template);
4. a spare embedding row beyond ``len(tokenizer)`` (Qwen pads its embedding to a round size): the
   string ``<|pard_mask|>`` is added to the tokenizer so that its id lands on that row;
5. a new special token ``<|pard_mask|>``, with the embeddings resized by one row.

In cases 3-5 (and for an explicit token that had to be added) the row has never been trained, so its
input embedding (and, for an untied head, its output row) is set to the mean of the real rows.
Nothing else changes: the model stays a plain HF causal LM whose config gains ``pard_token``,
``mask_token_id`` (both the mask id; vLLM and TensorRT-LLM read these) and ``spd_type = "pard"``.

A PARD-2 draft-to-be gets its target projection from ``attach_pard2`` (zero-initialised, config keys
written); ``freeze_all_but_projection`` leaves only that projection trainable.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

from ..draft_config import mask_token_id as declared_mask_token_id
from ..pard2 import PROJ_PREFIX, Pard2Config, make_projection
from .config import Pard2Options

#: The token string added when the vocabulary offers no reserved token.
MASK_TOKEN_NAME = "<|pard_mask|>"
#: Reserved / unused placeholder tokens: <|reserved_special_token_12|>, <unused0>, [unused0], <|reserved_3|>.
RESERVED_TOKEN = re.compile(r"^(<\|?|\[)(reserved|unused)\w*?\d+(\|?>|\])$", re.IGNORECASE)


class PreparedDraft(NamedTuple):
    """What ``prepare_draft`` returns; unpacks as ``model, tokenizer, mask_id, source``."""

    model: torch.nn.Module
    tokenizer: object
    mask_token_id: int
    #: How the mask id was chosen: "explicit", "config", "reserved", "spare_row" or "new_token".
    source: str


def embedding_rows(model) -> int:
    return model.get_input_embeddings().num_embeddings


def reserved_token_id(tokenizer, *, rows: int) -> int | None:
    """The lowest-id reserved placeholder token that nothing uses, or None."""
    taken = set(tokenizer.all_special_ids)
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    ids = [
        token_id
        for token, token_id in tokenizer.get_vocab().items()
        if RESERVED_TOKEN.match(token) and token_id not in taken and token_id < rows and token not in template
    ]
    return min(ids, default=None)


def add_mask_token(tokenizer, name: str) -> int:
    """Add ``name`` as a special token (no-op if present) and return its id."""
    tokenizer.add_tokens([name], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(name)


def init_rows_to_mean(model, token_id: int, *, real_rows: int) -> None:
    """Set the input (and untied output) row ``token_id`` to the mean of the first ``real_rows`` rows."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[token_id] = weight[:real_rows].mean(dim=0)


def grow_embeddings(model, rows: int) -> None:
    """Resize the embeddings to ``rows`` rows (new rows are initialised by ``init_rows_to_mean``)."""
    model.resize_token_embeddings(rows, mean_resizing=False)


def record_mask_token(config, token_id: int) -> None:
    """Write the keys PARD engines read: ``pard_token``, ``mask_token_id`` and ``spd_type``."""
    config.pard_token = int(token_id)
    config.mask_token_id = int(token_id)
    config.spd_type = "pard"


def _explicit_mask_token(model, tokenizer, mask_token: str | int) -> tuple[int, bool]:
    """Resolve an explicit mask token; returns (id, whether its row is fresh and needs initialising)."""
    rows = embedding_rows(model)
    if isinstance(mask_token, bool) or not isinstance(mask_token, (int, str)):
        raise ValueError(f"mask_token must be a token string or an id, got {mask_token!r}.")
    if isinstance(mask_token, int):
        if not 0 <= mask_token < rows:
            raise ValueError(
                f"mask_token id {mask_token} is outside the model's embedding ({rows} rows); pick an unused id "
                "below that, or pass a token string to add a new token."
            )
        return mask_token, mask_token >= len(tokenizer)
    if not mask_token:
        raise ValueError("mask_token must not be an empty string.")
    if mask_token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(mask_token), False
    return add_mask_token(tokenizer, mask_token), True


def _automatic_mask_token(model, tokenizer) -> tuple[int, str]:
    """Pick the mask id without help: config, reserved token, spare row, or a new token."""
    declared = declared_mask_token_id(model.config)
    if declared is not None:
        return declared, "config"
    reserved = reserved_token_id(tokenizer, rows=embedding_rows(model))
    if reserved is not None:
        return reserved, "reserved"
    if embedding_rows(model) > len(tokenizer):
        return add_mask_token(tokenizer, MASK_TOKEN_NAME), "spare_row"
    return add_mask_token(tokenizer, MASK_TOKEN_NAME), "new_token"


def prepare_draft(model, tokenizer, *, mask_token: str | int | None = None) -> PreparedDraft:
    """Choose (or add) the mask token of a PARD draft and record it in ``model.config``.

    Args:
        model: a HF causal LM (the draft before PARD training), modified in place.
        tokenizer: its tokenizer (shared with the target), modified in place if a token is added.
        mask_token: a token string (used if in the vocabulary, else added as a special token) or an
            embedding row id. ``None`` picks automatically (see the module docstring).

    Returns:
        ``PreparedDraft(model, tokenizer, mask_token_id, source)``.

    Raises:
        ValueError: the explicit ``mask_token`` is not usable (empty, out of range, wrong type).
    """
    real_rows = min(len(tokenizer), embedding_rows(model))
    if mask_token is not None:
        token_id, fresh = _explicit_mask_token(model, tokenizer, mask_token)
        source = "explicit"
    else:
        token_id, source = _automatic_mask_token(model, tokenizer)
        fresh = source != "config"
    if token_id >= embedding_rows(model):
        grow_embeddings(model, token_id + 1)
    if fresh:
        init_rows_to_mean(model, token_id, real_rows=real_rows)
    record_mask_token(model.config, token_id)
    return PreparedDraft(model, tokenizer, token_id, source)


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


def freeze_all_but_projection(draft) -> None:
    """``requires_grad`` only on ``target_proj``: the optimizer (built later by the Trainer from the
    parameters that require grad) then trains the projection alone."""
    for name, param in draft.named_parameters():
        param.requires_grad_(name.startswith(PROJ_PREFIX))
