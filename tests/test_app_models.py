"""What --target / --draft / --ar-draft / --pard2-draft load: folders (plain and compact drafts), Hub ids, errors."""

import pytest
import torch

from saved_models import MASK_ID, save_models
from transformers_pard import hardware, is_pard_draft
from transformers_pard.apps import models
from transformers_pard.apps.models import (
    DEFAULT_DRAFT,
    LoadSettings,
    describe,
    load_autoregressive_draft,
    load_pard_draft,
    load_target,
    source_of,
)
from transformers_pard.draft_io import is_compact_draft
from transformers_pard.generation import PardGenerationMixin
from transformers_pard.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def target(saved):
    return load_target(saved.target, LoadSettings())


def test_settings_resolve_dtypes(monkeypatch):
    assert LoadSettings(dtype="fp16").torch_dtype == torch.float16
    assert LoadSettings(dtype="bf16").torch_dtype == torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert LoadSettings(dtype="auto").torch_dtype == torch.float32  # bf16 only where it is native
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert LoadSettings(dtype="auto").torch_dtype == torch.bfloat16


def test_draft_dtype_auto_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert LoadSettings(draft_dtype="auto").draft_torch_dtype(torch.float32) == torch.float32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert LoadSettings(draft_dtype="auto").draft_torch_dtype(torch.float32) == torch.bfloat16
    assert LoadSettings().draft_torch_dtype(torch.float32) == torch.float32  # library default: the target's
    assert LoadSettings(draft_dtype="fp16").draft_torch_dtype(torch.float32) == torch.float16
    # only an fp32 target's draft moves to bf16: a half-precision target keeps its own type
    assert LoadSettings(draft_dtype="auto").draft_torch_dtype(torch.float16) == torch.float16


def test_a_bf16_draft_of_an_fp32_target_loads_and_keeps_generate_lossless(saved, target):
    model, _ = target
    draft = load_pard_draft(saved.compact_draft, model, LoadSettings(draft_dtype="bf16"))
    assert draft.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, pard_draft=draft, max_new_tokens=12, do_sample=False, pard_min_tau=None)
    assert torch.equal(out, model.generate(ids, max_new_tokens=12, do_sample=False))


@pytest.mark.parametrize("field, value", [("dtype", "fp8"), ("attn", "flash_attention_2"), ("draft_dtype", "int4")])
def test_settings_refuse_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        LoadSettings(**{field: value})


def test_sources(saved):
    assert source_of("smollm2", "smollm2") == "embedded"
    assert source_of(saved.target) == "folder" and source_of(DEFAULT_DRAFT) == "folder"
    assert source_of("amd/PARD-Qwen2.5-0.5B") == "hub"


def test_target_folder_gives_a_pard_target_and_its_tokenizer(target):
    model, tokenizer = target
    assert isinstance(model, PardGenerationMixin) and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert tokenizer.decode(ids["input_ids"] if isinstance(ids, dict) else ids) == "user: Hi</s>assistant: "


def test_eager_attention_and_dtype_reach_target_and_draft(saved):
    settings = LoadSettings(dtype="bf16", attn="eager")
    model, _ = load_target(saved.target, settings)
    draft = load_pard_draft(saved.compact_draft, model, settings)
    for m in (model, draft):
        assert m.config._attn_implementation == "eager" and next(m.parameters()).dtype == torch.bfloat16


def test_compact_draft_borrows_the_targets_embedding(saved, target):
    model, _ = target
    draft = load_pard_draft(saved.compact_draft, model, LoadSettings())
    assert is_compact_draft(draft.config) and is_pard_draft(draft)
    ours, theirs = draft.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert torch.equal(ours[:MASK_ID], theirs[:MASK_ID])  # every row but the trained mask row


def test_draft_folders_plain_pard2_and_autoregressive(saved, target):
    model, _ = target
    assert is_pard_draft(load_pard_draft(saved.draft, model, LoadSettings()))
    pard2 = load_pard_draft(saved.pard2_draft, model, LoadSettings(), flag="--pard2-draft")
    assert pard2.config.spd_type == "pard2" and pard2.target_proj is not None
    ar = load_autoregressive_draft(saved.ar_draft, model, LoadSettings())
    assert ar.config.spd_type is None and not is_pard_draft(ar)  # transformers' assisted path, not PARD's


def test_a_folder_that_is_not_a_pard_draft_is_refused(saved, target):
    with pytest.raises(SystemExit, match="--draft .* is not a PARD draft.*--ar-draft"):
        load_pard_draft(saved.target, target[0], LoadSettings())


BAD_NAME = "not a valid/hub id!"  # refused by the Hub client before any network access


def test_an_unloadable_target_is_an_error_naming_its_flag():
    with pytest.raises(SystemExit, match=f"^--target {BAD_NAME}: could not load it as a local folder or Hub id"):
        load_target(BAD_NAME, LoadSettings())


def test_an_unloadable_draft_is_an_error_naming_its_flag(target):
    with pytest.raises(SystemExit, match=f"^--pard2-draft {BAD_NAME}: could not load it"):
        load_pard_draft(BAD_NAME, target[0], LoadSettings(), flag="--pard2-draft")


def test_embedded_target_is_the_gguf_loader(monkeypatch):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return tiny_causal_lm("llama"), "tokenizer"

    monkeypatch.setattr(models, "load_smollm2", fake)
    model, tokenizer = load_target("smollm2", LoadSettings(attn="eager"))
    assert seen == {"dtype": torch.float32, "device": "cpu", "attn": "eager"} and tokenizer == "tokenizer"
    assert isinstance(model, PardGenerationMixin)


def test_describe_records_what_ran(saved, target):
    record = describe(saved.target, target[0], embedded="smollm2")
    assert record == {"spec": saved.target, "source": "folder", "class": "LlamaForCausalLM",
                      "parameters": sum(p.numel() for p in target[0].parameters()), "dtype": "float32",
                      "device": "cpu"}
