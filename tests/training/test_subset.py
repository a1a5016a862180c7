"""Training a vocabulary-subset head: the loss over the subset equals a slow reference on the restricted
full logits (PARD and PARD-2), no full-vocabulary logits are formed, and a run saves the subset."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from transformers_pard import PardAutoModelForCausalLM, enable_pard
from transformers_pard.apps.train_cli import add_train_parser, config_from_args
from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import PardDataCollator, Pard2Options, Pard2Trainer, PardTrainer, attach_pard2
from transformers_pard.training import subset_ids, train_draft
from transformers_pard.training.subset import VocabSubset, label_tokens, teacher_first
from transformers_pard.vocab import VOCAB_FILE, VOCAB_SIZE_KEY, load_vocab_subset, vocab_subset

from .helpers import train_config, trainer_args

MASK = 39
#: a subset with the mask token, EOS (2) and ids both inside and outside the batch's labels
IDS = torch.tensor([MASK, 2, 9, 5, 7, 30, 11])
EXAMPLES = [
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [-100, -100, 7, 8, 9, 10, 11]},  # 8, 10 outside the subset
    {"input_ids": [9, 5, 30, 7, 2]},  # every token a label
]


def reference_ce(full_logits, labels, ids, weights=None) -> torch.Tensor:
    """Row by row: CE of the logits restricted to ``ids``, over the rows whose label is in the subset."""
    member = {int(t): i for i, t in enumerate(ids)}
    total, count = full_logits.new_zeros(()), 0
    for b in range(labels.shape[0]):
        for n in range(labels.shape[1]):
            label = int(labels[b, n])
            if label in member:
                row = full_logits[b, n, ids].float().log_softmax(-1)  # (N,)
                total = total - row[member[label]] * (1.0 if weights is None else weights[b, n])
                count += 1
    return total / max(count, 1)


def full_inputs(batch):
    return {key: value for key, value in batch.items() if key in ("input_ids", "attention_mask", "position_ids")}


@pytest.mark.parametrize("arch, tied", [("llama", False), ("qwen2", True)])
def test_subset_loss_and_gradient_equal_the_restricted_full_loss(tmp_path, arch, tied):
    model = tiny_causal_lm(arch, vocab_size=40, tie_word_embeddings=tied).train()
    batch = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=0.8, cod_min=0.3, seed=1, pad_token_id=0)(EXAMPLES)
    trainer = PardTrainer(model=model, args=trainer_args(tmp_path), vocab_ids=IDS)
    loss = trainer.compute_loss(model, dict(batch))
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    expected = reference_ce(model(**full_inputs(batch)).logits, batch["labels"], IDS)
    expected_grads = torch.autograd.grad(expected, [p for p in model.parameters()], allow_unused=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert model.config.pard_vocab_size == len(IDS) and torch.equal(vocab_subset(model), IDS)


def test_no_full_vocabulary_logits_are_formed(tmp_path):
    model = tiny_causal_lm("llama", vocab_size=40).train()
    batch = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=1.0, pad_token_id=0)(EXAMPLES)
    trainer = PardTrainer(model=model, args=trainer_args(tmp_path), vocab_ids=IDS)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    logits, _ = trainer.row_logits(model, trainer.draft_inputs(model, dict(batch)), torch.arange(5))
    assert shapes == [(2, 1, 40)]  # the HF forward's minimum: one row per sample
    assert logits.shape == (2, 5, len(IDS))


def test_labels_map_into_subset_indices_and_outside_labels_are_ignored():
    vocab = VocabSubset(tiny_causal_lm("llama", vocab_size=40), IDS)
    labels = torch.tensor([[-100, 9, 8, MASK, 2], [30, 10, 11, -100, 5]])
    assert vocab.labels(labels).tolist() == [[-100, 2, -100, 0, 1], [5, -100, 6, -100, 3]]


def test_subset_ids_count_only_label_tokens_and_always_keep_eos_and_mask():
    examples = [{"input_ids": [4, 4, 4, 4, 6, 7, 7], "labels": [-100, -100, -100, -100, 6, 7, 7]},
                {"input_ids": [4, 8, 7, 6]}]  # no labels: every token but the first carries loss
    assert label_tokens(examples[0]) == [6, 7, 7] and label_tokens(examples[1]) == [8, 7, 6]
    assert subset_ids(examples, 4, vocab_size=40, always=(2, MASK)).tolist() == [2, MASK, 7, 6]
    assert subset_ids(examples, 5, vocab_size=40, always=(None,)).tolist() == [7, 6, 8, 0, 1]  # then unseen ids


def test_coverage_is_logged_once(tmp_path, caplog):
    model = tiny_causal_lm("llama", vocab_size=40)
    with caplog.at_level(logging.WARNING, logger="transformers_pard.training.subset"):
        PardTrainer(model=model, args=trainer_args(tmp_path), vocab_ids=IDS, train_dataset=EXAMPLES,
                    data_collator=PardDataCollator(mask_token_id=MASK, k=2))
    messages = [r.getMessage() for r in caplog.records if "Vocabulary subset" in r.getMessage()]
    # labels: 7 8 9 10 11 (8, 10 outside) and 5 30 7 2: 7 of 9 in the subset
    assert messages == ["Vocabulary subset: 7 ids hold 77.78% of the 9 label tokens; the 2 others are ignored by "
                        "the loss."]


def test_a_head_that_is_not_linear_in_the_last_hidden_state_is_refused():
    config = Gemma2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with pytest.raises(ValueError, match="soft-capping.*--vocab-subset"):
        VocabSubset(model, IDS)


def test_teacher_first_and_the_teacher_restriction():
    ids = torch.tensor([41, 9, 40, 5])
    ordered = teacher_first(ids, 40)
    assert ordered.tolist() == [9, 5, 41, 40]
    draft = tiny_causal_lm("llama", vocab_size=42)
    teacher = torch.randn(1, 3, 40)
    assert torch.equal(VocabSubset(draft, ordered).teacher(teacher), teacher[..., [9, 5]])
    with pytest.raises(ValueError, match="teacher_first"):
        VocabSubset(draft, ids).teacher(teacher)


def reference_pard2_loss(full_logits, inputs, ids, target_vocab, options) -> torch.Tensor:
    """Row by row, from the definition: CE and KL(teacher || draft) over the subset, the teacher being the
    target's softmax renormalised over the subset ids it has, both CAT-weighted, over rows labelled in it."""
    member = {int(t): i for i, t in enumerate(ids)}
    shared = torch.tensor([int(t) for t in ids if t < target_vocab])
    ce = kl = full_logits.new_zeros(())
    count = 0
    for b in range(inputs["labels"].shape[0]):
        for n in range(inputs["labels"].shape[1]):
            label = int(inputs["labels"][b, n])
            if label not in member:
                continue
            weight, count = inputs["weights"][b, n], count + 1
            log_q = full_logits[b, n, ids].log_softmax(-1)  # (N,) over the subset
            ce = ce - weight * log_q[member[label]]
            log_p = inputs["target_logits"][b, int(inputs["position_ids"][b, n]), shared].log_softmax(-1)
            log_q_shared = log_q[[member[int(t)] for t in shared]]
            kl = kl + weight * (log_p.exp() * (log_p - log_q_shared)).sum()
    return (options.ce_alpha * ce + options.kd_alpha * kl) / count


def test_pard2_subset_loss_equals_the_reference_with_a_draft_only_mask_row(tmp_path):
    """The mask row (41) exists in the draft only: the teacher gives it 0, the draft is penalised for it."""
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    draft = tiny_causal_lm("llama", seed=1, vocab_size=42, num_layers=1).train()
    options = Pard2Options(layers=(-1, 1), scale=0.5, target_feat_mask=0.0, ce_alpha=0.3, kd_alpha=1.0)
    attach_pard2(draft, options, target_dim=2 * target.config.hidden_size)
    with torch.no_grad():
        draft.target_proj.weight.normal_(0.0, 0.2)
    collator = PardDataCollator(mask_token_id=41, k=3, cod_ratio=0.8, seed=2, pad_token_id=0, with_target_inputs=True)
    batch = collator(EXAMPLES)
    ids = torch.tensor([41, 2, 9, 5, 7, 30, 11])
    full = Pard2Trainer(model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target, pard2=options)
    inputs = {**batch, **full.target_pass(dict(batch))}
    expected = reference_pard2_loss(draft(**full.draft_inputs(draft, inputs)).logits, {
        **inputs, "weights": full.loss_weights(inputs)}, ids, 40, options)
    trainer = Pard2Trainer(model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target,
                           pard2=options, vocab_ids=ids)
    assert vocab_subset(draft).tolist() == [2, 9, 5, 7, 30, 11, 41]  # the draft-only id last
    torch.testing.assert_close(trainer.compute_loss(draft, dict(batch)), expected, rtol=1e-5, atol=1e-6)


def test_a_run_with_a_subset_saves_it_in_every_folder(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="transformers_pard.training.subset"):
        out = train_draft(train_config(tmp_path, max_steps=2, save_steps=1, vocab_subset=8))
    assert sum("Vocabulary subset: 8 ids hold" in r.getMessage() for r in caplog.records) == 1
    for folder in (out, out / "checkpoint-1", out / "checkpoint-2"):
        assert (folder / VOCAB_FILE).exists(), folder
        assert json.loads((folder / "config.json").read_text())[VOCAB_SIZE_KEY] == 8
    ids = load_vocab_subset(str(out))
    raw = json.loads((out / "config.json").read_text())
    assert raw["pard_token"] in ids.tolist() and raw["eos_token_id"] in ids.tolist()
    assert torch.equal(load_vocab_subset(str(out / "checkpoint-1")), ids)
    draft = PardAutoModelForCausalLM.from_pretrained(out)  # the engine drafts from the subset: still lossless
    assert torch.equal(vocab_subset(draft), ids)
    target = enable_pard(tiny_causal_lm("llama", seed=3, vocab_size=draft.config.vocab_size))
    prompt = torch.tensor([[1, 6, 7, 8, 9]])
    expected = target.generate(prompt, max_new_tokens=10, do_sample=False)
    got = target.generate(prompt, max_new_tokens=10, do_sample=False, pard_draft=draft, num_assistant_tokens=3)
    assert torch.equal(got, expected)


def test_the_cli_flag():
    root = argparse.ArgumentParser()
    add_train_parser(root.add_subparsers(dest="command", required=True))
    base = ["train", "--draft", "d", "--data", "x.jsonl", "--output", "o"]
    assert config_from_args(root.parse_args(base)).vocab_subset is None
    assert config_from_args(root.parse_args([*base, "--vocab-subset", "4096"])).vocab_subset == 4096
    with pytest.raises(ValueError, match="vocab_subset"):
        config_from_args(root.parse_args([*base, "--vocab-subset", "0"]))
