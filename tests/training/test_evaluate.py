"""teacher_forced_tau: the K-copy layout's answers equal the draft run round by round, as the engine feeds it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.pard2 import Pard2Config, target_features
from transformers_pard.testing import perturbed_pard_draft, tiny_pard2_draft
from transformers_pard.training.evaluate import teacher_forced_tau

MODES = {"pard1": None, "dependent": "dependent", "independent": "independent"}


@pytest.fixture(scope="module")
def drafts(targets):
    target = targets["llama"]
    return {"pard1": perturbed_pard_draft(target, noise=0.3), "pard2": tiny_pard2_draft(target, perturb=0.3)}


def greedy_text(target, prompt_length: int, new_tokens: int, seed: int) -> tuple[list[int], int]:
    prompt = torch.randint(3, 90, (1, prompt_length), generator=torch.Generator().manual_seed(seed))
    out = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False,
                          min_new_tokens=new_tokens)
    return out[0].tolist(), prompt_length


@torch.no_grad()
def slow_accepted(target, draft, ids: list[int], start: int, k: int, dependent: bool) -> list[int]:
    """Round by round, from the definition: the draft reads x_0..x_p + (K-1) masks (+ the features)."""
    mask = draft.config.pard_token
    full = torch.tensor([ids])
    out = target(full, output_hidden_states=True)
    greedy = out.logits[0].argmax(-1)
    lengths = []
    for p in range(start - 1, len(ids) - 1):
        tokens = torch.tensor([ids[: p + 1] + [mask] * (k - 1)])  # (1, p+K)
        embeds = draft.get_input_embeddings()(tokens)
        if dependent:
            pard2 = Pard2Config.from_model_config(draft.config)
            feature = target_features(out.hidden_states, pard2.target_layers)[0]  # (L, D)
            rows = torch.zeros(tokens.shape[1], feature.shape[-1])
            for t in range(1, tokens.shape[1]):
                rows[t] = feature[min(t, p) - 1] if min(t, p) >= 1 else 0  # masks: the last real token's feature
            embeds = embeds + pard2.scale * draft.target_proj(rows)[None]
        drafted = draft(inputs_embeds=embeds).logits[0, p:].argmax(-1)  # (K,)
        n = 0
        while n < k and p + n < len(ids) and drafted[n] == greedy[p + n] and (n == 0 or ids[p + n] == greedy[p + n - 1]):
            n += 1
        lengths.append(n)
    return lengths


@settings(max_examples=12)
@given(mode=st.sampled_from(sorted(MODES)), k=st.sampled_from([1, 2, 4]), prompt_length=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_matches_the_round_by_round_reference(targets, drafts, mode, k, prompt_length, seed):
    target = targets["llama"]
    draft = drafts["pard1" if mode == "pard1" else "pard2"]
    texts = [greedy_text(target, prompt_length, 10, seed + i) for i in range(2)]
    report = teacher_forced_tau(target, draft, texts, k=k, pard_mode=MODES[mode])
    lengths = [n for ids, start in texts for n in slow_accepted(target, draft, ids, start, k, mode == "dependent")]
    assert report.positions == len(lengths)
    assert report.mean_tau == pytest.approx(1 + sum(lengths) / len(lengths))
    reached = [sum(n >= j for n in lengths) for j in range(k)]
    assert report.accuracy == pytest.approx([sum(n > j for n in lengths) / max(r, 1) for j, r in enumerate(reached)])


def test_a_draft_that_is_the_target_gets_every_first_token(targets):
    target = targets["qwen2"]
    draft = perturbed_pard_draft(target, noise=0.0)
    report = teacher_forced_tau(target, draft, [greedy_text(target, 4, 12, 0)], k=3)
    assert report.accuracy[0] == 1.0 and report.mean_tau >= 2.0
    assert "teacher-forced tau" in report.summary()


def test_text_off_the_greedy_path_stops_the_chains(targets):
    target = targets["qwen2"]
    draft = perturbed_pard_draft(target, noise=0.0)
    ids, start = greedy_text(target, 4, 12, 0)
    off = ids[:start] + [(token + 1) % 90 + 3 for token in ids[start:]]  # never the greedy token
    report = teacher_forced_tau(target, draft, [(off, start)], k=3)
    assert report.mean_tau == 2.0 and report.accuracy[1] == 0.0  # d_1 is right in every context, d_2 never read


def test_bad_arguments(targets, drafts):
    with pytest.raises(ValueError, match="K must be"):
        teacher_forced_tau(targets["llama"], drafts["pard1"], [([1, 2, 3], 1)], k=0)
    with pytest.raises(ValueError, match="at least one"):
        teacher_forced_tau(targets["llama"], drafts["pard1"], [], k=2)
