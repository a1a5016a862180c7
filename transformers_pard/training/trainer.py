"""Deprecated alias: this module's names moved to ``training.config`` (``PardTrainConfig``,
``optimizer_args``, ``training_arguments``), ``training.losses`` (``pard_loss``), ``training.trainers``
(``PardTrainer``, ``check_attention``, ``rows_with_loss``) and ``training.run`` (``train_draft``,
``load_draft``, ``resume_checkpoint``, ``check_no_mask_token``). Import them from there, or from
``transformers_pard.training``.
"""

import warnings

from .collator import IGNORE_INDEX, PardDataCollator, PardLayoutConfig
from .config import PardTrainConfig, optimizer_args, training_arguments
from .losses import pard_loss
from .run import check_no_mask_token, load_draft, resume_checkpoint, train_draft
from .trainers import LAYOUT_KEYS, SUPPORTED_ATTENTION, PardTrainer, check_attention, rows_with_loss

__all__ = [
    "IGNORE_INDEX", "LAYOUT_KEYS", "SUPPORTED_ATTENTION", "PardDataCollator", "PardLayoutConfig", "PardTrainConfig",
    "PardTrainer", "check_attention", "check_no_mask_token", "load_draft", "optimizer_args", "pard_loss",
    "resume_checkpoint", "rows_with_loss", "train_draft", "training_arguments",
]

warnings.warn(
    "transformers_pard.training.trainer is split into training.config / losses / trainers / run; import from "
    "those or from transformers_pard.training (the old path will be removed).",
    DeprecationWarning,
    stacklevel=2,
)
