"""The bench report's arithmetic on hand-made records: rates, speedups, round costs, phases, ideal, table."""

import json
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from transformers_pard import hardware
from transformers_pard.apps import report as report_module
from transformers_pard.apps.benchmark import MethodResult
from transformers_pard.apps.report import (
    DEFINITIONS,
    build_report,
    environment,
    format_ideal,
    format_table,
    load_report,
    recorded_cpu_flags,
    round_costs,
    save_report,
    summarize,
)


def phases(draft, verify, other):
    return {"draft": draft, "verify": verify, "other": other}


def plain_result():
    """Two prompts of 11 tokens: 10 decode rounds each, 20 ms per forward + 5 ms of overhead per round."""
    return MethodResult("plain", tokens=[11, 11], seconds=[0.30, 0.30], identical=[True, True],
                        target_forwards=[11, 11], rounds=[10, 10], prefill_seconds=[0.05, 0.05],
                        phases=[phases(0.0, 0.20, 0.05)] * 2)


def pard_result(name="pard"):
    """The same 22 tokens in 4 + 4 rounds: draft 10 ms, verify 30 ms, other 5 ms per round."""
    return MethodResult(name, tokens=[11, 11], seconds=[0.25, 0.15], identical=[True, False],
                        target_forwards=[5, 5], rounds=[4, 4], prefill_seconds=[0.05, 0.05],
                        phases=[phases(0.04, 0.12, 0.02)] * 2, committed=22, row_rounds=8,
                        drafting_committed=22, drafting_rounds=8, histogram=[0, 2, 2, 2, 2])


def ar_plus_result():
    return MethodResult("ar-plus", tokens=[11, 11], seconds=[0.2, 0.2], identical=[True, True],
                        target_forwards=[12, 12], rounds=[11, 11], prefill_seconds=[0.02, 0.02],
                        phases=[phases(0.0, 0.165, 0.011)] * 2, committed=22, row_rounds=22,
                        histogram=[0, 22, 0])


def test_round_costs_by_hand():
    costs = round_costs(pard_result())
    assert costs["ms_per_target_forward"] == pytest.approx(30.0)
    assert costs["ms_per_round"] == pytest.approx(45.0)
    assert costs["phase_ms_per_round"] == pytest.approx(phases(10.0, 30.0, 5.0))


def test_round_costs_need_every_calls_phases():
    result = pard_result()
    result.phases[1] = None
    assert round_costs(result) == {"ms_per_target_forward": None, "ms_per_round": None, "phase_ms_per_round": None}


def test_summary_by_hand():
    methods = summarize({"plain": plain_result(), "ar-plus": ar_plus_result(), "pard": pard_result()})
    plain, pard, ar_plus = methods["plain"], methods["pard"], methods["ar-plus"]
    assert plain["tokens_per_s"] == pytest.approx(22 / 0.6) and pard["tokens_per_s"] == pytest.approx(22 / 0.4)
    assert pard["median_tokens_per_s"] == pytest.approx(statistics.median([11 / 0.25, 11 / 0.15]))
    assert pard["speedup_vs_plain"] == pytest.approx(1.5) and plain["speedup_vs_plain"] == 1.0
    assert pard["speedup_vs_ar_plus"] == pytest.approx((22 / 0.4) / (22 / 0.4)) and ar_plus["speedup_vs_ar_plus"] == 1.0
    assert pard["identical_to_plain"] == "1/2" and pard["target_forwards"] == 10
    assert pard["tau"] == pytest.approx(22 / 8) and pard["acceptance_histogram"] == [0, 2, 2, 2, 2]
    assert plain["tau"] is None and plain["acceptance_histogram"] is None
    assert plain["ms_per_round"] == pytest.approx(25.0) and plain["ms_per_target_forward"] == pytest.approx(20.0)
    assert pard["round_cost_plain_steps"] == pytest.approx(45.0 / 25.0)
    assert plain["round_cost_plain_steps"] == pytest.approx(1.0)
    assert pard["prefill_ms_median"] == pytest.approx(50.0)


def test_ideal_speedup_uses_the_methods_own_phase_times():
    methods = summarize({"plain": plain_result(), "pard": pard_result(), "pard-compiled": pard_result("pard-compiled")})
    pard = methods["pard"]
    # committed tokens x plain's ms per target forward / (the method's draft + verify ms)
    assert pard["ideal_speedup"] == pytest.approx(22 * 20.0 / (80 + 240))
    assert pard["efficiency"] == pytest.approx(pard["speedup_vs_plain"] / pard["ideal_speedup"])
    assert methods["plain"]["ideal_speedup"] is None  # not an engine method
    lines = format_ideal({"methods": methods})
    assert len(lines) == 2 and lines[0].startswith(f"pard: ideal {pard['ideal_speedup']:.2f}x over plain from its "
                                                   "measured phase times")


def test_no_ar_plus_leaves_its_column_empty():
    methods = summarize({"plain": plain_result(), "pard": pard_result()})
    assert methods["pard"]["speedup_vs_ar_plus"] is None


@given(tokens=st.lists(st.integers(1, 500), min_size=1, max_size=6),
       seconds=st.lists(st.floats(0.01, 10.0), min_size=6, max_size=6), scale=st.floats(0.1, 10.0))
def test_speedup_is_the_ratio_of_total_rates(tokens, seconds, scale):
    """1 against itself, 1/scale when every call takes scale x longer."""
    seconds = seconds[: len(tokens)]
    n = len(tokens)
    plain = MethodResult("plain", tokens=tokens, seconds=seconds, identical=[True] * n, rounds=[1] * n)
    slow = MethodResult("lookup", tokens=tokens, seconds=[s * scale for s in seconds],
                        identical=[i % 2 == 0 for i in range(n)], target_forwards=[3] * n, rounds=[2] * n)
    methods = summarize({"plain": plain, "lookup": slow})
    assert methods["plain"]["speedup_vs_plain"] == pytest.approx(1.0)
    assert methods["lookup"]["speedup_vs_plain"] == pytest.approx(1 / scale)
    assert methods["lookup"]["identical_to_plain"] == f"{(n + 1) // 2}/{n}"
    assert methods["lookup"]["target_forwards"] == 3 * n and methods["lookup"]["ms_per_round"] is None


def test_table_has_one_row_per_method_and_every_column():
    methods = summarize({"plain": plain_result(), "ar-plus": ar_plus_result(), "pard": pard_result()})
    lines = format_table({"methods": methods}).splitlines()
    assert len(lines) == 2 + 3 and set(lines[1]) == {"|", "-"}
    assert len({len(line) for line in lines}) == 1  # aligned columns
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["method", "tok/s (median)", "tok/s (total)", "vs plain", "vs AR+", "identical", "tau",
                      "ms/target fwd", "ms/round", "round (plain steps)", "draft ms", "verify ms", "other ms"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert rows["pard"][2:9] == ["1.50x", "1.00x", "1/2", "2.75", "30.0", "45.0", "1.80"]
    assert rows["pard"][9:] == ["10.0", "30.0", "5.0"]
    assert rows["plain"][5] == "-"  # no tau for transformers' own generate


def test_sampled_calls_are_not_counted_as_identical_or_not():
    sampled = pard_result()
    sampled.identical = [None, None]
    methods = summarize({"plain": plain_result(), "pard": sampled})
    assert methods["pard"]["identical_to_plain"] is None
    row = format_table({"methods": methods}).splitlines()[3].split("|")
    assert row[1].strip() == "pard" and row[6].strip() == "-"
    mixed = pard_result()
    mixed.identical = [None, True]  # only compared calls count
    assert summarize({"plain": plain_result(), "pard": mixed})["pard"]["identical_to_plain"] == "1/1"


def test_table_of_an_older_report_without_round_costs():
    old = {"methods": {"plain": {"median_tokens_per_s": 21.8, "speedup_vs_plain": 1.0, "identical_to_plain": "40/40"}}}
    assert format_table(old).splitlines()[2].split("|")[2].strip() == "21.8"


def test_recorded_cpu_flags_keep_the_vector_and_matrix_extensions(monkeypatch):
    flags = frozenset({"sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile", "fma", "f16c", "ht"})
    monkeypatch.setattr(report_module, "cpu_flags", lambda: flags)
    assert recorded_cpu_flags() == ["amx_tile", "avx2", "avx512_bf16", "avx512f", "f16c", "fma"]


def test_environment_records_versions_and_hardware():
    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["cpu_threads"] >= 1 and env["device"] == "cpu"
    assert env["cpu_flags"] == recorded_cpu_flags() and env["bf16_native"] == hardware.bf16_is_native("cpu")
    assert env["bf16_fast"] == hardware.bf16_is_fast("cpu")
    assert env["cpu_model"] == hardware.cpu_model()
    assert env["cuda"] is None


def test_report_round_trips_through_json(tmp_path):
    report = build_report({"plain": plain_result(), "pard": pard_result()}, device=torch.device("cpu"),
                          settings={"k": 3}, command="python -m transformers_pard bench ...")
    assert report["definitions"] == DEFINITIONS and report["peak_memory_mb"] > 0
    assert report["per_prompt"]["pard"]["histogram"] == [0, 2, 2, 2, 2]
    path = tmp_path / "bench.json"
    save_report(report, str(path))
    assert load_report(str(path)) == json.loads(path.read_text()) == report


def test_load_report_refuses_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rows": 1}))
    with pytest.raises(ValueError, match="not a bench report"):
        load_report(str(path))
