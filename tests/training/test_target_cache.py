"""PARD-2 target cache: what it stores equals the live target pass, training from it equals training live,
and every mismatch between the cache and the run is refused with the fix."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import Pard2Options, Pard2Trainer, train_pard2_draft
from transformers_pard.apps.train_cli import add_train_parser, config_from_args
from transformers_pard.training.target_pass import feature_statistics, run_target
from transformers_pard.training.target_cache import (
    MANIFEST,
    TargetCache,
    build_target_cache,
    sequence_key,
)

from .helpers import trainer_args
from .test_pard2_training import LAYERS, pard2_config, pard2_setup, write_pard2_inputs

SEQUENCES = [[5, 7, 9, 11, 13, 15, 17, 19], [6, 8, 10, 12, 14], [3, 4, 5]]


def examples(sequences=SEQUENCES):
    return [{"input_ids": s} for s in sequences]


def padded(sequences):
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sequences], batch_first=True)  # (B, L)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s), dtype=torch.long) for s in sequences], batch_first=True)
    return ids, mask


@pytest.mark.parametrize("layers", [LAYERS, (1, 0)])  # with and without layer -1 among the features
def test_cached_pass_equals_the_live_pass(tmp_path, layers):
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    build_target_cache(target, examples(), layers, tmp_path / "cache", dtype="float32", batch_size=2)
    cache = TargetCache(tmp_path / "cache", target=target, layers=layers, need_logits=True)
    assert len(cache) == len(SEQUENCES)
    order = [SEQUENCES[2], SEQUENCES[0]]  # any order and batch: looked up by content
    ids, mask = padded(order)
    live = run_target(target, ids, mask, layers)
    cached = cache.target_pass(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(cached.features[real], live.features[real])
    torch.testing.assert_close(cached.gold[real], live.gold[real])
    torch.testing.assert_close(cached.logits[real], live.logits[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.features[~real], torch.zeros_like(cached.features[~real]))


def test_float16_is_the_default_storage_and_overflow_is_refused(tmp_path):
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    build_target_cache(target, examples(), LAYERS, tmp_path / "half")
    manifest = json.loads((tmp_path / "half" / MANIFEST).read_text())
    assert manifest["dtype"] == "float16"
    cache = TargetCache(tmp_path / "half", target=target, layers=LAYERS, need_logits=False)
    features, gold, last = cache.sequence(torch.tensor(SEQUENCES[0]))
    assert features.dtype == torch.float16 and gold.dtype == torch.float32 and last is None
    ids, mask = padded(SEQUENCES[:1])
    live = run_target(target, ids, mask, LAYERS).features[0]
    torch.testing.assert_close(features.float(), live, atol=1e-2, rtol=1e-3)
    with torch.no_grad():
        target.get_input_embeddings().weight.mul_(1e6)  # embeddings (layer 0 feature) beyond float16's range
    with pytest.raises(ValueError, match="overflow float16.*float32"):
        build_target_cache(target, examples(), (-1, 0), tmp_path / "huge")
    assert not (tmp_path / "huge" / MANIFEST).exists()


def test_cache_mismatches_are_refused(tmp_path):
    target = tiny_causal_lm("llama", seed=0, vocab_size=40, num_layers=2)
    build_target_cache(target, examples(), LAYERS, tmp_path / "cache", max_length=6)
    with pytest.raises(ValueError, match="layers \\[-1, 1\\].*rebuild"):
        TargetCache(tmp_path / "cache", target=target, layers=(-1,), need_logits=True)
    other = tiny_causal_lm("llama", seed=5, vocab_size=40, num_layers=2)
    with pytest.raises(ValueError, match="another target"):
        TargetCache(tmp_path / "cache", target=other, layers=LAYERS, need_logits=True)
    with pytest.raises(ValueError, match="not a finished target cache"):
        TargetCache(tmp_path / "missing", target=target, layers=LAYERS, need_logits=True)
    cache = TargetCache(tmp_path / "cache", target=target, layers=LAYERS, need_logits=True)
    cache.sequence(torch.tensor(SEQUENCES[0][:6]))  # stored truncated, as the collator truncates
    with pytest.raises(ValueError, match="not in the target cache.*max_length=6"):
        cache.sequence(torch.tensor(SEQUENCES[0]))
    assert sequence_key([1, 2, 3]) == sequence_key(torch.tensor([1, 2, 3])) != sequence_key([1, 2, 4])


def test_kd_from_the_cache_is_refused_when_the_logits_are_not_the_head_of_the_last_state(tmp_path):
    config = Gemma2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    build_target_cache(target, examples(), LAYERS, tmp_path / "cache")
    with pytest.raises(ValueError, match="soft-capping.*kd_alpha=0"):
        TargetCache(tmp_path / "cache", target=target, layers=LAYERS, need_logits=True)
    cache = TargetCache(tmp_path / "cache", target=target, layers=LAYERS, need_logits=False)  # CE + CAT only
    assert cache.target_pass(*padded(SEQUENCES[:2])).logits is None


def test_training_step_from_the_cache_equals_the_live_step(tmp_path):
    """Same batch, same draft: loss and projection gradient agree (float32 cache); standardization too."""
    target, draft, _, collator = pard2_setup(k=4, proj_bias=True)
    options = dict(layers=LAYERS, scale=0.5, target_feat_mask=0.0, standardize=True)
    dataset = examples()
    batch = collator(dataset)
    results = []
    for cache in (None, str(tmp_path / "cache")):
        model = pard2_setup(k=4, proj_bias=True)[1]
        model.load_state_dict(draft.state_dict())
        trainer = Pard2Trainer(model=model, args=trainer_args(tmp_path), data_collator=collator, target=target,
                               train_dataset=dataset,
                               pard2=Pard2Options(**options, cache=cache, cache_dtype="float32"))
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), model.target_proj.weight.grad.clone(), model.target_proj.feature_mean.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1][2], results[0][2])
    mean, _ = feature_statistics(target, dataset, LAYERS)
    torch.testing.assert_close(results[1][2], mean)


def test_pard2_run_builds_the_cache_once_and_reuses_it(tmp_path):
    draft_path, target, _ = write_pard2_inputs(tmp_path)
    cache = tmp_path / "cache"
    options = Pard2Options(layers=LAYERS, scale=0.5, target_feat_mask=0.3, cache=str(cache))
    train_pard2_draft(pard2_config(tmp_path, draft_path, max_steps=2, pard2=options), target=target)
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["max_length"] == 16 and manifest["logits_from_last_hidden"] is True
    stamp = (cache / MANIFEST).stat().st_mtime_ns
    calls = []
    original = target.forward
    target.forward = lambda *a, **kw: calls.append(1) or original(*a, **kw)  # instance attribute: our test model
    train_pard2_draft(pard2_config(tmp_path, draft_path, max_steps=2, output=str(tmp_path / "out2"), pard2=options),
                      target=target)
    assert calls == []  # the second run never ran the target
    assert (cache / MANIFEST).stat().st_mtime_ns == stamp


def test_cli_cache_flags(tmp_path):
    root = argparse.ArgumentParser()
    add_train_parser(root.add_subparsers(dest="command", required=True))
    base = ["train", "--draft", "d", "--data", "x.jsonl", "--output", "o"]
    args = root.parse_args(base + ["--pard2", "--target", "t", "--pard2-cache", "c", "--pard2-cache-dtype", "bfloat16"])
    options = config_from_args(args).pard2
    assert options.cache == "c" and options.cache_dtype == "bfloat16"
    with pytest.raises(ValueError, match="--pard2-cache.*add --pard2"):
        config_from_args(root.parse_args(base + ["--pard2-cache", "c"]))
    with pytest.raises(ValueError, match="cache_dtype"):
        Pard2Options(cache="c", cache_dtype="int8")
