"""prepare_draft: how the mask token is chosen, initialised and recorded; the saved folder reloads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from transformers_pard.draft_config import is_pard_draft, mask_token_id
from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import MASK_TOKEN_NAME, prepare_draft

from .helpers import word_tokenizer

WORDS = [f"w{i}" for i in range(20)]


def model_for(tokenizer, *, spare_rows: int = 0, **kwargs):
    return tiny_causal_lm("llama", vocab_size=len(tokenizer) + spare_rows, **kwargs)


def mean_row(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return weight[:rows].mean(dim=0)


def assert_pard_config(config, mask_id: int):
    assert config.pard_token == mask_id
    assert config.mask_token_id == mask_id
    assert config.spd_type == "pard"


def test_reserved_token_is_preferred_and_special_ones_are_skipped():
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(3)]
    # reserved_0 serves as the pad token, so it is taken; reserved_1 is the first free one
    tokenizer = word_tokenizer([*WORDS, *reserved], pad_token=reserved[0])
    model = model_for(tokenizer, spare_rows=4)
    rows = model.get_input_embeddings().num_embeddings
    expected = mean_row(model.get_input_embeddings().weight, len(tokenizer)).detach().clone()
    model, tokenizer, mask_id, source = prepare_draft(model, tokenizer)
    assert source == "reserved"
    assert mask_id == tokenizer.convert_tokens_to_ids(reserved[1])
    assert model.get_input_embeddings().num_embeddings == rows  # nothing added
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], expected)
    assert_pard_config(model.config, mask_id)


def test_reserved_token_named_in_chat_template_is_skipped():
    reserved = ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
    tokenizer = word_tokenizer([*WORDS, *reserved], chat_template="{{ '<|reserved_special_token_0|>' }}")
    _, _, mask_id, _ = prepare_draft(model_for(tokenizer), tokenizer)
    assert mask_id == tokenizer.convert_tokens_to_ids(reserved[1])


def test_ordinary_words_mentioning_unused_are_not_reserved():
    tokenizer = word_tokenizer([*WORDS, "unused", "reserved7", "<unused3>"])
    _, _, mask_id, source = prepare_draft(model_for(tokenizer), tokenizer)
    assert (source, mask_id) == ("reserved", tokenizer.convert_tokens_to_ids("<unused3>"))


def test_spare_embedding_row_gets_the_new_token_string():
    tokenizer = word_tokenizer(WORDS)
    before = len(tokenizer)
    model = model_for(tokenizer, spare_rows=8)  # Qwen-style padded embedding
    weights = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    expected = [mean_row(weight, before).detach().clone() for weight in weights]
    model, tokenizer, mask_id, source = prepare_draft(model, tokenizer)
    assert (source, mask_id) == ("spare_row", before)
    assert tokenizer.convert_tokens_to_ids(MASK_TOKEN_NAME) == mask_id
    assert model.get_input_embeddings().num_embeddings == before + 8  # no resize
    for weight, mean in zip(weights, expected):
        torch.testing.assert_close(weight[mask_id], mean)
    assert_pard_config(model.config, mask_id)


def test_new_token_resizes_by_one_row():
    tokenizer = word_tokenizer(WORDS)
    before = len(tokenizer)
    model = model_for(tokenizer)
    original = model.get_input_embeddings().weight[:before].clone()
    model, tokenizer, mask_id, source = prepare_draft(model, tokenizer)
    assert (source, mask_id) == ("new_token", before)
    assert len(tokenizer) == before + 1
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == before + 1 and model.get_output_embeddings().weight.shape[0] == before + 1
    assert model.config.vocab_size == before + 1
    torch.testing.assert_close(emb[:before], original)  # real rows untouched
    torch.testing.assert_close(emb[mask_id], original.mean(dim=0))
    assert tokenizer.decode([mask_id], skip_special_tokens=True) == ""  # added as a special token
    assert_pard_config(model.config, mask_id)


def test_explicit_mask_tokens():
    tokenizer = word_tokenizer(WORDS)
    _, _, mask_id, source = prepare_draft(model_for(tokenizer), tokenizer, mask_token="w3")
    assert (source, mask_id) == ("explicit", tokenizer.convert_tokens_to_ids("w3"))

    tokenizer = word_tokenizer(WORDS)
    model, tokenizer, mask_id, _ = prepare_draft(model_for(tokenizer), tokenizer, mask_token="<|my_mask|>")
    assert mask_id == tokenizer.convert_tokens_to_ids("<|my_mask|>") == model.config.pard_token

    tokenizer = word_tokenizer(WORDS)
    model, _, mask_id, _ = prepare_draft(model_for(tokenizer, spare_rows=2), tokenizer, mask_token=len(tokenizer) + 1)
    assert mask_id == len(tokenizer) + 1 == model.config.mask_token_id


@pytest.mark.parametrize("bad", [-1, 10_000, "", 1.5, True])
def test_bad_explicit_mask_token_raises(bad):
    tokenizer = word_tokenizer(WORDS)
    with pytest.raises(ValueError, match="mask_token"):
        prepare_draft(model_for(tokenizer), tokenizer, mask_token=bad)


def test_an_existing_draft_keeps_its_mask_token():
    tokenizer = word_tokenizer(WORDS)
    model = model_for(tokenizer, spare_rows=3)
    model.config.pard_token = len(tokenizer) + 2
    row = model.get_input_embeddings().weight[len(tokenizer) + 2].clone()
    model, _, mask_id, source = prepare_draft(model, tokenizer)
    assert (source, mask_id) == ("config", len(tokenizer) + 2)
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], row)  # trained row kept


def test_saved_draft_is_a_plain_hf_folder_that_reloads(tmp_path):
    tokenizer = word_tokenizer(WORDS)
    model, tokenizer, mask_id, _ = prepare_draft(model_for(tokenizer), tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()

    config = AutoConfig.from_pretrained(tmp_path)
    assert_pard_config(config, mask_id)
    assert mask_token_id(config) == mask_id
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert is_pard_draft(reloaded)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert AutoTokenizer.from_pretrained(tmp_path).convert_tokens_to_ids(MASK_TOKEN_NAME) == mask_id
