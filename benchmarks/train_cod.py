"""PARD training throughput and mask memory with and without COD (conditional drop).

    python benchmarks/train_cod.py                      # L=512, K=8, COD r=0.7 r_min=0.2 vs no COD
    python benchmarks/train_cod.py --length 1024 --k 16 --steps 2

Each setting times full training steps of a randomly initialised Llama-style model (default: hidden
256, 4 layers, 4 heads / 2 KV heads, vocab 8192, 6.6 M parameters, fp32, sdpa) on random tokens,
through the trainer's own code: ``PardDataCollator`` (K copies + COD + boolean mask) ->
``PardTrainer.compute_loss`` (forward on the labelled rows, ``pard_loss``) -> backward -> the
trainer's AdamW (``create_optimizer``) step; what ``Trainer.training_step`` does, without the training
loop's bookkeeping, so that the two settings' steps can be interleaved. ``--vocab-subset N`` trains a
vocabulary-subset head over ids 0..N-1 (the tokens are then drawn from them, so every label is scored).
Reported: real tokens/s (sequence tokens consumed per second, the number that sets the cost of an
epoch), layout rows per sample, the sample's boolean mask in bytes (and the dense float (K*L)^2 mask
the upstream collator builds), and the COD speedup. Content does not change speed, so random tokens
are fine. The two settings' steps are interleaved on the same batches, and medians are reported, so a
busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch
import transformers
from transformers import TrainingArguments

from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import PardDataCollator, PardTrainer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512, help="L: real tokens per sample")
    parser.add_argument("--k", type=int, default=8, help="K: copies per sample")
    parser.add_argument("--cod-ratio", type=float, default=0.7)
    parser.add_argument("--cod-min", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting (after one warm-up step)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--vocab-subset", type=int, default=None, metavar="N",
                        help="train a vocabulary-subset head over ids 0..N-1 (tokens drawn from them)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace):
    model = tiny_causal_lm(
        "llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=4, num_kv_heads=2, max_positions=max(args.length, 256),
    )
    with torch.no_grad():  # default init scale: tiny_causal_lm's wide init would make the loss explode
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.02)
    return model.train()


def make_trainer(args: argparse.Namespace, *, cod_ratio: float, cod_min: float, output_dir: str) -> PardTrainer:
    """A ``PardTrainer`` on a fresh model, with its optimizer built (the Trainer's AdamW, lr 1e-4)."""
    collator = PardDataCollator(mask_token_id=args.vocab - 1, k=args.k, cod_ratio=cod_ratio, cod_min=cod_min, seed=0)
    training_args = TrainingArguments(output_dir=output_dir, learning_rate=1e-4, save_strategy="no", report_to="none",
                                      remove_unused_columns=False, use_cpu=not torch.cuda.is_available())
    vocab_ids = torch.arange(args.vocab_subset) if args.vocab_subset else None
    trainer = PardTrainer(model=build_model(args), args=training_args, data_collator=collator, vocab_ids=vocab_ids)
    trainer.create_optimizer()
    return trainer


def train_step(trainer: PardTrainer, features, *, bf16: bool) -> dict:
    """Collate, ``compute_loss``, backward, optimizer step: one step of the trainer's own code."""
    batch = {key: value.to(trainer.args.device) for key, value in trainer.data_collator(features).items()}
    with torch.autocast(trainer.args.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"rows": batch["input_ids"].shape[1], "loss": loss.item()}


class Setting:
    """One trainer (model + optimizer + collator); its steps are interleaved with the other setting's."""

    def __init__(self, args: argparse.Namespace, *, cod_ratio: float, cod_min: float, output_dir: str):
        self.args, self.cod_ratio, self.cod_min = args, cod_ratio, cod_min
        self.trainer = make_trainer(args, cod_ratio=cod_ratio, cod_min=cod_min, output_dir=output_dir)
        self.times, self.rows = [], []

    def step(self, features, *, timed: bool = True) -> None:
        start = time.perf_counter()
        rows = train_step(self.trainer, features, bf16=self.args.bf16)["rows"]
        if timed:
            self.times.append(time.perf_counter() - start)
            self.rows.append(rows)

    def result(self) -> dict:
        step_s, mean_rows = statistics.median(self.times), statistics.mean(self.rows)
        return {
            "cod_ratio": self.cod_ratio,
            "cod_min": self.cod_min,
            "step_s": step_s,
            "tokens_per_s": self.args.batch_size * self.args.length / step_s,
            "rows_per_sample": mean_rows,
            "rows_per_s": self.args.batch_size * mean_rows / step_s,
            "mask_bytes_per_sample": int(mean_rows**2),  # boolean, kept rows x kept rows
        }


def run_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """Time no-COD and COD steps alternately (same random batches), so load changes hit both alike."""
    with tempfile.TemporaryDirectory(prefix="train_cod-") as output_dir:  # the Trainer wants one; nothing is saved
        settings = [
            Setting(args, cod_ratio=1.0, cod_min=0.0, output_dir=output_dir),
            Setting(args, cod_ratio=args.cod_ratio, cod_min=args.cod_min, output_dir=output_dir),
        ]
    generator = torch.Generator().manual_seed(0)
    high = args.vocab_subset or args.vocab - 1  # with a subset, every label inside it
    for step in range(args.steps + 1):  # step 0 warms up
        tokens = torch.randint(3, high, (args.batch_size, args.length), generator=generator)
        features = [{"input_ids": row.tolist()} for row in tokens]
        for setting in settings:
            setting.step(features, timed=step > 0)
    return settings[0].result(), settings[1].result()


def environment(args: argparse.Namespace, model_params: int) -> dict:
    return {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "model": f"llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} params={model_params / 1e6:.1f}M",
        "dtype": "bf16 autocast" if args.bf16 else "fp32",
        "vocab_subset": args.vocab_subset,
        "length": args.length,
        "k": args.k,
        "batch_size": args.batch_size,
        "dense_float_mask_bytes_per_sample": (args.k * args.length) ** 2 * 4,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    params = sum(p.numel() for p in build_model(args).parameters())
    no_cod, cod = run_settings(args)
    report = {
        "env": environment(args, params),
        "no_cod": no_cod,
        "cod": cod,
        "cod_speedup": cod["tokens_per_s"] / no_cod["tokens_per_s"],
        "cod_mask_memory_ratio": no_cod["mask_bytes_per_sample"] / cod["mask_bytes_per_sample"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    for key, value in report["env"].items():
        print(f"{key:>34}: {value}")
    print(f"\n{'setting':<22}{'step s':>9}{'tokens/s':>11}{'rows/sample':>13}{'mask MiB/sample':>17}")
    for name, row in (("no COD", no_cod), (f"COD r={cod['cod_ratio']} min={cod['cod_min']}", cod)):
        mib = row["mask_bytes_per_sample"] / 2**20
        print(f"{name:<22}{row['step_s']:>9.3f}{row['tokens_per_s']:>11.1f}{row['rows_per_sample']:>13.0f}{mib:>17.2f}")
    print(f"\nCOD speedup (tokens/s): {report['cod_speedup']:.2f}x; "
          f"mask memory {report['cod_mask_memory_ratio']:.1f}x smaller; "
          f"dense float mask would be {report['env']['dense_float_mask_bytes_per_sample'] / 2**20:.0f} MiB/sample")
    return report


if __name__ == "__main__":
    main()
