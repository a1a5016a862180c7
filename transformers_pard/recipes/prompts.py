"""Deprecated alias of :mod:`transformers_pard.apps.recipes.prompts`."""

import warnings

from ..apps.recipes.prompts import *  # noqa: F401,F403  (its public names, re-exported)

warnings.warn(
    "transformers_pard.recipes.prompts moved to transformers_pard.apps.recipes.prompts; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
