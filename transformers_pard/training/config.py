"""The settings of a training run: ``PardTrainConfig`` (+ ``Pard2Options`` for PARD-2) and the
``TrainingArguments`` they give.

Both dataclasses are also the ``train`` command's flags: ``apps/train_cli.py`` hands them to
transformers' ``HfArgumentParser``. A field's ``metadata`` holds its ``help`` and, where the flag is
not the field's own name, ``flag`` (the flag's name) or ``aliases`` (more spellings); ``cli: False``
keeps a field off the command line. Everything is validated in ``__post_init__``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .collator import PardLayoutConfig
from .time_budget import TIME_BUDGET_SCHEDULER

#: How a target cache may store features (``Pard2Options.cache_dtype``).
CACHE_DTYPES = ("float16", "bfloat16", "float32")
#: The target layers of the published PARD-2 drafts (indices into ``output_hidden_states``).
DEFAULT_LAYERS = (-1, -8, -16, -24)


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class Pard2Options:
    """PARD-2 settings of a training run (the ``--pard2`` CLI flags).

    * ``target``: target model folder or Hub id (or pass a loaded model to ``train_pard2_draft``).
    * ``layers``: target hidden states to concatenate (indices into ``output_hidden_states``; -1 is
      the last layer's normed output). Feature size = target hidden size x ``len(layers)``.
    * ``scale``: the feature term is ``scale * target_proj(feature)``. 0.02, as in the published
      drafts: it keeps the term small next to the token embedding while the projection (zero at
      start) learns; with Adam the term grows by about ``scale * lr`` per feature entry per step.
    * ``proj_bias``: bias in ``target_proj``. Off by default: a bias would be added in dependent
      mode even where the feature is zero, and never in independent mode.
    * ``target_feat_mask``: probability of training a whole sample without features (dual mode).
    * ``ce_alpha``, ``kd_alpha``, ``kd_temperature``: loss mix and KD temperature T (the KL is taken
      between the softmaxes at T and multiplied by T**2 so its gradient scale does not depend on T).
    * ``standardize``: train the projection on standardized features (per-dimension mean / std of
      the target's features over the first ``target_pass.STATS_EXAMPLES`` training examples), stored
      folded into a plain ``target_proj`` with a bias (``pard2.StandardizedProjection``); implies a bias.
    * ``projection_only``: train ``target_proj`` alone; every other weight of the draft stays as
      loaded. Turns an existing PARD-1 draft into a dual-mode one whose target-independent mode *is*
      that draft, unchanged; the backward pass computes no weight gradients for the draft.
    * ``loss_only``: PARD-2's loss (CAT weights + KD from the target) without features: no projection,
      the draft stays a target-independent PARD draft (``training.trainers.DistillTrainer``).
    * ``cache``: folder of precomputed target passes (``training.target_cache``): built on first use
      from the training data, then every epoch reads features, gold probabilities and (through the
      target's output head) KD logits from it instead of running the target. ``cache_dtype``: how
      the features are stored (float16, bfloat16 or float32).
    """

    target: str | None = field(default=None, metadata=_help("target model folder or Hub id (needed with "
                                                            "--pard2; not saved)"))
    layers: tuple[int, ...] = field(default=DEFAULT_LAYERS, metadata=_help(
        "target hidden states to concatenate, indices into output_hidden_states", flag="pard2_layers", metavar="I"))
    scale: float = field(default=0.02, metadata=_help("scale of the feature term", flag="pard2_scale"))
    proj_bias: bool = field(default=False, metadata=_help("give target_proj a bias", flag="pard2_proj_bias"))
    target_feat_mask: float = field(default=0.1, metadata=_help(
        "probability of training a sample without features, for target-independent use"))
    ce_alpha: float = field(default=0.1, metadata=_help("weight of the CE term"))
    kd_alpha: float = field(default=1.0, metadata=_help("weight of the KL(target || draft) term"))
    kd_temperature: float = field(default=1.0, metadata=_help("KD temperature T"))
    standardize: bool = field(default=False, metadata=_help(
        "train target_proj on standardized features (stored folded, with a bias)", flag="pard2_standardize"))
    projection_only: bool = field(default=False, metadata=_help(
        "train target_proj alone (the draft's own weights stay as loaded: its target-independent mode is the "
        "input draft)", flag="pard2_projection_only"))
    loss_only: bool = field(default=False, metadata=_help(
        "PARD-2's loss (CAT + KD from the target) without features: a target-independent PARD draft, no "
        "projection", flag="pard2_loss_only"))
    cache: str | None = field(default=None, metadata=_help(
        "precomputed target passes: built here from the data on first use, then read every epoch instead of "
        "running the target (features, CAT weights, KD logits)", flag="pard2_cache", metavar="DIR"))
    cache_dtype: str = field(default="float16", metadata=_help(
        "how --pard2-cache stores the features", flag="pard2_cache_dtype", choices=CACHE_DTYPES))

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"pard2 layers must be a non-empty list of distinct indices, got {self.layers!r}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"pard2 scale must be a positive number, got {self.scale!r}.")
        if not 0.0 <= self.target_feat_mask <= 1.0:
            raise ValueError(f"target_feat_mask is a probability in [0, 1], got {self.target_feat_mask!r}.")
        if self.ce_alpha < 0 or self.kd_alpha < 0 or self.ce_alpha + self.kd_alpha == 0:
            raise ValueError(f"ce_alpha and kd_alpha must be >= 0, not both 0; got {self.ce_alpha}, {self.kd_alpha}.")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature!r}.")
        if self.loss_only and (self.projection_only or self.standardize):
            raise ValueError("pard2 loss_only trains without features, so there is no projection to train or "
                             "standardize: drop projection_only / standardize, or loss_only.")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}.")


@dataclass(frozen=True)
class PardTrainConfig:
    """Everything ``train_draft`` needs; each field is a ``train`` CLI flag (``--cod-ratio`` for
    ``cod_ratio``), except ``extra_args`` (more ``TrainingArguments``) and ``pard2`` (``--pard2``
    plus the ``Pard2Options`` flags)."""

    draft: str = field(metadata=_help("draft model folder or Hub id (the AR model to start from)"))
    data: tuple[str, ...] = field(metadata=_help("training jsonl file(s)"))
    output: str = field(metadata=_help("output folder: checkpoints and the final draft"))
    k: int = field(default=8, metadata=_help("K: copies per sample = draft tokens per round"))
    cod_ratio: float = field(default=0.7, metadata=_help("COD keep ratio r; 1 disables COD"))
    cod_min: float = field(default=0.2, metadata=_help("COD floor r_min"))
    epochs: float = field(default=1.0, metadata=_help("training epochs"))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimizer steps (overrides epochs)"))
    learning_rate: float = field(default=5e-5, metadata=_help("peak learning rate", aliases=["--lr"]))
    warmup_steps: int = field(default=0, metadata=_help("learning-rate warm-up steps"))
    batch_size: int = field(default=1, metadata=_help("samples per device per step"))
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps"))
    max_length: int = field(default=1024, metadata=_help("real tokens per sample, before the K copies"))
    bf16: bool = field(default=False, metadata=_help("bf16 autocast (fp32 master weights)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("recompute activations to save memory"))
    #: "latest" resumes from the newest checkpoint in ``output`` (if any), else a checkpoint folder.
    resume: str | None = field(default=None, metadata=_help(
        "resume from CHECKPOINT, or (no value) from the newest checkpoint in --output if there is one",
        nargs="?", const="latest", metavar="CHECKPOINT"))
    save_steps: int = field(default=500, metadata=_help("checkpoint every N optimizer steps"))
    save_total_limit: int | None = field(default=2, metadata=_help("checkpoints to keep"))
    logging_steps: int = field(default=10, metadata=_help("log the loss every N optimizer steps"))
    #: a token string or an id (the CLI reads a string of digits as an id)
    mask_token: str | int | None = field(default=None, metadata=_help(
        "mask token string or id; unset: a reserved token, a spare row or a new token"))
    tokenizer: str | None = field(default=None, metadata=_help("tokenizer folder; unset: the draft's"))
    seed: int = field(default=0, metadata=_help("seed of the Trainer and of COD"))
    extra_args: dict = field(default_factory=dict, metadata={"cli": False})
    #: set (a ``Pard2Options``) to train a PARD-2 draft against a target
    pard2: Pard2Options | None = field(default=None, metadata={"cli": False})
    optim: str | None = field(default=None, metadata=_help(
        "optimizer, as TrainingArguments.optim (e.g. sgd); unset: the Trainer's AdamW"))
    optim_args: str | None = field(default=None, metadata=_help(
        "optimizer arguments, as TrainingArguments.optim_args (e.g. momentum=0.9)", metavar="K=V,..."))
    #: train a vocabulary-subset head: logits (and loss) over the N most frequent label ids only
    vocab_subset: int | None = field(default=None, metadata=_help(
        "train a vocabulary-subset head: the N most frequent label ids of the data (EOS and the mask token "
        "always in); the loss never computes full-vocabulary logits", metavar="N"))
    time_budget: float | None = field(default=None, metadata=_help(
        "train for at most this many seconds, the learning rate decaying over the time (cosine after the "
        "warm-up) instead of over the steps; epochs / max steps still cap the run", metavar="SECONDS"))

    def __post_init__(self):
        object.__setattr__(self, "data", (self.data,) if isinstance(self.data, str) else tuple(self.data))
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
        if self.pard2 is not None and not isinstance(self.pard2, Pard2Options):
            raise ValueError(f"pard2 must be a Pard2Options or None, got {type(self.pard2).__name__}.")
        if self.vocab_subset is not None and self.vocab_subset < 1:
            raise ValueError(f"vocab_subset is a number of token ids (>= 1) or None, got {self.vocab_subset}.")
        optimizer_args(self.optim, self.optim_args)  # validates the pair
        if self.time_budget is not None:
            if not (math.isfinite(self.time_budget) and self.time_budget > 0):
                raise ValueError(f"time_budget is a positive number of seconds, got {self.time_budget!r}.")
            scheduler = self.extra_args.get("lr_scheduler_type", TIME_BUDGET_SCHEDULER)
            if getattr(scheduler, "value", scheduler) != TIME_BUDGET_SCHEDULER:  # a string or a SchedulerType
                raise ValueError(f"time_budget decays the learning rate over the time itself; lr_scheduler_type "
                                 f"{scheduler!r} would decay it over the steps too: drop one of them.")


def optimizer_args(optim: str | None, optim_args: str | None) -> dict:
    """The ``TrainingArguments`` optimizer keys that were set (none: the Trainer's default AdamW)."""
    if optim_args is not None and optim is None:
        raise ValueError("--optim-args needs --optim (the optimizer they are for).")
    return {key: value for key, value in (("optim", optim), ("optim_args", optim_args)) if value is not None}


def on_accelerator() -> bool:
    """Whether a CUDA / ROCm, XPU or MPS device is there to train on."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or (xpu is not None and xpu.is_available()) or torch.backends.mps.is_available()


def training_arguments(config: PardTrainConfig) -> TrainingArguments:
    """``TrainingArguments`` for a PARD run (the layout needs every batch key, so no column removal)."""
    kwargs = dict(
        output_dir=config.output,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        bf16=config.bf16,
        use_cpu=not on_accelerator(),
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
        **optimizer_args(config.optim, config.optim_args),
    )
    if config.time_budget is not None:  # warm-up, then flat: training.time_budget.TimeBudget decays it
        kwargs["lr_scheduler_type"] = TIME_BUDGET_SCHEDULER
    kwargs.update(config.extra_args)
    return TrainingArguments(**kwargs)
