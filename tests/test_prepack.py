"""Pre-packed CPU linear weights: a view of the model, packed only where packing is faster."""

import pytest
import torch
from torch import nn

from transformers_pard import prepack
from transformers_pard.prepack import PackedLinear, packed_is_faster, packed_view, prepack_available
from transformers_pard.testing import tiny_causal_lm

pytestmark = pytest.mark.skipif(not prepack_available(torch.device("cpu"), torch.float32),
                                reason="no oneDNN packed linear on this CPU build")


def linears(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, PackedLinear))]


def test_packed_view_agrees_with_the_model_and_leaves_it_untouched(monkeypatch):
    monkeypatch.setattr(prepack, "packed_is_faster", lambda *shape: True)
    model = tiny_causal_lm("llama", seed=0).eval()
    view = packed_view(model, rows=9)
    assert all(isinstance(m, PackedLinear) for m in linears(view))
    assert all(isinstance(m, nn.Linear) for m in linears(model))  # the user's model keeps its modules
    ids = torch.randint(3, 90, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(view(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_shapes_that_are_not_faster_packed_keep_the_stock_kernel(monkeypatch):
    head = tiny_causal_lm("llama", seed=0).lm_head
    monkeypatch.setattr(prepack, "packed_is_faster", lambda i, o, bias, rows: o == head.out_features)
    model = tiny_causal_lm("llama", seed=0)
    view = packed_view(model, rows=1)
    assert isinstance(view.lm_head, PackedLinear)
    assert all(isinstance(m, nn.Linear) for m in linears(view.model))
    assert view.model is model.model  # nothing packed below it: shared, not copied
    monkeypatch.setattr(prepack, "packed_is_faster", lambda *shape: False)
    assert packed_view(model, rows=1) is model


def test_the_choice_is_measured_once_per_shape():
    packed_is_faster.cache_clear()
    first = packed_is_faster(64, 256, False, 4)
    assert isinstance(first, bool)
    assert packed_is_faster(64, 256, False, 4) is first
    assert packed_is_faster.cache_info().hits == 1


def test_measuring_leaves_the_global_random_stream_alone():
    packed_is_faster.cache_clear()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    packed_is_faster(32, 96, True, 2)
    assert torch.equal(torch.rand(3), expected)
