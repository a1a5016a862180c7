"""Deprecated alias: PARD-2 training moved to ``training.config`` (``Pard2Options``, ``CACHE_DTYPES``,
``DEFAULT_LAYERS``), ``training.losses`` (``cat_weights``, ``distill_kl``, ``pard2_loss``,
``KD_CHUNK_ELEMENTS``), ``training.target_pass`` (the target's features, gold probabilities and logits),
``training.draft`` (``attach_pard2``, ``freeze_all_but_projection``), ``training.trainers``
(``Pard2Trainer``) and ``training.run`` (``setup_pard2``, ``load_target``, ``train_pard2_draft``).
Import them from there, or from ``transformers_pard.training``. (Setting ``KD_CHUNK_ELEMENTS`` here
has no effect: set ``training.losses.KD_CHUNK_ELEMENTS``.)
"""

import warnings

from .config import CACHE_DTYPES, DEFAULT_LAYERS, Pard2Options
from .draft import attach_pard2, freeze_all_but_projection
from .losses import KD_CHUNK_ELEMENTS, cat_weights, distill_kl, pard2_loss
from .run import load_target, setup_pard2, train_pard2_draft
from .target_pass import STATS_EXAMPLES, TargetPass, check_target_layers, feature_keep_mask, feature_moments
from .target_pass import feature_statistics, gold_probs, pad_right, row_features, run_target
from .trainers import Pard2Trainer

__all__ = [
    "CACHE_DTYPES", "DEFAULT_LAYERS", "KD_CHUNK_ELEMENTS", "Pard2Options", "Pard2Trainer", "STATS_EXAMPLES",
    "TargetPass", "attach_pard2", "cat_weights", "check_target_layers", "distill_kl", "feature_keep_mask",
    "feature_moments", "feature_statistics", "freeze_all_but_projection", "gold_probs", "load_target", "pad_right",
    "pard2_loss", "row_features", "run_target", "setup_pard2", "train_pard2_draft",
]

warnings.warn(
    "transformers_pard.training.pard2 is split into training.config / losses / target_pass / draft / trainers / "
    "run; import from those or from transformers_pard.training (the old path will be removed).",
    DeprecationWarning,
    stacklevel=2,
)
