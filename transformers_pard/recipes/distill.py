"""Deprecated alias of :mod:`transformers_pard.apps.recipes.distill`."""

import warnings

from ..apps.recipes.distill import *  # noqa: F401,F403  (its public names, re-exported)

warnings.warn(
    "transformers_pard.recipes.distill moved to transformers_pard.apps.recipes.distill; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
