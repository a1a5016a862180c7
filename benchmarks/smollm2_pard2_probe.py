"""Short PARD-2 fine-tunes of the shipped SmolLM2 PARD-1 draft, judged by teacher-forced tau.

    python benchmarks/smollm2_pard2_probe.py --baseline
    python benchmarks/smollm2_pard2_probe.py --run-name sgd-ce --projection-only --steps 30 --lr 0.002 \\
        --optim sgd --optim-args momentum=0.9 --ce-alpha 1 --kd-alpha 0 --save-steps 10

Each run starts from the shipped draft (a full copy, ``apps.recipes.smollm2.full_draft_folder``), trains on
whatever ``runs/smollm2/distill.jsonl`` holds: the recipe's train config (``apps.recipes.smollm2.train_config``:
standardized features of the target's layers -1 and -20, K = 8, COD 0.7 / 0.2, batch 4 x 2) with a
constant learning rate after warm-up and this script's loss mix and checkpoint cadence,
and reports the teacher-forced tau (K = 8) on the target's greedy answers to the first ``--texts``
held-out prompts, for every checkpoint and the final folder: target-dependent mode, and
target-independent mode unless ``--projection-only`` (then it is the shipped draft, unchanged).
``--out FILE`` appends one json line per run. ``--pard2-cache DIR`` reads the target's passes from DIR
(built there first if missing) instead of running the target every step.
"""

import argparse
import dataclasses
import json
import os
import time

from transformers import TrainerCallback

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.apps.recipes.smollm2 import DATA_FILE, HELDOUT_FILE, FreezeEmbeddingExceptMask, TrainSettings
from transformers_pard.apps.recipes.smollm2 import full_draft_folder, train_config
from transformers_pard.draft_io import load_draft
from transformers_pard.training import greedy_sequences, load_prompts, teacher_forced_tau, train_draft

OUT_DIR = "runs/smollm2"
HELDOUT = os.path.join(OUT_DIR, HELDOUT_FILE)
SHIPPED = "transformers_pard/assets/smollm2-pard-k8"
TEXTS_CACHE = os.path.join(OUT_DIR, "probe_texts.json")


def heldout_texts(target, tokenizer, n: int) -> list:
    """(ids, answer start) of the target's greedy answers to the first ``n`` held-out prompts (cached)."""
    if os.path.exists(TEXTS_CACHE):
        texts = json.load(open(TEXTS_CACHE))
        if len(texts) == n:
            return texts
    texts = greedy_sequences(target, tokenizer, load_prompts(HELDOUT)[:n], max_new_tokens=128)
    json.dump(texts, open(TEXTS_CACHE, "w"))
    return texts


def tau(target, folder: str, texts, modes) -> dict:
    draft = load_draft(folder, target=target)
    results = {}
    for mode in modes:
        report = teacher_forced_tau(target, draft, texts, k=8, pard_mode=mode)
        results[mode or "pard"] = {"tau": round(report.mean_tau, 3), "accuracy": [round(a, 3) for a in report.accuracy]}
    return results


def train(args, target) -> str:
    run_dir = os.path.join(OUT_DIR, f"probe-{args.run_name}")
    settings = TrainSettings(k=8, max_steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps, optim=args.optim,
                             optim_args=args.optim_args, pard2=True, pard2_layers=(-1, -20), pard2_scale=args.pard2_scale,
                             pard2_standardize=True, pard2_projection_only=args.projection_only,
                             pard2_cache=args.pard2_cache)
    config = train_config(settings, draft=full_draft_folder(SHIPPED, OUT_DIR), data=os.path.join(OUT_DIR, DATA_FILE),
                          output=run_dir, bf16=False)
    config = dataclasses.replace(
        config, save_steps=args.save_steps, logging_steps=5, save_total_limit=None,
        extra_args={"lr_scheduler_type": "constant_with_warmup", "weight_decay": 0.0},
        pard2=dataclasses.replace(config.pard2, ce_alpha=args.ce_alpha, kd_alpha=args.kd_alpha),
    )
    start, timer = time.time(), StepTimer()
    train_draft(config, callbacks=[FreezeEmbeddingExceptMask(None), timer], target=target)
    print(f"trained {args.steps} steps in {time.time() - start:.0f} s, of which the steps took "
          f"{timer.seconds:.0f} s ({timer.seconds / max(timer.steps, 1):.1f} s a step)", flush=True)
    return run_dir


class StepTimer(TrainerCallback):
    """Wall time of the training steps alone (no setup, cache build or final save)."""

    def __init__(self):
        self.seconds, self.steps, self._start = 0.0, 0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start
        self.steps += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", action="store_true", help="only the shipped draft's teacher-forced tau")
    parser.add_argument("--run-name", default="probe")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--optim", default=None, help="TrainingArguments.optim (default: the Trainer's AdamW)")
    parser.add_argument("--optim-args", default=None)
    parser.add_argument("--ce-alpha", type=float, default=0.1)
    parser.add_argument("--kd-alpha", type=float, default=1.0)
    parser.add_argument("--pard2-scale", type=float, default=1.0)
    parser.add_argument("--projection-only", action="store_true")
    parser.add_argument("--pard2-cache", default=None, metavar="DIR",
                        help="precomputed target passes (built on first use; the build is not in the step time)")
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--texts", type=int, default=20)
    parser.add_argument("--out", default=None, help="append the results as a json line to this file")
    args = parser.parse_args()
    target, tokenizer = load_smollm2()
    texts = heldout_texts(target, tokenizer, args.texts)
    result = {"args": vars(args)}
    if args.baseline:
        result["shipped"] = tau(target, SHIPPED, texts, [None])
    else:
        run_dir = train(args, target)
        modes = ["dependent"] if args.projection_only else ["dependent", "independent"]
        for name in sorted((d for d in os.listdir(run_dir) if d.startswith("checkpoint-")), key=lambda d: int(d[11:])):
            result[name] = tau(target, os.path.join(run_dir, name), texts, modes)
    print(json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
