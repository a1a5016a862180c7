"""Training tests run tiny models: one torch thread is fastest and, on a shared machine, far more
robust than two (a busy second core stalls every two-thread op: 5 s vs 97 s for test_learning)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
