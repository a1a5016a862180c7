"""Compact drafts that borrow the target's embedding: round trips, the stored files, PARD-2, errors."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from transformers_pard import enable_pard
from transformers_pard.draft_config import is_pard_draft
from transformers_pard.draft_io import (
    COMPACT_KEY,
    MASK_ROW_KEY,
    WEIGHTS,
    export_full_draft,
    is_compact_draft,
    load_compact_draft,
    load_draft,
    save_compact_draft,
)
from transformers_pard.pard2 import PROJ_SAFETENSORS, WARP_FILE, Pard2Config, make_projection
from transformers_pard.testing import left_padded_batch, mark_as_pard_draft, tiny_causal_lm, tiny_tokenizer

VOCAB, HIDDEN, MASK = 96, 32, 95


@pytest.fixture(scope="module")
def target():
    """A tied tiny target (SmolLM2-like: the embedding is also the output head), PARD-enabled."""
    return enable_pard(tiny_causal_lm("llama", seed=0, num_layers=2, tie_word_embeddings=True))


def borrowing_draft(target, *, seed: int = 1, num_layers: int = 1):
    """A tied PARD draft whose embedding is the target's except its own (trained) mask row."""
    draft = tiny_causal_lm("llama", seed=seed, num_layers=num_layers, tie_word_embeddings=True)
    with torch.no_grad():
        embedding = draft.get_input_embeddings().weight
        mask_row = embedding[MASK].clone()
        embedding.copy_(target.get_input_embeddings().weight)
        embedding[MASK] = mask_row
    return mark_as_pard_draft(draft, mask_token_id=MASK)


def make_pard2(draft, *, layers=(-1, 1), seed: int = 5):
    """Turn ``draft`` into a PARD-2 draft with a random ``target_proj`` over ``layers``."""
    config = draft.config
    config.spd_type, config.pard2, config.pard2_scale = "pard2", True, 0.5
    config.pard2_target_layers, config.pard2_target_dim, config.pard2_proj_bias = list(layers), HIDDEN * len(layers), True
    torch.manual_seed(seed)
    proj = make_projection(draft, Pard2Config.from_model_config(config))
    with torch.no_grad():
        proj.weight.normal_(0.0, 0.2)
        proj.bias.normal_(0.0, 0.2)
    return draft


@pytest.fixture(scope="module")
def draft(target):
    return borrowing_draft(target)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_compact_round_trip_is_exact_in_fp32(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path, dtype=torch.float32)
    back = load_compact_draft(str(tmp_path), target=target)
    assert_same_weights(back, draft)
    assert not back.training and back.dtype == torch.float32
    assert back.config.pard_token == MASK and back.config.spd_type == "pard" and is_compact_draft(back.config)
    assert is_pard_draft(back)
    # The embedding is the target's (a copy: the draft's mask row differs), tied to the draft's head.
    embedding, borrowed = back.get_input_embeddings().weight, target.get_input_embeddings().weight
    assert embedding.data_ptr() != borrowed.data_ptr()
    assert embedding.data_ptr() == back.get_output_embeddings().weight.data_ptr()
    others = torch.arange(VOCAB) != MASK
    assert torch.equal(embedding[others], borrowed[others])
    assert torch.equal(embedding[MASK], draft.get_input_embeddings().weight[MASK])
    assert not torch.equal(embedding[MASK], borrowed[MASK])


def test_compact_folder_stores_no_embedding(draft, tmp_path):
    save_compact_draft(draft, tmp_path / "compact")
    export_full_draft(draft, tmp_path / "full")
    tensors = load_file(tmp_path / "compact" / WEIGHTS)
    assert not any(tensor.shape == (VOCAB, HIDDEN) for tensor in tensors.values())
    assert not any("embed_tokens" in key or "lm_head" in key for key in tensors)
    assert tensors[MASK_ROW_KEY].shape == (HIDDEN,)
    assert all(tensor.dtype == torch.bfloat16 for tensor in tensors.values())  # the default dtype
    expected = {k for k in draft.state_dict() if "embed_tokens" not in k and "lm_head" not in k} | {MASK_ROW_KEY}
    assert set(tensors) == expected
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert config[COMPACT_KEY] is True and config["pard_token"] == MASK and config["spd_type"] == "pard"
    assert config["dtype"] == "bfloat16"
    # The embedding is most of this draft: the compact file is well under half the full one.
    full = os.path.getsize(tmp_path / "full" / WEIGHTS)
    assert os.path.getsize(tmp_path / "compact" / WEIGHTS) < 0.5 * full


def test_bf16_compact_loads_rounded_in_the_requested_dtype(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path)  # bf16 on disk
    back = load_compact_draft(str(tmp_path), target=target)  # the target's dtype: fp32
    assert back.dtype == torch.float32
    for key, value in draft.state_dict().items():
        if "embed_tokens" in key or "lm_head" in key:
            continue
        assert torch.equal(back.state_dict()[key], value.to(torch.bfloat16).float()), key
    assert torch.equal(back.get_input_embeddings().weight[0], target.get_input_embeddings().weight[0])  # not rounded
    half = load_compact_draft(str(tmp_path), target=target, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.get_input_embeddings().weight[0], target.get_input_embeddings().weight[0].bfloat16())


def test_load_draft_reads_compact_and_plain_folders(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path / "compact", dtype=torch.float32)
    export_full_draft(draft, tmp_path / "full")
    compact = load_draft(str(tmp_path / "compact"), target=target)
    plain = load_draft(str(tmp_path / "full"), target=target)
    assert is_compact_draft(compact.config) and not is_compact_draft(plain.config)
    assert_same_weights(compact, draft)
    assert_same_weights(plain, draft)
    assert not plain.training and plain.dtype == torch.float32


def test_a_draft_folder_ships_its_lookup_store(target, draft, tmp_path):
    from transformers_pard.lookup import LOOKUP_FILE, LookupStore, attach_lookup_store, lookup_store

    store = LookupStore.from_texts([[3, 4, 5, 6, 7, 8], [9, 10, 11]], horizon=2)
    attach_lookup_store(draft, store)
    try:
        save_compact_draft(draft, tmp_path / "with", dtype=torch.float32)
    finally:
        attach_lookup_store(draft, None)
    save_compact_draft(draft, tmp_path / "without", dtype=torch.float32)
    assert (tmp_path / "with" / LOOKUP_FILE).exists() and not (tmp_path / "without" / LOOKUP_FILE).exists()
    loaded = load_draft(str(tmp_path / "with"), target=target)
    assert torch.equal(lookup_store(loaded).texts, store.texts)
    assert lookup_store(load_draft(str(tmp_path / "without"), target=target)) is None
    assert_same_weights(loaded, draft)


def test_export_full_draft_writes_a_plain_hf_folder(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path / "compact", dtype=torch.float32)
    reloaded = load_compact_draft(str(tmp_path / "compact"), target=target)
    assert is_compact_draft(reloaded.config)
    export_full_draft(reloaded, tmp_path / "full", tokenizer=tiny_tokenizer())
    assert is_compact_draft(reloaded.config)  # the draft in memory is left as it was
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert COMPACT_KEY not in config
    assert config["pard_token"] == MASK and config["spd_type"] == "pard"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert is_pard_draft(model) and model.config.pard_token == MASK
    assert_same_weights(model, draft)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert tokenizer("ab")["input_ids"] == tiny_tokenizer()("ab")["input_ids"]


def pard_generate(target, draft, ids, mask, k, max_new_tokens=14, **kwargs):
    return target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pard_draft=draft,
                           num_assistant_tokens=k, pard_min_tau=None, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("k", [2, 5])
def test_greedy_pard_with_reloaded_drafts_equals_stock_generate(target, tmp_path, k):
    # A draft cut from the target (its 2 layers): d_1 is usually right, so rounds accept several tokens.
    draft = borrowing_draft(target, num_layers=2)
    layers = {k: v for k, v in target.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    draft.load_state_dict(layers, strict=False)
    save_compact_draft(draft, tmp_path / "compact", dtype=torch.float32)
    export_full_draft(draft, tmp_path / "full")
    ids, mask = left_padded_batch([4, 9], seed=k)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False)
    original = pard_generate(target, draft, ids, mask, k)
    assert torch.equal(original.sequences, expected)
    assert original.pard_stats.tau > 1  # the test exercises accepted drafts, not only corrections
    for folder in ("compact", "full"):
        out = pard_generate(target, load_draft(str(tmp_path / folder), target=target), ids, mask, k)
        assert torch.equal(out.sequences, expected)
        # The same draft: the same proposals, hence the same acceptance round by round.
        assert out.pard_stats.accepted_histogram == original.pard_stats.accepted_histogram


def test_bf16_compact_draft_is_still_lossless(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path)
    ids, mask = left_padded_batch([6], seed=3)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False)
    out = pard_generate(target, load_draft(str(tmp_path), target=target), ids, mask, 4)
    assert torch.equal(out.sequences, expected)


# ---------------------------------------------------------------------------------------------
# PARD-2 drafts: the projection lives in its own files in both formats
# ---------------------------------------------------------------------------------------------


def test_pard2_compact_round_trip_keeps_the_projection(target, tmp_path):
    draft = make_pard2(borrowing_draft(target, seed=4))
    save_compact_draft(draft, tmp_path, dtype=torch.float32)
    assert (tmp_path / PROJ_SAFETENSORS).exists() and (tmp_path / WARP_FILE).exists()
    assert not any(key.startswith("target_proj.") for key in load_file(tmp_path / WEIGHTS))
    back = load_draft(str(tmp_path), target=target)
    assert_same_weights(back, draft)  # includes target_proj.weight / .bias
    ids, mask = left_padded_batch([5, 8], seed=2)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for mode in ("dependent", "independent"):
        out = pard_generate(target, back, ids, mask, 3, max_new_tokens=10, pard_mode=mode)
        assert torch.equal(out.sequences, expected)


def test_pard2_full_export_loads_with_its_projection(target, tmp_path):
    draft = make_pard2(borrowing_draft(target, seed=6))
    export_full_draft(draft, tmp_path)
    assert (tmp_path / PROJ_SAFETENSORS).exists() and (tmp_path / WARP_FILE).exists()
    assert not any(key.startswith("target_proj.") for key in load_file(tmp_path / WEIGHTS))
    back = load_draft(str(tmp_path), target=target)
    assert_same_weights(back, draft)
    assert back.config.spd_type == "pard2" and list(back.config.pard2_target_layers) == [-1, 1]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_untied_draft_cannot_be_compact(target, tmp_path):
    untied = mark_as_pard_draft(tiny_causal_lm("llama", num_layers=1), mask_token_id=MASK)
    with pytest.raises(ValueError, match="tied input/output embeddings"):
        save_compact_draft(untied, tmp_path)
    assert not (tmp_path / WEIGHTS).exists()


def test_plain_folder_is_not_a_compact_draft(target, draft, tmp_path):
    export_full_draft(draft, tmp_path)
    with pytest.raises(ValueError, match=f"not a compact PARD draft.*{COMPACT_KEY}"):
        load_compact_draft(str(tmp_path), target=target)


@pytest.mark.parametrize("other", [dict(vocab_size=128), dict(hidden_size=48)], ids=["vocab", "hidden"])
def test_compact_draft_refuses_a_target_of_another_family(draft, tmp_path, other):
    save_compact_draft(draft, tmp_path)
    wrong = tiny_causal_lm("llama", num_layers=1, tie_word_embeddings=True, **other)
    shape = (other.get("vocab_size", VOCAB), other.get("hidden_size", HIDDEN))
    with pytest.raises(ValueError, match=rf"borrows a {VOCAB} x {HIDDEN} embedding.*is \({shape[0]}, {shape[1]}\)"):
        load_draft(str(tmp_path), target=wrong)


def test_weights_that_do_not_fit_the_config_are_refused(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the file holds one layer
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not fit its config: missing \[.*model\.layers\.1\."):
        load_compact_draft(str(tmp_path), target=target)


def test_unexpected_weights_are_refused(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS)
    tensors["model.extra.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected \['model\.extra\.weight'\]"):
        load_compact_draft(str(tmp_path), target=target)


def test_compact_weights_without_the_mask_row_are_refused(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS)
    del tensors[MASK_ROW_KEY]
    save_file(tensors, tmp_path / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no 'pard.mask_embedding'.*save_compact_draft"):
        load_compact_draft(str(tmp_path), target=target)


def test_missing_files_are_named(target, draft, tmp_path):
    save_compact_draft(draft, tmp_path / "no-weights")
    os.remove(tmp_path / "no-weights" / WEIGHTS)
    with pytest.raises(FileNotFoundError, match=WEIGHTS):
        load_draft(str(tmp_path / "no-weights"), target=target)
    (tmp_path / "empty").mkdir()
    with pytest.raises((OSError, ValueError), match="config.json"):
        load_draft(str(tmp_path / "empty"), target=target)


def test_pard2_compact_draft_without_projection_files(target, tmp_path):
    save_compact_draft(make_pard2(borrowing_draft(target, seed=8)), tmp_path)
    os.remove(tmp_path / PROJ_SAFETENSORS)
    os.remove(tmp_path / WARP_FILE)
    with pytest.raises(FileNotFoundError, match="No PARD-2 projection"):
        load_draft(str(tmp_path), target=target)
