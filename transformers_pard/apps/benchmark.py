"""The project's benchmark: every method on the same prompts, interleaved, checked against plain.

For each prompt (jsonl lines ``{"data": ...}``, run through the chat template) every method runs
once, in turn, after one warm-up call per method (which also pays any ``torch.compile``); each output
is compared with plain ``generate``. Greedy by default; with ``Sampling`` (``bench --temperature T``) every
call samples, each prompt's calls start from the same seed, and outputs are not compared (sampled outputs of
different methods differ even when each follows the target's distribution exactly, which the chi-square tests
of ``tests/test_sampling.py`` check).

Methods:

=====================  =====================================================================
plain                  the target's own ``generate``
ar-plus                AR+: the PARD engine with no draft (static cache; on CPU fp32 pre-packed weights)
ar-plus-compiled       AR+ on the compiled copy of the target (``torch.compile``)
assisted               transformers' assisted generation with an autoregressive draft
lookup                 transformers' prompt lookup (``prompt_lookup_num_tokens=10``)
pard                   PARD, eager forwards
pard-compiled          PARD, ``enable_pard(..., compile=True)`` on a copy of the target
pard-tree              PARD verifying a token tree of ``--tree-nodes`` candidates per round (``pard_tree=N``)
pard-tree-compiled     the same on the compiled copy
pard-lookup            the same N nodes, up to ``--lookup-nodes`` L of them lookup candidates: the text's own
                       n-gram continuation, ranked against the draft's nodes (``pard_tree=N, pard_lookup=L``;
                       the same verify width as pard-tree; and the draft's lookup store's unless
                       ``--no-lookup-store``)
pard-lookup-compiled   the same on the compiled copy
pard2                  a PARD-2 draft fed the target's hidden states
pard2-independent      the same PARD-2 draft alone
=====================  =====================================================================

Where the time goes is measured per call. Engine methods (ar-plus, pard*) report it themselves
(``generate(..., return_dict_in_generate=True, pard_timing=True).pard_stats``: forwards, rounds,
seconds per phase). transformers' methods are eager, so forward hooks time them: the target's first
forward of a call is its prefill, every later one a decode round's verify ("target forward"), the
assisted draft's forwards are "draft", the rest of the call is "other" (on a GPU each hook synchronises
the device). Hooks never touch a compiled model (a hook is traced into the graph and makes every call
recompile).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import torch

from ..modeling import enable_pard
from ..training.data import user_turn

METHODS = ("plain", "ar-plus", "ar-plus-compiled", "assisted", "lookup", "pard", "pard-compiled", "pard-tree",
           "pard-tree-compiled", "pard-lookup", "pard-lookup-compiled", "pard2", "pard2-independent")
#: Methods run by the PARD engine: counts and phase times come from ``pard_stats``.
ENGINE_METHODS = frozenset({"ar-plus", "ar-plus-compiled", "pard", "pard-compiled", "pard-tree", "pard-tree-compiled",
                            "pard-lookup", "pard-lookup-compiled", "pard2", "pard2-independent"})
#: Methods that run on the compiled copy of the target.
COMPILED_METHODS = frozenset({"ar-plus-compiled", "pard-compiled", "pard-tree-compiled", "pard-lookup-compiled"})
#: The decode phases of a round (a call's prefill is kept apart).
PHASES = ("draft", "verify", "other")


def synchronize(device: torch.device) -> None:
    """Wait for ``device`` (a no-op on the CPU, whose work is synchronous)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def chat_ids(tokenizer, text: str, device) -> torch.Tensor:
    """``text`` as one user turn through the tokenizer's chat template: (1, P) input ids."""
    return tokenizer(user_turn(tokenizer, text), add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)


def parse_methods(text: str) -> list[str]:
    """``"plain,pard"`` -> ``["plain", "pard"]``; unknown or repeated names are refused up front."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown benchmark method(s) {unknown or text!r}; choose from {', '.join(METHODS)}.")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ValueError(f"Benchmark method(s) {repeated} listed twice; list each method once.")
    return methods


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding for every method: ``temperature`` > 0, optional ``top_p`` in (0, 1]; the calls on
    prompt i start from ``torch.manual_seed(seed + i)``."""

    temperature: float
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 to sample (got {self.temperature}); for greedy decoding "
                             "leave sampling off (no --temperature).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p}).")

    def generate_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature,
                **({} if self.top_p is None else {"top_p": self.top_p})}


@dataclass
class CallRecord:
    """What one timed ``generate`` call did (batch 1). Seconds are host wall time."""

    sequences: torch.Tensor  # (1, P + N)
    seconds: float
    target_forwards: int  # including the prefill
    rounds: int  # decode rounds = target forwards after the prefill
    prefill_seconds: float | None
    phases: dict[str, float] | None  # seconds of the decode rounds, keyed by PHASES
    stats: object | None = None  # the engine's PardStats (engine methods only)


class ForwardTimer:
    """Counts and times every forward of an *eager* model with a pre- and a post-hook."""

    def __init__(self, model):
        self.model, self.durations = model, []
        self.device = next(model.parameters()).device
        self._start, self._handles = 0.0, []

    def __enter__(self) -> "ForwardTimer":
        self._handles = [self.model.register_forward_pre_hook(self._before),
                         self.model.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module, args) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, module, args, output) -> None:
        synchronize(self.device)
        self.durations.append(time.perf_counter() - self._start)


def timed_generate(model, ids: torch.Tensor, kwargs: dict):
    """(output of ``model.generate(ids, **kwargs)``, wall seconds), the device synchronised around it."""
    synchronize(ids.device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    synchronize(ids.device)
    return out, time.perf_counter() - start


def hooked_call(model, ids: torch.Tensor, kwargs: dict, draft=None) -> CallRecord:
    """One call of transformers' own generation, its forwards timed by hooks (eager models only)."""
    timers = [ForwardTimer(m) for m in (model, draft) if m is not None]
    with contextlib.ExitStack() as stack:
        for timer in timers:
            stack.enter_context(timer)
        out, seconds = timed_generate(model, ids, kwargs)
    prefill, decode = timers[0].durations[0], timers[0].durations[1:]
    draft_s = sum(timers[1].durations) if draft is not None else 0.0
    phases = {"draft": draft_s, "verify": sum(decode), "other": seconds - prefill - sum(decode) - draft_s}
    return CallRecord(out, seconds, len(timers[0].durations), len(decode), prefill, phases)


def engine_call(model, ids: torch.Tensor, kwargs: dict, *, phase_timing: bool) -> CallRecord:
    """One call of the PARD engine; forwards, rounds and phase seconds from its ``pard_stats``."""
    out, seconds = timed_generate(model, ids, {**kwargs, "return_dict_in_generate": True,
                                               "pard_timing": phase_timing})
    stats = out.pard_stats
    timed = stats.phase_seconds
    phases = {p: timed[p] for p in PHASES} if timed else None
    prefill = timed.get("prefill") if timed else None
    return CallRecord(out.sequences, seconds, stats.target_forwards + 1, stats.rounds, prefill, phases, stats)


class Runner:
    """Knows each method's ``generate`` call (``kwargs``); ``run`` times one prompt.

    ``min_tau`` is passed to the engine methods as ``pard_min_tau`` (None: drafting never switches
    off, so every round of a PARD method drafts and its round cost is a drafting round's). ``sampling``:
    every method samples (``Sampling``); None: greedy.
    """

    def __init__(self, target, tokenizer, *, draft=None, ar_draft=None, pard2_draft=None, k: int = 8,
                 max_new_tokens: int = 128, min_tau: float | None = None, phase_timing: bool = True,
                 tree_nodes: int = 8, lookup_nodes: int = 8, lookup_store: bool = False,
                 sampling: Sampling | None = None):
        self.target, self.tokenizer, self.draft, self.ar_draft = target, tokenizer, draft, ar_draft
        self.pard2_draft, self.k, self.max_new_tokens = pard2_draft, k, max_new_tokens
        self.min_tau, self.phase_timing, self.tree_nodes = min_tau, phase_timing, tree_nodes
        self.lookup_nodes, self.lookup_store, self.sampling = lookup_nodes, lookup_store, sampling
        self.compiled = None

    def compiled_target(self):
        """A compiled copy of the target (built once), so the eager methods keep eager forwards."""
        if self.compiled is None:
            self.compiled = enable_pard(copy.deepcopy(self.target), compile=True)
        return self.compiled

    def kwargs(self, method: str) -> tuple[object, dict]:
        """(the model to call, the ``generate`` keywords) of ``method``."""
        decoding = self.sampling.generate_kwargs() if self.sampling else {"do_sample": False}
        common = dict(max_new_tokens=self.max_new_tokens, **decoding)
        pard = {**common, "num_assistant_tokens": self.k, "pard_min_tau": self.min_tau}
        tree = {**pard, "pard_draft": self.draft, "pard_tree": self.tree_nodes}
        lookup = {**tree, "pard_lookup": self.lookup_nodes, **({"pard_lookup_store": True} if self.lookup_store else {})}
        calls = {
            "plain": lambda: (self.target, common),
            "ar-plus": lambda: (self.target, {**common, "ar_plus": True}),
            "ar-plus-compiled": lambda: (self.compiled_target(), {**common, "ar_plus": True}),
            "assisted": lambda: (self.target, {**common, "assistant_model": self.ar_draft,
                                               "num_assistant_tokens": self.k}),
            "lookup": lambda: (self.target, {**common, "prompt_lookup_num_tokens": 10}),
            "pard": lambda: (self.target, {**pard, "pard_draft": self.draft}),
            "pard-compiled": lambda: (self.compiled_target(), {**pard, "pard_draft": self.draft}),
            "pard-tree": lambda: (self.target, tree),
            "pard-tree-compiled": lambda: (self.compiled_target(), tree),
            "pard-lookup": lambda: (self.target, lookup),
            "pard-lookup-compiled": lambda: (self.compiled_target(), lookup),
            "pard2": lambda: (self.target, {**pard, "pard_draft": self.pard2_draft, "pard_mode": "dependent"}),
            "pard2-independent": lambda: (self.target, {**pard, "pard_draft": self.pard2_draft,
                                                        "pard_mode": "independent"}),
        }
        if method not in calls:
            raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
        return calls[method]()

    def run(self, method: str, ids: torch.Tensor, prompt_index: int = 0) -> CallRecord:
        model, kwargs = self.kwargs(method)
        if self.sampling is not None:  # every method's call on this prompt starts from the same seed
            torch.manual_seed(self.sampling.seed + prompt_index)
        if method in ENGINE_METHODS:
            return engine_call(model, ids, kwargs, phase_timing=self.phase_timing)
        return hooked_call(model, ids, kwargs, draft=self.ar_draft if method == "assisted" else None)


@dataclass
class MethodResult:
    """One method's calls, prompt by prompt, and its engine counters summed over them."""

    name: str
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    identical: list[bool | None] = field(default_factory=list)  # None: sampled (not compared)
    target_forwards: list[int] = field(default_factory=list)  # including each call's prefill
    rounds: list[int] = field(default_factory=list)  # decode rounds (target forwards after the prefill)
    prefill_seconds: list[float | None] = field(default_factory=list)
    phases: list[dict[str, float] | None] = field(default_factory=list)  # seconds by PHASES, per call
    warmup_seconds: float | None = None  # the untimed first call (compilation included)
    committed: int = 0  # engine methods: tokens committed over all rounds ...
    row_rounds: int = 0  # ... and row-rounds, so tau = committed / row_rounds
    drafting_committed: int = 0
    drafting_rounds: int = 0
    histogram: list[int] = field(default_factory=list)  # accepted_histogram summed over the calls
    lookup_tokens: int = 0  # committed tokens that came from a lookup branch (pard-lookup methods)

    def add(self, call: CallRecord, prompt_len: int, reference: torch.Tensor | None) -> None:
        """``reference``: plain's output on the same prompt, or None when sampling (nothing to compare)."""
        self.tokens.append(call.sequences.shape[1] - prompt_len)
        self.seconds.append(call.seconds)
        self.identical.append(None if reference is None else bool(torch.equal(call.sequences, reference)))
        self.target_forwards.append(call.target_forwards)
        self.rounds.append(call.rounds)
        self.prefill_seconds.append(call.prefill_seconds)
        self.phases.append(call.phases)
        stats = call.stats
        if stats is not None:
            self.committed += stats.committed_tokens
            self.row_rounds += stats.row_rounds
            self.drafting_committed += stats.drafting_committed
            self.drafting_rounds += stats.drafting_row_rounds
            self.lookup_tokens += stats.lookup_tokens
            previous = self.histogram or [0] * len(stats.accepted_histogram)
            self.histogram = [a + b for a, b in zip(previous, stats.accepted_histogram)]


def run_benchmark(runner: Runner, prompts: list[str], methods: list[str], *, progress=None) -> dict[str, MethodResult]:
    """Every method on every prompt (interleaved, after one warm-up each), plain first: its output is
    the reference each other method's is compared with (greedy only)."""
    device = next(runner.target.parameters()).device
    methods = ["plain", *(m for m in methods if m != "plain")]
    results = {m: MethodResult(m) for m in methods}
    if COMPILED_METHODS & set(methods):
        # Copy the target before any method runs on it: a PARD-2 call leaves transformers' output-capturing
        # hooks on the target's layers, and a copy with hooks would not compile (the engine runs it eagerly).
        runner.compiled_target()
    warm = chat_ids(runner.tokenizer, prompts[0], device)
    for method in methods:
        results[method].warmup_seconds = runner.run(method, warm).seconds
    for index, text in enumerate(prompts):
        ids = chat_ids(runner.tokenizer, text, device)
        reference = None
        for method in methods:
            call = runner.run(method, ids, index)
            reference = call.sequences if reference is None and runner.sampling is None else reference
            results[method].add(call, ids.shape[1], reference)
        if progress is not None:
            progress(index + 1, len(prompts))
    return results
