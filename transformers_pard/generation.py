"""``PardGenerationMixin``: ``generate(..., pard_draft=draft)`` without patching transformers.

Everything here runs once per call: resolve the generation config, validate the request (clear errors
for what PARD cannot honour), then hand over to the loop in ``engine.py``. A call without a PARD
draft is passed to transformers' own ``generate`` untouched.

Private ``GenerationMixin`` helpers used (tested with transformers 5.23): ``_prepare_generation_config``,
``_prepare_special_tokens``, ``_get_logits_processor``, ``_get_stopping_criteria``.

PARD-specific ``generate`` keywords: ``pard_draft``; ``pard_min_tau`` (auto-disable threshold, default
1.3, None = never); ``pard_tau_window`` (rounds it looks back, default 8); ``pard_mode`` for PARD-2
drafts ("dependent" = fed the target's hidden states, "independent" = draft alone; default: dependent
when the draft carries a projection matching the target, else independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationMixin
from transformers.generation.utils import GenerateDecoderOnlyOutput

from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .assisted import is_assisted_call, parallel_draft_candidates
from .cache import PardCacheManager
from .draft_config import DEFAULT_K, is_pard_draft, validate_draft
from .engine import LoopInputs, PardStats, build_models, pard_decode
from .pard2 import MODES, Pard2Config
from .schedule import DraftSchedule, ScheduleConfig
from .scoring import Scorer
from .verification import GreedyVerifier, SamplingVerifier


@dataclass(frozen=True)
class PardOptions:
    """Engine options of a PARD-enabled model (set by ``enable_pard``).

    compile: run the draft and verify forwards through ``torch.compile`` with fixed shapes (draft
        width 2K, verify width K+1), so rounds never recompile after warm-up.
    compile_mode: ``torch.compile`` mode; default "reduce-overhead" (CUDA graphs) on CUDA/ROCm,
        "default" elsewhere.
    compile_backend: ``torch.compile`` backend (default "inductor").
    max_cache_len: fixed cache capacity in tokens (prompt + new tokens + 2K); None grows as needed.
    """

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: object = "inductor"
    max_cache_len: int | None = None

    def __post_init__(self):
        if self.max_cache_len is not None and self.max_cache_len < 1:
            raise ValueError(f"max_cache_len must be a positive number of tokens, got {self.max_cache_len}.")
        if self.compile_mode is not None and not self.compile:
            raise ValueError("compile_mode is set but compile=False: pass compile=True to use it.")

    def resolved_compile_mode(self, device: torch.device) -> str | None:
        if not self.compile:
            return None
        if self.compile_mode is not None:
            return self.compile_mode
        return "reduce-overhead" if device.type == "cuda" else "default"


@dataclass
class PardGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` plus ``pard_stats`` (rounds, acceptance histogram, tau)."""

    pard_stats: PardStats | None = None


# Arguments of stock ``generate`` that PARD refuses rather than silently ignores.
_REFUSED_ARGUMENTS = {
    "negative_prompt_ids": "classifier-free guidance",
    "negative_prompt_attention_mask": "classifier-free guidance",
    "custom_generate": "custom generation loops",
    "past_key_values": "a user-supplied cache (PARD owns both caches)",
    "inputs_embeds": "inputs_embeds (pass input_ids)",
}


class PardGenerationMixin(GenerationMixin):
    """Adds PARD drafting to ``generate``; every call without a PARD draft is stock ``generate``."""

    def generate(self, inputs=None, generation_config=None, *, pard_draft=None, **kwargs):
        if is_assisted_call(generation_config) and is_pard_draft(self):
            # This model is the assistant of a stock target: K candidates from one parallel forward.
            input_ids = inputs if inputs is not None else kwargs.pop("input_ids")
            return parallel_draft_candidates(self, input_ids, generation_config, **kwargs)
        assistant = kwargs.get("assistant_model")
        if pard_draft is not None and assistant is not None:
            raise ValueError("Pass the draft once: either pard_draft=... or assistant_model=..., not both.")
        if pard_draft is None and assistant is not None and is_pard_draft(assistant):
            pard_draft = kwargs.pop("assistant_model")
        if pard_draft is None:
            return super().generate(inputs, generation_config, **kwargs)
        return pard_generate(self, pard_draft, inputs, generation_config, **kwargs)


def pard_options(model) -> PardOptions:
    return getattr(model, "_pard_options", None) or PardOptions()


def _pard_runtime(model) -> tuple[PardCacheManager, dict]:
    """The cache manager and compiled forwards owned by ``model`` (created on first use)."""
    runtime = getattr(model, "_pard_runtime", None)
    if runtime is None:
        runtime = (PardCacheManager(max_cache_len=pard_options(model).max_cache_len), {})
        model._pard_runtime = runtime
    return runtime


def _requested_k(model, generation_config, kwargs) -> int:
    """K: the call's ``num_assistant_tokens``, else an explicit one in a generation config, else 8."""
    k = kwargs.get("num_assistant_tokens")
    for config in (generation_config, model.generation_config):
        if k is None and config is not None:
            k = config.num_assistant_tokens
    k = DEFAULT_K if k is None else k
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"num_assistant_tokens (K, draft tokens per round) must be an integer >= 1, got {k!r}.")
    return k


def _check_generation_config(config) -> None:
    if (config.num_beams or 1) > 1:
        raise ValueError(
            f"Beam search (num_beams={config.num_beams}) cannot be combined with a PARD draft: speculative "
            "decoding verifies one sequence per row. Use num_beams=1, or drop pard_draft/assistant_model."
        )
    for name in ("output_attentions", "output_hidden_states"):
        if getattr(config, name, False):
            raise ValueError(f"{name}=True is not supported with a PARD draft; drop it or drop pard_draft.")


def _attention_mask(input_ids, attention_mask, pad_token_id, eos_ids) -> torch.Tensor:
    """The given mask, or stock ``generate``'s inference from pad tokens; refuse right padding."""
    if attention_mask is None:
        pad_is_eos = eos_ids is not None and pad_token_id in eos_ids
        if pad_token_id is not None and not pad_is_eos and (input_ids == pad_token_id).any():
            attention_mask = (input_ids != pad_token_id).long()
        else:
            attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}.")
    if (attention_mask.sum(1) == 0).any():
        raise ValueError("A row of the batch has no real token (its attention_mask is all zeros): drop it.")
    # Left padding means each row's mask is non-decreasing (0..0 1..1).
    if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise ValueError(
            "The batch is right-padded (a row has padding after real tokens). Decoder-only generation needs "
            "left padding: set `tokenizer.padding_side = 'left'` before tokenizing."
        )
    return attention_mask


def _max_new_tokens(config, prompt_len: int) -> int:
    max_new = config.max_new_tokens
    if max_new is None:
        max_new = config.max_length - prompt_len
    if max_new < 1:
        raise ValueError(
            f"Nothing to generate: max_length={config.max_length} but the prompt already has {prompt_len} "
            "tokens. Set max_new_tokens instead."
        )
    return max_new


def _check_positions(model, attention_mask, max_new: int) -> None:
    text_config = model.config.get_text_config()
    max_positions = getattr(text_config, "max_position_embeddings", None)
    longest_prompt = int(attention_mask.sum(1).max())
    if max_positions is not None and longest_prompt + max_new > max_positions:
        raise ValueError(
            f"The prompt ({longest_prompt} tokens) plus max_new_tokens ({max_new}) exceeds the target's "
            f"max_position_embeddings ({max_positions}). Shorten the prompt or lower max_new_tokens."
        )
    window = getattr(text_config, "sliding_window", None)
    uses_window = window is not None and getattr(text_config, "use_sliding_window", True)
    if uses_window and attention_mask.shape[1] + max_new > window:
        raise ValueError(
            f"This request ({attention_mask.shape[1] + max_new} tokens) exceeds the model's sliding window "
            f"({window}); PARD's cache does not implement sliding-window attention. Keep requests within the window."
        )


def _pop_call_arguments(kwargs: dict) -> dict:
    """Separate the explicit ``generate`` arguments from generation-config / model kwargs."""
    for name, what in _REFUSED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}: {what} is not supported with a PARD draft; drop it or drop pard_draft.")
        kwargs.pop(name, None)
    if kwargs.pop("synced_gpus", None):
        raise ValueError("synced_gpus=True (DeepSpeed ZeRO-3 generation) is not supported with a PARD draft.")
    return {
        "logits_processor": kwargs.pop("logits_processor", None),
        "stopping_criteria": kwargs.pop("stopping_criteria", None),
        "prefix_allowed_tokens_fn": kwargs.pop("prefix_allowed_tokens_fn", None),
        "streamer": kwargs.pop("streamer", None),
        "tokenizer": kwargs.pop("tokenizer", None),
        "pard_mode": kwargs.pop("pard_mode", None),
        "schedule": ScheduleConfig(
            schedule=kwargs.pop("num_assistant_tokens_schedule", None) or "constant",
            min_tau=kwargs.pop("pard_min_tau", ScheduleConfig.min_tau),
            window=kwargs.pop("pard_tau_window", ScheduleConfig.window),
        ),
    }


def _user_stopping_criteria(model, config, call_args) -> list:
    """Stop strings, max_time and custom criteria; max length and EOS are handled by the engine."""
    criteria = model._get_stopping_criteria(
        generation_config=config,
        stopping_criteria=call_args["stopping_criteria"] or StoppingCriteriaList(),
        tokenizer=call_args["tokenizer"],
    )
    return [c for c in criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]


def _schedule(model, config, call_args, k: int, compiled: bool) -> DraftSchedule:
    schedule_config = call_args["schedule"]
    if config.num_assistant_tokens_schedule not in (None, "constant") and schedule_config.schedule == "constant":
        schedule_config = ScheduleConfig(config.num_assistant_tokens_schedule, schedule_config.min_tau, schedule_config.window)
    if compiled and schedule_config.schedule != "constant":
        raise ValueError(
            "An adaptive num_assistant_tokens_schedule changes the draft shape every round, which defeats "
            "torch.compile's fixed shapes. Use the 'constant' schedule with compile=True."
        )
    k_start = k
    if schedule_config.schedule == "heuristic":
        k_start = min(getattr(model, "_pard_heuristic_k", k), k)
    return DraftSchedule(schedule_config, k_start=k_start, k_max=k)


def resolve_pard2_mode(model, draft, requested: str | None) -> Pard2Config | None:
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
    hidden = model.config.get_text_config().hidden_size
    expected = hidden * len(pard2.target_layers)
    num_states = model.config.get_text_config().num_hidden_layers + 1
    fits = expected == pard2.target_dim and all(-num_states <= i < num_states for i in pard2.target_layers)
    if not fits:
        if requested == "dependent":
            raise ValueError(
                f"This PARD-2 draft expects target features of size {pard2.target_dim} from layers "
                f"{list(pard2.target_layers)}, but this target gives {hidden} x {len(pard2.target_layers)} = "
                f"{expected} over {num_states} hidden states: it was trained for another target. Use "
                "pard_mode='independent'."
            )
        return None  # documented fallback: the draft alone (target-independent mode)
    return pard2


def pard_generate(model, draft, inputs=None, generation_config=None, **kwargs):
    """PARD decoding for ``model`` (the target) with ``draft``; see ``PardGenerationMixin``."""
    k = _requested_k(model, generation_config, kwargs)
    call_args = _pop_call_arguments(kwargs)
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    _check_generation_config(config)
    spec = validate_draft(model, draft)

    input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
    device = next(model.parameters()).device
    if input_ids is None:
        if config.bos_token_id is None:
            raise ValueError("No input_ids given and the model has no bos_token_id to start from.")
        input_ids = torch.tensor([[config.bos_token_id]], device=device)
    input_ids = input_ids.to(device)
    attention_mask = model_kwargs.pop("attention_mask", None)
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        raise ValueError(
            f"The following arguments are not used by PARD generation: {sorted(model_kwargs)}. Check for typos."
        )
    model._prepare_special_tokens(config, attention_mask is not None, device=device)
    eos_ids = config._eos_token_tensor
    pad_token_id = config._pad_token_tensor
    pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
    eos_list = eos_ids.tolist() if eos_ids is not None else None
    attention_mask = _attention_mask(input_ids, attention_mask, pad_token_id, eos_list).to(device)
    if (config.num_return_sequences or 1) > 1:  # sampling several continuations per prompt
        input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
    streamer = call_args["streamer"]
    if streamer is not None and input_ids.shape[0] > 1:
        raise ValueError("Streaming with a PARD draft supports one sequence at a time (batch size 1), like TextStreamer.")
    max_new = _max_new_tokens(config, input_ids.shape[1])
    _check_positions(model, attention_mask, max_new)

    processors = model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=call_args["prefix_allowed_tokens_fn"],
        logits_processor=call_args["logits_processor"],
        device=device,
        model_kwargs={"attention_mask": attention_mask},
    )
    loop_inputs = LoopInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        k=k,
        max_new_tokens=max_new,
        eos_token_ids=eos_ids,
        pad_token_id=pad_token_id,
        spec=spec,
        stopping_criteria=_user_stopping_criteria(model, config, call_args),
        streamer=streamer,
        keep_scores=bool(config.return_dict_in_generate and config.output_scores),
        keep_logits=bool(config.return_dict_in_generate and config.output_logits),
        pard2=resolve_pard2_mode(model, draft, call_args["pard_mode"]),
    )
    options = pard_options(model)
    compile_mode = options.resolved_compile_mode(device)
    schedule = _schedule(model, config, call_args, k, compiled=compile_mode is not None)
    manager, forwards = _pard_runtime(model)
    models = build_models(
        model,
        draft,
        manager=manager,
        inputs=loop_inputs,
        forwards=forwards,
        compile_mode=compile_mode,
        compile_backend=options.compile_backend,
    )
    scorer = Scorer(processors)
    verifier = SamplingVerifier(scorer) if config.do_sample else GreedyVerifier(scorer)
    with torch.no_grad():
        result = pard_decode(models, loop_inputs, verifier=verifier, schedule=schedule)
    if schedule.config.schedule == "heuristic":
        model._pard_heuristic_k = max(schedule.k, 1)
    model._last_pard_stats = result.stats
    if config.return_dict_in_generate:
        return PardGenerateOutput(
            sequences=result.sequences, scores=result.scores, logits=result.logits, pard_stats=result.stats
        )
    return result.sequences
