"""PARD-2 training: CAT weights, KD, feature alignment and dropout, the saved folder, and learning."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from transformers_pard import PardAutoModelForCausalLM, enable_pard
from transformers_pard.pard2 import (
    PROJ_SAFETENSORS,
    WARP_FILE,
    StandardizedProjection,
    projection_state,
    read_projection_state,
)
from transformers_pard.testing import mark_as_pard_draft, tiny_causal_lm
from transformers_pard.training import (
    PardDataCollator,
    DistillTrainer,
    PardTrainConfig,
    Pard2Options,
    Pard2Trainer,
    attach_pard2,
    cat_weights,
    pard2_loss,
    pard_loss,
    prepare_draft,
    train_pard2_draft,
    training_arguments,
)
from transformers_pard.apps.train_cli import add_train_parser, config_from_args
from transformers_pard.training import losses
from transformers_pard.training.losses import distill_kl
from transformers_pard.training.run import setup_pard2
from transformers_pard.training.target_pass import (
    feature_keep_mask,
    feature_statistics,
    gold_probs,
    row_features,
    run_target,
)

from .helpers import WORDS, text_records, train_config, trainer_args, word_tokenizer, write_jsonl
from .test_learning import K as LEARN_K
from .test_learning import V, language, train_target

MASK = 39
LAYERS = (-1, 1)


def pard2_setup(*, k=4, proj_bias=False, feat_mask=0.0, vocab=40):
    """A tiny target, a PARD-2-ready draft (random projection) and a collator with target inputs."""
    target = tiny_causal_lm("llama", seed=0, vocab_size=vocab, num_layers=2)
    draft = tiny_causal_lm("llama", seed=1, vocab_size=vocab, num_layers=1)
    options = Pard2Options(layers=LAYERS, scale=0.5, proj_bias=proj_bias, target_feat_mask=feat_mask)
    attach_pard2(draft, options, target_dim=target.config.hidden_size * len(LAYERS))
    with torch.no_grad():
        for param in draft.target_proj.parameters():
            param.normal_(0.0, 0.2)
    collator = PardDataCollator(
        mask_token_id=MASK, k=k, cod_ratio=0.7, cod_min=0.3, seed=3, pad_token_id=0, with_target_inputs=True
    )
    return target, draft, options, collator


# ---- the collator -------------------------------------------------------------------------------


def test_collator_adds_target_inputs_only_when_asked():
    examples = [{"input_ids": [5, 6, 7, 8, 9]}, {"input_ids": [5, 6, 7]}]
    plain = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=1.0)(examples)
    assert "target_input_ids" not in plain and "target_attention_mask" not in plain
    batch = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=1.0, with_target_inputs=True)(examples)
    assert batch["target_input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]  # never padded with the mask
    assert batch["target_attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    for key in plain:
        assert torch.equal(plain[key], batch[key])


# ---- CAT weights ------------------------------------------------------------------------------


def reference_cat_weights(gold, copy_ids, position_ids, labels):
    """Straight from the definition: row (copy i, position t) weighs g_t * g_{t-1} * ... * g_{t-i+1}."""
    weights = torch.zeros(copy_ids.shape, dtype=gold.dtype)
    for b in range(copy_ids.shape[0]):
        for n in range(copy_ids.shape[1]):
            i, t = int(copy_ids[b, n]), int(position_ids[b, n])
            if i < 0 or int(labels[b, n]) == -100:
                continue
            w = 1.0
            for s in range(t - i + 1, t + 1):
                w *= float(gold[b, s])
            weights[b, n] = w
    return weights


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    k=st.integers(1, 6),
    cod_ratio=st.sampled_from([1.0, 0.7, 0.4]),
    prompt=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_cat_weights_match_the_definition(lengths, k, cod_ratio, prompt, seed):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(3, 30, (n,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * min(prompt, n) + ids[prompt:]})
    collator = PardDataCollator(mask_token_id=MASK, k=k, cod_ratio=cod_ratio, cod_min=0.1, seed=seed, pad_token_id=0)
    batch = collator(examples)
    gold = torch.rand(len(lengths), max(lengths), generator=generator, dtype=torch.float64)
    gold[gold < 0.15] = 0.0  # exact zeros and ones must go through unharmed
    gold[gold > 0.9] = 1.0
    gold[:, 0] = 1.0
    args = (batch["copy_ids"], batch["position_ids"], batch["labels"])
    torch.testing.assert_close(cat_weights(gold, *args), reference_cat_weights(gold, *args), rtol=1e-12, atol=0)


def test_gold_probs_are_the_targets_probabilities_of_the_gold_tokens():
    target = tiny_causal_lm("llama", vocab_size=40)
    ids = torch.tensor([[5, 9, 13, 7, 21]])
    with torch.no_grad():
        gold = gold_probs(target(ids).logits, ids)[0]
        expected = [1.0] + [target(ids[:, :u]).logits[0, -1].softmax(-1)[ids[0, u]].item() for u in range(1, 5)]
    torch.testing.assert_close(gold, torch.tensor(expected), atol=1e-6, rtol=1e-5)


# ---- KD -----------------------------------------------------------------------------------------


def test_kd_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 3
    labels = torch.tensor([[1, 2, -100, 4, 5], [-100, 7, 8, -100, -100]])
    weights = torch.rand(2, 5)
    for temperature in (1.0, 2.0):
        assert torch.equal(distill_kl(logits, logits, temperature), torch.zeros(2, 5))
        kd_only = pard2_loss(logits, labels, weights, logits, ce_alpha=0.0, kd_alpha=1.0, temperature=temperature)
        assert kd_only.item() == 0.0
        noisy = logits + torch.randn(2, 5, 11)
        other = pard2_loss(noisy, labels, weights, logits, ce_alpha=0.0, temperature=temperature)
        assert other.item() > 0
    # A draft with an extra vocabulary row (its mask token) is penalised for mass on it, and only then.
    extra = torch.cat([logits, torch.full((2, 5, 1), -1e4)], dim=-1)
    assert distill_kl(extra, logits).abs().max() < 1e-6
    assert (distill_kl(torch.cat([logits, torch.full((2, 5, 1), 5.0)], dim=-1), logits) > 0).all()
    # The CE part is ce_alpha x the weighted pard_loss.
    mixed = pard2_loss(logits, labels, weights, logits, ce_alpha=0.3, kd_alpha=1.0)
    torch.testing.assert_close(mixed, 0.3 * pard_loss(logits, labels, weights))


def reference_kl(draft_logits, teacher_logits, temperature):
    """KD from its definition, with autograd doing the gradient: T^2 * sum_v p_v (log p_v - log q_v)."""
    vocab = min(draft_logits.shape[-1], teacher_logits.shape[-1])
    log_q = (draft_logits / temperature).log_softmax(-1)[..., :vocab]
    log_p = (teacher_logits[..., :vocab] / temperature).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2


@pytest.mark.parametrize("extra_draft_ids", [0, 2])
@pytest.mark.parametrize("chunk_elements", [7, 1 << 24])  # 7: one row per chunk; 2**24: one chunk per sample
def test_chunked_kd_matches_the_definition_and_its_gradient(monkeypatch, extra_draft_ids, chunk_elements):
    monkeypatch.setattr(losses, "KD_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(extra_draft_ids + chunk_elements)
    target_logits = torch.randn(2, 6, 9, dtype=torch.float64, generator=generator) * 2  # (B, L, V_t)
    positions = torch.tensor([[0, 3, 3, 5], [2, 1, 0, 4]])  # (B, n): rows share positions, as copies do
    draft = torch.randn(2, 4, 9 + extra_draft_ids, dtype=torch.float64, generator=generator, requires_grad=True)
    teacher = target_logits.gather(1, positions[..., None].expand(-1, -1, 9))  # (B, n, V_t)
    upstream = torch.rand(2, 4, dtype=torch.float64, generator=generator)
    for temperature in (1.0, 2.5):
        expected = reference_kl(draft, teacher, temperature)
        (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), draft)
        for kl in (distill_kl(draft, target_logits, temperature, positions), distill_kl(draft, teacher, temperature)):
            torch.testing.assert_close(kl, expected, rtol=1e-10, atol=1e-12)
            (grad,) = torch.autograd.grad((kl * upstream).sum(), draft)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: distill_kl(z, target_logits, 1.5, positions), (draft,))


def test_kd_keeps_the_draft_dtype_for_its_gradient_and_gives_the_teacher_none():
    draft = torch.randn(1, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(1, 3, 8, requires_grad=True)
    kl = distill_kl(draft, teacher)
    assert kl.dtype == torch.float32
    kl.sum().backward()
    assert draft.grad.dtype == torch.bfloat16 and teacher.grad is None


# ---- features: alignment with inference, dropout -----------------------------------------------


class FeatureRecorder:
    def __init__(self, proj):
        self.features = []
        self.handle = proj.register_forward_hook(lambda module, args, out: self.features.append(args[0].detach()))


def reference_feature(target, sequence: list[int], upto: int, width: int) -> torch.Tensor:
    """feature(upto): one uncached target forward on x_0..x_upto, last position; zeros if upto < 0."""
    if upto < 0:
        return torch.zeros(width)
    with torch.no_grad():
        hidden = target(torch.tensor([sequence[: upto + 1]]), output_hidden_states=True).hidden_states
    return torch.cat([hidden[i][0, -1] for i in LAYERS])


def test_training_features_match_the_inference_alignment(tmp_path):
    """Row (copy j, position t) gets feature(t-j-1), from a per-row reference; row (0, 0) is there with zeros."""
    target, draft, options, collator = pard2_setup(k=4)
    sequences = [[5, 7, 9, 11, 13, 15, 17, 19], [6, 8, 10, 12, 14]]
    batch = collator([{"input_ids": s} for s in sequences])
    trainer = Pard2Trainer(
        model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target, pard2=options
    )
    recorder = FeatureRecorder(draft.target_proj)
    with torch.no_grad():
        trainer.compute_loss(draft, dict(batch))
    features = recorder.features[0]  # (B, N, D)
    width = features.shape[-1]
    for b, sequence in enumerate(sequences):
        rows = int(batch["copy_ids"][b].ge(0).sum())
        assert int(batch["copy_ids"][b, 0]) == 0 and int(batch["position_ids"][b, 0]) == 0  # first row kept
        assert torch.equal(features[b, 0], torch.zeros(width))
        for n in range(rows):
            j, t = int(batch["copy_ids"][b, n]), int(batch["position_ids"][b, n])
            expected = reference_feature(target, sequence, t - j - 1, width)
            torch.testing.assert_close(features[b, n], expected, atol=1e-5, rtol=1e-4, msg=f"row ({j}, {t})")
    # the CAT weights the trainer uses are those of the target's gold probabilities
    inputs = {**batch, **trainer.target_pass(dict(batch))}
    expected = cat_weights(gold_probs(inputs["target_logits"], batch["target_input_ids"]), batch["copy_ids"],
                           batch["position_ids"], batch["labels"])
    torch.testing.assert_close(trainer.loss_weights(inputs), expected)


def test_row_features_pure_function():
    features = torch.arange(1, 5, dtype=torch.float32)[None, :, None]  # feature(u) = u + 1, L = 4
    copy_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, -1]])
    positions = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 3, 0]])
    got = row_features(features, copy_ids, positions)[0, :, 0]
    # (0,t) -> feature(t-1); (1,t) -> feature(t-2); (2,3) -> feature(0); padding -> 0
    assert got.tolist() == [0, 1, 2, 3, 0, 1, 2, 1, 0]


@pytest.mark.parametrize("proj_bias", [False, True])
def test_feature_dropout_drops_whole_samples_only(tmp_path, proj_bias):
    target, draft, options, collator = pard2_setup(k=3, proj_bias=proj_bias, feat_mask=0.5)
    sequences = [[5 + (i + s) % 20 for s in range(6 + i % 3)] for i in range(12)]
    batch = collator([{"input_ids": s} for s in sequences])
    trainer = Pard2Trainer(
        model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target, pard2=options
    )
    inputs = {**batch, **trainer.target_pass(dict(batch))}
    full = {**batch, **Pard2Trainer(model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target,
                                    pard2=Pard2Options(layers=LAYERS, target_feat_mask=0.0)).target_pass(dict(batch))}
    keep = inputs["use_target_features"]
    assert 0 < int(keep.sum()) < len(sequences)  # both kinds occur in this seeded draw
    with torch.no_grad():
        embeds = trainer.draft_inputs(draft, inputs)["inputs_embeds"]
        plain = draft.get_input_embeddings()(batch["input_ids"])
    real = batch["target_attention_mask"].bool()
    for b in range(len(sequences)):
        if keep[b]:
            assert torch.equal(inputs["target_features"][b], full["target_features"][b])
            assert not torch.allclose(embeds[b, 1:3], plain[b, 1:3])  # rows with a feature get the term
        else:
            assert torch.equal(inputs["target_features"][b], torch.zeros_like(inputs["target_features"][b]))
            assert full["target_features"][b][real[b]].abs().sum() > 0  # it really was dropped, not absent
            assert torch.equal(embeds[b], plain[b])  # exactly the target-independent input, bias or not
    assert feature_keep_mask(5, 0.0).all() and not feature_keep_mask(5, 1.0).any()


# ---- end to end: train, save, load, generate ------------------------------------------------------


class Recorder(TrainerCallback):
    def __init__(self):
        self.optimized, self.proj_ids, self.start_step, self.start_proj = set(), set(), None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start_step = state.global_step
        self.start_proj = model.target_proj.weight.detach().clone()
        self.start_folded = {k: v.detach().clone() for k, v in projection_state(model.target_proj).items()}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.proj_ids = {id(p) for p in model.target_proj.parameters()}


def write_pard2_inputs(tmp_path):
    """A draft folder (vocabulary with spare rows) and a target of the same vocabulary."""
    tokenizer = word_tokenizer(WORDS)
    draft = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer) + 2, num_layers=1)
    draft.save_pretrained(tmp_path / "draft")
    tokenizer.save_pretrained(tmp_path / "draft")
    target = tiny_causal_lm("llama", seed=0, vocab_size=len(tokenizer) + 2, num_layers=2)
    return str(tmp_path / "draft"), target, tokenizer


def pard2_config(tmp_path, draft, **overrides) -> PardTrainConfig:
    pard2 = Pard2Options(layers=LAYERS, scale=0.5, target_feat_mask=0.3)
    return train_config(tmp_path, **{"draft": draft, "k": 3, "max_steps": 3, "pard2": pard2, **overrides})


def assert_lossless_in_both_modes(target, draft, tokenizer) -> None:
    enable_pard(target)
    ids = torch.tensor([tokenizer("w1 w2 w3 w4")["input_ids"]])
    expected = target.generate(ids, max_new_tokens=12, do_sample=False)
    for mode in ("dependent", "independent"):
        got = target.generate(ids, max_new_tokens=12, do_sample=False, pard_draft=draft, pard_mode=mode,
                              num_assistant_tokens=3, pard_min_tau=None)
        assert torch.equal(got, expected), mode


def test_pard2_run_saves_a_loadable_lossless_draft_and_resumes(tmp_path):
    draft_path, target, tokenizer = write_pard2_inputs(tmp_path)
    target_state = {k: v.clone() for k, v in target.state_dict().items()}
    recorder = Recorder()
    out = train_pard2_draft(pard2_config(tmp_path, draft_path, max_steps=2), target=target, callbacks=[recorder])
    assert recorder.proj_ids and recorder.proj_ids <= recorder.optimized  # target_proj is optimised
    assert all(torch.equal(v, target_state[k]) for k, v in target.state_dict().items())  # target untouched

    # resume: the projection comes back from checkpoint-2, not from the fresh (zero) init
    resumed = Recorder()
    train_pard2_draft(pard2_config(tmp_path, draft_path, resume="latest"), target=target, callbacks=[resumed])
    assert resumed.start_step == 2
    saved = read_projection_state(str(out / "checkpoint-2"))["weight"]
    assert saved.abs().sum() > 0 and torch.equal(resumed.start_proj, saved)

    # the folder: plain HF draft (no target_proj, no target weights) + PARD-2 keys + projection files
    for folder in (out, out / "checkpoint-3"):
        assert (folder / PROJ_SAFETENSORS).exists() and (folder / WARP_FILE).exists()
        keys = set(load_file(folder / "model.safetensors"))
        assert not any(key.startswith("target_proj") for key in keys)
        assert len(keys) == len(tiny_causal_lm("llama", vocab_size=8, num_layers=1).state_dict())
    raw = json.loads((out / "config.json").read_text())
    assert raw["spd_type"] == "pard2" and raw["pard2"] is True and raw["pard2_scale"] == 0.5
    assert raw["pard2_target_layers"] == list(LAYERS) and raw["pard2_target_dim"] == 2 * target.config.hidden_size
    assert raw["pard2_proj_bias"] is False and raw["pard_token"] == raw["mask_token_id"]
    assert (out / "tokenizer.json").exists()

    draft = PardAutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(draft.target_proj.weight, read_projection_state(str(out))["weight"])
    assert_lossless_in_both_modes(target, draft, tokenizer)


def test_projection_only_run_trains_the_projection_alone(tmp_path):
    draft_path, target, tokenizer = write_pard2_inputs(tmp_path)
    recorder = Recorder()
    options = Pard2Options(layers=LAYERS, scale=0.5, target_feat_mask=0.3, projection_only=True)
    out = train_pard2_draft(pard2_config(tmp_path, draft_path, pard2=options), target=target, callbacks=[recorder])
    assert recorder.optimized == recorder.proj_ids  # the optimizer holds target_proj's parameters only
    assert read_projection_state(str(out))["weight"].abs().sum() > 0  # ... and it learned
    before = prepare_draft(AutoModelForCausalLM.from_pretrained(draft_path), tokenizer)[0]  # as training loads it
    after = PardAutoModelForCausalLM.from_pretrained(out)
    for key, value in before.state_dict().items():  # every weight of the draft itself is as loaded
        assert torch.equal(after.state_dict()[key], value), key
    assert_lossless_in_both_modes(target, after, tokenizer)


def test_loss_only_distills_a_plain_draft_with_cat_and_kd(tmp_path):
    """DistillTrainer: PARD-2's loss (CAT-weighted CE + KD from the live target) on a draft without features."""
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    draft = tiny_causal_lm("llama", seed=1, vocab_size=40, num_layers=1)
    collator = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=0.7, cod_min=0.3, seed=3, pad_token_id=0)
    options = Pard2Options(loss_only=True, ce_alpha=0.3, kd_alpha=1.0)
    trainer = DistillTrainer(model=draft, args=trainer_args(tmp_path), data_collator=collator, target=target,
                             pard2=options)
    assert collator.with_target_inputs  # the trainer asks the collator for the real sequences
    batch = collator([{"input_ids": [5, 7, 9, 11, 13, 15]}, {"input_ids": [6, 8, 10, 12]}])
    with torch.no_grad():
        loss = trainer.compute_loss(draft, dict(batch))
        teacher = run_target(target, batch["target_input_ids"], batch["target_attention_mask"], (-1,)).logits
        logits = draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits  # the draft's plain input: no features
    weights = cat_weights(gold_probs(teacher, batch["target_input_ids"]), batch["copy_ids"], batch["position_ids"],
                          batch["labels"])
    expected = pard2_loss(logits, batch["labels"], weights, teacher, teacher_positions=batch["position_ids"],
                          ce_alpha=0.3, kd_alpha=1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, 0.3 * pard_loss(logits, batch["labels"], weights))  # the KD term is in it
    with pytest.raises(ValueError, match="loss_only"):
        Pard2Options(loss_only=True, projection_only=True)


def test_loss_only_run_saves_a_target_independent_pard_draft(tmp_path):
    draft_path, target, tokenizer = write_pard2_inputs(tmp_path)
    out = train_pard2_draft(pard2_config(tmp_path, draft_path, pard2=Pard2Options(loss_only=True)), target=target)
    raw = json.loads((out / "config.json").read_text())
    assert raw["spd_type"] == "pard" and "pard2" not in raw  # no projection, no PARD-2 keys
    assert not (out / PROJ_SAFETENSORS).exists() and not (out / WARP_FILE).exists()
    draft = PardAutoModelForCausalLM.from_pretrained(out)
    assert getattr(draft, "target_proj", None) is None
    enable_pard(target)
    ids = torch.tensor([tokenizer("w1 w2 w3 w4")["input_ids"]])
    got = target.generate(ids, max_new_tokens=12, do_sample=False, pard_draft=draft, num_assistant_tokens=3,
                          pard_min_tau=None)
    assert torch.equal(got, target.generate(ids, max_new_tokens=12, do_sample=False))


def test_a_compact_draft_folder_is_refused_for_training(tmp_path):
    from transformers_pard.draft_io import save_compact_draft

    _, target, tokenizer = write_pard2_inputs(tmp_path)
    draft = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer) + 2, num_layers=1, tie_word_embeddings=True)
    save_compact_draft(mark_as_pard_draft(draft, mask_token_id=len(tokenizer)), tmp_path / "compact",
                       tokenizer=tokenizer)
    with pytest.raises(ValueError, match="compact draft.*export_full_draft"):
        train_pard2_draft(pard2_config(tmp_path, str(tmp_path / "compact")), target=target)


def test_feature_statistics_are_the_mean_and_std_over_real_tokens():
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    examples = [{"input_ids": list(range(3, 3 + n))} for n in (4, 9, 1, 6)]
    mean, std = feature_statistics(target, examples, LAYERS, batch_size=3)  # padding inside batches
    rows = torch.cat([run_target(target, torch.tensor([e["input_ids"]]), torch.ones(1, len(e["input_ids"]),
                                 dtype=torch.long), LAYERS).features[0] for e in examples])  # (20, D)
    torch.testing.assert_close(mean, rows.mean(0))
    torch.testing.assert_close(std, rows.std(0, unbiased=False).clamp(min=1e-3))


def test_standardized_pard2_run_stores_a_folded_projection_and_resumes(tmp_path):
    draft_path, target, tokenizer = write_pard2_inputs(tmp_path)
    options = Pard2Options(layers=LAYERS, scale=0.5, target_feat_mask=0.3, standardize=True)
    recorder = Recorder()
    out = train_pard2_draft(pard2_config(tmp_path, draft_path, max_steps=2, pard2=options), target=target,
                            callbacks=[recorder])
    assert recorder.proj_ids and recorder.proj_ids <= recorder.optimized
    assert json.loads((out / "config.json").read_text())["pard2_proj_bias"] is True
    stored = read_projection_state(str(out / "checkpoint-2"))
    assert set(stored) == {"weight", "bias"} and stored["bias"].abs().sum() > 0

    resumed = Recorder()  # the checkpoint's folded projection comes back as the same function
    train_pard2_draft(pard2_config(tmp_path, draft_path, resume="latest", pard2=options), target=target,
                      callbacks=[resumed])
    assert resumed.start_step == 2
    for key in ("weight", "bias"):
        torch.testing.assert_close(resumed.start_folded[key], stored[key])

    draft = PardAutoModelForCausalLM.from_pretrained(out)  # a plain Linear with the folded weights
    assert not isinstance(draft.target_proj, StandardizedProjection)
    assert_lossless_in_both_modes(target, draft, tokenizer)


def test_pard2_cli_loads_the_target_from_a_folder(tmp_path, capsys):
    draft_path, target, _ = write_pard2_inputs(tmp_path)
    target.save_pretrained(tmp_path / "target")
    root = argparse.ArgumentParser()
    add_train_parser(root.add_subparsers(dest="command", required=True))
    data = write_jsonl(tmp_path / "train.jsonl", text_records(4))
    argv = ["train", "--draft", draft_path, "--data", str(data), "--output", str(tmp_path / "out"), "--k", "3",
            "--max-steps", "1", "--batch-size", "2", "--max-length", "12", "--pard2", "--target",
            str(tmp_path / "target"), "--pard2-layers", "-1", "0", "--pard2-scale", "0.1", "--target-feat-mask",
            "0.2", "--ce-alpha", "0.5", "--kd-alpha", "2", "--kd-temperature", "1.5", "--pard2-standardize"]
    args = root.parse_args(argv)
    assert config_from_args(args).pard2 == Pard2Options(
        target=str(tmp_path / "target"), layers=(-1, 0), scale=0.1, target_feat_mask=0.2, ce_alpha=0.5,
        kd_alpha=2.0, kd_temperature=1.5, standardize=True,
    )
    out = args.func(args)
    assert "PARD-2 draft saved to" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["pard2_target_layers"] == [-1, 0]
    assert not (out / "target").exists()
    with pytest.raises(ValueError, match="--target"):
        config_from_args(root.parse_args(argv[: argv.index("--target")]))
    plain = config_from_args(root.parse_args(argv[: argv.index("--pard2")]))
    assert plain.pard2 is None
    with pytest.raises(ValueError, match="--pard2-projection-only.*--pard2"):
        config_from_args(root.parse_args([*argv[: argv.index("--pard2")], "--pard2-projection-only"]))
    assert config_from_args(root.parse_args([*argv, "--pard2-projection-only"])).pard2.projection_only is True
    assert (plain.optim, plain.optim_args) == (None, None)  # the Trainer's own optimizer
    assert training_arguments(plain).optim == TrainingArguments("o").optim
    sgd = config_from_args(root.parse_args([*argv, "--optim", "sgd", "--optim-args", "momentum=0.9"]))
    assert (sgd.optim, sgd.optim_args) == ("sgd", "momentum=0.9")
    assert (training_arguments(sgd).optim, training_arguments(sgd).optim_args) == ("sgd", "momentum=0.9")
    with pytest.raises(ValueError, match="--optim-args needs --optim"):
        config_from_args(root.parse_args([*argv, "--optim-args", "momentum=0.9"]))


def test_bad_pard2_setup_raises(tmp_path):
    with pytest.raises(ValueError, match="target_feat_mask"):
        Pard2Options(target_feat_mask=1.5)
    with pytest.raises(ValueError, match="layers"):
        Pard2Options(layers=())
    target, draft, _, _ = pard2_setup()
    with pytest.raises(ValueError, match="out of range"):  # a 2-layer target has 3 hidden states
        setup_pard2(draft, Pard2Options(layers=(-1, -8)), target=target)
    with pytest.raises(ValueError, match="needs a target"):
        setup_pard2(draft, Pard2Options())
    with pytest.raises(ValueError, match="PARD-2 draft"):
        Pard2Trainer(model=tiny_causal_lm("llama", vocab_size=40), args=trainer_args(tmp_path), target=target)
    _, draft, options, collator = pard2_setup(proj_bias=False)  # attached without the bias the fold needs
    with pytest.raises(ValueError, match="need a bias"):
        Pard2Trainer(model=draft, args=trainer_args(tmp_path), train_dataset=[{"input_ids": [3, 4, 5]}],
                     data_collator=collator, target=target, pard2=Pard2Options(layers=LAYERS, standardize=True))


# ---- learning --------------------------------------------------------------------------------------


def tau(target, draft, tokenizer, prompts, mode: str) -> float:
    rounds = committed = 0
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = target.generate(ids, attention_mask=torch.ones_like(ids), pard_draft=draft, pard_mode=mode,
                              num_assistant_tokens=LEARN_K, max_new_tokens=24, do_sample=False,
                              return_dict_in_generate=True, pard_min_tau=None)
        rounds += out.pard_stats.rounds
        committed += out.pard_stats.committed_tokens
    return committed / rounds


def test_pard2_training_raises_tau_in_both_modes(tmp_path):
    """The test_learning language: a PARD-2 draft trained with features, CAT and KD drafts well."""
    tokenizer = word_tokenizer([f"t{i}" for i in range(V)])
    sentence, generator = language()
    ids = [tokenizer.convert_tokens_to_ids(f"t{i}") for i in range(V)]
    data = [[ids[w] for w in sentence(start, 24)] for start in torch.randint(V, (512,), generator=generator).tolist()]
    target = train_target(tokenizer, torch.tensor(data), generator)
    enable_pard(target)
    prompts = [" ".join(f"t{w}" for w in sentence(start, 3)) for start in range(0, V, 3)]

    draft = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer) + 2, hidden_size=64, num_layers=2)
    draft, _, mask_id, _ = prepare_draft(draft, copy.deepcopy(tokenizer))
    options = Pard2Options(layers=(-1, 0), target_feat_mask=0.1)
    attach_pard2(draft, options, target_dim=2 * target.config.hidden_size)
    untrained = tau(target, draft.eval(), tokenizer, prompts, "dependent")

    args = trainer_args(tmp_path, max_steps=120, learning_rate=3e-3, warmup_steps=10, per_device_train_batch_size=16)
    collator = PardDataCollator(mask_token_id=mask_id, k=LEARN_K, cod_ratio=0.7, cod_min=0.3, pad_token_id=0,
                                with_target_inputs=True)
    Pard2Trainer(model=draft.train(), args=args, train_dataset=[{"input_ids": d} for d in data],
                 data_collator=collator, target=target, pard2=options).train()
    draft.eval()
    assert draft.target_proj.weight.abs().sum() > 0
    dependent = tau(target, draft, tokenizer, prompts, "dependent")
    independent = tau(target, draft, tokenizer, prompts, "independent")
    print(f"\ntau at K={LEARN_K}: untrained {untrained:.2f}, PARD-2 dependent {dependent:.2f}, "
          f"independent {independent:.2f}")
    assert untrained < 1.5
    assert dependent > 3.5 and independent > 3.0
