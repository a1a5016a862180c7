"""Training PARD drafts: mask token setup, the K-copy + COD collator, the Trainer, data and evaluation.

    from transformers_pard.training import PardDataCollator, PardTrainer, prepare_draft

    draft, tokenizer, mask_id, _ = prepare_draft(draft, tokenizer)
    collator = PardDataCollator(mask_token_id=mask_id, k=8, cod_ratio=0.7, cod_min=0.2)
    PardTrainer(model=draft, args=args, train_dataset=examples, data_collator=collator).train()

One module per concern, each importing only those above it:

* ``collator``: the K-copy layout with COD (the literal mask in its docstring); ``data``: jsonl ->
  tokenised examples; ``draft``: the mask token (``prepare_draft``) and PARD-2's projection
  (``attach_pard2``);
* ``config``: ``PardTrainConfig`` / ``Pard2Options`` (also the ``train`` CLI's flags) and the
  ``TrainingArguments`` they give;
* ``losses``: ``pard_loss``, ``cat_weights``, the chunked KD ``distill_kl``, ``pard2_loss``;
* ``target_pass``: the frozen target's features, gold probabilities and logits (PARD-2);
  ``target_cache``: the same, precomputed to disk; ``subset``: a vocabulary-subset head's loss;
* ``trainers``: ``PardTrainer``, ``DistillTrainer``, ``Pard2Trainer``; ``run``: ``train_draft`` end to end;
  ``time_budget``: training for a fixed wall-clock time (``TimeBudget``, ``--time-budget``);
* ``evaluate``: tau, by the engine (``measure_tau``) or teacher-forced (``teacher_forced_tau``).

Separate from the inference engine: nothing in ``transformers_pard`` itself imports this package.
(``training.trainer`` and ``training.pard2`` are deprecated aliases of the old layout.)
"""

from .collator import IGNORE_INDEX, PardDataCollator, PardLayoutConfig, cod_keep_positions, layout_attention
from .config import CACHE_DTYPES, DEFAULT_LAYERS, Pard2Options, PardTrainConfig, optimizer_args, training_arguments
from .data import load_prompts, load_training_examples, tokenize_record
from .draft import MASK_TOKEN_NAME, PreparedDraft, attach_pard2, prepare_draft
from .evaluate import TauReport, TeacherForcedReport, greedy_sequences, measure_tau, teacher_forced_tau
from .losses import cat_weights, distill_kl, pard2_loss, pard_loss
from .run import setup_pard2, train_draft, train_pard2_draft
from .subset import VocabSubset, subset_ids
from .target_pass import TargetPass, run_target
from .time_budget import TimeBudget
from .trainers import DistillTrainer, Pard2Trainer, PardTrainer

__all__ = [
    "CACHE_DTYPES",
    "DEFAULT_LAYERS",
    "IGNORE_INDEX",
    "MASK_TOKEN_NAME",
    "PardDataCollator",
    "PardLayoutConfig",
    "PardTrainConfig",
    "PardTrainer",
    "Pard2Options",
    "DistillTrainer",
    "Pard2Trainer",
    "PreparedDraft",
    "TargetPass",
    "TimeBudget",
    "TauReport",
    "TeacherForcedReport",
    "VocabSubset",
    "attach_pard2",
    "cat_weights",
    "cod_keep_positions",
    "distill_kl",
    "greedy_sequences",
    "layout_attention",
    "load_prompts",
    "load_training_examples",
    "measure_tau",
    "optimizer_args",
    "pard2_loss",
    "pard_loss",
    "prepare_draft",
    "run_target",
    "setup_pard2",
    "subset_ids",
    "teacher_forced_tau",
    "tokenize_record",
    "train_draft",
    "train_pard2_draft",
    "training_arguments",
]
