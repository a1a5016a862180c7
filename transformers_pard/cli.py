"""Deprecated alias of :mod:`transformers_pard.apps.cli` (the applications moved to ``transformers_pard.apps``)."""

import warnings

from .apps.cli import *  # noqa: F401,F403  (its public names, re-exported)
from .apps.demo import DEMO_PROMPTS  # noqa: F401

warnings.warn(
    "transformers_pard.cli moved to transformers_pard.apps.cli; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
