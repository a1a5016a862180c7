"""The benchmark's report: per-method summaries, the one table, the machine it ran on, JSON in and out.

Per method (``summarize``), from the calls ``benchmark.run_benchmark`` recorded:

* tokens/s: the median over prompts and the total (all tokens / all seconds);
* speedup vs plain and vs AR+ (total tokens/s over theirs, same prompts), as in PARD's Figure 1;
* tau = committed tokens / verify rounds (engine methods), and the accepted-length histogram;
* ms per target forward (a decode round's verify forward), ms per round (draft + verify + other) and
  the round cost in plain decode steps (ms per round / plain's ms per round), all without the prefill;
* the phase split: draft / verify / other ms per round;
* the ideal speedup, derived from the measured phase times of the method itself:
  committed tokens x plain's ms per target forward / (draft + verify ms of the method): what the
  method would reach over plain if nothing but its forwards cost time. ``efficiency`` = measured / ideal.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
from dataclasses import asdict

import torch

from ..hardware import bf16_is_fast, bf16_is_native, cpu_flags, cpu_model
from .benchmark import ENGINE_METHODS, PHASES, MethodResult

DEFINITIONS = {
    "tokens_per_s": "all new tokens / all seconds of the method's timed calls (median_tokens_per_s: per prompt)",
    "speedup_vs_plain": "tokens_per_s / plain's tokens_per_s (speedup_vs_ar_plus: / ar-plus's)",
    "tau": "committed tokens / verify rounds (engine methods)",
    "lookup_tokens_per_round": "accepted lookup-branch candidates / verify rounds (pard-lookup methods): the part "
                               "of tau the lookup branch gave",
    "ms_per_target_forward": "a decode round's target forward: the engine's verify phase, or forward hooks (plain, "
                             "assisted, lookup); prefill excluded",
    "ms_per_round": "draft + verify + other per decode round; prefill excluded",
    "round_cost_plain_steps": "ms_per_round / plain's ms_per_round",
    "identical_to_plain": "calls whose output equals plain generate's on the same prompt (greedy); null when "
                          "sampling (settings.sampling), where outputs differ by design",
    "phase_ms_per_round": "the engine's own phase timers (pard_timing=True); for transformers' methods, forward "
                          "hooks: verify = target forwards, draft = the assisted draft's forwards, other = the rest",
    "ideal_speedup": "derived from the measured phase times of the method itself: committed tokens x plain's "
                     "ms_per_target_forward / (its draft + verify ms); efficiency = speedup_vs_plain / ideal",
}
#: CPU flags worth recording: the vector / matrix extensions that decide fp32 and bf16 speed.
CPU_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c")


def _rate(result: MethodResult) -> float:
    return sum(result.tokens) / sum(result.seconds)


def phase_totals(result: MethodResult) -> dict[str, float] | None:
    """Seconds per phase summed over the calls, or None when a call did not record them."""
    if not result.phases or any(p is None for p in result.phases):
        return None
    return {name: sum(p[name] for p in result.phases) for name in PHASES}


def round_costs(result: MethodResult) -> dict:
    """ms per target forward / per round and the phase split per round (None without phase times)."""
    totals, rounds = phase_totals(result), sum(result.rounds)
    if totals is None or rounds == 0:
        return {"ms_per_target_forward": None, "ms_per_round": None, "phase_ms_per_round": None}
    per_round = {name: 1e3 * seconds / rounds for name, seconds in totals.items()}
    return {"ms_per_target_forward": per_round["verify"], "ms_per_round": sum(per_round.values()),
            "phase_ms_per_round": per_round}


def engine_counts(result: MethodResult) -> dict:
    """tau, the draft's own tau (rounds that drafted) and the histogram; None for transformers' methods."""
    engine = result.name in ENGINE_METHODS
    return {
        "tau": result.committed / result.row_rounds if engine and result.row_rounds else None,
        "drafting_tau": result.drafting_committed / result.drafting_rounds if result.drafting_rounds else None,
        "acceptance_histogram": result.histogram or None,
        "lookup_tokens_per_round": result.lookup_tokens / result.row_rounds if engine and result.row_rounds else None,
    }


def ideal(result: MethodResult, plain_forward_ms: float | None, speedup: float) -> dict:
    totals = phase_totals(result)
    if result.name not in ENGINE_METHODS or totals is None or not plain_forward_ms or not result.committed:
        return {"ideal_speedup": None, "efficiency": None}
    forwards_ms = 1e3 * (totals["draft"] + totals["verify"])
    best = result.committed * plain_forward_ms / forwards_ms
    return {"ideal_speedup": best, "efficiency": speedup / best}


def identical_count(result: MethodResult) -> str | None:
    """"n/N" of the calls compared with plain's output, or None when none was (sampled calls)."""
    compared = [same for same in result.identical if same is not None]
    return f"{sum(compared)}/{len(compared)}" if compared else None


def summarize_method(result: MethodResult, plain: dict, ar_plus: MethodResult | None) -> dict:
    """One method's row of the report (``plain``: plain's rate and round costs)."""
    rate, costs = _rate(result), round_costs(result)
    speedup = rate / plain["tokens_per_s"]
    plain_round = plain["ms_per_round"]
    prefill = [s for s in result.prefill_seconds if s is not None]
    return {
        "tokens": sum(result.tokens),
        "median_tokens_per_s": statistics.median(n / s for n, s in zip(result.tokens, result.seconds)),
        "tokens_per_s": rate,
        "speedup_vs_plain": speedup,
        "speedup_vs_ar_plus": rate / _rate(ar_plus) if ar_plus is not None else None,
        "identical_to_plain": identical_count(result),
        "target_forwards": sum(result.target_forwards),
        **engine_counts(result),
        **costs,
        "round_cost_plain_steps": costs["ms_per_round"] / plain_round if costs["ms_per_round"] and plain_round else None,
        "prefill_ms_median": 1e3 * statistics.median(prefill) if prefill else None,
        "warmup_s": result.warmup_seconds,
        **ideal(result, plain.get("ms_per_target_forward"), speedup),
    }


def summarize(results: dict[str, MethodResult]) -> dict[str, dict]:
    """Every method's summary; ``results`` must hold "plain" (the reference)."""
    plain = {"tokens_per_s": _rate(results["plain"]), **round_costs(results["plain"])}
    ar_plus = results.get("ar-plus")
    return {name: summarize_method(result, plain, ar_plus) for name, result in results.items()}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def recorded_cpu_flags() -> list[str]:
    """The CPU's vector / matrix flags (avx2, avx512*, amx*, fma, f16c), sorted."""
    return sorted(f for f in cpu_flags() if f.startswith(CPU_FLAG_PREFIXES))


def environment(device: str | torch.device = "cpu") -> dict:
    """Versions and hardware of this run."""
    import transformers

    from .. import __version__

    device = torch.device(device)
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformers_pard": __version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_flags": recorded_cpu_flags(),
        "bf16_native": bf16_is_native(device),
        "bf16_fast": bf16_is_fast(device),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def build_report(results: dict[str, MethodResult], *, device: torch.device, settings: dict, command: str) -> dict:
    """The whole JSON report of a run."""
    return {
        "methods": summarize(results),
        "per_prompt": {name: asdict(result) for name, result in results.items()},
        "peak_memory_mb": peak_memory_mb(device),
        "environment": environment(device),
        "settings": settings,
        "command": command,
        "definitions": DEFINITIONS,
    }


def _cell(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_rows(report: dict) -> list[tuple[str, ...]]:
    """The header and one row per method of the report's table."""
    rows = [("method", "tok/s (median)", "tok/s (total)", "vs plain", "vs AR+", "identical", "tau",
             "ms/target fwd", "ms/round", "round (plain steps)", "draft ms", "verify ms", "other ms")]
    for name, m in report["methods"].items():
        phases = m.get("phase_ms_per_round") or {}
        rows.append((name, _cell(m["median_tokens_per_s"], ".1f"), _cell(m.get("tokens_per_s"), ".1f"),
                     _cell(m["speedup_vs_plain"], ".2f", "x"), _cell(m.get("speedup_vs_ar_plus"), ".2f", "x"),
                     m["identical_to_plain"] or "-", _cell(m.get("tau"), ".2f"),
                     _cell(m.get("ms_per_target_forward"), ".1f"), _cell(m.get("ms_per_round"), ".1f"),
                     _cell(m.get("round_cost_plain_steps"), ".2f"),
                     *(_cell(phases.get(p), ".1f") for p in PHASES)))
    return rows


def format_table(report: dict) -> str:
    """The report's one table (markdown, aligned columns)."""
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_ideal(report: dict) -> list[str]:
    """One line per method with an ideal speedup (derived from its measured phase times)."""
    return [f"{name}: ideal {m['ideal_speedup']:.2f}x over plain from its measured phase times "
            f"(tau x plain ms per target forward / (draft + verify ms per round)); efficiency {m['efficiency']:.2f}"
            for name, m in report["methods"].items() if m.get("ideal_speedup")]


def save_report(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def load_report(path: str) -> dict:
    """A report written by ``bench --json`` (older reports lack the round costs: those stay absent)."""
    with open(path) as f:
        report = json.load(f)
    if "methods" not in report:
        raise ValueError(f"{path} is not a bench report (no 'methods'): write one with `bench --json FILE`.")
    return report
