"""The recipe's own prompt set: deterministic, distinct, the declared families, none of the benchmark's."""

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.apps.recipes import prompts
from transformers_pard.apps.recipes.prompts import FAMILIES, build_prompt_records, build_prompts

BENCH = Path(__file__).resolve().parents[3] / "shared" / "bench"
#: how many distinct prompts each non-arithmetic family can produce
CAPACITY = {
    "code": len(prompts.FUNCTIONS) * len(prompts.CODE_STYLES),
    "function": len(prompts.FUNCTIONS) * 3,
    "general": len(prompts.TOPICS) * len(prompts.INSTRUCTIONS),
}


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_deterministic_distinct_and_of_the_declared_families(seed, n):
    records = build_prompt_records(n, seed=seed)
    assert records == build_prompt_records(n, seed=seed)
    assert len(records) == n
    assert len({prompt for _, prompt in records}) == n
    assert {family for family, _ in records} <= set(FAMILIES)
    assert all(isinstance(prompt, str) and prompt.strip() for _, prompt in records)
    assert build_prompts(n, seed=seed) == [prompt for _, prompt in records]


def test_a_shorter_set_is_a_prefix_of_a_longer_one():
    assert build_prompt_records(50, seed=3) == build_prompt_records(200, seed=3)[:50]


def test_seeds_give_different_sets():
    assert build_prompts(40, seed=0) != build_prompts(40, seed=1)


def test_default_mix_proportions():
    counts = Counter(family for family, _ in build_prompt_records(400, seed=0))
    assert set(counts) == set(FAMILIES)
    shares = {family: count / 400 for family, count in counts.items()}
    assert 0.38 <= shares["math"] <= 0.6  # 45% drawn, plus redraws of repeated prompts of small families
    assert 0.12 <= shares["code"] <= 0.26 and 0.08 <= shares["function"] <= 0.2 and 0.12 <= shares["general"] <= 0.26


def test_a_custom_mix_is_followed():
    counts = Counter(family for family, _ in build_prompt_records(60, seed=1, mix={"math": 0.5, "general": 0.5}))
    assert set(counts) == {"math", "general"} and min(counts.values()) >= 15


def test_small_families_run_out_and_arithmetic_fills_the_rest():
    """The recipe's size (2000 + 40 held out): every non-arithmetic prompt used at most once."""
    records = build_prompt_records(2040, seed=0)
    counts = Counter(family for family, _ in records)
    assert len(records) == 2040 and len({p for _, p in records}) == 2040
    assert counts == {"math": 2040 - sum(CAPACITY.values()), **CAPACITY}


@pytest.mark.parametrize("family", sorted(CAPACITY))
def test_a_single_small_family_yields_each_prompt_once_and_no_more(family):
    records = build_prompt_records(CAPACITY[family], seed=0, mix={family: 1.0})
    assert len({p for _, p in records}) == CAPACITY[family]
    with pytest.raises(ValueError, match=f"only {CAPACITY[family]} distinct prompts.*add 'math'"):
        build_prompt_records(CAPACITY[family] + 1, seed=0, mix={family: 1.0})


def test_code_prompts_show_a_function_and_its_examples():
    code = [p for f, p in build_prompt_records(200, seed=2) if f == "code"]
    assert code and all("def " in p and '"""' in p and ">>> " in p for p in code)


@pytest.mark.skipif(not BENCH.is_dir(), reason="../shared/bench (the benchmark prompts) is not here")
def test_no_benchmark_prompt_is_in_the_training_set():
    bench = set()
    for path in BENCH.glob("*.jsonl"):
        bench |= {json.loads(line)["data"].strip() for line in path.read_text().splitlines() if line.strip()}
    assert bench
    ours = build_prompts(2040, seed=0)  # what the recipe's data stage draws
    assert not bench & {p.strip() for p in ours}
    assert not any(p in b or b in p for p in ours for b in bench)  # nor one inside the other
