"""What the SmolLM2 recipe's stages share: file names, the run folder, and the settings dataclasses.

``RecipeOptions`` and ``TrainSettings`` are the ``recipe smollm2`` command's flags (``HfArgumentParser``,
see ``apps.train_cli.flag_dataclass``). A train run's record ``recipe.json`` is
``dataclasses.asdict(TrainSettings)`` of the settings it used, read back by ``export.recipe_commands``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

import torch

from ....hardware import bf16_is_fast
from ..self_instruct import FAMILY_MIX, INSTRUCT_FILE

DATA_FILE = "distill.jsonl"
CORPUS_FILE = "corpus.jsonl"  # the corpus stage's real text (Python's standard library), for KD from the target
LIBRARY_FILE = "distill-library.jsonl"  # the target's answers to the standard library's function stubs
STORIES_FILE = "distill-stories.jsonl"  # the target's answers to composed word problems
#: Every training file the train stage reads when present: the data, instruct, library, stories and corpus stages'.
TRAINING_FILES = (DATA_FILE, INSTRUCT_FILE, LIBRARY_FILE, STORIES_FILE, CORPUS_FILE)
HELDOUT_FILE = "heldout_prompts.jsonl"
RECIPE_FILE = "recipe.json"  # the train-stage settings of a run, quoted by its model card
MASK_TOKEN = "<empty_output>"  # a special token SmolLM2's chat data never uses: the PARD mask
STAGES = ("data", "instruct", "library", "stories", "corpus", "train", "eval", "export", "subset", "store", "all")
DTYPES = ("auto", "fp32", "bf16")

#: SmolLM2's PARD-2 features: the final (normed) hidden state and layer 11's output. The published
#: drafts' (-1, -8, -16, -24) are a poor fit here: from layer 12 on, SmolLM2 puts massive activations
#: (|h| ~ 25,000, rms ~ 100) on the first token, layer 3-8 outputs ~ 660 there, while layer 11 and
#: the final norm stay small (rms 6 and 2) everywhere. Measured with ``train.hidden_state_stats``.
PARD2_LAYERS = (-1, -20)
#: The feature term's scale: with a zero-initialised projection and Adam, the term grows by about
#: ``scale * lr`` per weight per step, so this is the projection's learning-rate multiplier. 0.1 (vs the
#: published 0.02) lets a few hundred CPU steps bring it to the size of the token embeddings.
PARD2_SCALE = 0.1


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe's flags outside the train settings: which stage, where, how much data."""

    stage: str = field(default="all", metadata=_help("stage to run", choices=STAGES))
    out: str = field(default="runs/smollm2", metadata=_help("working folder (data, checkpoints)"))
    num_prompts: int = field(default=2000, metadata=_help("data stage: training prompts"))
    train_prompts: int | None = field(default=None, metadata=_help(
        "data stage: answer only the first N training prompts (held-out split unchanged)"))
    export_dir: str | None = field(default=None, metadata=_help(
        "export / subset / store stage: output folder (subset, store: default the --init-from folder itself)"))
    num_questions: int = field(default=1280, metadata=_help(
        "instruct stage: requests the target writes itself (math, code, questions), then answers"))
    meta_prompts: str = field(default="short", metadata=_help(
        "instruct stage: 'short' requests, or 'long' ones (multi-step word problems, typed stubs with examples; "
        "seeds >= 1)", choices=("short", "long")))
    families: tuple[str, ...] = field(default=tuple(FAMILY_MIX), metadata=_help(
        "instruct stage: the kinds of request the target writes (seeds >= 1 may leave some out; the 135M "
        "target's own math problems are mostly unusable)", metavar="F"))
    device: str = field(default="auto", metadata=_help(
        "data / instruct / library / stories stages: where the target writes its answers (auto: cuda where available, else cpu)"))
    gen_batch_size: int | None = field(default=None, metadata=_help(
        "data / instruct / library / stories stages: answers generated together (default: 48 / 64 on a CPU, 512 on a GPU)", metavar="N"))
    library_stubs: int = field(default=0, metadata=_help(
        "library stage: documented functions of Python's standard library (def line + docstring) the target "
        "completes; 0 = all (~4,200 on Python 3.11)", metavar="N"))
    num_stories: int = field(default=2000, metadata=_help(
        "stories stage: multi-step word problems composed from story steps, answered by the target", metavar="N"))
    corpus_chunks: int = field(default=3000, metadata=_help(
        "corpus stage: chunks of Python's standard library source (real text for --pard2 --pard2-loss-only KD)"))


@dataclass(frozen=True)
class TrainSettings:
    """The train stage's settings; ``k``, ``num_layers``, ``pard2``, ``run_name`` also name the run the
    eval / export stages read. ``metadata["quote"]`` tells ``recipe_commands`` when a field is quoted:
    "always", "pard2" (whenever ``pard2`` is set), else only where it differs from the default."""

    k: int = field(default=8, metadata=_help("K copies (1 = the autoregressive baseline draft)", quote="always"))
    num_layers: int = field(default=3, metadata=_help(
        "draft = the target's first N layers; with --init-from a shallower draft, that draft grown to N "
        "(the target's next layers, their residual outputs zeroed)", quote="always"))
    target_layers: tuple[int, ...] = field(default=(), metadata=_help(
        "the fresh cut's target layers in order, negative counting from the last (e.g. 0 1 -1); "
        "default the first --num-layers", metavar="I"))
    epochs: float = field(default=1.0, metadata=_help("training epochs"))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimizer steps (overrides epochs)"))
    lr: float = field(default=3e-4, metadata=_help("peak learning rate (cosine schedule)"))
    warmup_steps: int = field(default=20, metadata=_help("learning-rate warm-up steps"))
    init_from: str | None = field(default=None, metadata=_help("start training from this draft folder"))
    run_name: str | None = field(default=None, metadata=_help(
        "run folder under --out (default draft-k{K}-l{layers}[-pard2]); e.g. a continued run"))
    optim: str | None = field(default=None, metadata=_help(
        "train stage: TrainingArguments.optim (e.g. sgd); unset: AdamW"))
    optim_args: str | None = field(default=None, metadata=_help(
        "train stage: TrainingArguments.optim_args (momentum=0.9)"))
    pard2: bool = field(default=False, metadata=_help("PARD-2 (CAT + KD + target features) draft"))
    pard2_layers: tuple[int, ...] = field(default=PARD2_LAYERS, metadata=_help(
        "target hidden states for PARD-2 features", metavar="I", quote="pard2"))
    pard2_scale: float = field(default=PARD2_SCALE, metadata=_help("scale of the PARD-2 feature term", quote="pard2"))
    pard2_standardize: bool = field(default=False, metadata=_help(
        "train target_proj on standardized features (stored folded, with a bias)"))
    pard2_projection_only: bool = field(default=False, metadata=_help(
        "train target_proj alone, the draft's weights as loaded (e.g. --init-from a PARD-1 draft)"))
    pard2_loss_only: bool = field(default=False, metadata=_help(
        "PARD-2's loss (CAT + KD from the target) without features: a target-independent PARD draft"))
    pard2_cache: str | None = field(default=None, metadata=_help(
        "train stage: precomputed target passes (built here on first use, then read every epoch)", metavar="DIR"))
    vocab_subset: int | None = field(default=None, metadata=_help(
        "train stage: a vocabulary-subset head over the N most frequent answer tokens", metavar="N"))
    freeze_mask_row: bool = field(default=False, metadata=_help(
        "train stage: keep the mask row too (a draft whose mask row is trained; faster)"))
    dtype: str = field(default="auto", metadata=_help(
        "data answers / training precision; auto = bf16 where faster (CUDA/ROCm, AMX CPUs, CPUs where it times faster)", choices=DTYPES))
    batch_size: int = field(default=4, metadata=_help("train stage: samples per step"))
    grad_accum: int = field(default=2, metadata=_help("train stage: gradient accumulation steps"))
    max_length: int = field(default=320, metadata=_help("train stage: real tokens per sample"))
    cod_ratio: float = field(default=0.7, metadata=_help("train stage: COD keep ratio r"))
    cod_min: float = field(default=0.2, metadata=_help("train stage: COD floor r_min"))
    seed: int = field(default=0, metadata=_help("seed of the data stage and of training"))
    save_steps: int = field(default=50, metadata=_help("train stage: checkpoint every N optimizer steps"))
    time_budget: float | None = field(default=None, metadata=_help(
        "train stage: stop after this many seconds, the learning rate decaying over the time (cosine) instead of "
        "over the steps (a lent machine, a session's end)", metavar="SECONDS"))

    def __post_init__(self):
        object.__setattr__(self, "pard2_layers", tuple(int(layer) for layer in self.pard2_layers))
        object.__setattr__(self, "target_layers", tuple(int(layer) for layer in self.target_layers))
        if self.target_layers and self.init_from:
            raise ValueError("--target-layers chooses the layers of a fresh cut; --init-from starts from a draft's "
                             "own layers: drop one of them.")
        if self.pard2_projection_only and not self.pard2:
            raise ValueError("--pard2-projection-only trains a PARD-2 projection: add --pard2.")
        if self.pard2_cache and not self.pard2:
            raise ValueError("--pard2-cache holds a PARD-2 target's passes: add --pard2.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")

    def run_dir(self, out_dir: str) -> str:
        """The run's folder under ``out_dir``."""
        return os.path.join(out_dir, self.run_name or run_dir_name(self.k, self.num_layers, self.pard2))


def run_dir_name(k: int, num_layers: int, pard2: bool = False) -> str:
    return f"draft-k{k}-l{num_layers}" + ("-pard2" if pard2 else "")


def training_files(out_dir: str) -> tuple[str, ...]:
    """The ``TRAINING_FILES`` present under ``out_dir``, each with its other seeds' files
    (``distill-instruct-s1.jsonl``...); the data stage's file when none is (the trainer then says it is missing)."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    found = []
    for base in TRAINING_FILES:
        pattern = re.compile(re.escape(base[:-len(".jsonl")]) + r"(?:-s(\d+))?\.jsonl")
        seeds = {int(m.group(1) or 0): name for name in names if (m := pattern.fullmatch(name))}
        found += [os.path.join(out_dir, seeds[seed]) for seed in sorted(seeds)]
    return tuple(found) or (os.path.join(out_dir, DATA_FILE),)


def data_device(choice: str) -> str:
    """``--device``: "auto" is cuda (CUDA or ROCm) where torch sees one, else cpu; "cpu", "cuda" or "cuda:N"
    as given, where torch has it."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice != "cpu" and not (choice.split(":")[0] == "cuda" and torch.cuda.is_available()):
        raise ValueError(f"--device {choice}: torch sees no such device here (CUDA/ROCm available: "
                         f"{torch.cuda.is_available()}); use --device auto, cpu or cuda.")
    return choice


def use_bf16(choice: str, device: str | None = None) -> bool:
    """``--dtype``: "bf16" / "fp32", or for "auto" whether bf16 is native on ``device`` (default: this
    machine's GPU if torch sees one, else its CPU)."""
    return bf16_is_fast(device or data_device("auto")) if choice == "auto" else choice == "bf16"


def write_record(run_dir: str, settings: TrainSettings) -> None:
    """The run record: the settings as a JSON object."""
    with open(os.path.join(run_dir, RECIPE_FILE), "w") as f:
        json.dump(dataclasses.asdict(settings), f, indent=2)


def read_record(run_dir: str) -> dict | None:
    """A run's record (older runs' records hold a subset of the fields), or None if it has none."""
    path = os.path.join(run_dir, RECIPE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
