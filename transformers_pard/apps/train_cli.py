"""The ``train`` subcommand: ``python -m transformers_pard train --draft PATH --data FILE.jsonl ...``.

Wire it into a CLI with ``add_train_parser(subparsers)``; the parser's ``func`` default is ``run_train``.
Re-running the same command with ``--resume`` continues from the newest checkpoint in ``--output``.

The flags are the fields of ``training.PardTrainConfig`` and ``training.Pard2Options``, parsed by
transformers' ``HfArgumentParser``: ``--cod-ratio`` (also ``--cod_ratio``) is ``cod_ratio``; a field's
``metadata`` gives its help, and its flag name where that differs (``flag``: ``--pard2-layers`` for
``Pard2Options.layers``) or more spellings (``aliases``: ``--lr``). ``flag_dataclass`` / ``flag_values``
are that bridge, also used by the recipes' CLI. ``--pard2`` switches the PARD-2 flags on.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from pathlib import Path

import torch.distributed as dist
from transformers import HfArgumentParser

from ..training import Pard2Options, PardTrainConfig, train_draft

__all__ = [
    "add_train_parser",
    "config_from_args",
    "flag_dataclass",
    "flag_name",
    "flag_values",
    "is_main_process",
    "pard2_from_args",
    "parse_mask_token",
    "run_train",
    "shutdown_distributed",
    "train_flags",
]

#: Metadata keys of ours that ``HfArgumentParser`` must not pass on to ``add_argument``.
OWN_METADATA = ("cli", "flag", "quote")
PARD2_GROUP = "PARD-2: train a target-dependent draft (features, CAT weights, KD)"


def flag_name(field: dataclasses.Field) -> str:
    """The flag's name of a config field (dest in the parsed namespace): ``metadata["flag"]`` or its own."""
    return field.metadata.get("flag", field.name)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are flags (``metadata["cli"]`` not False)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", True)]


def _flag_type(hint):
    """How ``HfArgumentParser`` should read a field: tuples as lists (``nargs="+"``), a union with str as str."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return list[args[0]]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and str in args:
        return str | None if type(None) in args else str
    return hint


def flag_dataclass(cls, *, group: str | None = None) -> type:
    """The command-line view of config dataclass ``cls`` for ``HfArgumentParser``: a dataclass of its flag
    fields, each named by ``flag_name``, with its default and help (tuple defaults as lists)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in cli_fields(cls):
        metadata = {key: value for key, value in f.metadata.items() if key not in OWN_METADATA}
        if isinstance(f.default, tuple):
            default = {"default_factory": functools.partial(list, f.default)}
        else:
            default = {"default": f.default, "default_factory": f.default_factory}
        specs.append((flag_name(f), _flag_type(hints[f.name]), dataclasses.field(metadata=metadata, **default)))
    view = dataclasses.make_dataclass(f"{cls.__name__}Flags", specs)
    if group is not None:
        view._argument_group_name = group
    return view


def flag_values(cls, args: argparse.Namespace) -> dict:
    """``cls``'s keyword arguments from a namespace parsed with ``flag_dataclass(cls)`` (lists back to tuples)."""
    values = {}
    for f in cli_fields(cls):
        value = getattr(args, flag_name(f))
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def train_flags() -> HfArgumentParser:
    """The ``train`` flags, as a parent parser: ``PardTrainConfig``'s, ``Pard2Options``' and ``--pard2``."""
    parser = HfArgumentParser(
        [flag_dataclass(PardTrainConfig), flag_dataclass(Pard2Options, group=PARD2_GROUP)], add_help=False
    )
    parser.add_argument("--pard2", action="store_true", help="train a PARD-2 draft against --target")
    return parser


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to an ``argparse`` subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "train",
        parents=[train_flags()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train a PARD draft (K copies + COD) from jsonl data",
        description="Train a small causal LM as a PARD parallel draft. Data: jsonl records with "
        '"text", "messages" (chat template; loss on assistant turns) or "conversation". '
        "Multi-GPU: accelerate launch -m transformers_pard train ... (or torchrun -m).",
    )
    parser.set_defaults(func=run_train)
    return parser


def parse_mask_token(value: str | None) -> str | int | None:
    """``--mask-token 128020`` is an id, anything else a token string."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def pard2_from_args(args: argparse.Namespace) -> Pard2Options | None:
    """``Pard2Options`` from the PARD-2 flags, or None without ``--pard2`` (then none may be set)."""
    values = flag_values(Pard2Options, args)
    if not getattr(args, "pard2", False):
        defaults = Pard2Options()
        for f in cli_fields(Pard2Options):
            if values[f.name] != getattr(defaults, f.name):
                flag = "--" + flag_name(f).replace("_", "-")
                raise ValueError(f"{flag} is a PARD-2 flag: add --pard2" + ("." if f.name == "target" else
                                                                             " (and --target)."))
        return None
    if not values["target"]:
        raise ValueError("--pard2 needs --target (the target model folder or Hub id).")
    return Pard2Options(**values)


def config_from_args(args: argparse.Namespace) -> PardTrainConfig:
    """The ``PardTrainConfig`` of a parsed ``train`` command line."""
    values = flag_values(PardTrainConfig, args)
    values["mask_token"] = parse_mask_token(values["mask_token"])
    return PardTrainConfig(**values, pard2=pard2_from_args(args))


def run_train(args: argparse.Namespace) -> Path:
    """Run the ``train`` subcommand; returns the final draft folder."""
    output = train_draft(config_from_args(args))
    if is_main_process():
        kind = "PARD-2" if getattr(args, "pard2", False) else "PARD"
        print(f"{kind} draft saved to {output}")
    shutdown_distributed()
    return output


def shutdown_distributed() -> None:
    """Tear the process group down before exit: gloo workers left running abort the process at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` / ``accelerate launch`` run."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
