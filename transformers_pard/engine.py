"""The PARD decoding loop (PARD_NOTES section 1): one draft forward and one target forward per round.

Invariant between rounds, for every row b:
* the target cache holds every committed token except the newest one (``last_token``);
* the draft cache holds every committed token except the ``unseen`` ones (those committed last round).

One round:
1. draft   -- draft forward over ``[unseen] + [mask] * (K-1)``: K draft tokens from one forward.
2. verify  -- target forward over ``[last_token, d_1 .. d_K]``: the target's choice at K+1 slots.
3. accept  -- keep the longest prefix where the target agrees, plus one target token.
4. stop    -- cut the chunk at EOS / the length budget / the user's stopping criteria.
5. commit  -- append the chunk; advance both caches (rejected slots are left stale: that is the rewind).
6. adapt   -- the draft-length schedule picks the next K (constant, heuristic, or 0 = drafting off).

Rows accept different numbers of tokens; each row has its own cache length and positions (see
``cache.py``), so no row ever waits for, or recomputes, another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache import PardCacheManager, PardStaticCache
from .draft_config import DraftSpec
from .pard2 import Pard2Config, draft_inputs_embeds, draft_round_features, shift_right, target_features
from .schedule import DraftSchedule


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
    #: K used in each round (0 = drafting switched off, a plain target step).
    k_per_round: list[int] = field(default_factory=list)
    #: Round at which drafting was switched off for low acceptance, or None.
    drafting_disabled_at: int | None = None
    #: Committed tokens and row-rounds of the rounds that drafted (K > 0): the draft's own tau.
    drafting_committed: int = 0
    drafting_row_rounds: int = 0
    wall_time_s: float = 0.0

    def __post_init__(self):
        if not self.accepted_histogram:
            self.accepted_histogram = [0] * (self.k + 2)

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens committed per row per target verify forward."""
        return self.committed_tokens / max(self.row_rounds, 1)

    @property
    def drafting_tau(self) -> float:
        """tau over the rounds that drafted (excludes plain steps after an auto-disable)."""
        return self.drafting_committed / max(self.drafting_row_rounds, 1)


@dataclass
class LoopInputs:
    """Everything the loop needs, resolved and validated by ``generation.py``."""

    input_ids: torch.Tensor  # (B, P) left-padded
    attention_mask: torch.Tensor  # (B, P)
    k: int  # the largest K of this call (caches and buffers are sized for it)
    max_new_tokens: int
    eos_token_ids: torch.Tensor | None  # (E,)
    pad_token_id: int
    spec: DraftSpec
    stopping_criteria: list = field(default_factory=list)  # user criteria checked token by token
    streamer: object | None = None
    keep_scores: bool = False
    keep_logits: bool = False
    pard2: Pard2Config | None = None  # set: PARD-2 target-dependent mode


@dataclass
class RoundState:
    """Per-row decoding state; every tensor has the batch as its first dimension."""

    tokens: torch.Tensor  # (B, P + max_new + K + 1) output buffer
    prompt_len: int
    num_generated: torch.Tensor  # (B,)
    finished: torch.Tensor  # (B,) bool
    last_token: torch.Tensor  # (B,) newest committed token, not yet in the target cache
    unseen: torch.Tensor  # (B, <=K+1) committed tokens the draft has not seen, left-aligned
    num_unseen: torch.Tensor  # (B,)
    scores: torch.Tensor | None = None  # (B, max_new + K + 1, V) processed scores of committed tokens
    logits: torch.Tensor | None = None  # (B, max_new + K + 1, V) raw logits of committed tokens
    unseen_features: torch.Tensor | None = None  # (B, <=K+1, D) PARD-2: feature of each unseen token's predecessor


class ForwardFn:
    """Calls a causal LM on explicit per-row slots; optionally through ``torch.compile``."""

    def __init__(self, model, *, compile_mode: str | None = None, compile_backend="inductor"):
        self.model = model
        self.compiled = None
        if compile_mode is not None:
            mode = None if compile_backend != "inductor" else compile_mode
            self.compiled = torch.compile(model, backend=compile_backend, mode=mode, fullgraph=True, dynamic=False)

    def __call__(
        self,
        cache: PardStaticCache,
        input_ids,
        slots,
        *,
        logits_to_keep: int = 0,
        compiled=True,
        inputs_embeds=None,
        feature_layers: tuple[int, ...] | None = None,
    ):
        """Logits (B, T', V), and the concatenated hidden states of ``feature_layers`` (B, T, D) or None."""
        position_ids, mask = cache.plan(slots, self.model.dtype)
        forward = self.compiled if compiled and self.compiled is not None else self.model
        out = forward(
            input_ids=None if inputs_embeds is not None else input_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_hidden_states=feature_layers is not None,
        )
        features = None if feature_layers is None else target_features(out.hidden_states, feature_layers)
        return out.logits, features


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


def prefill(models: PardModels, inputs: LoopInputs, vocab_size: int) -> RoundState:
    """Feed ``prompt[:-1]`` to both models; the last prompt token opens the first round.

    PARD-2: the target's prefill also yields the prompt's features; the draft's prefill adds them
    shifted right by one, and the last one is kept for the last prompt token (no second target run).
    """
    input_ids, attention_mask, pard2 = inputs.input_ids, inputs.attention_mask, inputs.pard2
    batch, prompt_len = input_ids.shape
    pad = (attention_mask == 0).sum(1)  # (B,)
    layers = pard2.target_layers if pard2 is not None else None
    for cache in (models.target_cache, models.draft_cache):
        cache.begin(pad)
    features = None
    if prompt_len > 1:
        body, slots = input_ids[:, :-1], models.target_cache.contiguous_slots(prompt_len - 1)
        _, features = models.target(models.target_cache, body, slots, logits_to_keep=1, compiled=False,
                                    feature_layers=layers)  # (B, P-1, D) | None
        embeds = None
        if pard2 is not None:
            shifted = shift_right(features, attention_mask[:, :-1])  # (B, P-1, D)
            embeds = draft_inputs_embeds(models.draft.model, body, shifted, pard2.scale)
        models.draft(models.draft_cache, body, slots, logits_to_keep=1, compiled=False, inputs_embeds=embeds)
        for cache in (models.target_cache, models.draft_cache):
            cache.advance(torch.full_like(pad, prompt_len - 1))
    k = inputs.k
    tokens = input_ids.new_full((batch, prompt_len + inputs.max_new_tokens + k + 1), inputs.pad_token_id)
    tokens[:, :prompt_len] = input_ids
    kept = (batch, inputs.max_new_tokens + k + 1, vocab_size)
    return RoundState(
        tokens=tokens,
        prompt_len=prompt_len,
        num_generated=torch.zeros_like(pad),
        finished=torch.zeros(batch, dtype=torch.bool, device=input_ids.device),
        last_token=input_ids[:, -1].clone(),
        unseen=input_ids[:, -1:].clone(),
        num_unseen=torch.ones_like(pad),
        scores=input_ids.new_zeros(kept, dtype=torch.float32) if inputs.keep_scores else None,
        logits=input_ids.new_zeros(kept, dtype=torch.float32) if inputs.keep_logits else None,
        unseen_features=None if pard2 is None else _last_prompt_feature(features, attention_mask, pard2, models),
    )


def _last_prompt_feature(features, attention_mask, pard2: Pard2Config, models: PardModels) -> torch.Tensor:
    """Feature of the last prompt token's predecessor (zeros for a one-token prompt): (B, 1, D)."""
    if features is None:
        embedding = models.draft.model.get_input_embeddings().weight
        return embedding.new_zeros(attention_mask.shape[0], 1, pard2.target_dim)
    return features[:, -1:] * attention_mask[:, -2, None, None].to(features.dtype)


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


def draft_step(models: PardModels, state: RoundState, inputs: LoopInputs, k: int, max_unseen: int) -> torch.Tensor:
    """One draft forward over ``[unseen] + [mask]*(K-1)``; returns the K draft logits (B, K, V_target)."""
    width = 2 * inputs.k if models.static_draft_width else max_unseen + k - 1
    input_ids, slots = draft_layout(state, models.draft_cache, k, inputs.spec.mask_token_id, width)
    embeds = None
    if inputs.pard2 is not None:
        features = draft_round_features(state.unseen_features, state.num_unseen, k, width)  # (B, W, D)
        embeds = draft_inputs_embeds(models.draft.model, input_ids, features, inputs.pard2.scale)
    logits, _ = models.draft(models.draft_cache, input_ids, slots, logits_to_keep=k, inputs_embeds=embeds)
    logits = _to_target_vocab(logits[:, -k:], inputs.spec.target_vocab_size)  # (B, K, V)
    # The mask slots' keys are discarded: only the unseen real tokens become live.
    models.draft_cache.advance(torch.where(state.finished, 0, state.num_unseen))
    return logits


def _to_target_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Drop draft ids the target lacks; ids the draft lacks get -inf (never proposed)."""
    if logits.shape[-1] >= vocab:
        return logits[..., :vocab]
    missing = logits.new_full((*logits.shape[:-1], vocab - logits.shape[-1]), float("-inf"))
    return torch.cat([logits, missing], dim=-1)


# ----------------------------------------------------------------------------------------------
# Step 2: verify with the target in one forward
# ----------------------------------------------------------------------------------------------


def verify_step(models: PardModels, state: RoundState, draft_tokens: torch.Tensor, inputs: LoopInputs):
    """Target forward over ``[last_token, d_1..d_K]``: logits at the K+1 slots (B, K+1, V) and, in
    PARD-2 mode, the features of those slots (B, K+1, D)."""
    verify_ids = torch.cat([state.last_token[:, None], draft_tokens], dim=1)  # (B, K+1)
    slots = models.target_cache.contiguous_slots(verify_ids.shape[1])  # (B, K+1)
    layers = inputs.pard2.target_layers if inputs.pard2 is not None else None
    return models.target(models.target_cache, verify_ids, slots, feature_layers=layers)


# ----------------------------------------------------------------------------------------------
# Step 3 (accept) lives in verification.py: GreedyVerifier / SamplingVerifier.
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


def apply_criteria(
    criteria: list, chunk: torch.Tensor, length: torch.Tensor, finished: torch.Tensor, state: RoundState, scores
) -> tuple[torch.Tensor, torch.Tensor]:
    """User stopping criteria (stop strings, max_time, custom), checked after every chunk token.

    Each check sees the row's prefix up to that token, as stock ``generate`` would; row b is placed
    at index b of a batch of B copies so criteria with per-row state see it at its own index.
    """
    batch = chunk.shape[0]
    ends = (state.prompt_len + state.num_generated).tolist()
    lengths = length.tolist()
    length, finished = length.clone(), finished.clone()
    for b in range(batch):
        for t in range(lengths[b]):
            prefix = torch.cat([state.tokens[b, : ends[b]], chunk[b, : t + 1]])  # (end + t + 1,)
            row_scores = scores[b, t].expand(batch, -1)
            if any(bool(c(prefix.expand(batch, -1), row_scores)[b]) for c in criteria):
                length[b], finished[b] = t + 1, True
                break
    return length, finished


# ----------------------------------------------------------------------------------------------
# Step 5: commit
# ----------------------------------------------------------------------------------------------


def commit(models: PardModels, state: RoundState, chunk, length, finished, scores, logits, features=None) -> None:
    """Append each row's chunk, advance the target cache, and hand the chunk (and, PARD-2, the
    features of its predecessors: verify slots 0..a) to the draft."""
    cols = torch.arange(chunk.shape[1], device=chunk.device)  # (K+1,)
    keep = cols < length[:, None]  # (B, K+1)
    write_at = state.prompt_len + state.num_generated[:, None] + cols  # (B, K+1)
    state.tokens.scatter_(1, write_at, torch.where(keep, chunk, state.tokens.gather(1, write_at)))
    for kept, values in ((state.scores, scores), (state.logits, logits)):
        if kept is not None:
            _scatter_rows(kept, state.num_generated[:, None] + cols, keep, values.float())
    # The target computed KV for [last_token, d_1..d_a]: exactly `length` live slots (the rest is stale).
    models.target_cache.advance(length)
    state.num_generated += length
    last = chunk.gather(1, (length - 1).clamp(min=0)[:, None])[:, 0]  # (B,)
    state.last_token = torch.where(length > 0, last, state.last_token)
    state.unseen = chunk
    state.num_unseen = torch.where(length > 0, length, 1)
    if features is not None:  # only rows that committed something (unfinished rows) read them
        state.unseen_features = features
    state.finished = finished


def _scatter_rows(buffer: torch.Tensor, index: torch.Tensor, keep: torch.Tensor, values: torch.Tensor) -> None:
    """buffer[b, index[b, j]] = values[b, j] where keep[b, j]; buffer (B, N, V), values (B, J, V)."""
    index = index[..., None].expand_as(values)
    current = buffer.gather(1, index)
    buffer.scatter_(1, index, torch.where(keep[..., None], values, current))


def finalize(state: RoundState, pad_token_id: int) -> tuple[torch.Tensor, tuple | None, tuple | None]:
    """Sequences (B, P + longest generation), padded after each row's end like stock ``generate``;
    plus per-step score / logit tuples when they were kept."""
    longest = int(state.num_generated.max())
    tokens = state.tokens[:, : state.prompt_len + longest]
    cols = torch.arange(tokens.shape[1], device=tokens.device)
    beyond = cols >= state.prompt_len + state.num_generated[:, None]
    per_step = [None if kept is None else tuple(kept[:, s] for s in range(longest)) for kept in (state.scores, state.logits)]
    return tokens.masked_fill(beyond, pad_token_id), per_step[0], per_step[1]


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class PardResult:
    sequences: torch.Tensor
    stats: PardStats
    scores: tuple | None = None
    logits: tuple | None = None


def stream(streamer, chunk: torch.Tensor, length: int) -> None:
    if streamer is not None and length > 0:
        streamer.put(chunk[0, :length].cpu())


def pard_decode(models: PardModels, inputs: LoopInputs, *, verifier, schedule: DraftSchedule) -> PardResult:
    """Run PARD rounds until every row is finished."""
    start = time.perf_counter()
    state = prefill(models, inputs, inputs.spec.target_vocab_size)
    histogram = torch.zeros(inputs.k + 2, dtype=torch.long, device=inputs.input_ids.device)
    stats = PardStats(k=inputs.k)
    if inputs.streamer is not None:
        inputs.streamer.put(inputs.input_ids.cpu())
    max_unseen = 1
    while True:
        k = schedule.k
        if k > 0:
            draft_logits = draft_step(models, state, inputs, k, max_unseen)  # (B, K, V)
            draft_tokens, q = verifier.propose(state, draft_logits)  # (B, K), (B, K, V) | None
        else:  # drafting switched off: a plain target step
            draft_tokens, q = state.last_token.new_zeros(state.last_token.shape[0], 0), None
        target_logits, features = verify_step(models, state, draft_tokens, inputs)  # (B, K+1, V), (B, K+1, D)
        chunk, length, scores = verifier.accept(state, draft_tokens, q, target_logits)  # (B, K+1), (B,)
        length, finished = apply_stopping(chunk, length, state, inputs)
        if inputs.stopping_criteria:
            length, finished = apply_criteria(inputs.stopping_criteria, chunk, length, finished, state, scores)
        active = ~state.finished
        committed, rows = (length * active).sum(), active.sum()
        histogram += (torch.nn.functional.one_hot(length, inputs.k + 2) * active[:, None]).sum(0)
        commit(models, state, chunk, length, finished, scores, target_logits, features)
        stats.k_per_round.append(k)
        # The round's single host sync: loop control, the next draft width, the schedule, the streamer.
        all_done, max_unseen, committed, rows, first_len = torch.stack(
            [state.finished.all().long(), state.num_unseen.max(), committed, rows, length[0]]
        ).tolist()
        stream(inputs.streamer, chunk, first_len)
        if k > 0:
            stats.drafting_committed += committed
            stats.drafting_row_rounds += rows
        schedule.update(committed=committed, rows=rows, all_accepted=committed == rows * (k + 1))
        if all_done:
            break
    if inputs.streamer is not None:
        inputs.streamer.end()
    stats.rounds = stats.target_forwards = len(stats.k_per_round)
    stats.draft_forwards = sum(1 for k in stats.k_per_round if k > 0)
    stats.drafting_disabled_at = schedule.disabled_at
    counts = histogram.tolist()
    stats.accepted_histogram = counts
    stats.committed_tokens = sum(n * c for n, c in enumerate(counts))
    stats.row_rounds = sum(counts[1:])
    sequences, scores, logits = finalize(state, inputs.pad_token_id)
    stats.wall_time_s = time.perf_counter() - start
    return PardResult(sequences, stats, scores, logits)


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
