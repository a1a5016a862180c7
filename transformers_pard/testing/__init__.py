"""Tiny models built in code, for tests, notebooks and examples (seconds on a CPU, no download).

* ``tiny_causal_lm(arch)``: a randomly initialised Llama / Qwen2 / Qwen3 causal LM.
* ``tiny_pard_draft(target)``: a smaller model of the same family and vocabulary, marked as a PARD
  draft (``pard_token`` + ``spd_type``); untrained, so it proposes poor tokens.
* ``OracleDraft`` and the batch helpers of lossless tests live in ``testing.oracles`` (re-exported here).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from ..pard2 import Pard2Config, make_projection
from .oracles import OracleDraft, OracleDraftConfig, left_padded_batch, reference_by_position

__all__ = [
    "ARCHITECTURES", "OracleDraft", "OracleDraftConfig", "left_padded_batch", "mark_as_pard_draft", "perturbed_pard_draft",
    "reference_by_position", "tiny_causal_lm", "tiny_config", "tiny_pard2_draft", "tiny_pard_draft", "tiny_tokenizer",
]

ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def tiny_config(
    arch: str = "llama",
    *,
    vocab_size: int = 96,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 256,
    **overrides,
) -> PretrainedConfig:
    """A tiny config of ``arch``; token ids 0/1/2 are pad/bos/eos."""
    config_cls = ARCHITECTURES[arch]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if arch == "qwen3":
        kwargs["head_dim"] = hidden_size // num_heads
    kwargs.update(overrides)
    return config_cls(**kwargs)


def tiny_causal_lm(arch: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """A randomly initialised tiny causal LM in eval mode (sdpa attention)."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **config_kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    # Larger weights than the default init give peaked, well-separated logits (no near-ties).
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.3)
    return model.eval()


def mark_as_pard_draft(model, *, mask_token_id: int, spd_type: str = "pard"):
    """Record the PARD draft keys in ``model.config`` (what ``prepare_draft`` writes after training)."""
    model.config.pard_token = mask_token_id
    model.config.spd_type = spd_type
    return model


def tiny_pard_draft(target, *, seed: int = 1, num_layers: int = 1, mask_token_id: int | None = None):
    """An untrained PARD draft for ``target``: same family and vocabulary, fewer layers."""
    config = target.config
    arch = config.model_type
    draft = tiny_causal_lm(
        arch,
        seed=seed,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=num_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        max_positions=config.max_position_embeddings,
    )
    mask_id = config.vocab_size - 1 if mask_token_id is None else mask_token_id
    return mark_as_pard_draft(draft, mask_token_id=mask_id)


def perturbed_pard_draft(target, *, noise: float = 0.2, seed: int = 3, mask_token_id: int | None = None):
    """A real model draft that often agrees with ``target``: a copy of its weights plus Gaussian noise.

    Untrained on masks, so it mostly gets d_1 right and later drafts wrong: rows of a batch then
    accept different numbers of tokens per round.
    """
    draft = type(target)(target.config).eval()
    draft.load_state_dict(target.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param) * noise * param.std())
    mask_id = target.config.vocab_size - 1 if mask_token_id is None else mask_token_id
    draft.config = type(target.config).from_dict(target.config.to_dict())
    draft.config._attn_implementation = target.config._attn_implementation
    return mark_as_pard_draft(draft, mask_token_id=mask_id)


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_tokenizer(vocab_size: int = 96):
    """A character-level tokenizer (ids 3.. are printable characters; <pad>=0, <s>=1, </s>=2) with a
    chat template. Character-level, so decoding is exact (stop strings work)."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = (string.ascii_letters + string.digits + " " + string.punctuation)[: vocab_size - 3]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="?",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_pard2_draft(target, *, layers=(-1, 1), scale: float = 0.5, seed: int = 7, proj_bias: bool = True,
                     perturb: float | None = 0.2):
    """A PARD-2 draft for ``target`` with a random ``target_proj`` over ``layers`` of its hidden states.

    ``perturb`` (default) starts from a noisy copy of the target so rows accept different amounts;
    None gives an untrained smaller draft.
    """

    draft = perturbed_pard_draft(target, noise=perturb, seed=seed) if perturb is not None else tiny_pard_draft(target, seed=seed)
    hidden = target.config.hidden_size
    draft.config.spd_type = "pard2"
    draft.config.pard2 = True
    draft.config.pard2_scale = scale
    draft.config.pard2_target_layers = list(layers)
    draft.config.pard2_target_dim = hidden * len(layers)
    draft.config.pard2_proj_bias = proj_bias
    torch.manual_seed(seed)
    make_projection(draft, Pard2Config.from_model_config(draft.config))
    with torch.no_grad():
        draft.target_proj.weight.normal_(0.0, 0.2)
    return draft
