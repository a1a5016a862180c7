"""The per-row slot cache: positions, the literal 4D mask, trash slot, rewind-by-length."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from transformers_pard.cache import PardCacheManager, PardStaticCache
from transformers_pard.testing import tiny_causal_lm
from transformers_pard.drafting import draft_layout


def make_cache(capacity=8, attn="sdpa"):
    return PardStaticCache(num_layers=1, capacity=capacity, max_positions=None, attn_implementation=attn)


def test_mask_and_positions_for_a_left_padded_batch():
    cache = make_cache()
    cache.begin(torch.tensor([0, 2]))  # row 1 has two left-padding slots
    cache.advance(torch.tensor([3, 3]))  # 3 live slots each (row 1: 2 pads + 1 token)
    positions, mask = cache.plan(cache.contiguous_slots(2), torch.float32)
    assert positions.tolist() == [[3, 4], [1, 2]]
    assert mask.shape == (2, 1, 2, 8)
    # slot:                       0  1  2  3  4  5  6  7
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0],
                                         [1, 1, 1, 1, 1, 0, 0, 0]]
    assert mask[1, 0].int().tolist() == [[0, 0, 1, 1, 0, 0, 0, 0],
                                         [0, 0, 1, 1, 1, 0, 0, 0]]


def test_padding_query_sees_itself_so_sdpa_has_no_nan():
    cache = make_cache(capacity=4)
    cache.begin(torch.tensor([2]))
    _, mask = cache.plan(cache.contiguous_slots(3), torch.float32)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_windowed_read_is_the_full_mask_cut_where_no_real_query_looks(data):
    """Windowed (CPU): the mask covers slots [0, W), W = the highest real query slot + 1 rounded up to the
    granularity; the full-capacity mask shows no real query anything past W, so attention is unchanged.
    A filler query (trash slot, past the window) sees slot 0 instead of itself: no empty row, no NaN."""
    capacity, granularity = 97, 16
    batch = data.draw(st.integers(1, 3))
    width = data.draw(st.integers(1, 6))
    pad = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=batch, max_size=batch)))
    live = torch.tensor(data.draw(st.lists(st.integers(0, 80), min_size=batch, max_size=batch)))
    filler = torch.tensor(data.draw(st.lists(st.booleans(), min_size=batch * width, max_size=batch * width)))
    full, windowed = make_cache(capacity), make_cache(capacity)
    windowed.window_granularity = granularity
    for cache in (full, windowed):
        cache.begin(pad)
        cache.advance(pad + live)
    slots = full.contiguous_slots(width).masked_fill(filler.view(batch, width), full.trash_slot)  # (B, T)
    _, full_mask = full.plan(slots, torch.float32)
    _, mask = windowed.plan(slots, torch.float32)
    window = mask.shape[-1]
    real = slots != full.trash_slot  # (B, T)
    highest = int(slots[real].max()) if real.any() else 0
    assert window == min(-(-(highest + 1) // granularity) * granularity, capacity - 1)
    assert torch.equal(mask[real[:, None]], full_mask[..., :window][real[:, None]])
    assert not full_mask[..., window:][real[:, None]].any()
    assert mask.any(-1).all()  # every query, filler or not, sees at least one key
    keys, _ = windowed.update(torch.zeros(batch, 1, width, 2), torch.zeros(batch, 1, width, 2), 0)
    assert keys.shape[2] == window  # attention reads the window only


def test_eager_mask_is_additive():
    cache = make_cache(capacity=3, attn="eager")
    cache.begin(torch.tensor([0]))
    _, mask = cache.plan(cache.contiguous_slots(1), torch.float32)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min


def test_update_writes_each_row_at_its_own_slots():
    cache = make_cache(capacity=6)
    cache.begin(torch.tensor([0, 0]))
    cache.plan(torch.tensor([[1, 2], [4, 5]]), torch.float32)
    keys = torch.arange(2 * 1 * 2 * 1, dtype=torch.float32).reshape(2, 1, 2, 1) + 1  # (B, H, T, D)
    k, _ = cache.update(keys, keys, 0)
    assert k[:, 0, :, 0].tolist() == [[0, 1, 2, 0, 0, 0], [0, 0, 0, 0, 3, 4]]


def test_draft_layout_is_right_aligned_with_filler_in_the_trash_slot():
    cache = make_cache(capacity=32)
    cache.begin(torch.tensor([0, 0]))
    cache.advance(torch.tensor([5, 9]))
    k = 3
    unseen, num_unseen = torch.tensor([[11, 12, 13, 0], [21, 0, 0, 0]]), torch.tensor([3, 1])
    layout = draft_layout(unseen, num_unseen, cache, k, mask_token_id=99, width=5)
    ids, slots = layout.input_ids, layout.slots
    assert ids.tolist() == [[11, 12, 13, 99, 99], [99, 99, 21, 99, 99]]
    assert slots.tolist() == [[5, 6, 7, 8, 9], [31, 31, 9, 10, 11]]


def test_manager_reuses_and_enforces_a_fixed_capacity():
    manager = PardCacheManager(max_cache_len=100)
    assert manager.capacity_for(100) == 101
    with pytest.raises(ValueError, match="too small"):
        manager.capacity_for(101)
    growing = PardCacheManager(granularity=64)
    assert growing.capacity_for(1) == 65 and growing.capacity_for(65) == 129


def test_manager_does_not_hand_a_draft_cache_to_a_draft_of_another_dtype():
    """Two drafts of the same config (fp32, then bf16) share the "draft" role: the second must get
    keys and values of its own dtype."""
    target = tiny_causal_lm("llama", seed=0)
    manager = PardCacheManager(static=True)
    fp32_cache = manager.cache("draft", target, batch_size=1, needed=10)
    fp32_cache.layers[0].lazy_initialization(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    assert manager.cache("draft", target, batch_size=1, needed=10) is fp32_cache
    bf16 = tiny_causal_lm("llama", seed=0, dtype=torch.bfloat16)
    assert manager.cache("draft", bf16, batch_size=1, needed=10) is not fp32_cache


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_move_slots_reads_every_source_before_writing_eager_and_compiled(compiled):
    """A tree's accepted path moves slot length + path_slots[j] to length + j; sources and targets overlap
    (slot 3 -> 2 while slot 2 -> 1). The inductor-compiled copy (what a compiled tree runs) must agree."""
    from transformers_pard.cache import move_slots

    torch._dynamo.reset()
    tensors = [torch.randn(2, 3, 12, 4) for _ in range(4)]  # (B, H, C, D) x (2 layers x keys, values)
    source = torch.tensor([[5, 6, 7], [2, 3, 9]])  # (B, J)
    target = torch.tensor([[5, 6, 7], [1, 2, 3]])  # (B, J)
    expected = [t.clone() for t in tensors]
    for t in expected:
        moved = [t[b, :, source[b]].clone() for b in range(2)]
        for b in range(2):
            t[b, :, target[b]] = moved[b]
    move = torch.compile(move_slots, fullgraph=True, dynamic=False) if compiled else move_slots
    move(tensors, source, target)
    assert all(torch.equal(t, e) for t, e in zip(tensors, expected))
