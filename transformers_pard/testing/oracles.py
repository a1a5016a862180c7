"""Oracles for lossless tests: a draft that knows the target's reference continuation, and batches.

* ``OracleDraft``: proposes the target's reference continuation (``always_right``), a token the target
  never picks (``always_wrong``), or a mix (``wrong_at``); it pins the exact number of verify rounds.
* ``left_padded_batch``, ``reference_by_position``: the inputs and expected tokens such tests use.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class OracleDraftConfig(PretrainedConfig):
    model_type = "pard_oracle_draft"


class OracleDraft(PreTrainedModel, GenerationMixin):
    """A draft whose logits are one-hot on the reference continuation (or always off it).

    ``reference`` (B, L) holds, for each row, the tokens the target will produce, indexed by
    *position* (left padding removed); a query at position p proposes ``reference[b, p + 1]``.
    ``always_wrong`` proposes ``reference + 1`` instead (mod vocab), which the target never accepts;
    ``wrong_at`` (B, L) bool makes it wrong only where True (rows then accept different amounts).
    Rows are matched to the batch by index, so call ``generate`` with the same batch.
    """

    config_class = OracleDraftConfig
    _supports_sdpa = True

    def __init__(
        self,
        target_config,
        reference: torch.Tensor,
        *,
        always_wrong: bool = False,
        wrong_at: torch.Tensor | None = None,
        mask_token_id=None,
    ):
        config = OracleDraftConfig(
            vocab_size=target_config.vocab_size,
            num_hidden_layers=1,
            max_position_embeddings=target_config.max_position_embeddings,
            eos_token_id=target_config.eos_token_id,
            bos_token_id=target_config.bos_token_id,
            pad_token_id=target_config.pad_token_id,
            pard_token=target_config.vocab_size - 1 if mask_token_id is None else mask_token_id,
            spd_type="pard",
        )
        config._attn_implementation = "sdpa"
        super().__init__(config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("reference", reference.clone(), persistent=False)
        if wrong_at is None:
            wrong_at = torch.full_like(reference, always_wrong, dtype=torch.bool)
        self.register_buffer("wrong_at", wrong_at.clone(), persistent=False)
        self.forward_calls = 0

    def forward(self, input_ids=None, position_ids=None, logits_to_keep=0, **kwargs):
        self.forward_calls += 1
        vocab = self.config.vocab_size
        next_pos = (position_ids + 1).clamp(max=self.reference.shape[1] - 1)  # (B, T)
        tokens = self.reference.gather(1, next_pos)  # (B, T)
        wrong = self.wrong_at.gather(1, next_pos)  # (B, T)
        tokens = torch.where(wrong, (tokens + 1) % vocab, tokens)
        logits = torch.nn.functional.one_hot(tokens, vocab).float() * 10.0  # (B, T, V)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits)


def left_padded_batch(lengths, seed: int, *, vocab: int = 90, pad_token_id: int = 0):
    """Random prompts (ids 3..vocab-1) of the given lengths, left-padded: (input_ids, attention_mask)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_token_id)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, vocab, (n,), generator=generator)
        mask[row, width - n :] = 1
    return ids, mask


def reference_by_position(sequences: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Strip each row's left padding so that column p holds the token at position p: (B, L)."""
    pads = (attention_mask == 0).sum(1)  # (B,)
    rows = [torch.cat([seq[p:], seq.new_full((p,), pad_token_id)]) for seq, p in zip(sequences, pads.tolist())]
    return torch.stack(rows)
