"""The PARD batch through a real model, pard_loss, and PardTrainer: checkpoints, resume, saved folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from transformers_pard.draft_config import is_pard_draft
from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import PardDataCollator, PardTrainConfig, pard_loss, prepare_draft, train_draft
from transformers_pard.training.config import training_arguments
from transformers_pard.training.trainers import PardTrainer, check_attention, rows_with_loss

from .helpers import WORDS, train_config, word_tokenizer

MASK = 39


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_every_row_computes_what_inference_computes(arch):
    """Row (copy j, position t) = a plain forward of ``x_0..x_{t-j}`` + j mask tokens, at its last slot."""
    model = tiny_causal_lm(arch, vocab_size=40)
    x = [5, 7, 9, 11, 13, 15, 17]
    collator = PardDataCollator(mask_token_id=MASK, k=4, cod_ratio=0.7, cod_min=0.3, seed=3, pad_token_id=0)
    batch = collator([{"input_ids": x}, {"input_ids": x[:3]}])
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits  # (2, N, V)
        assert not logits.isnan().any()  # padding rows included
        for b, seq in enumerate([x, x[:3]]):
            for n in range(int(batch["copy_ids"][b].ge(0).sum())):
                j, t = int(batch["copy_ids"][b, n]), int(batch["position_ids"][b, n])
                prefix = torch.tensor([seq[: t - j + 1] + [MASK] * j])
                expected = model(input_ids=prefix).logits[0, -1]
                torch.testing.assert_close(logits[b, n], expected, atol=1e-5, rtol=1e-4)


def test_pard_loss_does_not_shift_and_weighs_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, -100, 4, 5], [-100, 7, 8, -100, -100]])
    valid = labels != -100
    expected = F.cross_entropy(logits[valid], labels[valid])
    torch.testing.assert_close(pard_loss(logits, labels), expected)
    weights = torch.rand(2, 5)
    per_row = F.cross_entropy(logits[valid], labels[valid], reduction="none")
    torch.testing.assert_close(pard_loss(logits, labels, weights), (per_row * weights[valid]).sum() / valid.sum())
    assert pard_loss(logits, torch.full((2, 5), -100)).item() == 0.0


def test_rows_with_loss_is_the_union_over_the_batch():
    labels = torch.tensor([[1, -100, -100, 4], [-100, -100, 8, -100]])
    assert rows_with_loss(labels).tolist() == [0, 2, 3]


def test_eager_attention_is_refused():
    model = tiny_causal_lm("llama")
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="sdpa"):
        check_attention(model)


# ---- the Trainer --------------------------------------------------------------------------------


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.start_step, self.losses = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


config = train_config


def test_train_saves_a_plain_hf_pard_draft(tmp_path):
    recorder = StepRecorder()
    output = train_draft(config(tmp_path, max_steps=6, save_steps=3), callbacks=[recorder])
    assert (output / "model.safetensors").exists()
    assert (output / "tokenizer.json").exists()
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    raw = json.loads((output / "config.json").read_text())
    assert raw["spd_type"] == "pard" and raw["pard_token"] == raw["mask_token_id"]
    assert raw["pard_token"] == AutoTokenizer.from_pretrained(output).convert_tokens_to_ids("<|pard_mask|>")
    model = AutoModelForCausalLM.from_pretrained(output)
    assert is_pard_draft(model)
    assert AutoConfig.from_pretrained(output).pard_token == raw["pard_token"]
    assert len(recorder.losses) == 6 and recorder.losses[-1] < recorder.losses[0]


def test_resume_continues_from_the_latest_checkpoint(tmp_path):
    train_draft(config(tmp_path, max_steps=2, save_steps=2))
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    recorder = StepRecorder()
    train_draft(config(tmp_path, max_steps=4, save_steps=2, resume="latest"), callbacks=[recorder])
    assert recorder.start_step == 2
    assert len(recorder.losses) == 2  # only steps 3 and 4 ran
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resume_latest_without_a_checkpoint_starts_fresh(tmp_path):
    recorder = StepRecorder()
    train_draft(config(tmp_path, max_steps=1, resume="latest"), callbacks=[recorder])
    assert recorder.start_step == 0


def test_bf16_and_gradient_checkpointing_with_accumulation(tmp_path):
    recorder = StepRecorder()
    cfg = config(tmp_path, max_steps=2, bf16=True, gradient_checkpointing=True, grad_accum=2, batch_size=2)
    train_draft(cfg, callbacks=[recorder])
    assert len(recorder.losses) == 2 and all(loss == loss and loss > 0 for loss in recorder.losses)


def test_trainer_works_with_chat_labels_and_padding(tmp_path):
    tokenizer = word_tokenizer(WORDS)
    model, tokenizer, mask_id, _ = prepare_draft(tiny_causal_lm("qwen2", vocab_size=len(tokenizer) + 2), tokenizer)
    examples = [
        {"input_ids": [6, 7, 8, 9, 10, 11][:n], "labels": [-100, -100, 8, 9, 10, 11][:n]} for n in (3, 4, 5, 6)
    ]
    collator = PardDataCollator(mask_token_id=mask_id, k=3, cod_ratio=0.8, pad_token_id=0)
    args = training_arguments(config(tmp_path, max_steps=3, batch_size=4, save_steps=100))
    trainer = PardTrainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(k=0), "K"), (dict(cod_ratio=2.0), "cod_ratio"), (dict(batch_size=0), "batch_size"), (dict(data=()), "data")],
)
def test_bad_config_raises(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        PardTrainConfig(**{"draft": "d", "data": ("x.jsonl",), "output": "o", **overrides})


def test_compute_loss_scores_only_labelled_rows_and_applies_weights(tmp_path):
    model = tiny_causal_lm("llama", vocab_size=40)
    collator = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=1.0, pad_token_id=0)
    batch = collator([{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]}, {"input_ids": [5, 6, 7]}])
    args = training_arguments(config(tmp_path, save_steps=100))

    class HalfWeights(PardTrainer):
        def loss_weights(self, inputs):
            return torch.full(inputs["labels"].shape, 0.5)

    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k not in ("labels", "copy_ids")}).logits  # (B, N, V)
        expected = pard_loss(full, batch["labels"])
        loss = PardTrainer(model=model, args=args, data_collator=collator).compute_loss(model, dict(batch))
        half = HalfWeights(model=model, args=args, data_collator=collator).compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(half, expected / 2)
