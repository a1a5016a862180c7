"""Deprecated alias of :mod:`transformers_pard.apps.recipes.smollm2`."""

import warnings

from ..apps.recipes.smollm2 import *  # noqa: F401,F403  (its public names, re-exported)

warnings.warn(
    "transformers_pard.recipes.smollm2 moved to transformers_pard.apps.recipes.smollm2; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
