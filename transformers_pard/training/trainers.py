"""``transformers.Trainer`` for PARD batches: ``PardTrainer`` (PARD), ``DistillTrainer`` (PARD-2's loss
from a target teacher, no features) and ``Pard2Trainer`` (PARD-2).

``PardTrainer.compute_loss`` runs three steps, each a hook: ``draft_inputs`` (the model's keyword
arguments), ``row_logits`` (the draft forward on the labelled rows only) and ``row_loss``;
``DistillTrainer`` adds the target pass and overrides ``loss_weights`` (CAT) and ``row_loss`` (CE + KD);
``Pard2Trainer`` adds the target's features and overrides ``draft_inputs``.
Checkpointing, resuming, activation checkpointing, bf16, logging and multi-process launch
(``accelerate launch``, ``torchrun``) are the Trainer's own.

With ``vocab_ids`` (a vocabulary subset, ``training.subset``) the labels are mapped into subset
indices and the logits are computed over the subset only; the subset is saved with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Trainer

from ..pard2 import PROJ_PREFIX, Pard2Config, StandardizedProjection, draft_inputs_embeds, load_projection_state
from ..pard2 import pard2_fit_problem, read_projection_state, save_projection
from ..vocab import save_vocab_subset
from .collator import IGNORE_INDEX, PardDataCollator
from .config import Pard2Options
from .draft import freeze_all_but_projection
from .losses import cat_weights, pard2_loss, pard_loss
from .subset import VocabSubset, teacher_first
from .target_cache import TargetCache, build_target_cache, is_target_cache
from .target_pass import STATS_EXAMPLES, feature_keep_mask, feature_moments, feature_statistics, row_features
from .target_pass import TargetPass, run_target

#: Attention implementations that take the PARD 4D boolean mask as is (eager would *add* it).
SUPPORTED_ATTENTION = ("sdpa",)
#: Batch entries that describe the layout but are not model inputs.
LAYOUT_KEYS = ("labels", "copy_ids", "target_input_ids", "target_attention_mask", "target_logits", "gold_probs")


def rows_with_loss(labels: torch.Tensor) -> torch.Tensor:
    """Indices of the rows (columns of the (B, N) batch) where any sample has a label: (n,)."""
    return labels.ne(IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def check_attention(model) -> None:
    """The PARD mask is a 4D boolean; only sdpa reads it correctly."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"PARD training needs attn_implementation='sdpa' (got {implementation!r}): the 4D boolean mask "
            "is applied as is. Load the draft with `from_pretrained(..., attn_implementation='sdpa')` or call "
            "`model.set_attn_implementation('sdpa')`."
        )


class PardTrainer(Trainer):
    """``transformers.Trainer`` for PARD batches (from ``PardDataCollator``).

    The loss is a per-micro-batch mean (``pard_loss``); the Trainer divides it by the number of
    gradient accumulation steps. ``loss_fn`` swaps in another loss of the same signature, and
    ``loss_weights`` is the hook for per-row weights (PARD-2 CAT). ``vocab_ids`` (N,): train a
    vocabulary-subset head over these ids (``training.subset``; the coverage of the training set is
    logged once).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: Callable[..., torch.Tensor] = pard_loss,
                 vocab_ids: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Our labels are aligned; the Trainer must not count them as shifted causal-LM labels.
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss_fn
        check_attention(self.model)
        if isinstance(self.data_collator, PardDataCollator):
            self.data_collator.seed_offset = self.args.process_index  # ranks draw different COD rows
        self.vocab = None if vocab_ids is None else VocabSubset(self.model, vocab_ids)
        if self.vocab is not None and self.train_dataset is not None:
            self.vocab.log_coverage(self.train_dataset)

    def loss_weights(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-row loss weights (B, N) or None; PARD-2 overrides this with CAT weights."""
        return None

    def draft_inputs(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keyword arguments of the draft forward: the batch without its layout-only entries."""
        return {key: value for key, value in inputs.items() if key not in LAYOUT_KEYS}

    def row_logits(self, model, draft_inputs: dict[str, torch.Tensor], keep) -> tuple[torch.Tensor, object]:
        """Logits (B, n, V) of the rows ``keep`` (index tensor or slice), or (B, n, N) over the vocabulary
        subset, and the model's output."""
        if self.vocab is not None:
            return self.vocab.logits(self.accelerator.unwrap_model(model), model, draft_inputs, keep)
        outputs = model(**draft_inputs, logits_to_keep=0 if isinstance(keep, slice) else keep, use_cache=False)
        return outputs.logits, outputs

    def row_loss(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor], keep) -> torch.Tensor:
        """Loss of the scored rows ``keep``; ``logits`` (B, n, V) are theirs."""
        weights = self.loss_weights(inputs)
        labels = inputs["labels"][:, keep]  # (B, n)
        return self.loss_fn(logits, labels, None if weights is None else weights[:, keep])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.vocab is not None:
            inputs = {**inputs, "labels": self.vocab.labels(inputs["labels"])}  # (B, N) subset indices
        if self.args.n_gpu > 1:  # DataParallel would split an index tensor across devices: keep every row
            keep = slice(None)
        else:
            keep = rows_with_loss(inputs["labels"])  # (n,) only these rows go through the LM head
        logits, outputs = self.row_logits(model, self.draft_inputs(model, inputs), keep)  # (B, n, V)
        loss = self.row_loss(logits, inputs, keep)
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.vocab is not None and self.args.should_save:  # before the config: pard_vocab_size lands in it
            save_vocab_subset(output_dir, self.vocab.ids, self.accelerator.unwrap_model(self.model).config)
        super()._save(output_dir, state_dict=state_dict)


class DistillTrainer(PardTrainer):
    """``PardTrainer`` with a frozen target as teacher: PARD-2's loss (CAT weights + KD, PARD_NOTES
    section 5) for a draft that takes no target features (``Pard2Options.loss_only``).

    ``target`` is kept as ``self.target_model``, outside the model, and moved to the training device
    unless it was dispatched with a device map. A ``PardDataCollator`` is switched to
    ``with_target_inputs=True``. ``layers`` are the hidden states the target pass keeps (and a target
    cache stores): the last one by default, which is what the cache turns back into KD logits. With
    ``vocab_ids`` the KD teacher is the target's distribution renormalised over the subset.
    """

    def __init__(self, *args, target, pard2: Pard2Options | None = None, vocab_ids: torch.Tensor | None = None,
                 layers: tuple[int, ...] = (-1,), **kwargs):
        if vocab_ids is not None:  # ids the target lacks (e.g. a new mask row) last: see VocabSubset.teacher
            vocab_ids = teacher_first(vocab_ids, target.get_output_embeddings().weight.shape[0])
        super().__init__(*args, vocab_ids=vocab_ids, **kwargs)
        self.pard2_options = pard2 or Pard2Options()
        self.target_layers = tuple(layers)
        if isinstance(self.data_collator, PardDataCollator):
            self.data_collator.with_target_inputs = True
        if getattr(target, "hf_device_map", None) is None:
            target = target.to(self.args.device)
        self.target_model = target.eval().requires_grad_(False)
        self.target_cache = self.open_target_cache() if self.pard2_options.cache else None

    def open_target_cache(self) -> TargetCache:
        """The ``TargetCache`` of ``options.cache``, built first (by the main process) if missing."""
        options = self.pard2_options
        with self.args.main_process_first(desc="PARD-2 target cache"):
            if not is_target_cache(options.cache):
                build_target_cache(self.target_model, self.train_dataset, self.target_layers, options.cache,
                                   dtype=options.cache_dtype, max_length=self.collator_max_length())
        return TargetCache(options.cache, target=self.target_model, layers=self.target_layers,
                           need_logits=options.kd_alpha > 0)

    def collator_max_length(self) -> int | None:
        return getattr(self.data_collator, "max_length", None)

    def run_target_pass(self, inputs: dict[str, torch.Tensor]) -> TargetPass:
        """The target's pass on the batch's real sequences, live or from the cache."""
        if "target_input_ids" not in inputs:
            raise ValueError("Distillation batches need target_input_ids: use PardDataCollator(with_target_inputs=True).")
        ids, attention_mask = inputs["target_input_ids"], inputs["target_attention_mask"]  # (B, L)
        if self.target_cache is not None:
            return self.target_cache.target_pass(ids, attention_mask)
        return run_target(self.target_model, ids, attention_mask, self.target_layers)

    def target_pass(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch entries the target's pass adds (``batch_entries``)."""
        return self.batch_entries(self.run_target_pass(inputs))

    def batch_entries(self, out: TargetPass) -> dict[str, torch.Tensor]:
        """The teacher's part of the batch: its logits (KD) and gold probabilities (CAT)."""
        return {"target_logits": out.logits, "gold_probs": out.gold}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, **self.target_pass(inputs)}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def loss_weights(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return cat_weights(inputs["gold_probs"], inputs["copy_ids"], inputs["position_ids"], inputs["labels"])

    def row_loss(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor], keep) -> torch.Tensor:
        options, teacher = self.pard2_options, inputs["target_logits"]  # (B, L, V_t)
        if self.vocab is not None and teacher is not None:
            teacher = self.vocab.teacher(teacher)  # (B, L, N') the subset ids the target has
        return pard2_loss(
            logits,  # (B, n, V)
            inputs["labels"][:, keep],
            self.loss_weights(inputs)[:, keep],
            teacher,  # row j's teacher is the target at its position
            teacher_positions=inputs["position_ids"][:, keep],
            ce_alpha=options.ce_alpha,
            kd_alpha=options.kd_alpha,
            temperature=options.kd_temperature,
        )


class Pard2Trainer(DistillTrainer):
    """``DistillTrainer`` for a PARD-2 draft: the target's features go into the draft's input embeddings
    too (see ``training.target_pass`` for the alignment of features and rows).

    ``model`` must be PARD-2-ready (``attach_pard2`` or ``run.setup_pard2``); its config's layers and
    scale are the ones used. Checkpoints and ``save_model`` write the draft without ``target_proj`` in
    ``model.safetensors`` plus the projection files; resuming reads them back.
    """

    def __init__(self, *args, target, pard2: Pard2Options | None = None, **kwargs):
        model = kwargs.get("model", args[0] if args else None)  # Trainer's first argument
        config = Pard2Config.from_model_config(model.config) if model is not None else None
        if config is None or getattr(model, "target_proj", None) is None:
            raise ValueError(
                "Pard2Trainer needs a PARD-2 draft: call attach_pard2(draft, options, target_dim=...) first."
            )
        problem = pard2_fit_problem(target.config, config)
        if problem is not None:
            raise ValueError(f"The pard2 layers are out of range for this target. {problem}")
        super().__init__(*args, target=target, pard2=pard2, layers=config.target_layers, **kwargs)
        self.pard2 = config
        if self.pard2_options.standardize and not isinstance(self.model.target_proj, StandardizedProjection):
            self.standardize_projection()
        if self.pard2_options.projection_only:
            freeze_all_but_projection(self.model)
        seed = self.args.seed + 1_000_003 * self.args.process_index
        self.feature_generator = torch.Generator().manual_seed(seed)

    def standardize_projection(self) -> None:
        """Reparameterise ``target_proj`` on standardized features (same function; folded when saved)."""
        if not self.pard2.proj_bias:
            raise ValueError("Standardized PARD-2 features need a bias in target_proj (attach_pard2 sets it).")
        examples = [self.train_dataset[i] for i in range(min(len(self.train_dataset), STATS_EXAMPLES))]
        if self.target_cache is not None:
            mean, std = feature_moments([self.target_cache.features_of(examples, self.collator_max_length())])
        else:
            mean, std = feature_statistics(self.target_model, examples, self.pard2.target_layers)
        draft = self.accelerator.unwrap_model(self.model)
        draft.target_proj = StandardizedProjection.wrap(draft.target_proj, mean, std)

    def batch_entries(self, out: TargetPass) -> dict[str, torch.Tensor]:
        """The teacher's part plus the features; features of dropped samples zeroed."""
        keep = feature_keep_mask(out.gold.shape[0], self.pard2_options.target_feat_mask,
                                 generator=self.feature_generator).to(out.gold.device)  # (B,)
        return {
            **super().batch_entries(out),
            "target_features": out.features * keep[:, None, None].to(out.features.dtype),
            "use_target_features": keep,
        }

    def draft_inputs(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs_embeds`` = embedding + scale * target_proj(row features); plain embedding for dropped samples."""
        draft = self.accelerator.unwrap_model(model)
        input_ids = inputs["input_ids"]  # (B, N)
        features = row_features(inputs["target_features"], inputs["copy_ids"], inputs["position_ids"])  # (B, N, D)
        with_features = draft_inputs_embeds(draft, input_ids, features, self.pard2.scale)  # (B, N, H)
        plain = draft.get_input_embeddings()(input_ids)  # (B, N, H) what independent mode feeds
        embeds = torch.where(inputs["use_target_features"][:, None, None], with_features, plain)
        return {
            "inputs_embeds": embeds,  # (B, N, H)
            "attention_mask": inputs["attention_mask"],
            "position_ids": inputs["position_ids"],
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        draft = self.accelerator.unwrap_model(self.model)
        state_dict = draft.state_dict() if state_dict is None else state_dict
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(PROJ_PREFIX)}
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            save_projection(draft, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        draft = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_projection_state(draft.target_proj, read_projection_state(resume_from_checkpoint))

    def _issue_warnings_after_load(self, load_result) -> None:
        # target_proj is read from its own file by _load_from_checkpoint: not a missing key.
        missing = [key for key in load_result.missing_keys if not key.startswith(PROJ_PREFIX)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))
