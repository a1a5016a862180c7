"""PARD-2: lossless in both modes, feature alignment against a slow reference, checkpoint formats."""

import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard import PardAutoModelForCausalLM, enable_pard
from transformers_pard.pard2 import (
    PROJ_SAFETENSORS,
    WARP_FILE,
    StandardizedProjection,
    load_projection_state,
    projection_state,
    save_projection,
)
from transformers_pard.testing import ARCHITECTURES, left_padded_batch, tiny_causal_lm, tiny_pard2_draft, tiny_pard_draft

ARCHS = tuple(ARCHITECTURES)


@pytest.fixture(scope="module")
def pard2_drafts(targets):
    return {arch: tiny_pard2_draft(targets[arch]) for arch in ARCHS}


@settings(max_examples=120)
@given(
    arch=st.sampled_from(ARCHS),
    k=st.sampled_from([1, 2, 4, 8]),
    lengths=st.sampled_from([1, 3]).flatmap(lambda b: st.lists(st.integers(1, 10), min_size=b, max_size=b)),
    max_new_tokens=st.integers(1, 20),
    mode=st.sampled_from(["dependent", "independent"]),
    seed=st.integers(0, 2**16),
)
def test_pard2_greedy_is_lossless_in_both_modes(targets, pard2_drafts, arch, k, lengths, max_new_tokens, mode, seed):
    target = targets[arch]
    ids, mask = left_padded_batch(lengths, seed)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pard_draft=pard2_drafts[arch], num_assistant_tokens=k, pard_mode=mode, pard_min_tau=None)
    assert torch.equal(out, expected)


class FeatureRecorder:
    """Records, per draft forward, the input ids, positions and target features the draft received."""

    def __init__(self, draft):
        self.calls = []
        self.handles = [
            draft.get_input_embeddings().register_forward_hook(lambda m, args, out: self.calls.append({"ids": args[0]})),
            draft.target_proj.register_forward_hook(lambda m, args, out: self.calls[-1].update(features=args[0])),
            draft.register_forward_pre_hook(self._positions, with_kwargs=True),
        ]

    def _positions(self, module, args, kwargs):
        self.calls[-1]["positions"] = kwargs["position_ids"]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def reference_features(target, sequence, layers):
    """Slow reference: one uncached forward over the final sequence; feature(u) for every position u."""
    with torch.no_grad():
        hidden = target(sequence[None], output_hidden_states=True).hidden_states
    return torch.cat([hidden[i][0] for i in layers], dim=-1)  # (L, D)


@pytest.mark.parametrize("k", [2, 4])
def test_feature_alignment_matches_slow_reference(targets, k):
    """Real token at t gets feature(t-1) (zeros at t=0, first row present); masks get feature(p-1)."""
    target = targets["llama"]
    draft = tiny_pard2_draft(target, layers=(-1, 2, 0))
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(k))
    recorder = FeatureRecorder(draft)
    try:
        out = target.generate(ids, pard_draft=draft, max_new_tokens=16, num_assistant_tokens=k, pard_min_tau=None)
    finally:
        recorder.remove()
    reference = reference_features(target, out[0], (-1, 2, 0))  # (L, D)
    zero = torch.zeros_like(reference[0])
    mask_id = draft.config.pard_token
    assert recorder.calls[0]["positions"][0, 0] == 0  # the prefill starts at position 0 ...
    assert torch.equal(recorder.calls[0]["features"][0, 0], zero)  # ... with a zero feature, not dropped
    checked = {"real": 0, "mask": 0}
    for call in recorder.calls:  # batch 1: no filler columns
        ids_, positions, features = call["ids"][0], call["positions"][0], call["features"][0]
        is_mask = ids_ == mask_id
        last_real = int(positions[~is_mask].max())
        for col in range(len(ids_)):
            pos = int(positions[col])
            if is_mask[col]:
                expected, kind = reference[last_real - 1], "mask"  # the round's last real token's feature
            else:
                expected, kind = (reference[pos - 1] if pos > 0 else zero), "real"
            torch.testing.assert_close(features[col], expected, atol=1e-4, rtol=1e-4)
            checked[kind] += 1
    assert checked["mask"] > 0 and checked["real"] >= out.shape[1] - 1


def test_pard2_folder_with_warp_model_bin_loads(tmp_path, targets):
    target = targets["qwen2"]
    draft = tiny_pard2_draft(target)
    draft.save_pretrained(tmp_path)
    save_projection(draft, tmp_path)
    os.remove(tmp_path / PROJ_SAFETENSORS)  # only the published format remains
    loaded = PardAutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.target_proj.weight, draft.target_proj.weight)
    torch.testing.assert_close(loaded.target_proj.bias, draft.target_proj.bias)
    ids = torch.randint(3, 90, (2, 5))
    assert torch.equal(target.generate(ids, pard_draft=loaded, max_new_tokens=9), target.generate(ids, max_new_tokens=9))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_non_tensor_warp_model_bin_is_refused(tmp_path, targets):
    draft = tiny_pard2_draft(targets["llama"])
    draft.save_pretrained(tmp_path)
    with open(tmp_path / WARP_FILE, "wb") as f:
        pickle.dump({"target_proj.weight": Payload()}, f)
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        PardAutoModelForCausalLM.from_pretrained(tmp_path)


def test_mode_errors_and_fallback(targets):
    target = targets["llama"]
    ids = torch.randint(3, 90, (1, 5))
    with pytest.raises(ValueError, match="needs a PARD-2 draft"):
        target.generate(ids, pard_draft=tiny_pard_draft(target), pard_mode="dependent", max_new_tokens=3)
    with pytest.raises(ValueError, match="pard_mode must be one of"):
        target.generate(ids, pard_draft=tiny_pard_draft(target), pard_mode="both", max_new_tokens=3)
    wide = enable_pard(tiny_causal_lm("llama", hidden_size=48, num_heads=4, num_kv_heads=2))
    draft = tiny_pard2_draft(target)  # trained for a 32-wide target
    with pytest.raises(ValueError, match="expects target features of size 64"):
        wide.generate(ids, pard_draft=draft, pard_mode="dependent", max_new_tokens=3)
    out = wide.generate(ids, pard_draft=draft, max_new_tokens=6, return_dict_in_generate=True)  # falls back
    assert torch.equal(out.sequences, wide.generate(ids, max_new_tokens=6))


# ---- standardized projections (trained on standardized features, stored folded) ----------------------


def standardized(seed: int = 0, d: int = 12, h: int = 5):
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.randn(d, generator=g) * 3, torch.rand(d, generator=g) * 10 + 0.1
    proj = StandardizedProjection(d, h, mean, std)
    with torch.no_grad():
        proj.weight.normal_(generator=g)
        proj.bias.normal_(generator=g)
    return proj, torch.randn(7, d, generator=g) * 5


@pytest.mark.parametrize("seed", range(3))
def test_standardized_projection_is_its_folded_linear(seed):
    proj, features = standardized(seed)
    by_definition = ((features - proj.feature_mean) / proj.feature_std) @ proj.weight.T + proj.bias
    torch.testing.assert_close(proj(features), by_definition)
    plain = torch.nn.Linear(12, 5)
    plain.load_state_dict(projection_state(proj))
    torch.testing.assert_close(plain(features), by_definition)
    torch.testing.assert_close(plain(torch.zeros(1, 12)), proj(torch.zeros(1, 12)))  # "no feature" rows agree


def test_wrap_keeps_the_function_and_unfolding_inverts_folding():
    proj, features = standardized(1)
    plain = torch.nn.Linear(12, 5, bias=False)
    wrapped = StandardizedProjection.wrap(plain, proj.feature_mean, proj.feature_std)
    torch.testing.assert_close(wrapped(features), plain(features))
    again = StandardizedProjection(12, 5, proj.feature_mean, proj.feature_std)
    load_projection_state(again, projection_state(proj))
    torch.testing.assert_close(again.weight, proj.weight)
    torch.testing.assert_close(again.bias, proj.bias)
    assert set(projection_state(proj)) == {"weight", "bias"}  # the published format, no statistics
    assert not {"feature_mean", "feature_std"} & set(proj.state_dict())


def test_a_saved_standardized_draft_loads_as_a_plain_projection(tmp_path, targets):
    target = targets["llama"]
    draft = tiny_pard2_draft(target)
    dim = draft.target_proj.in_features
    draft.config.pard2_proj_bias = True
    g = torch.Generator().manual_seed(0)
    draft.target_proj = StandardizedProjection.wrap(
        torch.nn.Linear(dim, draft.target_proj.out_features), torch.randn(dim, generator=g),
        torch.rand(dim, generator=g) + 0.5)
    draft.save_pretrained(tmp_path, state_dict={k: v for k, v in draft.state_dict().items()
                                                 if not k.startswith("target_proj")})
    save_projection(draft, tmp_path)
    loaded = PardAutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded.target_proj) is torch.nn.Linear
    features = torch.randn(3, dim)
    torch.testing.assert_close(loaded.target_proj(features), draft.target_proj(features))
