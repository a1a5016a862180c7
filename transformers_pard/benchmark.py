"""Deprecated alias of :mod:`transformers_pard.apps.benchmark` (the applications moved to ``transformers_pard.apps``)."""

import warnings

from .apps.benchmark import *  # noqa: F401,F403  (its public names, re-exported)
from .apps.report import *  # noqa: F401,F403  (the report half of the old module: format_table, environment, ...)

warnings.warn(
    "transformers_pard.benchmark moved to transformers_pard.apps.benchmark; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
