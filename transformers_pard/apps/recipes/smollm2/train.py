"""Stage 2, ``train``: draft = the target's first ``num_layers`` layers + its (frozen) embedding, the
mask token's row trainable; PARD training with COD on the distilled data (PARD-2: CAT + KD + the
target's features, the target running in this process). ``--k 1`` gives the autoregressive baseline
draft of identical architecture and data. The run's settings are recorded in ``recipe.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from ....draft_io import export_full_draft, is_compact_draft, load_draft
from ....training import Pard2Options, PardTrainConfig, train_draft
from ...embedded import load_smollm2
from .common import MASK_TOKEN, TrainSettings, training_files, use_bf16, write_record


def build_cut_draft(target, num_layers: int, *, layers: Sequence[int] | None = None):
    """A fresh model of the target's config cut to ``num_layers`` layers, weights copied: the target's
    first ones, or its ``layers`` in that order (e.g. ``(0, 1, -1)``: the first two and the last)."""
    chosen = target_layer_choice(target.config.num_hidden_layers, num_layers, layers)
    draft = model_of_target_layers(target.config, target.config, chosen)
    own = draft.state_dict()
    copied = {name: tensor for name, tensor in target.state_dict().items()
              if name in own and not name.startswith("model.layers.")}
    draft.load_state_dict(copied, strict=False)
    for i, source in enumerate(chosen):
        draft.model.layers[i].load_state_dict(target.model.layers[source].state_dict())
    draft.tie_weights()
    return draft


def model_of_target_layers(config, target_config, chosen: Sequence[int]):
    """A fresh fp32 model of ``config`` (without its quantization settings) with one layer per ``chosen``
    target layer, each of that layer's type; its weights are left for the caller to copy."""
    config = type(config).from_dict(config.to_dict())
    config.num_hidden_layers = len(chosen)
    if getattr(config, "layer_types", None):
        config.layer_types = [target_config.layer_types[i] for i in chosen]
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def target_layer_choice(target_layers: int, num_layers: int, layers: Sequence[int] | None) -> list[int]:
    """The target layers a cut copies, as non-negative indices: the first ``num_layers``, or ``layers``
    (negative counting from the last), which must be ``num_layers`` distinct layers in increasing order."""
    if layers is None:
        chosen = list(range(num_layers))
    else:
        chosen = [i + target_layers if i < 0 else i for i in layers]
        if len(chosen) != num_layers:
            raise ValueError(f"--target-layers names {len(chosen)} layers, --num-layers is {num_layers}: "
                             f"name {num_layers}.")
        if any(b <= a for a, b in zip(chosen, chosen[1:])):
            raise ValueError(f"--target-layers {list(layers)}: name distinct layers in the target's order.")
    if not chosen or not 0 <= chosen[0] <= chosen[-1] < target_layers:
        raise ValueError(f"the target has layers 0..{target_layers - 1}, the draft asks for {chosen}.")
    return chosen


def grow_draft(draft, target, num_layers: int):
    """``draft`` deepened to ``num_layers``: its own layers, then the target's next layers with the
    outputs of their residual branches (attention ``o_proj``, MLP ``down_proj``) zeroed. A zeroed branch
    adds nothing, so the grown draft computes exactly what ``draft`` did and training starts from its
    accuracy with the new layers' capacity (function-preserving growth); everything but the new layers
    (embedding, final norm, config entries such as the mask token) is the draft's."""
    have = draft.config.num_hidden_layers
    if num_layers <= have:
        raise ValueError(f"growing a {have}-layer draft needs more layers than {have}, got {num_layers}.")
    if num_layers > target.config.num_hidden_layers:
        raise ValueError(f"the target has {target.config.num_hidden_layers} layers to grow from, "
                         f"{num_layers} were asked.")
    grown = model_of_target_layers(draft.config, target.config, range(num_layers))
    grown.load_state_dict(draft.state_dict(), strict=False)
    for i in range(have, num_layers):
        layer = grown.model.layers[i]
        layer.load_state_dict(target.model.layers[i].state_dict())
        for branch_output in (layer.self_attn.o_proj, layer.mlp.down_proj):
            for tensor in branch_output.parameters():
                tensor.data.zero_()
    grown.tie_weights()
    return grown


class FreezeEmbeddingExceptMask(TrainerCallback):
    """Trainer callback: the borrowed embedding/head stays the target's; only the mask row learns.

    ``mask_token_id=None`` freezes the whole embedding (a draft whose mask row is already trained): the
    tied head then costs no weight gradient, about a third of its backward.
    """

    def __init__(self, mask_token_id: int | None):
        self.mask_token_id = mask_token_id

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weight = model.get_input_embeddings().weight
        if self.mask_token_id is None:
            weight.requires_grad_(False)
            return
        row_mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        row_mask[self.mask_token_id] = 1
        weight.register_hook(lambda grad: grad * row_mask)


def hidden_state_stats(target, input_ids: torch.Tensor) -> list[dict]:
    """Per ``output_hidden_states`` index: rms over all positions, rms and max |h| without position 0."""
    with torch.no_grad():
        states = target(input_ids, output_hidden_states=True).hidden_states
    return [{"index": i, "rms": h.float().pow(2).mean().sqrt().item(),
             "rms_after_first": h[:, 1:].float().pow(2).mean().sqrt().item(),
             "max_after_first": h[:, 1:].float().abs().max().item()} for i, h in enumerate(states)]


def weights_digest(folder: str) -> str:
    """The first 12 hex digits of the sha256 of a draft folder's ``model.safetensors``."""
    digest = hashlib.sha256()
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def full_draft_folder(folder: str, out_dir: str) -> str:
    """``folder`` itself, or, for a compact draft (such as the shipped one), a full copy of it written
    once under ``out_dir`` (training needs the embedding in the folder). The copy is named by the compact
    folder's weights (``full-<name>-<digest>``), so a draft that changed in place is never trained from a
    stale copy."""
    if not is_compact_draft(AutoConfig.from_pretrained(folder)):
        return folder
    full = os.path.join(out_dir, f"full-{os.path.basename(os.path.normpath(folder))}-{weights_digest(folder)}")
    if not os.path.exists(os.path.join(full, "config.json")):
        draft = load_draft(folder, target=load_smollm2()[0], dtype=torch.float32)
        export_full_draft(draft, full, tokenizer=AutoTokenizer.from_pretrained(folder))
    return full


def grown_draft_folder(folder: str, out_dir: str, num_layers: int) -> str:
    """``folder``'s draft grown to ``num_layers`` (``grow_draft``), written once under ``out_dir`` as
    ``grown-l{N}-<name>-<digest>`` beside a copy of its other files (tokenizer, vocabulary subset)."""
    name = os.path.basename(os.path.normpath(folder))
    grown_dir = os.path.join(out_dir, f"grown-l{num_layers}-{name}-{weights_digest(folder)}")
    if not os.path.exists(os.path.join(grown_dir, "config.json")):
        draft = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        grown = grow_draft(draft, load_smollm2()[0], num_layers)
        shutil.copytree(folder, grown_dir, ignore=shutil.ignore_patterns("checkpoint-*", "model.safetensors",
                                                                          "config.json", "training_args.bin",
                                                                          "recipe.json"))
        grown.save_pretrained(grown_dir)
    return grown_dir


def init_draft_folder(out_dir: str, settings: TrainSettings) -> str:
    """Where training starts: ``--init-from`` (a full copy if compact; grown to ``--num-layers`` when
    that is deeper than the draft), else the fresh cut of the target (``--target-layers``, default the
    first N), written once to ``out_dir/cut-l{layers}[-t{target layers}]`` (the same starting point for
    every K / mode)."""
    if settings.init_from:
        folder = full_draft_folder(settings.init_from, out_dir)
        have = AutoConfig.from_pretrained(folder).num_hidden_layers
        if settings.num_layers < have:
            raise ValueError(f"--init-from {settings.init_from} has {have} layers, --num-layers asks for "
                             f"{settings.num_layers}: pass --num-layers {have} (or more, to grow it).")
        return folder if settings.num_layers == have else grown_draft_folder(folder, out_dir, settings.num_layers)
    choice = "-t" + "_".join(map(str, settings.target_layers)) if settings.target_layers else ""
    init_dir = os.path.join(out_dir, f"cut-l{settings.num_layers}{choice}")
    if not os.path.exists(os.path.join(init_dir, "config.json")):
        target, tokenizer = load_smollm2()
        build_cut_draft(target, settings.num_layers, layers=settings.target_layers or None).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
    return init_dir


def train_config(settings: TrainSettings, *, draft: str, data: tuple[str, ...], output: str, bf16: bool) -> PardTrainConfig:
    """The ``PardTrainConfig`` of a recipe run: cosine schedule (over the steps, or over ``time_budget``
    seconds), no weight decay, resumable, the recipe's mask token (and PARD-2 options when ``settings.pard2``)."""
    s = settings
    pard2 = Pard2Options(layers=s.pard2_layers, scale=s.pard2_scale, standardize=s.pard2_standardize,
                         projection_only=s.pard2_projection_only, loss_only=s.pard2_loss_only, cache=s.pard2_cache) if s.pard2 else None
    return PardTrainConfig(
        draft=draft, data=tuple(data), output=output, k=s.k, cod_ratio=s.cod_ratio, cod_min=s.cod_min, epochs=s.epochs,
        max_steps=s.max_steps, learning_rate=s.lr, warmup_steps=s.warmup_steps, batch_size=s.batch_size,
        grad_accum=s.grad_accum, max_length=s.max_length, bf16=bf16, resume="latest", save_steps=s.save_steps,
        logging_steps=10, mask_token=MASK_TOKEN, seed=s.seed, optim=s.optim, optim_args=s.optim_args,
        vocab_subset=s.vocab_subset, pard2=pard2, time_budget=s.time_budget,
        extra_args={"weight_decay": 0.0, **({} if s.time_budget else {"lr_scheduler_type": "cosine"})},
    )


def mask_token_id(folder: str) -> int:
    return AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(MASK_TOKEN)


def train_stage(out_dir: str, *, settings: TrainSettings = TrainSettings()) -> str:
    """Train the run ``settings`` describe on ``out_dir``'s distilled data; returns the run folder.

    ``init_from`` starts from another draft folder instead of the fresh cut (e.g. PARD-2 fine-tuning of
    the PARD-1 draft); ``pard2_cache`` is a folder of precomputed target passes (``training.target_cache``)
    for runs of several epochs or several runs on the same data."""
    init_dir, run_dir, bf16 = init_draft_folder(out_dir, settings), settings.run_dir(out_dir), use_bf16(settings.dtype)
    config = train_config(settings, draft=init_dir, data=training_files(out_dir), output=run_dir, bf16=bf16)
    target = load_smollm2(dtype=torch.bfloat16 if bf16 else torch.float32)[0] if settings.pard2 else None
    frozen_row = settings.freeze_mask_row or settings.pard2_projection_only  # the mask row too
    train_draft(config, callbacks=[FreezeEmbeddingExceptMask(None if frozen_row else mask_token_id(init_dir))],
                target=target)
    write_record(run_dir, dataclasses.replace(settings, dtype="bf16" if bf16 else "fp32"))
    return run_dir
