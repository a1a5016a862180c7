"""PARD draft training on ``transformers.Trainer``: the loss, the trainer, and the end-to-end recipe.

* ``pard_loss``: cross-entropy on already aligned labels (the PARD layout has no "next row"), with
  optional per-row weights. PARD-2's CAT weights (and, later, its KD term) go through this function.
* ``PardTrainer``: ``Trainer`` whose ``compute_loss`` feeds the PARD batch (4D boolean mask, explicit
  position ids) to the model and scores only the rows that carry a label. Checkpointing, resuming,
  activation checkpointing, bf16, logging and multi-process launch (``accelerate launch``, ``torchrun``)
  are the Trainer's own.
* ``PardTrainConfig`` + ``train_draft``: load a draft folder, ``prepare_draft`` it, read jsonl data,
  train and save a plain HF model folder (safetensors + tokenizer + ``pard_token`` / ``spd_type``).
  With ``PardTrainConfig.pard2`` set, the same recipe trains a PARD-2 draft (``training/pard2.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .collator import IGNORE_INDEX, PardDataCollator, PardLayoutConfig

if TYPE_CHECKING:
    from .pard2 import Pard2Options

logger = logging.getLogger(__name__)

#: Attention implementations that take the PARD 4D boolean mask as is (eager would *add* it).
SUPPORTED_ATTENTION = ("sdpa",)
#: Batch entries that describe the layout but are not model inputs.
LAYOUT_KEYS = ("labels", "copy_ids", "target_input_ids", "target_attention_mask")


def pard_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled rows; labels are aligned (row n predicts ``labels[n]``).

    Args:
        logits: (B, N, V) draft logits.
        labels: (B, N) target ids, -100 where no loss.
        weights: optional (B, N) per-row weights (e.g. PARD-2 CAT weights); the weighted sum is still
            divided by the number of labelled rows, so weights below 1 lower a row's share.
    """
    per_row = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B*N,), 0 on ignored rows
    if weights is not None:
        per_row = per_row * weights.flatten().to(per_row.dtype)
    labelled = labels.ne(IGNORE_INDEX).sum()
    return per_row.sum() / labelled.clamp(min=1)


def rows_with_loss(labels: torch.Tensor) -> torch.Tensor:
    """Indices of the rows (columns of the (B, N) batch) where any sample has a label: (n,)."""
    return labels.ne(IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


class PardTrainer(Trainer):
    """``transformers.Trainer`` for PARD batches (from ``PardDataCollator``).

    The loss is a per-micro-batch mean (``pard_loss``); the Trainer divides it by the number of
    gradient accumulation steps. ``loss_fn`` swaps in another loss of the same signature, and
    ``loss_weights`` is the hook for per-row weights (PARD-2 CAT). ``compute_loss`` runs three steps,
    each a hook: ``draft_inputs`` (the model's keyword arguments), the draft forward on the labelled
    rows, and ``row_loss``; ``Pard2Trainer`` overrides the two hooks and nothing else.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: Callable[..., torch.Tensor] = pard_loss, **kwargs):
        super().__init__(*args, **kwargs)
        # Our labels are aligned; the Trainer must not count them as shifted causal-LM labels.
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss_fn
        check_attention(self.model)
        if isinstance(self.data_collator, PardDataCollator):
            self.data_collator.seed_offset = self.args.process_index  # ranks draw different COD rows

    def loss_weights(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-row loss weights (B, N) or None; PARD-2 overrides this with CAT weights."""
        return None

    def draft_inputs(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keyword arguments of the draft forward: the batch without its layout-only entries."""
        return {key: value for key, value in inputs.items() if key not in LAYOUT_KEYS}

    def row_loss(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor], keep) -> torch.Tensor:
        """Loss of the scored rows ``keep`` (index tensor or slice); ``logits`` (B, n, V) are theirs."""
        weights = self.loss_weights(inputs)
        labels = inputs["labels"][:, keep]  # (B, n)
        return self.loss_fn(logits, labels, None if weights is None else weights[:, keep])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]  # (B, N) aligned
        if self.args.n_gpu > 1:  # DataParallel would split an index tensor across devices: keep every row
            keep, logits_to_keep = slice(None), 0
        else:
            keep = logits_to_keep = rows_with_loss(labels)  # (n,) only these rows go through the LM head
        outputs = model(**self.draft_inputs(model, inputs), logits_to_keep=logits_to_keep, use_cache=False)
        loss = self.row_loss(outputs.logits, inputs, keep)  # logits (B, n, V)
        return (loss, outputs) if return_outputs else loss


def check_attention(model) -> None:
    """The PARD mask is a 4D boolean; only sdpa reads it correctly."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"PARD training needs attn_implementation='sdpa' (got {implementation!r}): the 4D boolean mask "
            "is applied as is. Load the draft with `from_pretrained(..., attn_implementation='sdpa')` or call "
            "`model.set_attn_implementation('sdpa')`."
        )


@dataclass(frozen=True)
class PardTrainConfig:
    """Everything ``train_draft`` needs; mirrors the ``train`` CLI flags."""

    draft: str
    data: tuple[str, ...]
    output: str
    k: int = 8
    cod_ratio: float = 0.7
    cod_min: float = 0.2
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    warmup_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 1024
    bf16: bool = False
    gradient_checkpointing: bool = False
    #: "latest" resumes from the newest checkpoint in ``output`` (if any), else a checkpoint folder.
    resume: str | None = None
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 10
    mask_token: str | int | None = None
    tokenizer: str | None = None
    seed: int = 0
    extra_args: dict = field(default_factory=dict)
    #: set (a ``training.pard2.Pard2Options``) to train a PARD-2 draft against a target
    pard2: Pard2Options | None = None

    def __post_init__(self):
        PardLayoutConfig(k=self.k, cod_ratio=self.cod_ratio, cod_min=self.cod_min)  # validates K and COD
        if not self.data:
            raise ValueError("At least one training data file is needed.")
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}.")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("Set epochs > 0 or max_steps > 0.")
        if self.pard2 is not None:
            from .pard2 import Pard2Options

            if not isinstance(self.pard2, Pard2Options):
                raise ValueError(f"pard2 must be a Pard2Options or None, got {type(self.pard2).__name__}.")


def optimizer_args(optim: str | None, optim_args: str | None) -> dict:
    """The ``TrainingArguments`` optimizer keys that were set (none: the Trainer's default AdamW)."""
    if optim_args is not None and optim is None:
        raise ValueError("--optim-args needs --optim (the optimizer they are for).")
    return {key: value for key, value in (("optim", optim), ("optim_args", optim_args)) if value is not None}


def training_arguments(config: PardTrainConfig) -> TrainingArguments:
    """``TrainingArguments`` for a PARD run (the layout needs every batch key, so no column removal)."""
    on_accelerator = (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or torch.backends.mps.is_available()
    )
    kwargs = dict(
        output_dir=config.output,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        bf16=config.bf16,
        use_cpu=not on_accelerator,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        remove_unused_columns=False,
        seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
    )
    kwargs.update(config.extra_args)
    return TrainingArguments(**kwargs)


def load_draft(path: str, *, tokenizer_path: str | None = None):
    """The draft (fp32 weights, sdpa attention) and its tokenizer, from local folders or Hub ids.

    A compact draft folder (``draft_io``: no embedding, borrowed from the target at load time) is refused:
    loading it as a model would train on a randomly initialised embedding.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..draft_io import is_compact_draft

    if is_compact_draft(AutoConfig.from_pretrained(path)):
        raise ValueError(
            f"{path} is a compact draft: it stores no embedding (it borrows the target's at load time), so it "
            "cannot be trained as it is. Write a full folder first: draft_io.export_full_draft("
            "draft_io.load_draft(path, target=target), out_dir, tokenizer=tokenizer), and train from out_dir."
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return model, tokenizer


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


def train_draft(config: PardTrainConfig, *, callbacks: Sequence | None = None, target=None) -> Path:
    """Train a PARD draft end to end; returns the folder holding the final model.

    With ``config.pard2`` set this trains a PARD-2 draft: ``target`` (a loaded model; default: loaded
    from ``config.pard2.target``) supplies features, CAT weights and the KD teacher, and is not saved.
    """
    from .data import load_training_examples
    from .draft import prepare_draft

    model, tokenizer = load_draft(config.draft, tokenizer_path=config.tokenizer)
    model, tokenizer, mask_id, source = prepare_draft(model, tokenizer, mask_token=config.mask_token)
    logger.info("Mask token id %d (%s).", mask_id, source)
    examples = load_training_examples(config.data, tokenizer, max_length=config.max_length)
    check_no_mask_token(examples, mask_id)
    trainer_cls, pard2_kwargs = PardTrainer, {}
    if config.pard2 is not None:
        from .pard2 import Pard2Trainer, setup_pard2

        target = setup_pard2(model, config.pard2, target=target, bf16=config.bf16)
        trainer_cls, pard2_kwargs = Pard2Trainer, {"target": target, "pard2": config.pard2}
    elif target is not None:
        raise ValueError("A target was given but config.pard2 is unset: PARD-1 training uses no target.")
    collator = PardDataCollator(
        mask_token_id=mask_id,
        k=config.k,
        cod_ratio=config.cod_ratio,
        cod_min=config.cod_min,
        seed=config.seed,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else mask_id,
        max_length=config.max_length,
        with_target_inputs=config.pard2 is not None,
    )
    trainer = trainer_cls(
        model=model,
        args=training_arguments(config),
        train_dataset=examples,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
        **pard2_kwargs,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    trainer.save_model(config.output)  # model (safetensors) + config with pard_token + tokenizer (+ PARD-2 projection)
    return Path(config.output)
