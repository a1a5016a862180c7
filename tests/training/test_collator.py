"""PardDataCollator against a slow reference written straight from the PARD layout definition."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.training import collator as collator_module
from transformers_pard.training.collator import (
    IGNORE_INDEX,
    PardDataCollator,
    PardLayoutConfig,
    build_example,
    cod_keep_positions,
    cod_target_size,
    collate_examples,
    layout_attention,
    layout_rows,
)

MASK = 99


# ---- slow reference, straight from the definition (PARD_NOTES section 4) --------------------------


def reference_attends(j: int, t: int, m: int, s: int) -> bool:
    """Copy j at position t sees copy 0 at 0..t-j and copy m at t-j+m for m = 1..j."""
    if m == 0:
        return s <= t - j
    return 1 <= m <= j and s == t - j + m


def reference_layout(input_ids: list[int], labels: list[int], kept: list[tuple[int, int]]):
    """Tokens, positions, labels and the dense mask over the rows ``kept`` (list of (copy, position))."""
    length = len(input_ids)
    tokens = [input_ids[t] if j == 0 else MASK for j, t in kept]
    positions = [t for _, t in kept]
    targets = [labels[t + 1] if t + 1 < length else IGNORE_INDEX for _, t in kept]
    mask = [[reference_attends(j, t, m, s) for m, s in kept] for j, t in kept]
    return tokens, positions, targets, mask


def keys_of(j: int, t: int, length: int) -> list[tuple[int, int]]:
    """Every (copy, position) that row (j, t) attends to, enumerated over the full K x L grid."""
    return [(m, s) for m in range(j + 1) for s in range(length) if reference_attends(j, t, m, s)]


def kept_rows(keep: list[torch.Tensor]) -> list[tuple[int, int]]:
    return [(j, int(t)) for j, positions in enumerate(keep) for t in positions]


# ---- literal cases ---------------------------------------------------------------------------------

# K = 3, L = 4, no COD; rows a0 a1 a2 a3 | b1 b2 b3 | c2 c3 (copy 0 | copy 1 | copy 2).
LITERAL_K3_L4 = [
    [1, 0, 0, 0, 0, 0, 0, 0, 0],  # a0
    [1, 1, 0, 0, 0, 0, 0, 0, 0],  # a1
    [1, 1, 1, 0, 0, 0, 0, 0, 0],  # a2
    [1, 1, 1, 1, 0, 0, 0, 0, 0],  # a3
    [1, 0, 0, 0, 1, 0, 0, 0, 0],  # b1: x0, mask@1
    [1, 1, 0, 0, 0, 1, 0, 0, 0],  # b2: x0 x1, mask@2
    [1, 1, 1, 0, 0, 0, 1, 0, 0],  # b3: x0 x1 x2, mask@3
    [1, 0, 0, 0, 1, 0, 0, 1, 0],  # c2: x0, mask@1 (b1), mask@2
    [1, 1, 0, 0, 0, 1, 0, 0, 1],  # c3: x0 x1, mask@2 (b2), mask@3
]


def test_literal_mask_k3_l4():
    collator = PardDataCollator(mask_token_id=MASK, k=3, cod_ratio=1.0, cod_min=0.0)
    batch = collator([{"input_ids": [10, 11, 12, 13]}])
    assert batch["attention_mask"].shape == (1, 1, 9, 9)
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"][0, 0].int().tolist() == LITERAL_K3_L4
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 13, MASK, MASK, MASK, MASK, MASK]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 1, 2, 3, 2, 3]
    assert batch["labels"][0].tolist() == [11, 12, 13, -100, 12, 13, -100, 13, -100]
    assert batch["copy_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]


def test_literal_mask_k2_l3_with_a_dropped_row():
    """COD dropped b1: the layout keeps a0 a1 a2 | b2, and b2 sees x0 x1 and itself."""
    keep = [torch.tensor([0, 1, 2]), torch.tensor([2])]
    example = build_example(torch.tensor([5, 6, 7]), torch.tensor([5, 6, 7]), keep=keep, mask_token_id=MASK)
    assert layout_attention(example.rows).int().tolist() == [
        [1, 0, 0, 0],  # a0
        [1, 1, 0, 0],  # a1
        [1, 1, 1, 0],  # a2
        [1, 1, 0, 1],  # b2
    ]
    assert example.input_ids.tolist() == [5, 6, 7, MASK]
    assert example.position_ids.tolist() == [0, 1, 2, 2]
    assert example.labels.tolist() == [6, 7, -100, -100]


def test_chat_labels_only_on_answer_tokens():
    """The label of a row is the label of x_{t+1}: prompt tokens (label -100) are never predicted."""
    collator = PardDataCollator(mask_token_id=MASK, k=2, cod_ratio=1.0)
    batch = collator([{"input_ids": [20, 21, 30, 31], "labels": [-100, -100, 30, 31]}])
    # rows a0 a1 a2 a3 | b1 b2 b3
    assert batch["labels"][0].tolist() == [-100, 30, 31, -100, 30, 31, -100]


def test_padding_rows_attend_only_to_themselves():
    collator = PardDataCollator(mask_token_id=MASK, k=2, cod_ratio=1.0, pad_token_id=0)
    batch = collator([{"input_ids": [3, 4, 5, 6]}, {"input_ids": [3, 4]}])
    mask = batch["attention_mask"][1, 0]  # (7, 7); the short sample has 3 rows: a0 a1 b1
    assert mask[3:].int().tolist() == torch.eye(7, dtype=torch.int)[3:].tolist()
    assert not mask[:3, 3:].any()
    assert batch["labels"][1, 3:].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][1, 3:].eq(0).all()
    assert batch["copy_ids"][1, 3:].eq(-1).all()
    assert mask.any(dim=1).all()  # every query has a key: no NaN in sdpa


# ---- property tests against the reference ----------------------------------------------------------

layouts = st.fixed_dictionaries(
    {
        "length": st.integers(1, 20),
        "k": st.integers(1, 6),
        "cod_ratio": st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
        "cod_min": st.floats(0.0, 1.0),
        "seed": st.integers(0, 2**16),
    }
)


@settings(deadline=None, max_examples=50, derandomize=True)
@given(layouts)
def test_keep_positions_follow_cod(layout):
    config = PardLayoutConfig(k=layout["k"], cod_ratio=layout["cod_ratio"], cod_min=layout["cod_min"])
    length = layout["length"]
    keep = cod_keep_positions(length, config=config, generator=torch.Generator().manual_seed(layout["seed"]))
    assert len(keep) == config.k
    assert keep[0].tolist() == list(range(length))
    for i in range(1, config.k):
        previous = set(keep[i - 1].tolist())
        candidates = [t for t in range(i, length) if t - 1 in previous]
        kept = keep[i].tolist()
        assert kept == sorted(set(kept))
        assert set(kept) <= set(candidates)
        target = math.floor(length * max(config.cod_ratio**i, config.cod_min) + 0.5)  # round half up
        assert cod_target_size(length, i, config) == target
        assert len(kept) == min(target, len(candidates))


@settings(deadline=None, max_examples=50, derandomize=True)
@given(layouts, st.data())
def test_layout_matches_reference_and_keeps_integrity(layout, data):
    length, k = layout["length"], layout["k"]
    input_ids = data.draw(st.lists(st.integers(3, 90), min_size=length, max_size=length))
    labels = [tok if data.draw(st.booleans()) else IGNORE_INDEX for tok in input_ids]
    config = PardLayoutConfig(k=k, cod_ratio=layout["cod_ratio"], cod_min=layout["cod_min"])
    keep = cod_keep_positions(length, config=config, generator=torch.Generator().manual_seed(layout["seed"]))
    rows = kept_rows(keep)

    # Integrity: every key a kept row attends to (over the full K x L grid) is itself kept.
    kept = set(rows)
    for j, t in rows:
        assert t >= j  # copy j ignores its first j positions
        assert set(keys_of(j, t, length)) <= kept

    example = build_example(torch.tensor(input_ids), torch.tensor(labels), keep=keep, mask_token_id=MASK)
    tokens, positions, targets, mask = reference_layout(input_ids, labels, rows)
    assert example.input_ids.tolist() == tokens
    assert example.position_ids.tolist() == positions
    assert example.labels.tolist() == targets
    assert layout_attention(example.rows).tolist() == mask


@settings(deadline=None, max_examples=25, derandomize=True)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(1, 4), st.integers(0, 100))
def test_batch_is_the_padded_stack_of_examples(lengths, k, seed):
    features = [{"input_ids": list(range(3, 3 + n))} for n in lengths]
    collator = PardDataCollator(mask_token_id=MASK, k=k, cod_ratio=0.6, cod_min=0.1, seed=seed, pad_token_id=0)
    batch = collator(features)
    again = PardDataCollator(mask_token_id=MASK, k=k, cod_ratio=0.6, cod_min=0.1, seed=seed, pad_token_id=0)
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for f in features:
        keep = cod_keep_positions(len(f["input_ids"]), config=collator.config, generator=generator)
        ids = torch.tensor(f["input_ids"])
        examples.append(build_example(ids, ids, keep=keep, mask_token_id=MASK))
    expected = collate_examples(examples, pad_token_id=0)
    for name, value in again(features).items():
        assert torch.equal(value, batch[name]), name  # same seed, same batch
        assert torch.equal(value, expected[name]), name
    width = batch["input_ids"].shape[1]
    assert batch["attention_mask"].shape == (len(lengths), 1, width, width)
    assert batch["attention_mask"].any(dim=-1).all()


def test_rows_shrink_with_cod():
    length, k = 100, 8
    full = layout_rows(cod_keep_positions(length, config=PardLayoutConfig(k=k), generator=None), length)
    cod = PardLayoutConfig(k=k, cod_ratio=0.7, cod_min=0.2)
    dropped = layout_rows(cod_keep_positions(length, config=cod, generator=torch.Generator().manual_seed(0)), length)
    assert full.size == sum(length - j for j in range(k))
    # targets 100, 70, 49, 34, 24, 20, 20, 20; a copy may fall short when few successors are free
    assert 320 <= dropped.size <= 100 + 70 + 49 + 34 + 24 + 20 + 20 + 20


def test_different_seeds_draw_different_rows():
    features = [{"input_ids": list(range(3, 60))}]
    a = PardDataCollator(mask_token_id=MASK, k=4, seed=0)(features)
    b = PardDataCollator(mask_token_id=MASK, k=4, seed=1)(features)
    assert not torch.equal(a["position_ids"], b["position_ids"])


def test_each_process_draws_its_own_rows():
    """PardTrainer sets seed_offset to the process index: data-parallel ranks must not repeat COD draws."""
    features = [{"input_ids": list(range(3, 60))}]
    rank0 = PardDataCollator(mask_token_id=MASK, k=4, seed=0)
    rank1 = PardDataCollator(mask_token_id=MASK, k=4, seed=0, seed_offset=1)
    assert not torch.equal(rank0(features)["position_ids"], rank1(features)["position_ids"])
    rank0.seed_offset = 1  # changed after first use: a fresh generator for the new offset
    fresh = PardDataCollator(mask_token_id=MASK, k=4, seed_offset=1)
    assert torch.equal(rank0(features)["position_ids"], fresh(features)["position_ids"])


def test_truncates_to_max_length():
    batch = PardDataCollator(mask_token_id=MASK, k=2, cod_ratio=1.0, max_length=3)([{"input_ids": [3, 4, 5, 6, 7]}])
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "K"),
        (dict(cod_ratio=0.0), "cod_ratio"),
        (dict(cod_ratio=1.5), "cod_ratio"),
        (dict(cod_min=-0.1), "cod_min"),
        (dict(cod_min=1.2), "cod_min"),
        (dict(mask_token_id=None), "mask token"),
        (dict(max_length=0), "max_length"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PardDataCollator(**{"mask_token_id": MASK, **kwargs})


def test_bad_examples_raise():
    collator = PardDataCollator(mask_token_id=MASK, k=2)
    with pytest.raises(ValueError, match="mask token id"):
        collator([{"input_ids": [3, MASK, 4]}])
    with pytest.raises(ValueError, match="differ in length"):
        collator([{"input_ids": [3, 4], "labels": [3]}])
    with pytest.raises(ValueError, match="empty"):
        collator([{"input_ids": []}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


# ---- memory: one batch at L = 1024, K = 16 -----------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys, torch

    # load collator.py alone (it needs only torch): no transformers import in the probe
    spec = importlib.util.spec_from_file_location("pard_collator", sys.argv[3])
    collator_module = sys.modules["pard_collator"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collator_module)
    PardDataCollator = collator_module.PardDataCollator

    def rss_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    cod_ratio, cod_min = float(sys.argv[1]), float(sys.argv[2])
    collator = PardDataCollator(mask_token_id=5, k=16, cod_ratio=cod_ratio, cod_min=cod_min, seed=0)
    features = [{"input_ids": list(range(10, 1034))}]
    collator([{"input_ids": list(range(10, 50))}])  # warm up lazy code paths
    before = rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    batch = collator(features)
    peak = rss_kib("VmHWM:")
    out_bytes = sum(t.numel() * t.element_size() for t in batch.values())
    print(json.dumps({"peak_extra_bytes": (peak - before) * 1024, "rows": batch["input_ids"].shape[1],
                      "mask_bytes": batch["attention_mask"].numel(), "batch_bytes": out_bytes}))
    """
)


def measure_batch_memory(cod_ratio: float, cod_min: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(cod_ratio), str(cod_min), collator_module.__file__],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc")
def test_batch_memory_at_l1024_k16_is_far_below_the_dense_float_mask():
    dense_float_bytes = (16 * 1024) ** 2 * 4  # the upstream per-sample mask: 1 GiB
    cod = measure_batch_memory(0.7, 0.2)
    print(f"\nL=1024 K=16 COD(0.7, 0.2): {cod}")
    assert cod["rows"] < 16 * 1024 // 3
    assert cod["mask_bytes"] == cod["rows"] ** 2  # one byte per kept (row, column) pair
    assert cod["peak_extra_bytes"] < dense_float_bytes / 8  # measured ~0.03 GiB; generous bound
    no_cod = measure_batch_memory(1.0, 0.0)
    print(f"L=1024 K=16 no COD: {no_cod}")
    assert no_cod["peak_extra_bytes"] < dense_float_bytes / 2  # boolean, kept rows only: ~1/4 of it
