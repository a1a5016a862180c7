"""The SmolLM2-135M-Instruct recipe: our own prompts -> self-distilled answers -> a PARD draft.

Stages, one module each (each resumable; all of them: ``python -m transformers_pard recipe smollm2``):

1. ``data``  -- our template prompts, the target's answers, a held-out split for tau (``instruct``: requests
   the target writes itself, answered; ``library``: the standard library's documented functions as
   completion requests, answered; ``stories``: composed multi-step word problems, answered; ``corpus``: real
   text, Python's standard library, for KD);
2. ``train`` -- draft = the target's first ``num_layers`` layers + its frozen embedding, PARD (or
   PARD-2) training with COD; the run's ``TrainSettings`` recorded in ``recipe.json``;
3. ``evaluate`` (stage ``eval``) -- tau of the draft against the target on the held-out prompts;
4. ``export`` -- the compact bf16 draft folder shipped with the package, with its model card;
   ``subset`` gives an existing draft a vocabulary-subset head (no training), ``store`` a lookup store.

``common`` holds what they share. The command's flags are the fields of ``common.RecipeOptions`` and
``common.TrainSettings`` (``recipe_flags``, transformers' ``HfArgumentParser``); ``run_stage`` runs one
stage of a parsed command line.
"""

from __future__ import annotations

import argparse

import torch
from transformers import HfArgumentParser

from ...train_cli import flag_dataclass, flag_values
from .common import (
    DATA_FILE,
    HELDOUT_FILE,
    MASK_TOKEN,
    PARD2_LAYERS,
    PARD2_SCALE,
    RECIPE_FILE,
    RecipeOptions,
    TrainSettings,
    data_device,
    run_dir_name,
    use_bf16,
)
from .data import corpus_stage, data_stage, instruct_stage, library_stage, stories_stage
from .evaluate import eval_stage
from .export import export_stage, model_card, recipe_commands, store_stage, subset_stage
from .train import FreezeEmbeddingExceptMask, build_cut_draft, full_draft_folder, grow_draft, hidden_state_stats, train_config
from .train import train_stage

__all__ = [
    "DATA_FILE", "HELDOUT_FILE", "MASK_TOKEN", "PARD2_LAYERS", "PARD2_SCALE", "RECIPE_FILE", "FreezeEmbeddingExceptMask",
    "RecipeOptions", "TrainSettings", "add_recipe_arguments", "build_cut_draft", "corpus_stage", "grow_draft", "data_stage", "eval_stage",
    "export_stage", "full_draft_folder", "hidden_state_stats", "library_stage", "model_card", "recipe_commands", "recipe_flags",
    "run_dir_name", "run_stage", "store_stage", "stories_stage", "subset_stage", "train_config", "train_stage",
]


#: Answers generated together on a GPU (``--gen-batch-size`` unset): the 135M target is launch-bound there.
GPU_GENERATION_BATCH = 512


def recipe_flags() -> HfArgumentParser:
    """The recipe's flags as a parent parser (``parents=[recipe_flags()]``)."""
    return HfArgumentParser([flag_dataclass(RecipeOptions), flag_dataclass(TrainSettings)], add_help=False)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's flags to ``parser``: what ``argparse``'s ``parents=[recipe_flags()]`` does."""
    flags = recipe_flags()
    parser._add_container_actions(flags)
    parser.set_defaults(**flags._defaults)


def run_stage(stage: str, args: argparse.Namespace) -> None:
    """Run one stage ("data", "instruct", "library", "stories", "corpus", "train", "eval", "export", "subset" or "store") of a parsed ``recipe`` command line."""
    settings = TrainSettings(**flag_values(TrainSettings, args))
    run = dict(k=settings.k, num_layers=settings.num_layers, pard2=settings.pard2, run_name=settings.run_name)
    device = data_device(args.device)
    generation = dict(seed=settings.seed, device=device,
                      dtype=torch.bfloat16 if use_bf16(settings.dtype, device) else torch.float32,
                      **({} if args.gen_batch_size is None and device == "cpu" else
                         {"batch_size": args.gen_batch_size or GPU_GENERATION_BATCH}))
    if stage == "data":
        data_stage(args.out, num_prompts=args.num_prompts, sampled_repeats=1, train_prompts=args.train_prompts,
                   **generation)
    elif stage == "instruct":
        instruct_stage(args.out, num_questions=args.num_questions, style=args.meta_prompts,
                       families=tuple(args.families), **generation)
    elif stage == "library":
        library_stage(args.out, num_stubs=args.library_stubs, **generation)
    elif stage == "stories":
        stories_stage(args.out, num_problems=args.num_stories, **generation)
    elif stage == "corpus":
        corpus_stage(args.out, num_chunks=args.corpus_chunks, seed=settings.seed)
    elif stage == "train":
        train_stage(args.out, settings=settings)
    elif stage == "eval":
        eval_stage(args.out, **run)
    elif stage == "subset":
        if not settings.init_from or not settings.vocab_subset:
            raise ValueError("--stage subset gives an existing draft a subset head: pass --init-from DRAFT_FOLDER "
                             "and --vocab-subset N.")
        print(subset_stage(args.out, draft_dir=settings.init_from, size=settings.vocab_subset,
                           export_dir=args.export_dir, max_length=settings.max_length))
    elif stage == "store":
        if not settings.init_from:
            raise ValueError("--stage store gives an existing draft a lookup store: pass --init-from DRAFT_FOLDER.")
        print(store_stage(args.out, draft_dir=settings.init_from, export_dir=args.export_dir, max_length=settings.max_length))
    else:
        print(export_stage(args.out, export_dir=args.export_dir, **run))
