"""Deprecated alias of :mod:`transformers_pard.apps.recipes` (the recipes are applications; the library
does not import them). ``transformers_pard.recipes.<name>`` re-exports ``apps.recipes.<name>``."""

import warnings

warnings.warn(
    "transformers_pard.recipes moved to transformers_pard.apps.recipes; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
