"""``transformers_pard.verification`` helpers: the greedy choice keeps argmax's tie rule, and a tree's
scores are gathered along the accepted path only when asked for."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.verification import Verdict, along_path, greedy_choice


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), vocab=st.integers(1, 3000), levels=st.integers(1, 4),
       special=st.sampled_from(["none", "-inf", "nan", "all -inf"]))
def test_greedy_choice_is_argmax_with_its_tie_rule(seed, vocab, levels, special):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(levels, (2, 5, vocab), generator=generator).float()  # few levels: many ties
    if special == "-inf":
        scores[scores == 0] = float("-inf")
    elif special == "nan":
        scores[0, 1, vocab // 2] = float("nan")
    elif special == "all -inf":
        scores[1] = float("-inf")
    assert torch.equal(greedy_choice(scores), scores.argmax(-1))


def test_a_tree_verdict_gathers_its_scores_along_the_path():
    slot_scores = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B, 1+N, V)
    path_slots = torch.tensor([[0, 2, 3], [0, 1, 1]])  # (B, K+1)
    verdict = Verdict(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 1]), slot_scores, path_slots)
    assert torch.equal(verdict.scores(), torch.stack([slot_scores[0, [0, 2, 3]], slot_scores[1, [0, 1, 1]]]))
    chain = Verdict(torch.zeros(2, 4, dtype=torch.long), torch.tensor([1, 2]), slot_scores)
    assert chain.scores() is slot_scores and along_path(None, path_slots) is None
