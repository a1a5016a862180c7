import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from transformers_pard import enable_pard
from transformers_pard.testing import tiny_causal_lm

# Deterministic property tests: the same examples on every machine, no flaky deadlines.
settings.register_profile(
    "pard",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pard"))

from transformers_pard.testing import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)

# Tiny models run fastest on one thread (and do not fight other processes for cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def targets():
    """One PARD-enabled tiny fp32 target per architecture."""
    return {arch: enable_pard(tiny_causal_lm(arch, seed=i)) for i, arch in enumerate(ARCHS)}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
