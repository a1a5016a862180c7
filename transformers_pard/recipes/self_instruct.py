"""Deprecated alias of :mod:`transformers_pard.apps.recipes.self_instruct`."""

import warnings

from ..apps.recipes.self_instruct import *  # noqa: F401,F403  (its public names, re-exported)

warnings.warn(
    "transformers_pard.recipes.self_instruct moved to transformers_pard.apps.recipes.self_instruct; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
