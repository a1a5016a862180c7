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


def test_the_compiled_gemm_choice_weighs_each_shape_by_its_layers(monkeypatch):
    """The sum over layers decides, not the number of shapes each kernel wins."""
    times = {("onednn", 8): 1.0, ("mkl", 8): 2.0, ("onednn", 100): 5.0, ("mkl", 100): 3.0}
    monkeypatch.setattr(prepack, "mkl_packed_available", lambda: True)
    monkeypatch.setattr(prepack, "_packed_linear_seconds", lambda lib, i, o, bias, rows: times[lib, o])
    model = nn.Sequential(*[nn.Linear(4, 8) for _ in range(3)], nn.Linear(4, 100))
    assert prepack.onednn_gemm_is_faster(model, rows=9) is True  # 3 + 5 = 8 < 6 + 3 = 9
    times["mkl", 100] = 1.0
    assert prepack.onednn_gemm_is_faster(model, rows=9) is False  # 8 > 7


@pytest.mark.skipif(not prepack.mkl_packed_available(), reason="no MKL packed GEMM in this torch build")
def test_both_packed_kernels_time_and_agree():
    prepack._packed_linear_seconds.cache_clear()
    assert all(prepack._packed_linear_seconds(lib, 32, 96, True, 3) > 0 for lib in ("onednn", "mkl"))
    assert prepack._packed_linear_seconds.cache_info().misses == 2
    with torch.no_grad():
        weight, bias, x = torch.randn(96, 32), torch.randn(96), torch.randn(3, 32)
        mkl = torch.ops.mkl._mkl_linear(x, torch.ops.mkl._mkl_reorder_linear_weight(weight, 3), weight, bias, 3)
        onednn = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(weight, 3), bias,
                                                    "none", [], "")
    torch.testing.assert_close(mkl, onednn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mkl, torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
