"""The project's benchmark: every method on the same prompts, interleaved, checked against plain.

For each prompt (jsonl lines ``{"data": ...}``, run through the chat template) every method runs
once, in turn, after a warm-up; each output is compared with plain ``generate``. Per method it
reports median tokens/s, speedup over plain (total tokens / total time, both methods on the same
prompts), tau and the acceptance histogram, target forwards, peak memory, and for PARD the ideal
speedup from measured forward costs, tau x T_target(1) / (T_target(K+1) + T_draft), so the engine's
efficiency (measured / ideal) is visible.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .modeling import enable_pard

METHODS = ("plain", "assisted", "lookup", "pard", "pard-compiled", "pard2", "pard2-independent")


@dataclass
class MethodResult:
    name: str
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    identical: list[bool] = field(default_factory=list)
    target_forwards: list[int] = field(default_factory=list)
    committed: int = 0
    rounds: int = 0
    drafting_committed: int = 0
    drafting_rounds: int = 0
    histogram: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.seconds)]

    def summary(self, plain: "MethodResult") -> dict:
        total_rate = sum(self.tokens) / sum(self.seconds)
        plain_rate = sum(plain.tokens) / sum(plain.seconds)
        return {
            "median_tokens_per_s": statistics.median(self.tokens_per_s),
            "tokens_per_s": total_rate,
            "speedup_vs_plain": total_rate / plain_rate,
            "identical_to_plain": f"{sum(self.identical)}/{len(self.identical)}",
            "target_forwards": sum(self.target_forwards),
            "tau": self.committed / self.rounds if self.rounds else None,
            "drafting_tau": self.drafting_committed / self.drafting_rounds if self.drafting_rounds else None,
            "acceptance_histogram": self.histogram or None,
        }


def count_forwards(model) -> tuple[list, Callable[[], None]]:
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle.remove


def chat_ids(tokenizer, text: str, device) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    return ids.to(device)


def forward_cost(model, cache_len: int, width: int, repeats: int = 5) -> float:
    """Median seconds of one forward of ``width`` tokens over a ``cache_len``-token cache (plain HF cache)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, cache_len + width), device=device)  # any ids: only the time counts
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            past = model(ids[:, :cache_len], use_cache=True).past_key_values
            _sync(device)
            start = time.perf_counter()
            model(ids[:, cache_len:], past_key_values=past, use_cache=True)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Runner:
    """Builds each method's ``generate`` call once; ``run`` times one prompt."""

    def __init__(self, target, tokenizer, *, draft=None, ar_draft=None, pard2_draft=None, k: int = 8,
                 max_new_tokens: int = 128):
        self.target, self.tokenizer, self.draft, self.ar_draft = target, tokenizer, draft, ar_draft
        self.pard2_draft = pard2_draft
        self.k, self.max_new_tokens = k, max_new_tokens
        self.compiled = None

    def kwargs(self, method: str) -> tuple[object, dict]:
        common = dict(max_new_tokens=self.max_new_tokens, do_sample=False)
        if method == "plain":
            return self.target, common
        if method == "assisted":
            return self.target, {**common, "assistant_model": self.ar_draft, "num_assistant_tokens": self.k}
        if method == "lookup":
            return self.target, {**common, "prompt_lookup_num_tokens": 10}
        if method == "pard":
            return self.target, {**common, "pard_draft": self.draft, "num_assistant_tokens": self.k}
        if method in ("pard2", "pard2-independent"):
            mode = "dependent" if method == "pard2" else "independent"
            return self.target, {**common, "pard_draft": self.pard2_draft, "num_assistant_tokens": self.k,
                                 "pard_mode": mode}
        if method == "pard-compiled":
            if self.compiled is None:
                self.compiled = enable_pard(copy.deepcopy(self.target), compile=True)
            return self.compiled, {**common, "pard_draft": self.draft, "num_assistant_tokens": self.k}
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")

    def run(self, method: str, ids: torch.Tensor):
        model, kwargs = self.kwargs(method)
        calls, remove = count_forwards(model)
        device = ids.device
        _sync(device)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        finally:
            remove()
        _sync(device)
        return out, time.perf_counter() - start, len(calls), getattr(model, "_last_pard_stats", None)


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


def run_benchmark(runner: Runner, prompts: list[str], methods: list[str], *, progress=None) -> dict:
    """Every method on every prompt (interleaved, after one warm-up each); returns the report dict."""
    device = next(runner.target.parameters()).device
    methods = ["plain", *(m for m in methods if m != "plain")]  # plain first: the reference of every prompt
    results = {m: MethodResult(m) for m in methods}
    warm = chat_ids(runner.tokenizer, prompts[0], device)
    for method in methods:
        runner.run(method, warm)
    for index, text in enumerate(prompts):
        ids = chat_ids(runner.tokenizer, text, device)
        reference = None
        for method in methods:
            runner.target._last_pard_stats = None
            if runner.compiled is not None:
                runner.compiled._last_pard_stats = None
            out, seconds, forwards, stats = runner.run(method, ids)
            if method == "plain":
                reference = out
            res = results[method]
            res.tokens.append(out.shape[1] - ids.shape[1])
            res.seconds.append(seconds)
            res.identical.append(bool(torch.equal(out, reference)))
            res.target_forwards.append(forwards)
            if stats is not None and method.startswith("pard"):
                res.committed += stats.committed_tokens
                res.rounds += stats.row_rounds
                res.drafting_committed += stats.drafting_committed
                res.drafting_rounds += stats.drafting_row_rounds
                res.histogram = [a + b for a, b in zip(res.histogram, stats.accepted_histogram)] or list(stats.accepted_histogram)
        if progress is not None:
            progress(index + 1, len(prompts))
    report = {"methods": {m: r.summary(results["plain"]) for m, r in results.items()}}
    report["per_prompt"] = {m: asdict(r) for m, r in results.items()}
    report["peak_memory_mb"] = peak_memory_mb(device)
    return report


def ideal_speedup(target, draft, *, k: int, tau: float, cache_len: int = 200) -> dict:
    """tau x T_target(1) / (T_target(K+1) + T_draft(2K)) from measured forward costs."""
    t1 = forward_cost(target, cache_len, 1)
    tk = forward_cost(target, cache_len, k + 1)
    td = forward_cost(draft, cache_len, 2 * k)
    return {"target_1_ms": t1 * 1e3, "target_k1_ms": tk * 1e3, "draft_2k_ms": td * 1e3,
            "ideal_speedup": tau * t1 / (tk + td)}


def environment() -> dict:
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(sys.argv),
    }


def format_table(report: dict) -> str:
    rows = [("method", "tok/s (median)", "speedup", "identical", "tau", "tau (drafting rounds)", "target fwd")]
    for name, m in report["methods"].items():
        tau, drafting = (f"{m[key]:.2f}" if m.get(key) is not None else "-" for key in ("tau", "drafting_tau"))
        rows.append((name, f"{m['median_tokens_per_s']:.1f}", f"{m['speedup_vs_plain']:.2f}x",
                     m["identical_to_plain"], tau, drafting, str(m["target_forwards"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def save_report(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
