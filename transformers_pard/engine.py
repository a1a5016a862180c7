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

from .cache import PardStaticCache, cache_keyword
from .drafting import DraftLogits, Drafter, draft_layout
from .pard2 import target_features
from .schedule import DraftSchedule
from .timing import PhaseTimer
from .verification import along_path


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
    #: Token trees: candidate nodes verified per drafting round (N), else None (a chain of K).
    tree_nodes: int | None = None
    #: The most lookup candidates a round's tree holds (``pard_lookup``; 0: none).
    lookup_nodes: int = 0
    #: Committed tokens that only the lookup candidates held (rank -1; a token the draft's nodes held too counts as the draft's).
    lookup_tokens: int = 0
    #: Seconds per phase ("prefill", "draft", "verify", "other") when asked (``pard_timing=True``), else None.
    phase_seconds: dict[str, float] | None = None

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
    drafter: Drafter | None  # None: AR+ (no draft, one target token per round)
    stopping_criteria: list = field(default_factory=list)  # user criteria checked token by token
    streamer: object | None = None
    keep_scores: bool = False
    keep_logits: bool = False
    vocab_size: int = 0  # the target's vocabulary (scores / logits buffers)
    verify_width: int = 0  # widest verify block (K+1, or 1+N for a token tree of N nodes)


@dataclass
class RoundState:
    """Per-row decoding state; every tensor has the batch as its first dimension."""

    tokens: torch.Tensor  # (B, P + max_new + K + 1) output buffer
    prompt_len: int
    pad: torch.Tensor  # (B,) left padding: row b's text is tokens[b, pad[b] : prompt_len + num_generated[b]]
    num_generated: torch.Tensor  # (B,)
    finished: torch.Tensor  # (B,) bool
    last_token: torch.Tensor  # (B,) newest committed token, not yet in the target cache
    unseen: torch.Tensor  # (B, <=K+1) committed tokens the draft has not seen, left-aligned
    num_unseen: torch.Tensor  # (B,)
    scores: torch.Tensor | None = None  # (B, max_new + K + 1, V) processed scores of committed tokens
    logits: torch.Tensor | None = None  # (B, max_new + K + 1, V) raw logits of committed tokens


CALL_TIME_OPTIONS = ("freezing",)


class ForwardFn:
    """Calls a causal LM on explicit per-row slots; optionally through ``torch.compile``.

    ``compile_mode`` None = eager. A compiled forward is built once (by the runtime) and keeps its
    graphs for as long as the shapes (batch, width, cache capacity) stay the same.
    """

    def __init__(self, model, *, compile_mode: str | None = None, compile_backend="inductor", compile_options=None,
                 dynamic_rows: bool = False):
        self.model = model
        self.cache_keyword = cache_keyword(model)
        self.compiled = None
        self.dynamic_rows = dynamic_rows  # compiled: the row count symbolic (PardOptions.cpu_gemm)
        self.call_config = {}  # inductor settings that must be active while a graph compiles (see below)
        if compile_mode is not None:
            mode = None if compile_backend != "inductor" else compile_mode
            options = compile_options if compile_backend == "inductor" else None
            # Inductor reads `freezing` outside the scope of torch.compile's `options` (checked on torch 2.13:
            # with options={"freezing": True} the fp32 linears stayed aten::mm, re-packing every call), so it
            # is also set around each compiled call, which is when (re)compilation happens.
            self.call_config = {key: options[key] for key in CALL_TIME_OPTIONS if options and key in options}
            if mode is not None and options:  # torch.compile takes either a mode or options
                options = {**torch._inductor.list_mode_options(mode), **options}
                mode = None
            self.compiled = torch.compile(model, backend=compile_backend, mode=mode, options=options or None,
                                          fullgraph=True, dynamic=False)

    def __call__(self, cache: PardStaticCache, input_ids, slots, *, logits_to_keep: int = 0, compiled=True,
                 inputs_embeds=None, feature_layers: tuple[int, ...] | None = None, offsets=None, attention=None):
        """Logits (B, T', V), and the concatenated hidden states of ``feature_layers`` (B, T, D) or None.
        ``offsets`` / ``attention``: a token-tree block (``PardStaticCache.plan``)."""
        position_ids, mask = cache.plan(slots, self.model.dtype, offsets=offsets, attention=attention)
        use_compiled = compiled and self.compiled is not None
        if use_compiled and cache.window_granularity is not None:
            torch._dynamo.mark_dynamic(mask, 3)  # the read window: one graph for every width
        if use_compiled and self.dynamic_rows and position_ids.shape[1] > 1:
            rows = inputs_embeds if inputs_embeds is not None else input_ids
            for tensor, dim in ((rows, 1), (position_ids, 1), (mask, 2), (cache.write_slots, 1)):
                torch._dynamo.mark_dynamic(tensor, dim)  # every (B, T, ...) input: T symbolic
        with torch._inductor.config.patch(self.call_config if use_compiled else {}):
            out = (self.compiled if use_compiled else self.model)(
                input_ids=None if inputs_embeds is not None else input_ids,
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=mask,
                use_cache=True,
                logits_to_keep=logits_to_keep,
                output_hidden_states=feature_layers is not None,
                **{self.cache_keyword: cache},
            )
        features = None if feature_layers is None else target_features(out.hidden_states, feature_layers)
        return out.logits, features


@dataclass
class PardModels:
    """The forward functions and caches of one call (``draft``/``draft_cache`` are None for AR+)."""

    target: ForwardFn
    draft: ForwardFn | None
    target_cache: PardStaticCache
    draft_cache: PardStaticCache | None
    static_shapes: bool  # compiled: the draft input always has width 2K, a chain verify verify_width
    move_slots: object = None  # compiled ``cache.move_slots`` (a tree's accepted path), None: eager


# ----------------------------------------------------------------------------------------------
# Step 0: prefill
# ----------------------------------------------------------------------------------------------


def prefill(models: PardModels, inputs: LoopInputs) -> RoundState:
    """Feed ``prompt[:-1]`` to both models; the last prompt token opens the first round.

    The target's prefill also yields the features the draft's input strategy asks for (PARD-2), so
    the draft's prefill needs no second target run.
    """
    input_ids, attention_mask, drafter = inputs.input_ids, inputs.attention_mask, inputs.drafter
    batch, prompt_len = input_ids.shape
    pad = (attention_mask == 0).sum(1)  # (B,)
    caches = [c for c in (models.target_cache, models.draft_cache) if c is not None]
    for cache in caches:
        cache.begin(pad)
    features = None
    body = input_ids[:, :-1]  # (B, P-1)
    if prompt_len > 1:
        slots = models.target_cache.contiguous_slots(prompt_len - 1)  # (B, P-1)
        layers = drafter.feature_layers if drafter is not None else None
        _, features = models.target(models.target_cache, body, slots, logits_to_keep=1, compiled=False,
                                    feature_layers=layers)  # (B, P-1, D) | None
    if drafter is not None:
        embeds = drafter.inputs.prefill_embeds(drafter.model, body, features, attention_mask)
        if prompt_len > 1:
            models.draft(models.draft_cache, body, slots, logits_to_keep=1, compiled=False, inputs_embeds=embeds)
    for cache in caches:
        cache.advance(torch.full_like(pad, prompt_len - 1))
    return _initial_state(inputs, prompt_len, pad)


def _initial_state(inputs: LoopInputs, prompt_len: int, pad: torch.Tensor) -> RoundState:
    input_ids, batch, k = inputs.input_ids, inputs.input_ids.shape[0], inputs.k
    tokens = input_ids.new_full((batch, prompt_len + inputs.max_new_tokens + k + 1), inputs.pad_token_id)
    tokens[:, :prompt_len] = input_ids
    kept = (batch, inputs.max_new_tokens + k + 1, inputs.vocab_size)
    return RoundState(
        tokens=tokens,
        prompt_len=prompt_len,
        pad=pad,
        num_generated=torch.zeros_like(pad),
        finished=torch.zeros(batch, dtype=torch.bool, device=input_ids.device),
        last_token=input_ids[:, -1].clone(),
        unseen=input_ids[:, -1:].clone(),
        num_unseen=torch.ones_like(pad),
        scores=input_ids.new_zeros(kept, dtype=torch.float32) if inputs.keep_scores else None,
        logits=input_ids.new_zeros(kept, dtype=torch.float32) if inputs.keep_logits else None,
    )


# ----------------------------------------------------------------------------------------------
# Step 1: draft K tokens in one forward
# ----------------------------------------------------------------------------------------------


def draft_step(models: PardModels, state: RoundState, inputs: LoopInputs, k: int, max_unseen: int) -> DraftLogits:
    """One draft forward over ``[unseen] + [mask]*(K-1)``; returns the K draft logits (B, K, N or V_target)."""
    drafter = inputs.drafter
    width = 2 * inputs.k if models.static_shapes else max_unseen + k - 1
    layout = draft_layout(state.unseen, state.num_unseen, models.draft_cache, k, drafter.spec.mask_token_id, width)
    embeds = drafter.inputs.round_embeds(drafter.model, layout)  # (B, W, H) | None
    logits, _ = models.draft(models.draft_cache, layout.input_ids, layout.slots, logits_to_keep=k, inputs_embeds=embeds)
    logits = drafter.draft_logits(logits[:, -k:].float())  # (B, K, N) float32 whatever the draft's dtype (q exact)
    # The mask slots' keys are discarded: only the unseen real tokens become live.
    models.draft_cache.advance(torch.where(state.finished, 0, state.num_unseen))
    return logits


# ----------------------------------------------------------------------------------------------
# Step 2: verify with the target in one forward
# ----------------------------------------------------------------------------------------------


def verify_step(models: PardModels, state: RoundState, proposal, inputs: LoopInputs, verifier):
    """Target forward over the verifier's block (a chain ``[last_token, d_1..d_K]``, or a token tree's
    ``[last_token, node_1..node_N]``): logits at every slot (B, T, V) and the features the draft's input
    strategy asks for (PARD-2: (B, T, D); else None)."""
    block = verifier.verify_input(state, proposal)
    width = block.input_ids.shape[1]
    input_ids, slots = block.input_ids, models.target_cache.contiguous_slots(width)  # (B, T), (B, T)
    if models.static_shapes and block.position_offsets is None and width < inputs.verify_width:
        input_ids, slots = _pad_to_verify_width(models.target_cache, input_ids, slots, inputs.verify_width)
    layers = inputs.drafter.feature_layers if inputs.drafter is not None else None
    logits, features = models.target(models.target_cache, input_ids, slots, feature_layers=layers,
                                     offsets=block.position_offsets, attention=block.attention)
    return logits[:, :width], None if features is None else features[:, :width]  # (B, T, V), (B, T, D)


def _pad_to_verify_width(cache: PardStaticCache, input_ids, slots, verify_width: int):
    """A compiled target keeps one verify shape: a narrower chain (a plain step once drafting is switched
    off for low acceptance) gets filler columns written to the trash slot, so no call compiles a new graph."""
    fill = verify_width - input_ids.shape[1]
    filler = input_ids[:, -1:].expand(-1, fill)  # (B, F) any token: its logits are dropped
    trash = slots.new_full((slots.shape[0], fill), cache.trash_slot)  # (B, F)
    return torch.cat([input_ids, filler], dim=1), torch.cat([slots, trash], dim=1)  # (B, W), (B, W)


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


def commit(models: PardModels, state: RoundState, chunk, length, finished, scores, logits) -> None:
    """Append each row's chunk, advance the target cache, and hand the chunk to the draft."""
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


@dataclass
class Loop:
    """What every round reads or updates: the models, the request, the state and the running counts."""

    models: PardModels
    inputs: LoopInputs
    verifier: object
    schedule: DraftSchedule
    state: RoundState
    stats: PardStats
    histogram: torch.Tensor  # (K+2,) row-rounds per committed length


def pard_decode(models: PardModels, inputs: LoopInputs, *, verifier, schedule: DraftSchedule,
                timer: PhaseTimer | None = None) -> PardResult:
    """Run PARD rounds until every row is finished (``timer``: per-phase seconds into the stats)."""
    start = time.perf_counter()
    timer = timer or PhaseTimer(None)
    with timer.phase("prefill"):
        state = prefill(models, inputs)
    histogram = torch.zeros(inputs.k + 2, dtype=torch.long, device=inputs.input_ids.device)
    loop = Loop(models, inputs, verifier, schedule, state, PardStats(k=inputs.k), histogram)
    if inputs.streamer is not None:
        inputs.streamer.put(inputs.input_ids.cpu())
    max_unseen, all_done = 1, False
    while not all_done:
        k = schedule.k
        if k > 0:
            with timer.phase("draft"):
                draft_logits = draft_step(models, state, inputs, k, max_unseen)  # (B, K, N)
                draft_tokens, q = verifier.propose(state, draft_logits)  # (B, K) or a tree, (B, K, V) | None
        else:  # drafting switched off (or AR+): a plain target step
            draft_tokens, q = state.last_token.new_zeros(state.last_token.shape[0], 0), None
        with timer.phase("verify"):
            target_logits, features = verify_step(models, state, draft_tokens, inputs, verifier)  # (B, T, V), (B, T, D)
        with timer.phase("other"):
            all_done, max_unseen = accept_and_commit(loop, k, draft_tokens, q, target_logits, features)
    if inputs.streamer is not None:
        inputs.streamer.end()
    _final_stats(loop.stats, schedule, histogram)
    sequences, scores, logits = finalize(state, inputs.pad_token_id)
    loop.stats.wall_time_s = time.perf_counter() - start
    loop.stats.phase_seconds = timer.seconds()
    return PardResult(sequences, loop.stats, scores, logits)


def accept_and_commit(loop: Loop, k: int, draft_tokens, q, target_logits, features) -> tuple[bool, int]:
    """Steps 3-6 of a round; returns (every row finished, the widest unseen chunk) from its one host sync."""
    state, inputs = loop.state, loop.inputs
    verdict = loop.verifier.accept(state, draft_tokens, q, target_logits)
    chunk, length = verdict.chunk, verdict.length  # (B, K+1), (B,)
    if verdict.path_slots is not None:  # a token tree: the accepted path's KV, then logits and features along it
        loop.models.target_cache.gather_path(verdict.path_slots, move=loop.models.move_slots)
        features = along_path(features, verdict.path_slots)
    target_logits = along_path(target_logits, verdict.path_slots) if state.logits is not None else None
    scores = verdict.scores() if state.scores is not None or inputs.stopping_criteria else None  # (B, K+1, V)
    length, finished = apply_stopping(chunk, length, state, inputs)
    if inputs.stopping_criteria:
        length, finished = apply_criteria(inputs.stopping_criteria, chunk, length, finished, state, scores)
    active = ~state.finished
    committed, rows = (length * active).sum(), active.sum()
    from_lookup = (committed.new_zeros(()) if verdict.lookup_accepted is None  # accepted lookup candidates kept
                   else (torch.minimum(verdict.lookup_accepted, length - 1).clamp(min=0) * active).sum())
    loop.histogram += (torch.nn.functional.one_hot(length, inputs.k + 2) * active[:, None]).sum(0)
    commit(loop.models, state, chunk, length, finished, scores, target_logits)
    if inputs.drafter is not None:
        inputs.drafter.inputs.observe(features)
    loop.stats.k_per_round.append(k)
    # The round's single host sync: loop control, the next draft width, the schedule, the streamer.
    all_done, max_unseen, committed, rows, first_len, from_lookup = torch.stack(
        [state.finished.all().long(), state.num_unseen.max(), committed, rows, length[0], from_lookup]
    ).tolist()
    loop.stats.lookup_tokens += from_lookup
    stream(inputs.streamer, chunk, first_len)
    if k > 0:
        loop.stats.drafting_committed += committed
        loop.stats.drafting_row_rounds += rows
    loop.schedule.update(committed=committed, rows=rows, all_accepted=committed == rows * (k + 1))
    return bool(all_done), max_unseen


def _final_stats(stats: PardStats, schedule: DraftSchedule, histogram: torch.Tensor) -> None:
    stats.rounds = stats.target_forwards = len(stats.k_per_round)
    stats.draft_forwards = sum(1 for k in stats.k_per_round if k > 0)
    stats.drafting_disabled_at = schedule.disabled_at
    counts = histogram.tolist()
    stats.accepted_histogram = counts
    stats.committed_tokens = sum(n * c for n, c in enumerate(counts))
    stats.row_rounds = sum(counts[1:])
