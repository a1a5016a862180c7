"""The benchmark harness on tiny models: what each call records, exactness flags, counts, timings.

The report arithmetic (summaries, round costs, the table) is in test_report.py.
"""

import math

import pytest
import torch

from transformers_pard import enable_pard
from transformers_pard.apps import benchmark
from transformers_pard.apps.benchmark import (
    COMPILED_METHODS,
    ENGINE_METHODS,
    METHODS,
    PHASES,
    ForwardTimer,
    Runner,
    Sampling,
    chat_ids,
    parse_methods,
    run_benchmark,
)
from transformers_pard.testing import OracleDraft, tiny_causal_lm, tiny_pard2_draft, tiny_pard_draft, tiny_tokenizer

PROMPTS = ["Add 2 and 3.", "Say hi.", "Sort [3, 1, 2]."]
K, NEW = 3, 10
EAGER = ["plain", "assisted", "lookup", "pard", "pard2", "pard2-independent"]


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
def results(runner):
    """Every eager method on three prompts; plain is left out on purpose (it is added first)."""
    progress = []
    results = run_benchmark(runner, PROMPTS, EAGER[1:], progress=lambda i, n: progress.append((i, n)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    return results


def test_plain_runs_first_and_every_method_records_every_prompt(results):
    assert list(results) == EAGER
    for name, result in results.items():
        assert result.name == name
        lists = (result.tokens, result.seconds, result.identical, result.target_forwards, result.rounds,
                 result.prefill_seconds, result.phases)
        assert {len(values) for values in lists} == {len(PROMPTS)}, name
        assert result.warmup_seconds > 0


def test_every_method_is_identical_to_plain(results):
    plain = results["plain"]
    assert all(0 < n <= NEW for n in plain.tokens)
    for name, result in results.items():
        assert result.identical == [True] * len(PROMPTS), name
        assert result.tokens == plain.tokens


def test_plain_forwards_and_rounds(results):
    plain = results["plain"]
    assert plain.target_forwards == plain.tokens  # the prefill gives the first token, one forward per later one
    assert plain.rounds == [n - 1 for n in plain.tokens]
    assert plain.committed == plain.row_rounds == 0 and plain.histogram == []


def test_hook_timings_add_up_to_the_call(results):
    for name in ("plain", "assisted", "lookup"):
        for seconds, prefill, phases in zip(results[name].seconds, results[name].prefill_seconds, results[name].phases):
            assert set(phases) == set(PHASES)
            assert prefill > 0 and phases["verify"] > 0 and phases["other"] >= 0
            assert prefill + sum(phases.values()) == pytest.approx(seconds)
        assert all(p["draft"] == 0 for p in results[name].phases) is (name != "assisted")


def test_engine_counts_come_from_pard_stats(results):
    plain = results["plain"]
    for name in ("pard", "pard2", "pard2-independent"):
        result = results[name]
        assert result.target_forwards == [r + 1 for r in result.rounds]  # a prefill, then one verify per round
        assert result.row_rounds == sum(result.rounds)  # batch 1: one row per round
        assert len(result.histogram) == K + 2 and result.histogram[0] == 0
        assert sum(result.histogram) == sum(result.rounds)
        assert sum(n * c for n, c in enumerate(result.histogram)) == result.committed == sum(plain.tokens)
        assert result.drafting_rounds == sum(result.rounds)  # min_tau=None: drafting never switched off
        for seconds, prefill, phases in zip(result.seconds, result.prefill_seconds, result.phases):
            assert phases["draft"] > 0 and phases["verify"] > 0
            assert prefill + sum(phases.values()) <= seconds  # the engine's timers sit inside the call


def test_transformers_methods_take_fewer_forwards_than_tokens(results):
    plain = results["plain"]
    for name in ("assisted", "lookup"):
        assert results[name].committed == 0 and results[name].histogram == []
        assert all(1 <= f <= n for f, n in zip(results[name].target_forwards, plain.tokens))


def oracle_results(target, tokenizer, *, always_wrong: bool, new: int = 14):
    """One prompt (also the warm-up prompt), so an oracle draft knows the whole reference."""
    ids = chat_ids(tokenizer, PROMPTS[0], "cpu")
    reference = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    draft = OracleDraft(target.config, reference, always_wrong=always_wrong)
    runner = Runner(target, tokenizer, draft=draft, k=K, max_new_tokens=new)
    return run_benchmark(runner, PROMPTS[:1], ["pard"])["pard"], reference.shape[1] - ids.shape[1]


def test_always_right_draft_needs_far_fewer_target_forwards(target, tokenizer):
    pard, n = oracle_results(target, tokenizer, always_wrong=False)
    rounds = math.ceil(n / (K + 1))
    assert pard.target_forwards == [1 + rounds] and pard.rounds == [rounds]
    assert pard.committed == n and pard.row_rounds == rounds
    assert pard.histogram[K + 1] == n // (K + 1)  # every full round accepted all K + 1
    assert pard.identical == [True]


def test_always_wrong_draft_costs_one_round_per_token(target, tokenizer):
    pard, n = oracle_results(target, tokenizer, always_wrong=True)
    assert pard.target_forwards == [1 + n] and pard.histogram[1] == n
    assert pard.identical == [True]


def test_min_tau_reaches_the_engine(target, tokenizer):
    """With an always-wrong draft and pard_min_tau set, drafting switches off: plain steps follow."""
    ids = chat_ids(tokenizer, PROMPTS[0], "cpu")
    reference = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    runner = Runner(target, tokenizer, draft=OracleDraft(target.config, reference, always_wrong=True), k=K,
                    max_new_tokens=30, min_tau=1.3)
    assert runner.kwargs("pard")[1]["pard_min_tau"] == 1.3
    call = runner.run("pard", ids)
    assert call.stats.drafting_disabled_at is not None and call.stats.drafting_row_rounds < call.rounds


def test_phase_timing_can_be_switched_off(target, tokenizer):
    runner = Runner(target, tokenizer, draft=tiny_pard_draft(target), k=K, max_new_tokens=NEW, phase_timing=False)
    call = runner.run("pard", chat_ids(tokenizer, PROMPTS[1], "cpu"))
    assert call.phases is None and call.prefill_seconds is None and call.rounds > 0


def test_plain_listed_after_other_methods_is_still_the_reference(runner):
    results = run_benchmark(runner, PROMPTS[:1], ["pard", "plain"])
    assert list(results) == ["plain", "pard"] and results["pard"].identical == [True]


def test_sampling_samples_every_method_from_one_seed_per_prompt(target, tokenizer):
    sampling = Sampling(temperature=1.5, top_p=0.95, seed=7)
    runner = Runner(target, tokenizer, draft=tiny_pard_draft(target), k=K, max_new_tokens=NEW, sampling=sampling)
    for method in ("plain", "pard", "pard-lookup"):
        kwargs = runner.kwargs(method)[1]
        assert (kwargs["do_sample"], kwargs["temperature"], kwargs["top_p"]) == (True, 1.5, 0.95)
    ids = chat_ids(tokenizer, PROMPTS[0], "cpu")
    first, again, other = (runner.run("plain", ids, i).sequences for i in (2, 2, 3))
    torch.manual_seed(9)
    greedy = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    assert torch.equal(first, again)  # prompt 2's calls start from seed 7 + 2
    assert not (torch.equal(first, other) and torch.equal(first, greedy))  # another seed / greedy: not all equal
    results = run_benchmark(runner, PROMPTS[:2], ["pard"])
    assert results["plain"].identical == [None, None] and results["pard"].identical == [None, None]
    assert all(n > 0 for n in results["pard"].tokens)


@pytest.mark.parametrize("temperature, top_p, message", [(0.0, None, "greedy"), (-1.0, None, "> 0"),
                                                         (0.7, 1.5, r"top_p must be in \(0, 1\]")])
def test_sampling_refuses_values_that_do_not_sample(temperature, top_p, message):
    with pytest.raises(ValueError, match=message):
        Sampling(temperature, top_p)


def test_parse_methods_keeps_order_and_refuses_unknown_or_repeated():
    assert parse_methods("pard, plain,ar-plus") == ["pard", "plain", "ar-plus"]
    with pytest.raises(ValueError, match="'pard3'.*choose from plain, ar-plus, ar-plus-compiled, assisted"):
        parse_methods("plain,pard3")
    with pytest.raises(ValueError, match=r"\['pard'\] listed twice"):
        parse_methods("pard,plain,pard")
    with pytest.raises(ValueError, match="choose from"):
        parse_methods(" , ")


def test_method_groups():
    assert COMPILED_METHODS <= ENGINE_METHODS <= set(METHODS)
    assert set(METHODS) - ENGINE_METHODS == {"plain", "assisted", "lookup"}


def test_runner_builds_each_methods_call(runner, target):
    pard = {"num_assistant_tokens": K, "pard_min_tau": None}
    expected = {
        "plain": {},
        "assisted": {"assistant_model": runner.ar_draft, "num_assistant_tokens": K},
        "lookup": {"prompt_lookup_num_tokens": 10},
        "pard": {**pard, "pard_draft": runner.draft},
        "ar-plus": {"ar_plus": True},
        "pard-tree": {**pard, "pard_draft": runner.draft, "pard_tree": runner.tree_nodes},
        "pard-lookup": {**pard, "pard_draft": runner.draft, "pard_tree": runner.tree_nodes, "pard_lookup": runner.lookup_nodes},
        "pard2": {**pard, "pard_draft": runner.pard2_draft, "pard_mode": "dependent"},
        "pard2-independent": {**pard, "pard_draft": runner.pard2_draft, "pard_mode": "independent"},
    }
    for method, extra in expected.items():
        model, kwargs = runner.kwargs(method)
        assert model is target
        assert kwargs == {"max_new_tokens": NEW, "do_sample": False, **extra}, method
    with pytest.raises(ValueError, match="Unknown method 'beam'"):
        runner.kwargs("beam")
    stored = Runner(target, runner.tokenizer, draft=runner.draft, k=K, max_new_tokens=NEW, lookup_store=True)
    assert stored.kwargs("pard-lookup")[1] == {"max_new_tokens": NEW, "do_sample": False, **expected["pard-lookup"],
                                               "pard_lookup_store": True}  # --lookup-store: the draft's store too


def test_compiled_methods_share_one_compiled_copy(target, tokenizer):
    runner = Runner(target, tokenizer, draft=tiny_pard_draft(target), k=K, max_new_tokens=NEW)
    model, kwargs = runner.kwargs("pard-compiled")
    assert model is not target and model is runner.compiled
    assert runner.kwargs("ar-plus-compiled") == (model, {"max_new_tokens": NEW, "do_sample": False, "ar_plus": True})
    assert runner.kwargs("ar-plus")[0] is target  # AR+ itself is eager (pre-packed weights on CPU fp32)
    assert kwargs["pard_draft"] is runner.draft
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr()
               for a, b in zip(model.parameters(), target.parameters()))


def test_forward_timer_counts_and_times_until_closed(target):
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), ForwardTimer(target) as timer:
        target(ids)
        target(ids)
    with torch.no_grad():
        target(ids)
    assert len(timer.durations) == 2 and all(d > 0 for d in timer.durations)
    assert not target._forward_hooks and not target._forward_pre_hooks


def test_engine_methods_are_never_hooked(runner, tokenizer, monkeypatch):
    """A hook would be traced into a compiled graph (every call recompiles): engine methods count with pard_stats."""
    def refuse(model):
        raise AssertionError("an engine method was timed with forward hooks")

    monkeypatch.setattr(benchmark, "ForwardTimer", refuse)
    call = runner.run("pard", chat_ids(tokenizer, PROMPTS[0], "cpu"))
    assert call.stats is not None and call.target_forwards == call.stats.target_forwards + 1


@pytest.mark.slow
def test_ar_plus_and_pard_compiled_are_identical_and_never_recompile(tokenizer, recwarn):
    """Real inductor compiles on a fresh tiny model (a PARD-2 method first, as a user may list it): the
    compiled copy really compiles, and after the warm-up no call recompiles."""
    import torch._dynamo

    target = enable_pard(tiny_causal_lm("llama", seed=0))
    runner = Runner(target, tokenizer, draft=tiny_pard_draft(target), pard2_draft=tiny_pard2_draft(target), k=K,
                    max_new_tokens=NEW)
    warm = run_benchmark(runner, PROMPTS[:1], ["pard2", "ar-plus-compiled", "pard-compiled"])
    assert all(r.identical == [True] for r in warm.values())
    assert not [w for w in recwarn if "forward hooks" in str(w.message)]  # it compiled: no eager fallback
    with torch._dynamo.config.patch(error_on_recompile=True):
        results = run_benchmark(runner, PROMPTS, ["ar-plus-compiled", "pard-compiled"])
    ar_plus = results["ar-plus-compiled"]
    assert ar_plus.identical == results["pard-compiled"].identical == [True] * len(PROMPTS)
    assert ar_plus.rounds == results["plain"].tokens  # AR+: one target forward per token after its prefill
    assert ar_plus.histogram[1] == sum(ar_plus.rounds) and ar_plus.drafting_rounds == 0
    assert all(p["verify"] > 10 * p["draft"] for p in ar_plus.phases)  # no draft forward: draft ~ 0
