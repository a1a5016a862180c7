"""``PardGenerationMixin``: ``generate(..., pard_draft=draft)`` without patching transformers.

Everything here runs once per call: resolve the generation config, validate the request (clear errors
for what PARD cannot honour), then hand over to the loop in ``engine.py``. A call without a PARD
draft is passed to transformers' own ``generate`` untouched.

Private ``GenerationMixin`` helpers used (tested with transformers 5.23): ``_prepare_generation_config``,
``_prepare_special_tokens``, ``_get_logits_processor``, ``_get_stopping_criteria``.

PARD-specific ``generate`` keywords: ``pard_draft``; ``pard_min_tau`` (auto-disable threshold, default
1.3, None = never); ``pard_tau_window`` (rounds it looks back, default 8); ``pard_mode`` for PARD-2
drafts ("dependent" = fed the target's hidden states, "independent" = draft alone; default: dependent
when the draft carries a projection matching the target, else independent); ``ar_plus=True`` (no
draft: AR+, plain decoding through the engine's static cache and compiled forwards);
``pard_timing=True`` (``pard_stats.phase_seconds``: time per phase); ``pard_tree=N`` (verify a token
tree of N candidates per round instead of a chain); ``pard_lookup=L`` (up to L of them lookup candidates:
the text's own n-gram continuation, or the lookup store's; greedy: ranked against the draft's nodes by
estimated acceptance, sampling: a fixed share); ``pard_lookup_store`` (True = the draft's own store, a
``LookupStore``, or None = none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationMixin
from transformers.generation.utils import GenerateDecoderOnlyOutput

from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .assisted import is_assisted_call, parallel_draft_candidates
from .draft_config import DEFAULT_K, is_pard_draft
from .drafting import resolve_draft, resolve_pard2
from .engine import LoopInputs, PardStats, pard_decode
from .lookup import LookupStore, lookup_store
from .runtime import PardOptions, runtime_of
from .schedule import DraftSchedule, ScheduleConfig
from .scoring import Scorer
from .timing import PhaseTimer
from .verification import GreedyTreeVerifier, GreedyVerifier, SamplingTreeVerifier, SamplingVerifier

#: Deprecated alias (the resolver moved to ``drafting.py``).
resolve_pard2_mode = resolve_pard2


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
    "cache": "a user-supplied cache (PARD owns both caches)",
    "inputs_embeds": "inputs_embeds (pass input_ids)",
}


class PardGenerationMixin(GenerationMixin):
    """Adds PARD drafting to ``generate``; every call without a PARD draft is stock ``generate``."""

    def generate(self, inputs=None, generation_config=None, *, pard_draft=None, ar_plus: bool = False, **kwargs):
        if is_assisted_call(generation_config) and is_pard_draft(self):
            # This model is the assistant of a stock target: K candidates from one parallel forward.
            input_ids = inputs if inputs is not None else kwargs.pop("input_ids")
            return parallel_draft_candidates(self, input_ids, generation_config, **kwargs)
        assistant = kwargs.get("assistant_model")
        if pard_draft is not None and assistant is not None:
            raise ValueError("Pass the draft once: either pard_draft=... or assistant_model=..., not both.")
        if pard_draft is None and assistant is not None and is_pard_draft(assistant):
            pard_draft = kwargs.pop("assistant_model")
        if ar_plus and (pard_draft is not None or assistant is not None):
            raise ValueError("ar_plus=True is decoding without a draft: drop pard_draft / assistant_model, or ar_plus.")
        if pard_draft is None and not ar_plus:
            if kwargs.get("pard_timing"):
                raise ValueError("pard_timing=True times PARD rounds: pass pard_draft=... (or ar_plus=True).")
            return super().generate(inputs, generation_config, **kwargs)
        return pard_generate(self, pard_draft, inputs, generation_config, **kwargs)


def pard_options(model) -> PardOptions:
    return runtime_of(model).options


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
        "pard_tree": kwargs.pop("pard_tree", None),
        "pard_lookup": kwargs.pop("pard_lookup", 0),
        "pard_lookup_store": kwargs.pop("pard_lookup_store", None),
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
    remembered = runtime_of(model).heuristic_k
    if schedule_config.schedule == "heuristic" and remembered is not None:
        k_start = min(remembered, k)
    return DraftSchedule(schedule_config, k_start=k_start, k_max=k)


def _input_ids(model, config, inputs, model_kwargs, device) -> torch.Tensor:
    """The prompt ids on ``device``, checked: integer ids inside the target's vocabulary."""
    input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
    if input_ids is None:
        if config.bos_token_id is None:
            raise ValueError("No input_ids given and the model has no bos_token_id to start from.")
        input_ids = torch.tensor([[config.bos_token_id]], device=device)
    if not torch.is_tensor(input_ids) or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex \
            or input_ids.dtype == torch.bool:
        kind = type(input_ids).__name__ if not torch.is_tensor(input_ids) else f"a {input_ids.dtype} tensor"
        raise ValueError(f"input_ids must be a tensor of integer token ids (torch.long), got {kind}: tokenize the "
                         "text with the target's tokenizer (`tokenizer(text, return_tensors='pt')`).")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, length >= 1), got {tuple(input_ids.shape)}; "
                         "for one prompt use `ids[None]`.")
    vocab = model.config.get_text_config().vocab_size
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the target's vocabulary (0..{vocab - 1}): were "
                         "they made by another model's tokenizer? Tokenize with the target's own tokenizer.")
    return input_ids.to(device=device, dtype=torch.long)


def _loop_inputs(model, drafter, config, call_args, input_ids, attention_mask, k: int) -> tuple[LoopInputs, list]:
    """The engine's inputs for this call, and the logits processors."""
    device = input_ids.device
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
        generation_config=config, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=call_args["prefix_allowed_tokens_fn"], logits_processor=call_args["logits_processor"],
        device=device, model_kwargs={"attention_mask": attention_mask},
    )
    return LoopInputs(
        input_ids=input_ids, attention_mask=attention_mask, k=k, max_new_tokens=max_new, eos_token_ids=eos_ids,
        pad_token_id=pad_token_id, drafter=drafter, stopping_criteria=_user_stopping_criteria(model, config, call_args),
        streamer=streamer, keep_scores=bool(config.return_dict_in_generate and config.output_scores),
        keep_logits=bool(config.return_dict_in_generate and config.output_logits),
        vocab_size=drafter.spec.target_vocab_size if drafter else model.config.get_text_config().vocab_size,
    ), processors


def _verifier(scorer: Scorer, config, call_args, k: int, draft):
    """The chain verifiers, or a tree verifier for ``pard_tree=N`` (checked here)."""
    budget, lookup = call_args["pard_tree"], call_args["pard_lookup"]
    if lookup is None or isinstance(lookup, bool) or not isinstance(lookup, int) or lookup < 0:
        raise ValueError(f"pard_lookup is the most lookup candidates a round's tree holds (an integer >= 0), "
                         f"got {lookup!r}.")
    if budget is None:
        if lookup:
            raise ValueError(f"pard_lookup={lookup} needs a token tree: pass pard_tree=N as well (the lookup "
                             f"candidates are nodes of it), e.g. pard_tree=8, pard_lookup={lookup}.")
        return SamplingVerifier(scorer) if config.do_sample else GreedyVerifier(scorer)
    if draft is None or isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"pard_tree is the number of tree nodes verified per round (an integer >= 1, with a "
                         f"pard_draft), got {budget!r}. Use None for a chain of K draft tokens.")
    if lookup > k:
        raise ValueError(f"pard_lookup={lookup} must be at most K = {k} (the tree's depth): lower pard_lookup or "
                         f"raise K (num_assistant_tokens).")
    if lookup and config.do_sample and lookup >= budget:
        raise ValueError(f"pard_lookup={lookup} with sampling takes that many of the pard_tree={budget} nodes, and "
                         f"the draft keeps at least one: lower pard_lookup or raise pard_tree.")
    if not scorer.prefix_free:
        raise ValueError("pard_tree with prefix-dependent logits processors (repetition_penalty, no_repeat_ngram_size, "
                         "min_new_tokens, custom processors, ...) is not supported: every tree node has its own "
                         "prefix. Drop pard_tree (the chain supports them) or those settings.")
    if call_args["schedule"].schedule != "constant" or config.num_assistant_tokens_schedule not in (None, "constant"):
        raise ValueError("pard_tree needs the 'constant' num_assistant_tokens_schedule (the tree has K levels).")
    accuracy = getattr(draft.config, "pard_tree_topk_accuracy", None)
    static_from = int(getattr(draft.config, "pard_tree_static_min_nodes", 1))
    verifier = SamplingTreeVerifier if config.do_sample else GreedyTreeVerifier
    return verifier(scorer, budget=budget, k=k, topk_accuracy=accuracy, static_min_nodes=static_from, lookup=lookup,
                    store=_lookup_store(call_args, draft))


def _lookup_store(call_args, draft) -> LookupStore | None:
    """``pard_lookup_store``: None or False = none (the row's own text only, the default), True = the store
    the draft's folder ships (``pard_lookup.safetensors``), or a ``LookupStore``. Only lookup candidates read it.
    Off unless asked for: a store is data, whose fit to the user's text generate() cannot know (the CLI's demo
    and bench read the shipped draft's by default, where it was measured; docs/results.md)."""
    store = call_args["pard_lookup_store"]
    if store is None or store is False:
        return None
    if not call_args["pard_lookup"]:
        raise ValueError("pard_lookup_store is read by the lookup branch only: pass pard_lookup=L (and pard_tree=N) "
                         "too, or drop pard_lookup_store.")
    if store is True:
        store = lookup_store(draft)
        if store is None:
            raise ValueError("pard_lookup_store=True reads the draft's own lookup store, but this draft carries none: "
                             "pass a transformers_pard.LookupStore (LookupStore.from_texts(token_id_lists)), or save "
                             "one into the draft folder (LookupStore.save(folder)).")
    if not isinstance(store, LookupStore):
        raise ValueError(f"pard_lookup_store takes True (the draft's store), a transformers_pard.LookupStore, or "
                         f"None / False (none), got {type(store).__name__}.")
    return store


def pard_generate(model, draft, inputs=None, generation_config=None, **kwargs):
    """PARD decoding for ``model`` (the target) with ``draft`` (None: AR+); see ``PardGenerationMixin``."""
    k = _requested_k(model, generation_config, kwargs) if draft is not None else 0
    call_args = _pop_call_arguments(kwargs)
    timing = bool(kwargs.pop("pard_timing", False))
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    _check_generation_config(config)
    runtime = runtime_of(model)
    drafter = None if draft is None else resolve_draft(model, draft, pard_mode=call_args["pard_mode"],
                                                       head_cache=runtime.head_cache)
    device = next(model.parameters()).device
    input_ids = _input_ids(model, config, inputs, model_kwargs, device)
    attention_mask = model_kwargs.pop("attention_mask", None)
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        raise ValueError(
            f"The following arguments are not used by PARD generation: {sorted(model_kwargs)}. Check for typos."
        )
    model._prepare_special_tokens(config, attention_mask is not None, device=device)
    loop_inputs, processors = _loop_inputs(model, drafter, config, call_args, input_ids, attention_mask, k)
    compiled = runtime.options.resolved_compile_mode(device) is not None
    schedule = _schedule(model, config, call_args, k, compiled=compiled)
    verifier = _verifier(Scorer(processors), config, call_args, k, draft)
    loop_inputs.verify_width = verifier.verify_width(k)
    models = runtime.models(model, drafter, loop_inputs, device)
    with torch.no_grad():
        result = pard_decode(models, loop_inputs, verifier=verifier, schedule=schedule,
                             timer=PhaseTimer(device if timing else None))
    if schedule.config.schedule == "heuristic":
        runtime.heuristic_k = max(schedule.k, 1)
    if call_args["pard_tree"] is not None:
        result.stats.tree_nodes = call_args["pard_tree"]
        result.stats.lookup_nodes = call_args["pard_lookup"]
    if config.return_dict_in_generate:
        return PardGenerateOutput(
            sequences=result.sequences, scores=result.scores, logits=result.logits, pard_stats=result.stats
        )
    return result.sequences
