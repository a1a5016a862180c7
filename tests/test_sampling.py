"""Speculative sampling is lossless: PARD samples follow the target's own sampling distribution.

The target has a tiny vocabulary, so the exact distribution of the first three new tokens (with EOS
ending a row early) is enumerated from the target itself; >= 20,000 PARD draws are compared to it
with a chi-square test.
"""


import pytest
import torch
from scipy.stats import chisquare
from transformers import GenerationConfig

from transformers_pard import LookupStore, enable_pard
from transformers_pard.testing import tiny_causal_lm, tiny_pard_draft
from transformers_pard.verification import SamplingVerifier
from transformers_pard.vocab import attach_vocab_subset

VOCAB, EOS, PAD, NEW = 8, 2, 0, 3
PROMPT = torch.tensor([[1, 5, 3]])
ROWS, CALLS = 2500, 8  # 20,000 draws

SETTINGS = {
    "temperature": dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0),
    "top_k_top_p_temperature": dict(do_sample=True, temperature=1.3, top_k=5, top_p=0.9),
}


@pytest.fixture(scope="module")
def models():
    target = enable_pard(tiny_causal_lm("llama", seed=21, vocab_size=VOCAB, hidden_size=16))
    draft = tiny_pard_draft(target, seed=5)  # untrained: an imperfect draft with its own q
    return target, draft


def exact_distribution(target, settings):
    """P(x1, x2, x3) under stock sampling, rows ending at EOS padded with PAD."""
    config = GenerationConfig(**settings)
    processors = target._get_logits_processor(generation_config=config, input_ids_seq_length=PROMPT.shape[1])
    probs = {}
    with torch.no_grad():
        def next_probs(prefix):
            ids = torch.cat([PROMPT, torch.tensor([prefix], dtype=torch.long)], dim=1) if prefix else PROMPT
            logits = target(ids).logits[:, -1].float()
            return torch.softmax(processors(ids, logits), -1)[0]

        def walk(prefix, p):
            if len(prefix) == NEW or (prefix and prefix[-1] == EOS):
                probs[tuple(prefix + [PAD] * (NEW - len(prefix)))] = probs.get(tuple(prefix + [PAD] * (NEW - len(prefix))), 0) + p
                return
            for token, pt in enumerate(next_probs(prefix).tolist()):
                if pt > 0:
                    walk(prefix + [token], p * pt)

        walk([], 1.0)
    return probs


def pard_draws(target, draft, settings, seed=0, stats=None, **extra):
    """Counts of every drawn continuation; ``stats`` (a list) collects each call's ``pard_stats``."""
    torch.manual_seed(seed)
    counts = {}
    for _ in range(CALLS):
        result = target.generate(
            PROMPT.repeat(ROWS, 1), pard_draft=draft, max_new_tokens=NEW, num_assistant_tokens=2,
            pad_token_id=PAD, eos_token_id=EOS, pard_min_tau=None, return_dict_in_generate=True, **settings, **extra,
        )
        out = result.sequences
        if stats is not None:
            stats.append(result.pard_stats)
        new = torch.nn.functional.pad(out[:, PROMPT.shape[1]:], (0, NEW - (out.shape[1] - PROMPT.shape[1])), value=PAD)
        for row in map(tuple, new.tolist()):
            counts[row] = counts.get(row, 0) + 1
    return counts


def chi_square_p(counts, probs):
    """p-value of observed counts against exact probabilities (cells with expectation < 5 pooled)."""
    assert set(counts) <= set(probs), f"impossible outcomes drawn: {set(counts) - set(probs)}"
    total = sum(counts.values())
    observed, expected, pooled_o, pooled_e = [], [], 0, 0.0
    for outcome, p in probs.items():
        if p * total >= 5:
            observed.append(counts.get(outcome, 0))
            expected.append(p * total)
        else:
            pooled_o += counts.get(outcome, 0)
            pooled_e += p * total
    if pooled_e > 0:
        observed.append(pooled_o)
        expected.append(pooled_e)
    expected = [e * total / sum(expected) for e in expected]  # exact sums for scipy's tolerance check
    return chisquare(observed, expected).pvalue


@pytest.mark.parametrize("name", list(SETTINGS))
def test_pard_sampling_matches_the_target_distribution(models, name):
    target, draft = models
    probs = exact_distribution(target, SETTINGS[name])
    calls = []
    counts = pard_draws(target, draft, SETTINGS[name], stats=calls)
    assert sum(counts.values()) >= 20_000
    assert chi_square_p(counts, probs) > 1e-3
    stats = calls[-1]
    assert 1.0 < stats.tau < NEW  # drafts were really accepted and rejected


@pytest.mark.parametrize("name, tree", [("temperature", {}), ("top_k_top_p_temperature", {}),
                                        ("top_k_top_p_temperature", {"pard_tree": 6})])
def test_sampling_with_a_vocabulary_subset_matches_the_target_distribution(models, name, tree):
    """A subset head's q is processed and drawn over its own columns (q = 0 outside the subset): tokens it
    cannot propose still come from p, and top-k / top-p over the subset give the right distribution."""
    target, draft = models
    subset = tiny_pard_draft(target, seed=5)
    attach_vocab_subset(subset, torch.tensor([3, 5, 2, 6]))  # EOS kept; 0, 1, 4 and 7 never drafted
    settings = SETTINGS[name]
    calls = []
    counts = pard_draws(target, subset, settings, stats=calls, **tree)
    assert chi_square_p(counts, exact_distribution(target, settings)) > 1e-3
    assert any(row[0] in (1, 4, 7) for row in counts)  # tokens outside the subset do occur (from p)
    assert 1.0 < calls[-1].tau < NEW


def test_a_subset_heads_q_is_its_full_vocabulary_q():
    """Processing the subset's columns gives the q that processing the full-vocabulary logits (-inf outside
    the subset) gives, for every prefix-free warper."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)

    from transformers_pard.drafting import DraftLogits
    from transformers_pard.scoring import Scorer
    from transformers_pard.verification import draft_q

    torch.manual_seed(0)
    ids = torch.tensor([7, 1, 30, 12, 4, 25, 9, 18, 2, 27])
    draft = DraftLogits(torch.randn(2, 3, len(ids)) * 3, ids, vocab_size=32)
    for warpers in ([TemperatureLogitsWarper(0.7), TopKLogitsWarper(4), TopPLogitsWarper(0.8)],
                    [MinPLogitsWarper(0.1)], [TypicalLogitsWarper(0.9)], [TopKLogitsWarper(50)]):
        scorer = Scorer(LogitsProcessorList(warpers))
        q_columns, q = draft_q(scorer, None, draft)
        full = torch.softmax(scorer.unconditioned_scores(None, draft.full()), -1)
        torch.testing.assert_close(q, full)
        torch.testing.assert_close(q[..., ids], q_columns)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_token_tree_sampling_matches_the_target_distribution(models, name):
    """pard_tree=N: i.i.d. sibling candidates and the multi-candidate rule, end to end through generate."""
    target, draft = models
    calls = []
    counts = pard_draws(target, draft, SETTINGS[name], stats=calls, pard_tree=6)
    assert chi_square_p(counts, exact_distribution(target, SETTINGS[name])) > 1e-3
    assert calls[-1].tree_nodes == 6 and 1.0 < calls[-1].tau < NEW


@pytest.mark.parametrize("name,store", [("temperature", False), ("top_k_top_p_temperature", False),
                                        ("top_k_top_p_temperature", True)])
def test_token_tree_with_a_lookup_branch_matches_the_target_distribution(models, name, store):
    """pard_lookup: fixed candidates (the text's n-gram continuation, or a lookup store's) beside the
    i.i.d. siblings, each with a one-hot q: still the target's distribution."""
    target, draft = models
    calls = []
    extra = {"pard_lookup_store": LookupStore.from_texts([[1, 5, 3, 4, 4, 6], [5, 3, 7, 1, 2, 7]], horizon=2)} if store else {}
    counts = pard_draws(target, draft, SETTINGS[name], stats=calls, pard_tree=6, pard_lookup=2, **extra)
    assert chi_square_p(counts, exact_distribution(target, SETTINGS[name])) > 1e-3
    assert calls[-1].lookup_nodes == 2 and 1.0 < calls[-1].tau < NEW


def test_a_wrong_q_is_caught(models, monkeypatch):
    """Sampling drafts from the processed q but reporting the raw softmax as q biases the output."""
    target, draft = models
    settings = SETTINGS["top_k_top_p_temperature"]
    propose = SamplingVerifier.propose

    def wrong_q(self, state, draft_logits):
        tokens, _ = propose(self, state, draft_logits)
        return tokens, torch.softmax(draft_logits.full(), -1)

    monkeypatch.setattr(SamplingVerifier, "propose", wrong_q)
    counts = pard_draws(target, draft, settings)
    probs = exact_distribution(target, settings)
    impossible = set(counts) - set(probs)
    assert impossible or chi_square_p(counts, probs) < 1e-3


def test_seeded_sampling_is_reproducible(models):
    target, draft = models
    runs = [target.generate(PROMPT, pard_draft=draft, max_new_tokens=10, do_sample=True, num_assistant_tokens=3,
                            pard_min_tau=None) for _ in range(2) if torch.manual_seed(7) is not None]
    assert torch.equal(runs[0], runs[1])


def test_sampling_keeps_working_after_auto_disable(models):
    """A useless draft is switched off mid-call; the plain steps that follow still sample from p."""
    target, draft = models
    torch.manual_seed(3)
    out = target.generate(PROMPT.repeat(4, 1), pard_draft=draft, max_new_tokens=24, do_sample=True,
                          pard_min_tau=5.0, pard_tau_window=2, eos_token_id=None, return_dict_in_generate=True)
    stats = out.pard_stats
    assert stats.drafting_disabled_at == 2 and set(stats.k_per_round[2:]) == {0}
    assert out.sequences.shape[1] <= PROMPT.shape[1] + 24


def test_sampling_with_a_bf16_draft_of_an_fp32_target_matches_the_target_distribution(models):
    """The draft's dtype is the user's choice (bf16 is cheaper on AMX CPUs and GPUs): q is taken in
    float32 from its logits, so the acceptance rule stays exact."""
    target, _ = models
    draft = tiny_pard_draft(target, seed=5).to(torch.bfloat16)
    settings = SETTINGS["temperature"]
    calls = []
    counts = pard_draws(target, draft, settings, stats=calls)
    assert chi_square_p(counts, exact_distribution(target, settings)) > 1e-3
    assert 1.0 < calls[-1].tau < NEW
