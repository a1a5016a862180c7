"""The PARD decoding loop (PARD_NOTES section 1): one draft forward and one target forward per round.

Invariant between rounds, for every row b:
* the target cache holds every committed token except the newest one (``last_token``);
* the draft cache holds every committed token except the ``unseen`` ones (those committed last round).

One round:
1. draft   -- draft forward over ``[unseen] + [mask] * (K-1)``: K draft tokens from one forward.
2. verify  -- target forward over ``[last_token, d_1 .. d_K]``: the target's choice at K+1 slots.
3. accept  -- keep the longest prefix where the target agrees, plus one target token.
4. stop    -- cut the chunk at EOS / the length budget.
5. commit  -- append the chunk; advance both caches (rejected slots are left stale: that is the rewind).

Rows accept different numbers of tokens; each row has its own cache length and positions (see
``cache.py``), so no row ever waits for, or recomputes, another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .cache import PardCacheManager, PardStaticCache
from .draft_config import DraftSpec


@dataclass
class PardStats:
    """What a PARD ``generate`` call did. ``tau`` = committed tokens per row per verify round."""

    k: int
    rounds: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    committed_tokens: int = 0
    row_rounds: int = 0
    #: ``accepted_histogram[n]`` = row-rounds that committed n tokens (n = 1 .. K+1; index 0 unused).
    accepted_histogram: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0

    def __post_init__(self):
        if not self.accepted_histogram:
            self.accepted_histogram = [0] * (self.k + 2)

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens committed per row per target verify forward."""
        return self.committed_tokens / max(self.row_rounds, 1)


@dataclass
class LoopInputs:
    """Everything the loop needs, resolved and validated by ``generation.py``."""

    input_ids: torch.Tensor  # (B, P) left-padded
    attention_mask: torch.Tensor  # (B, P)
    k: int
    max_new_tokens: int
    eos_token_ids: torch.Tensor | None  # (E,)
    pad_token_id: int
    spec: DraftSpec


@dataclass
class RoundState:
    """Per-row decoding state; every tensor has the batch as its first dimension."""

    tokens: torch.Tensor  # (B, P + max_new + K + 1) output buffer
    prompt_len: int
    num_generated: torch.Tensor  # (B,)
    finished: torch.Tensor  # (B,) bool
    last_token: torch.Tensor  # (B,) newest committed token, not yet in the target cache
    unseen: torch.Tensor  # (B, K+1) committed tokens the draft has not seen, left-aligned
    num_unseen: torch.Tensor  # (B,)


class ForwardFn:
    """Calls a causal LM on explicit per-row slots; optionally through ``torch.compile``."""

    def __init__(self, model, *, compile_mode: str | None = None, compile_backend="inductor"):
        self.model = model
        self.compiled = None
        if compile_mode is not None:
            mode = None if compile_backend != "inductor" else compile_mode
            self.compiled = torch.compile(model, backend=compile_backend, mode=mode, fullgraph=True, dynamic=False)

    def __call__(self, cache: PardStaticCache, input_ids, slots, *, logits_to_keep: int = 0, compiled=True):
        position_ids, mask = cache.plan(slots, self.model.dtype)
        forward = self.compiled if compiled and self.compiled is not None else self.model
        out = forward(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits


@dataclass
class PardModels:
    """The two models, their forward functions and caches for one call."""

    target: ForwardFn
    draft: ForwardFn
    target_cache: PardStaticCache
    draft_cache: PardStaticCache
    static_draft_width: bool  # compiled: the draft input always has width 2K


# ----------------------------------------------------------------------------------------------
# Step 0: prefill
# ----------------------------------------------------------------------------------------------


def prefill(models: PardModels, inputs: LoopInputs) -> RoundState:
    """Feed ``prompt[:-1]`` to both models; the last prompt token opens the first round."""
    input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
    batch, prompt_len = input_ids.shape
    pad = (attention_mask == 0).sum(1)  # (B,)
    for cache, fn in ((models.target_cache, models.target), (models.draft_cache, models.draft)):
        cache.begin(pad)
        if prompt_len > 1:
            fn(cache, input_ids[:, :-1], cache.contiguous_slots(prompt_len - 1), logits_to_keep=1, compiled=False)
            cache.advance(torch.full_like(pad, prompt_len - 1))
    k = inputs.k
    tokens = input_ids.new_full((batch, prompt_len + inputs.max_new_tokens + k + 1), inputs.pad_token_id)
    tokens[:, :prompt_len] = input_ids
    unseen = input_ids.new_zeros(batch, k + 1)
    unseen[:, 0] = input_ids[:, -1]
    return RoundState(
        tokens=tokens,
        prompt_len=prompt_len,
        num_generated=torch.zeros_like(pad),
        finished=torch.zeros(batch, dtype=torch.bool, device=input_ids.device),
        last_token=input_ids[:, -1].clone(),
        unseen=unseen,
        num_unseen=torch.ones_like(pad),
    )


# ----------------------------------------------------------------------------------------------
# Step 1: draft K tokens in one forward
# ----------------------------------------------------------------------------------------------


def draft_layout(state: RoundState, cache: PardStaticCache, k: int, mask_token_id: int, width: int):
    """Right-aligned draft input ``[filler] [unseen] [mask]*(K-1)`` and its slots, both (B, width).

    Right alignment puts the K positions whose logits we need last in every row (``logits_to_keep=K``).
    Filler columns go to the trash slot.
    """
    cols = torch.arange(width, device=state.unseen.device)  # (W,)
    first_real = width - (k - 1) - state.num_unseen[:, None]  # (B, 1)
    rel = cols - first_real  # (B, W) index into unseen, then masks
    is_unseen = (rel >= 0) & (rel < state.num_unseen[:, None])
    is_mask = cols >= width - (k - 1)
    unseen_idx = rel.clamp(0, state.unseen.shape[1] - 1)
    input_ids = torch.where(is_unseen, state.unseen.gather(1, unseen_idx), mask_token_id)  # (B, W)
    slots = torch.where(is_unseen | is_mask, cache.length[:, None] + rel, cache.trash_slot)  # (B, W)
    return input_ids, slots


def draft_step(models: PardModels, state: RoundState, inputs: LoopInputs, max_unseen: int) -> torch.Tensor:
    """One draft forward; returns the K draft tokens (B, K) by argmax over the target's vocabulary."""
    k = inputs.k
    width = 2 * k if models.static_draft_width else max_unseen + k - 1
    input_ids, slots = draft_layout(state, models.draft_cache, k, inputs.spec.mask_token_id, width)
    logits = models.draft(models.draft_cache, input_ids, slots, logits_to_keep=k)  # (B, K, Vd)
    logits = logits[..., -k:, : inputs.spec.target_vocab_size]  # never propose ids the target lacks
    # The mask slots' keys are discarded: only the unseen real tokens become live.
    models.draft_cache.advance(torch.where(state.finished, 0, state.num_unseen))
    return logits.argmax(-1)  # (B, K)


# ----------------------------------------------------------------------------------------------
# Step 2: verify with the target in one forward
# ----------------------------------------------------------------------------------------------


def verify_step(models: PardModels, state: RoundState, draft_tokens: torch.Tensor) -> torch.Tensor:
    """Target forward over ``[last_token, d_1..d_K]``; returns its logits at the K+1 slots (B, K+1, V)."""
    verify_ids = torch.cat([state.last_token[:, None], draft_tokens], dim=1)  # (B, K+1)
    slots = models.target_cache.contiguous_slots(verify_ids.shape[1])  # (B, K+1)
    return models.target(models.target_cache, verify_ids, slots)


# ----------------------------------------------------------------------------------------------
# Step 3: accept (greedy)
# ----------------------------------------------------------------------------------------------


def accept_greedy(draft_tokens: torch.Tensor, target_choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Longest agreeing prefix plus one target token.

    ``target_choice`` (B, K+1) is the target's token at each verify slot. Draft token j is accepted
    while ``d_j == target_choice[j-1]`` for all earlier j; the committed chunk is then exactly
    ``target_choice[:, :a+1]`` (the accepted drafts equal the target's choices, plus the
    correction / bonus token). Returns the chunk (B, K+1) and its length a+1 (B,).
    """
    agree = draft_tokens == target_choice[:, :-1]  # (B, K)
    num_accepted = agree.long().cumprod(dim=1).sum(dim=1)  # (B,)
    return target_choice, num_accepted + 1


# ----------------------------------------------------------------------------------------------
# Step 4: stopping inside the chunk
# ----------------------------------------------------------------------------------------------


def apply_stopping(
    chunk: torch.Tensor, length: torch.Tensor, state: RoundState, inputs: LoopInputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row's chunk at its first EOS (kept) and at ``max_new_tokens``; finished rows commit 0.

    Returns the new chunk lengths (B,) and which rows are now finished (B,).
    """
    cols = torch.arange(chunk.shape[1], device=chunk.device)  # (K+1,)
    budget = inputs.max_new_tokens - state.num_generated  # (B,)
    length = torch.minimum(length, budget)
    done = state.num_generated + length >= inputs.max_new_tokens
    if inputs.eos_token_ids is not None:
        is_eos = torch.isin(chunk, inputs.eos_token_ids) & (cols < length[:, None])  # (B, K+1)
        hit = is_eos.any(dim=1)
        first_eos = is_eos.long().argmax(dim=1)  # first True
        length = torch.where(hit, first_eos + 1, length)
        done = done | hit
    length = torch.where(state.finished, 0, length)
    return length, state.finished | done


# ----------------------------------------------------------------------------------------------
# Step 5: commit
# ----------------------------------------------------------------------------------------------


def commit(models: PardModels, state: RoundState, chunk: torch.Tensor, length: torch.Tensor, finished) -> None:
    """Append each row's chunk, advance the target cache, and hand the chunk to the draft."""
    cols = torch.arange(chunk.shape[1], device=chunk.device)  # (K+1,)
    write_at = state.prompt_len + state.num_generated[:, None] + cols  # (B, K+1)
    current = state.tokens.gather(1, write_at)
    state.tokens.scatter_(1, write_at, torch.where(cols < length[:, None], chunk, current))
    # The target computed KV for [last_token, d_1..d_a]: exactly `length` live slots (the rest is stale).
    models.target_cache.advance(length)
    state.num_generated += length
    last = chunk.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]  # (B,)
    state.last_token = torch.where(length > 0, last, state.last_token)
    state.unseen = chunk
    state.num_unseen = torch.where(length > 0, length, 1)
    state.finished = finished


def finalize(state: RoundState, pad_token_id: int) -> torch.Tensor:
    """Sequences (B, P + longest generation), padded after each row's end like stock ``generate``."""
    longest = int(state.num_generated.max())
    tokens = state.tokens[:, : state.prompt_len + longest]
    cols = torch.arange(tokens.shape[1], device=tokens.device)
    beyond = cols >= state.prompt_len + state.num_generated[:, None]
    return tokens.masked_fill(beyond, pad_token_id)


def record_round(histogram: torch.Tensor, active: torch.Tensor, length: torch.Tensor) -> None:
    """Add this round's committed lengths of the active rows to ``histogram`` (K+2,), on device."""
    histogram += (torch.nn.functional.one_hot(length, histogram.shape[0]) * active[:, None]).sum(0)


def stats_from_histogram(k: int, rounds: int, histogram: torch.Tensor) -> PardStats:
    counts = histogram.tolist()
    return PardStats(
        k=k,
        rounds=rounds,
        target_forwards=rounds,
        draft_forwards=rounds,
        committed_tokens=sum(n * c for n, c in enumerate(counts)),
        row_rounds=sum(counts[1:]),
        accepted_histogram=counts,
    )


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

ChoiceFn = Callable[[RoundState, torch.Tensor, torch.Tensor], torch.Tensor]


def greedy_choice(state: RoundState, draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """The target's greedy token at every verify slot (B, K+1)."""
    return target_logits.argmax(-1)


def pard_decode(
    models: PardModels, inputs: LoopInputs, *, choice_fn: ChoiceFn = greedy_choice
) -> tuple[torch.Tensor, PardStats]:
    """Run PARD rounds until every row is finished; returns (sequences, stats)."""
    start = time.perf_counter()
    state = prefill(models, inputs)
    histogram = torch.zeros(inputs.k + 2, dtype=torch.long, device=inputs.input_ids.device)
    rounds, max_unseen = 0, 1
    while True:
        draft_tokens = draft_step(models, state, inputs, max_unseen)  # (B, K)
        target_logits = verify_step(models, state, draft_tokens)  # (B, K+1, V)
        target_choice = choice_fn(state, draft_tokens, target_logits)  # (B, K+1)
        chunk, length = accept_greedy(draft_tokens, target_choice)
        length, finished = apply_stopping(chunk, length, state, inputs)
        record_round(histogram, ~state.finished, length)
        commit(models, state, chunk, length, finished)
        rounds += 1
        # The round's single host sync: loop control and the next draft width.
        all_done, max_unseen = torch.stack([state.finished.all().long(), state.num_unseen.max()]).tolist()
        if all_done:
            break
    stats = stats_from_histogram(inputs.k, rounds, histogram)
    stats.wall_time_s = time.perf_counter() - start
    return finalize(state, inputs.pad_token_id), stats


def build_models(
    target,
    draft,
    *,
    manager: PardCacheManager,
    inputs: LoopInputs,
    forwards: dict,
    compile_mode: str | None,
    compile_backend="inductor",
) -> PardModels:
    """Reserve both caches for this call and fetch (or build once) the forward functions."""
    batch, prompt_len = inputs.input_ids.shape
    needed = prompt_len + inputs.max_new_tokens + 2 * inputs.k
    key = (id(target), id(draft), compile_mode)
    if key not in forwards:
        forwards.clear()
        forwards[key] = tuple(
            ForwardFn(model, compile_mode=compile_mode, compile_backend=compile_backend) for model in (target, draft)
        )
    target_fn, draft_fn = forwards[key]
    return PardModels(
        target=target_fn,
        draft=draft_fn,
        target_cache=manager.cache("target", target, batch_size=batch, needed=needed),
        draft_cache=manager.cache("draft", draft, batch_size=batch, needed=needed),
        static_draft_width=compile_mode is not None,
    )
