"""The ``train`` subcommand: ``python -m transformers_pard train --draft PATH --data FILE.jsonl ...``.

Wire it into a CLI with ``add_train_parser(subparsers)``; the parser's ``func`` default is ``run_train``.
Re-running the same command with ``--resume`` continues from the newest checkpoint in ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .pard2 import CACHE_DTYPES


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to an ``argparse`` subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a PARD draft (K copies + COD) from jsonl data",
        description="Train a small causal LM as a PARD parallel draft. Data: jsonl records with "
        '"text", "messages" (chat template; loss on assistant turns) or "conversation". '
        "Multi-GPU: accelerate launch -m transformers_pard train ... (or torchrun -m).",
    )
    parser.add_argument("--draft", required=True, help="draft model folder or Hub id (the AR model to start from)")
    parser.add_argument("--data", required=True, nargs="+", help="training jsonl file(s)")
    parser.add_argument("--output", required=True, help="output folder: checkpoints and the final draft")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the draft's)")
    parser.add_argument("--k", type=int, default=8, help="K: copies per sample = draft tokens per round (default 8)")
    parser.add_argument("--cod-ratio", type=float, default=0.7, help="COD keep ratio r; 1 disables COD (default 0.7)")
    parser.add_argument("--cod-min", type=float, default=0.2, help="COD floor r_min (default 0.2)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides epochs)"
    )
    parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1, help="samples per device per step")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, default=1024, help="real tokens per sample, before the K copies")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="resume from CHECKPOINT, or (no value) from the newest checkpoint in --output if there is one",
    )
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every N optimizer steps")
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints to keep")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--mask-token", help="mask token string or id (default: reserved token, spare row or new)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optim", default=None,
                        help="optimizer, as transformers' TrainingArguments.optim (e.g. sgd; default: the Trainer's AdamW)")
    parser.add_argument("--optim-args", default=None, metavar="K=V,...",
                        help="optimizer arguments, as TrainingArguments.optim_args (e.g. momentum=0.9)")
    pard2 = parser.add_argument_group("PARD-2", "train a target-dependent draft (features, CAT weights, KD)")
    pard2.add_argument("--pard2", action="store_true", help="train a PARD-2 draft against --target")
    pard2.add_argument("--target", help="target model folder or Hub id (needed with --pard2; not saved)")
    pard2.add_argument(
        "--pard2-layers", type=int, nargs="+", default=[-1, -8, -16, -24], metavar="I",
        help="target hidden states to concatenate, indices into output_hidden_states (default -1 -8 -16 -24)",
    )
    pard2.add_argument("--pard2-scale", type=float, default=0.02, help="scale of the feature term (default 0.02)")
    pard2.add_argument("--pard2-proj-bias", action="store_true", help="give target_proj a bias (default: none)")
    pard2.add_argument("--pard2-standardize", action="store_true",
                       help="train target_proj on standardized features (stored folded, with a bias)")
    pard2.add_argument("--pard2-projection-only", action="store_true",
                       help="train target_proj alone (the draft's own weights stay as loaded: its target-independent "
                            "mode is the input draft)")
    pard2.add_argument(
        "--target-feat-mask", type=float, default=0.1,
        help="probability of training a sample without features, for target-independent use (default 0.1)",
    )
    pard2.add_argument("--ce-alpha", type=float, default=0.1, help="weight of the CE term (default 0.1)")
    pard2.add_argument("--kd-alpha", type=float, default=1.0, help="weight of the KL(target || draft) term (default 1)")
    pard2.add_argument("--kd-temperature", type=float, default=1.0, help="KD temperature T (default 1)")
    pard2.add_argument("--pard2-cache", default=None, metavar="DIR",
                       help="precomputed target passes: built here from the data on first use, then read every "
                            "epoch instead of running the target (features, CAT weights, KD logits)")
    pard2.add_argument("--pard2-cache-dtype", default="float16", choices=CACHE_DTYPES,
                       help="how --pard2-cache stores the features (default float16)")
    parser.set_defaults(func=run_train)
    return parser


def parse_mask_token(value: str | None) -> str | int | None:
    """``--mask-token 128020`` is an id, anything else a token string."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def pard2_from_args(args: argparse.Namespace):
    """``Pard2Options`` from the PARD-2 flags, or None without ``--pard2``."""
    if not getattr(args, "pard2", False):
        if getattr(args, "target", None):
            raise ValueError("--target is only used with --pard2.")
        if getattr(args, "pard2_projection_only", False):
            raise ValueError("--pard2-projection-only trains a PARD-2 projection: add --pard2 (and --target).")
        if getattr(args, "pard2_cache", None):
            raise ValueError("--pard2-cache holds a PARD-2 target's passes: add --pard2 (and --target).")
        return None
    if not args.target:
        raise ValueError("--pard2 needs --target (the target model folder or Hub id).")
    from .pard2 import Pard2Options

    return Pard2Options(
        target=args.target,
        layers=tuple(args.pard2_layers),
        scale=args.pard2_scale,
        proj_bias=args.pard2_proj_bias,
        standardize=args.pard2_standardize,
        projection_only=args.pard2_projection_only,
        target_feat_mask=args.target_feat_mask,
        ce_alpha=args.ce_alpha,
        kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature,
        cache=args.pard2_cache,
        cache_dtype=args.pard2_cache_dtype,
    )


def config_from_args(args: argparse.Namespace):
    from .trainer import PardTrainConfig, optimizer_args

    return PardTrainConfig(
        draft=args.draft,
        data=tuple(args.data),
        output=args.output,
        tokenizer=args.tokenizer,
        k=args.k,
        cod_ratio=args.cod_ratio,
        cod_min=args.cod_min,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        resume=args.resume,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        mask_token=parse_mask_token(args.mask_token),
        seed=args.seed,
        extra_args=optimizer_args(args.optim, args.optim_args),
        pard2=pard2_from_args(args),
    )


def run_train(args: argparse.Namespace) -> Path:
    """Run the ``train`` subcommand; returns the final draft folder."""
    from .trainer import train_draft

    output = train_draft(config_from_args(args))
    if is_main_process():
        kind = "PARD-2" if getattr(args, "pard2", False) else "PARD"
        print(f"{kind} draft saved to {output}")
    shutdown_distributed()
    return output


def shutdown_distributed() -> None:
    """Tear the process group down before exit: gloo workers left running abort the process at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` / ``accelerate launch`` run."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
