"""Training PARD drafts: mask token setup, the K-copy + COD collator, the Trainer, data and evaluation.

    from transformers_pard.training import PardDataCollator, PardTrainer, prepare_draft

    draft, tokenizer, mask_id, _ = prepare_draft(draft, tokenizer)
    collator = PardDataCollator(mask_token_id=mask_id, k=8, cod_ratio=0.7, cod_min=0.2)
    PardTrainer(model=draft, args=args, train_dataset=examples, data_collator=collator).train()

PARD-2 (a frozen target supplies features, CAT weights and the KD teacher): ``train_pard2_draft`` or
``Pard2Trainer`` (see ``training/pard2.py``).

Separate from the inference engine: nothing here is imported by ``transformers_pard`` itself.
"""

from .collator import IGNORE_INDEX, PardDataCollator, PardLayoutConfig, cod_keep_positions, layout_attention
from .data import load_prompts, load_training_examples, tokenize_record
from .draft import MASK_TOKEN_NAME, PreparedDraft, prepare_draft
from .evaluate import TauReport, TeacherForcedReport, measure_tau, teacher_forced_tau
from .pard2 import Pard2Options, Pard2Trainer, attach_pard2, cat_weights, pard2_loss, train_pard2_draft
from .trainer import PardTrainConfig, PardTrainer, pard_loss, train_draft, training_arguments

__all__ = [
    "IGNORE_INDEX",
    "MASK_TOKEN_NAME",
    "PardDataCollator",
    "PardLayoutConfig",
    "PardTrainConfig",
    "PardTrainer",
    "Pard2Options",
    "Pard2Trainer",
    "PreparedDraft",
    "TauReport",
    "TeacherForcedReport",
    "attach_pard2",
    "cat_weights",
    "cod_keep_positions",
    "layout_attention",
    "load_prompts",
    "load_training_examples",
    "measure_tau",
    "pard2_loss",
    "pard_loss",
    "prepare_draft",
    "teacher_forced_tau",
    "tokenize_record",
    "train_draft",
    "train_pard2_draft",
    "training_arguments",
]
