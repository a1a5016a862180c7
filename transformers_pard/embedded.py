"""Deprecated alias of :mod:`transformers_pard.apps.embedded` (the applications moved to ``transformers_pard.apps``)."""

import warnings

from .apps.embedded import *  # noqa: F401,F403  (its public names, re-exported)

warnings.warn(
    "transformers_pard.embedded moved to transformers_pard.apps.embedded; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
