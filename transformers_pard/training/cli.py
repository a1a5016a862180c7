"""Deprecated alias of :mod:`transformers_pard.apps.train_cli` (the ``train`` command is an application).

The library does not import the applications; this alias is the one exception, kept so that old
imports keep working.
"""

import warnings

from ..apps.train_cli import (
    add_train_parser,
    config_from_args,
    is_main_process,
    pard2_from_args,
    parse_mask_token,
    run_train,
    shutdown_distributed,
)
from .config import CACHE_DTYPES

__all__ = [
    "CACHE_DTYPES", "add_train_parser", "config_from_args", "is_main_process", "pard2_from_args", "parse_mask_token",
    "run_train", "shutdown_distributed",
]

warnings.warn(
    "transformers_pard.training.cli moved to transformers_pard.apps.train_cli; the old path will be removed.",
    DeprecationWarning,
    stacklevel=2,
)
