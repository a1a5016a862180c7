"""A training run end to end: ``train_draft(PardTrainConfig)`` (and ``train_pard2_draft``).

Load a draft folder, ``prepare_draft`` it, read the jsonl data, train and save a plain HF model folder
(safetensors + tokenizer + ``pard_token`` / ``spd_type``). With ``PardTrainConfig.pard2`` set the same
run trains a PARD-2 draft (``setup_pard2``: load the target, check the layers, attach the projection);
with ``vocab_subset`` set, a vocabulary-subset head over the most frequent label ids of the data.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint

from ..draft_io import is_compact_draft
from ..vocab import attach_vocab_subset
from .collator import PardDataCollator
from .config import Pard2Options, PardTrainConfig, training_arguments
from .data import load_training_examples
from .draft import attach_pard2, prepare_draft
from .subset import subset_ids
from .target_pass import check_target_layers
from .time_budget import TimeBudget
from .trainers import DistillTrainer, Pard2Trainer, PardTrainer

logger = logging.getLogger(__name__)


def load_draft(path: str, *, tokenizer_path: str | None = None):
    """The draft (fp32 weights, sdpa attention, full vocabulary) and its tokenizer, from local folders or
    Hub ids.

    A compact draft folder (``draft_io``: no embedding, borrowed from the target at load time) is refused:
    loading it as a model would train on a randomly initialised embedding. A vocabulary subset recorded
    in the folder is dropped (``vocab_subset`` chooses the run's own).
    """
    if is_compact_draft(AutoConfig.from_pretrained(path)):
        raise ValueError(
            f"{path} is a compact draft: it stores no embedding (it borrows the target's at load time), so it "
            "cannot be trained as it is. Write a full folder first: draft_io.export_full_draft("
            "draft_io.load_draft(path, target=target), out_dir, tokenizer=tokenizer), and train from out_dir."
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    attach_vocab_subset(model, None)
    return model, tokenizer


def load_target(path: str, *, bf16: bool = False):
    """The target for PARD-2 training (sdpa; bf16 when training in bf16). The trainer freezes it."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def setup_pard2(draft, options: Pard2Options, *, target=None, bf16: bool = False):
    """Load the target if needed, check the layers and attach the projection (none with
    ``options.loss_only``); returns the target."""
    if target is None:
        if options.target is None:
            raise ValueError("PARD-2 training needs a target: set Pard2Options.target (--target) or pass target=.")
        target = load_target(options.target, bf16=bf16)
    if not options.loss_only:
        attach_pard2(draft, options, target_dim=check_target_layers(target, options.layers))
    return target


def resume_checkpoint(config: PardTrainConfig) -> str | None:
    """The checkpoint to resume from: ``resume`` itself, the newest in ``output`` for "latest", or None."""
    if config.resume is None:
        return None
    if config.resume != "latest":
        return config.resume
    latest = get_last_checkpoint(config.output) if Path(config.output).is_dir() else None
    if latest is None:
        logger.info("No checkpoint in %s yet: starting from the draft.", config.output)
    return latest


def check_no_mask_token(examples: Sequence[dict], mask_id: int) -> None:
    """Fail before training, not hours in, if the data contains the mask token id."""
    for index, example in enumerate(examples):
        if mask_id in example["input_ids"]:
            raise ValueError(
                f"Training example {index} contains the mask token id {mask_id}; pick another --mask-token."
            )


def run_vocab_ids(config: PardTrainConfig, model, tokenizer, examples, mask_id: int) -> torch.Tensor | None:
    """The run's vocabulary subset (``config.vocab_subset`` most frequent label ids, EOS and the mask
    token always in), or None for a full-vocabulary head."""
    if config.vocab_subset is None:
        return None
    rows = model.get_output_embeddings().weight.shape[0]
    return subset_ids(examples, config.vocab_subset, vocab_size=rows, always=(tokenizer.eos_token_id, mask_id))


def make_collator(config: PardTrainConfig, tokenizer, mask_id: int) -> PardDataCollator:
    return PardDataCollator(
        mask_token_id=mask_id,
        k=config.k,
        cod_ratio=config.cod_ratio,
        cod_min=config.cod_min,
        seed=config.seed,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else mask_id,
        max_length=config.max_length,
        with_target_inputs=config.pard2 is not None,
    )


def time_budget_callbacks(config: PardTrainConfig) -> list:
    """``[TimeBudget]`` when the run has a time budget, else none."""
    return [] if config.time_budget is None else [TimeBudget(config.time_budget, warmup_steps=config.warmup_steps)]


def train_draft(config: PardTrainConfig, *, callbacks: Sequence | None = None, target=None) -> Path:
    """Train a PARD draft end to end; returns the folder holding the final model.

    With ``config.pard2`` set this trains a PARD-2 draft (``loss_only``: a PARD draft with PARD-2's loss):
    ``target`` (a loaded model; default: loaded from ``config.pard2.target``) supplies features, CAT weights
    and the KD teacher, and is not saved.
    """
    model, tokenizer = load_draft(config.draft, tokenizer_path=config.tokenizer)
    model, tokenizer, mask_id, source = prepare_draft(model, tokenizer, mask_token=config.mask_token)
    logger.info("Mask token id %d (%s).", mask_id, source)
    examples = load_training_examples(config.data, tokenizer, max_length=config.max_length)
    check_no_mask_token(examples, mask_id)
    trainer_cls, extra = PardTrainer, {"vocab_ids": run_vocab_ids(config, model, tokenizer, examples, mask_id)}
    if config.pard2 is not None:
        target = setup_pard2(model, config.pard2, target=target, bf16=config.bf16)
        trainer_cls = DistillTrainer if config.pard2.loss_only else Pard2Trainer
        extra = {**extra, "target": target, "pard2": config.pard2}
    elif target is not None:
        raise ValueError("A target was given but config.pard2 is unset: PARD-1 training uses no target.")
    trainer = trainer_cls(
        model=model,
        args=training_arguments(config),
        train_dataset=examples,
        data_collator=make_collator(config, tokenizer, mask_id),
        processing_class=tokenizer,
        callbacks=[*(callbacks or []), *time_budget_callbacks(config)],
        **extra,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    trainer.save_model(config.output)  # model + config (pard_token, ...) + tokenizer (+ projection, vocab subset)
    return Path(config.output)


def train_pard2_draft(config: PardTrainConfig, *, target=None, callbacks: Sequence | None = None) -> Path:
    """Train a PARD-2 draft end to end (``train_draft`` with ``config.pard2``, default options if unset).

    ``target`` is a loaded target model; without it the target is loaded from ``config.pard2.target``.
    Returns the output folder (plain HF draft + tokenizer + PARD-2 config keys + projection files),
    which ``transformers_pard.PardAutoModelForCausalLM.from_pretrained`` loads with its ``target_proj``.
    """
    if config.pard2 is None:
        config = dataclasses.replace(config, pard2=Pard2Options())
    return train_draft(config, target=target, callbacks=callbacks)
