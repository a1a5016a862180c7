"""The benchmark harness on tiny models: report structure, exactness flags, counts and arithmetic."""

import json
import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from transformers_pard import benchmark, enable_pard
from transformers_pard.benchmark import (
    MethodResult,
    Runner,
    chat_ids,
    count_forwards,
    environment,
    format_table,
    forward_cost,
    ideal_speedup,
    parse_methods,
    run_benchmark,
    save_report,
)
from transformers_pard.testing import OracleDraft, tiny_causal_lm, tiny_pard2_draft, tiny_pard_draft, tiny_tokenizer

PROMPTS = ["Add 2 and 3.", "Say hi.", "Sort [3, 1, 2]."]
K, NEW = 3, 10
SUMMARY_KEYS = {"median_tokens_per_s", "tokens_per_s", "speedup_vs_plain", "identical_to_plain", "target_forwards",
                "tau", "drafting_tau", "acceptance_histogram"}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target():
    return enable_pard(tiny_causal_lm("llama", seed=0))


@pytest.fixture(scope="module")
def runner(target, tokenizer):
    return Runner(target, tokenizer, draft=tiny_pard_draft(target), ar_draft=tiny_causal_lm("llama", seed=5, num_layers=1),
                  pard2_draft=tiny_pard2_draft(target), k=K, max_new_tokens=NEW)


@pytest.fixture(scope="module")
def full_run(runner):
    """Every method but pard-compiled on three prompts; plain is left out on purpose (it is added first)."""
    progress = []
    methods = ["assisted", "lookup", "pard", "pard2", "pard2-independent"]
    report = run_benchmark(runner, PROMPTS, methods, progress=lambda i, n: progress.append((i, n)))
    return report, progress


def test_report_structure(full_run):
    report, progress = full_run
    assert set(report) == {"methods", "per_prompt", "peak_memory_mb"}
    assert list(report["methods"]) == ["plain", "assisted", "lookup", "pard", "pard2", "pard2-independent"]
    assert list(report["per_prompt"]) == list(report["methods"])
    for name, summary in report["methods"].items():
        assert set(summary) == SUMMARY_KEYS
        per = report["per_prompt"][name]
        assert per["name"] == name
        assert len(per["tokens"]) == len(per["seconds"]) == len(per["identical"]) == len(PROMPTS)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert report["peak_memory_mb"] > 0


def test_every_method_is_identical_to_plain(full_run):
    report, _ = full_run
    plain = report["per_prompt"]["plain"]
    assert all(0 < n <= NEW for n in plain["tokens"])
    for name, summary in report["methods"].items():
        assert summary["identical_to_plain"] == "3/3", name
        assert report["per_prompt"][name]["tokens"] == plain["tokens"]


def test_forward_counts_and_tau_are_consistent(full_run):
    report, _ = full_run
    plain = report["per_prompt"]["plain"]
    assert plain["target_forwards"] == plain["tokens"]  # one forward per new token
    assert report["methods"]["plain"]["tau"] is None and report["methods"]["plain"]["acceptance_histogram"] is None
    for name in ("assisted", "lookup"):  # no PARD stats recorded for transformers' own methods
        assert report["per_prompt"][name]["rounds"] == 0 and report["methods"][name]["tau"] is None
        assert all(1 <= f <= n for f, n in zip(report["per_prompt"][name]["target_forwards"], plain["tokens"]))
    for name in ("pard", "pard2", "pard2-independent"):
        per, summary = report["per_prompt"][name], report["methods"][name]
        # batch 1: one prefill + one verify forward per round, summed over prompts
        assert sum(per["target_forwards"]) == len(PROMPTS) + per["rounds"]
        assert summary["target_forwards"] == sum(per["target_forwards"])
        hist = per["histogram"]
        assert len(hist) == K + 2 and hist[0] == 0
        assert sum(hist) == per["rounds"]
        assert sum(n * count for n, count in enumerate(hist)) == per["committed"] == sum(per["tokens"])
        assert summary["tau"] == pytest.approx(per["committed"] / per["rounds"])
        assert summary["acceptance_histogram"] == hist
        assert 0 < per["drafting_rounds"] <= per["rounds"]
        assert summary["drafting_tau"] == pytest.approx(per["drafting_committed"] / per["drafting_rounds"])


def test_summary_numbers_follow_the_per_prompt_record(full_run):
    report, _ = full_run
    plain = report["per_prompt"]["plain"]
    plain_rate = sum(plain["tokens"]) / sum(plain["seconds"])
    for name, summary in report["methods"].items():
        per = report["per_prompt"][name]
        rates = [n / s for n, s in zip(per["tokens"], per["seconds"])]
        assert summary["median_tokens_per_s"] == pytest.approx(statistics.median(rates))
        assert summary["tokens_per_s"] == pytest.approx(sum(per["tokens"]) / sum(per["seconds"]))
        assert summary["speedup_vs_plain"] == pytest.approx(summary["tokens_per_s"] / plain_rate)
    assert report["methods"]["plain"]["speedup_vs_plain"] == 1.0


def oracle_run(target, tokenizer, *, always_wrong: bool, new: int = 14):
    """One prompt (also the warm-up prompt), so an oracle draft knows the whole reference."""
    ids = chat_ids(tokenizer, PROMPTS[0], "cpu")
    reference = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    draft = OracleDraft(target.config, reference, always_wrong=always_wrong)
    runner = Runner(target, tokenizer, draft=draft, k=K, max_new_tokens=new)
    return run_benchmark(runner, PROMPTS[:1], ["pard"]), reference.shape[1] - ids.shape[1]


def test_always_right_draft_needs_far_fewer_target_forwards(target, tokenizer):
    report, n = oracle_run(target, tokenizer, always_wrong=False)
    pard, plain = report["methods"]["pard"], report["methods"]["plain"]
    rounds = math.ceil(n / (K + 1))
    assert plain["target_forwards"] == n
    assert pard["target_forwards"] == 1 + rounds < n
    assert pard["tau"] == pytest.approx(n / rounds) and pard["drafting_tau"] == pard["tau"]
    assert pard["acceptance_histogram"][K + 1] == n // (K + 1)  # every full round accepted all K + 1
    assert pard["identical_to_plain"] == "1/1"


def test_always_wrong_draft_costs_one_forward_per_token(target, tokenizer):
    report, n = oracle_run(target, tokenizer, always_wrong=True)
    pard = report["methods"]["pard"]
    assert pard["target_forwards"] == 1 + n
    assert pard["tau"] == 1.0 and pard["drafting_tau"] == 1.0
    assert pard["acceptance_histogram"][1] == n
    assert pard["identical_to_plain"] == "1/1"


def test_plain_listed_after_other_methods_is_still_the_reference(runner):
    report = run_benchmark(runner, PROMPTS[:1], ["pard", "plain"])
    assert list(report["methods"]) == ["plain", "pard"]
    assert report["methods"]["pard"]["identical_to_plain"] == "1/1"


def test_parse_methods_keeps_order_and_refuses_unknown_or_repeated():
    assert parse_methods("pard, plain,assisted") == ["pard", "plain", "assisted"]
    with pytest.raises(ValueError, match="'pard3'.*choose from plain, assisted"):
        parse_methods("plain,pard3")
    with pytest.raises(ValueError, match=r"\['pard'\] listed twice"):
        parse_methods("pard,plain,pard")
    with pytest.raises(ValueError, match="choose from"):
        parse_methods(" , ")


def test_runner_builds_each_methods_call(runner, target):
    expected = {
        "plain": {},
        "assisted": {"assistant_model": runner.ar_draft, "num_assistant_tokens": K},
        "lookup": {"prompt_lookup_num_tokens": 10},
        "pard": {"pard_draft": runner.draft, "num_assistant_tokens": K},
        "pard2": {"pard_draft": runner.pard2_draft, "num_assistant_tokens": K, "pard_mode": "dependent"},
        "pard2-independent": {"pard_draft": runner.pard2_draft, "num_assistant_tokens": K, "pard_mode": "independent"},
    }
    for method, extra in expected.items():
        model, kwargs = runner.kwargs(method)
        assert model is target
        assert kwargs == {"max_new_tokens": NEW, "do_sample": False, **extra}, method
    with pytest.raises(ValueError, match="Unknown method 'beam'"):
        runner.kwargs("beam")


def test_compiled_method_uses_its_own_compiled_copy(target, tokenizer):
    runner = Runner(target, tokenizer, draft=tiny_pard_draft(target), k=K, max_new_tokens=NEW)
    model, kwargs = runner.kwargs("pard-compiled")
    assert model is not target and model is runner.compiled and model._pard_options.compile
    assert runner.kwargs("pard-compiled")[0] is model  # built once
    assert kwargs["pard_draft"] is runner.draft and not target._pard_options.compile


def test_count_forwards_counts_until_removed(target):
    calls, remove = count_forwards(target)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        target(ids)
        target(ids)
    remove()
    with torch.no_grad():
        target(ids)
    assert len(calls) == 2


@given(
    tokens=st.lists(st.integers(1, 500), min_size=1, max_size=6),
    seconds=st.lists(st.floats(0.01, 10.0), min_size=6, max_size=6),
    scale=st.floats(0.1, 10.0),
)
def test_summary_arithmetic(tokens, seconds, scale):
    """Speedup = total rate / plain's total rate: 1 against itself, 1/scale when every call takes scale x longer."""
    seconds = seconds[: len(tokens)]
    plain = MethodResult("plain", tokens=tokens, seconds=seconds, identical=[True] * len(tokens))
    slow = MethodResult("slow", tokens=tokens, seconds=[s * scale for s in seconds],
                        identical=[i % 2 == 0 for i in range(len(tokens))], target_forwards=[3] * len(tokens))
    assert plain.summary(plain)["speedup_vs_plain"] == pytest.approx(1.0)
    summary = slow.summary(plain)
    assert summary["speedup_vs_plain"] == pytest.approx(1 / scale)
    assert summary["median_tokens_per_s"] == pytest.approx(statistics.median(n / (s * scale) for n, s in zip(tokens, seconds)))
    assert summary["identical_to_plain"] == f"{(len(tokens) + 1) // 2}/{len(tokens)}"
    assert summary["target_forwards"] == 3 * len(tokens)
    assert summary["tau"] is None and summary["drafting_tau"] is None and summary["acceptance_histogram"] is None


def test_summary_tau_by_hand():
    plain = MethodResult("plain", tokens=[10, 30], seconds=[1.0, 2.0])
    pard = MethodResult("pard", tokens=[10, 30], seconds=[0.5, 1.5], committed=40, rounds=16,
                        drafting_committed=24, drafting_rounds=8, histogram=[0, 8, 4, 4])
    summary = pard.summary(plain)
    assert summary["tokens_per_s"] == 20.0 and summary["speedup_vs_plain"] == pytest.approx(1.5)
    assert summary["median_tokens_per_s"] == 20.0  # median of 20 and 20
    assert summary["tau"] == 2.5 and summary["drafting_tau"] == 3.0
    assert summary["acceptance_histogram"] == [0, 8, 4, 4]


def test_ideal_speedup_from_forward_costs(monkeypatch, target):
    draft = tiny_pard_draft(target)
    costs = {(target, 1): 0.040, (target, 5): 0.060, (draft, 8): 0.020}  # seconds, K = 4
    calls = []

    def fake_cost(model, cache_len, width, repeats=5):
        calls.append((model, cache_len, width))
        return costs[model, width]

    monkeypatch.setattr(benchmark, "forward_cost", fake_cost)
    result = ideal_speedup(target, draft, k=4, tau=3.0, cache_len=77)
    assert result["ideal_speedup"] == pytest.approx(3.0 * 0.040 / (0.060 + 0.020))  # 1.5
    assert result["target_1_ms"] == pytest.approx(40.0)
    assert result["target_k1_ms"] == pytest.approx(60.0)
    assert result["draft_2k_ms"] == pytest.approx(20.0)
    assert sorted((width, cache) for _, cache, width in calls) == [(1, 77), (5, 77), (8, 77)]


def test_forward_cost_runs_on_a_small_vocabulary(target):
    assert target.config.vocab_size < 100  # any ids the model has, not a fixed range
    seconds = forward_cost(target, 12, 3, repeats=2)
    assert 0 < seconds < 5


def test_format_table_lists_every_method(full_run):
    report, _ = full_run
    lines = format_table(report).splitlines()
    assert len(lines) == 2 + len(report["methods"])
    assert lines[0].split("|")[1].strip() == "method" and set(lines[1]) == {"|", "-"}
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[2:]}
    assert list(rows) == list(report["methods"])
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert rows["plain"][1] == "1.00x" and rows["plain"][2] == "3/3" and rows["plain"][3] == "-"
    pard = report["methods"]["pard"]
    assert rows["pard"][3] == f"{pard['tau']:.2f}" and rows["pard"][5] == str(pard["target_forwards"])


def test_save_report_writes_valid_json(full_run, tmp_path):
    report, _ = full_run
    report = {**report, "environment": environment()}
    path = tmp_path / "bench.json"
    save_report(report, str(path))
    assert json.loads(path.read_text()) == report
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_threads"] >= 1 and "command" in env
