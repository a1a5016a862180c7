"""Command line: ``python -m transformers_pard {demo,bench,train,recipe}`` (also ``transformers-pard``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

DEFAULT_DRAFT = os.path.join(os.path.dirname(__file__), "assets", "smollm2-pard-k8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEMO_PROMPTS = [
    "A baker makes 24 muffins and sells 3 boxes of 5. How many muffins are left? Explain step by step.",
    "Write a Python function that returns the sum of the even numbers in a list.",
    "Explain in a few sentences why the sky is blue.",
]


def _load_pair(draft_path: str, dtype: str, device: str):
    from .draft_io import load_draft
    from .embedded import load_smollm2
    from .modeling import enable_pard

    from .hardware import slow_dtype_warning

    warning = slow_dtype_warning(DTYPES[dtype], device)
    if warning:
        print(warning, file=sys.stderr)
    target, tokenizer = load_smollm2(dtype=DTYPES[dtype], device=device)
    return enable_pard(target), load_draft(draft_path, target=target), tokenizer


def demo(args: argparse.Namespace) -> None:
    """Plain ``generate`` vs PARD on a few prompts with the embedded SmolLM2 and the shipped draft."""
    from tqdm.auto import tqdm

    from .benchmark import chat_ids

    print(f"Loading SmolLM2-135M-Instruct (embedded GGUF, {args.dtype}) and the PARD draft {args.draft} ...")
    target, draft, tokenizer = _load_pair(args.draft, args.dtype, args.device)
    device = next(target.parameters()).device
    totals = {"plain": [0, 0.0], "pard": [0, 0.0]}
    committed = rounds = 0
    all_identical = True
    warm = chat_ids(tokenizer, "Hi!", device)
    target.generate(warm, max_new_tokens=8)
    target.generate(warm, max_new_tokens=8, pard_draft=draft)
    for text in tqdm(DEMO_PROMPTS, desc="prompts"):
        ids = chat_ids(tokenizer, text, device)
        outs = {}
        for method, extra in (("plain", {}), ("pard", {"pard_draft": draft, "num_assistant_tokens": args.k})):
            start = time.perf_counter()
            outs[method] = target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, **extra)
            totals[method][1] += time.perf_counter() - start
            totals[method][0] += outs[method].shape[1] - ids.shape[1]
        stats = target._last_pard_stats
        committed, rounds = committed + stats.committed_tokens, rounds + stats.row_rounds
        identical = torch.equal(outs["plain"], outs["pard"])
        all_identical &= identical
        print(f"\n>>> {text}\n{tokenizer.decode(outs['pard'][0, ids.shape[1]:], skip_special_tokens=True)}")
        print(f"[tau {stats.tau:.2f}, identical to plain generate: {identical}]")
    plain_rate = totals["plain"][0] / totals["plain"][1]
    pard_rate = totals["pard"][0] / totals["pard"][1]
    print(f"\nplain generate: {plain_rate:.1f} tok/s | PARD (K={args.k}): {pard_rate:.1f} tok/s | "
          f"speedup {pard_rate / plain_rate:.2f}x | tau {committed / max(rounds, 1):.2f} | "
          f"outputs identical: {all_identical}")


def bench(args: argparse.Namespace) -> None:
    from .benchmark import Runner, environment, format_table, ideal_speedup, parse_methods, run_benchmark, save_report
    from .draft_io import load_draft

    try:
        methods = parse_methods(args.methods)
    except ValueError as err:
        raise SystemExit(f"--methods: {err}") from None
    target, draft, tokenizer = _load_pair(args.draft, args.dtype, args.device)
    ar_draft = None
    if "assisted" in methods:
        if args.ar_draft is None:
            raise SystemExit("--methods assisted needs --ar-draft (an autoregressive draft of the same size).")
        ar_draft = load_draft(args.ar_draft, target=target)
        ar_draft.config.spd_type = None  # plain HF assisted generation, not the PARD route
    pard2_draft = None
    if any(m.startswith("pard2") for m in methods):
        if args.pard2_draft is None:
            raise SystemExit("--methods pard2 / pard2-independent need --pard2-draft.")
        pard2_draft = load_draft(args.pard2_draft, target=target)
    prompts = []
    for path in args.prompts:
        with open(path) as f:
            lines = [json.loads(line)["data"] for line in f if line.strip()]
        prompts += lines[: args.limit] if args.limit else lines
    runner = Runner(target, tokenizer, draft=draft, ar_draft=ar_draft, pard2_draft=pard2_draft, k=args.k,
                    max_new_tokens=args.max_new_tokens)
    report = run_benchmark(runner, prompts, methods, progress=lambda i, n: print(f"\rprompt {i}/{n}", end="", flush=True))
    print()
    pard = report["methods"].get("pard", {})
    tau = pard.get("drafting_tau") or pard.get("tau")  # the draft's own acceptance (plain steps excluded)
    if tau:
        report["ideal"] = ideal_speedup(target, draft, k=args.k, tau=tau)
        report["ideal"]["efficiency"] = report["methods"]["pard"]["speedup_vs_plain"] / report["ideal"]["ideal_speedup"]
    report["environment"] = environment()
    report["settings"] = {"k": args.k, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
                          "prompts": args.prompts, "limit": args.limit, "draft": args.draft, "ar_draft": args.ar_draft,
                          "pard2_draft": args.pard2_draft}
    print(format_table(report))
    if "ideal" in report:
        ideal = report["ideal"]
        print(f"ideal PARD speedup {ideal['ideal_speedup']:.2f}x (target 1 tok {ideal['target_1_ms']:.1f} ms, "
              f"K+1 tok {ideal['target_k1_ms']:.1f} ms, draft 2K tok {ideal['draft_2k_ms']:.1f} ms); "
              f"engine efficiency {ideal['efficiency']:.2f}")
    if args.json:
        save_report(report, args.json)
        print(f"wrote {args.json}")


def recipe(args: argparse.Namespace) -> None:
    from .recipes import smollm2

    stages = ["data", "train", "eval", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        print(f"== recipe smollm2: {stage}")
        smollm2.run_stage(stage, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformers-pard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline demo: plain generate vs PARD on the embedded SmolLM2")
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=demo)

    p = sub.add_parser("bench", help="benchmark plain / assisted / lookup / PARD on prompt files")
    p.add_argument("--target", default="smollm2", choices=["smollm2"], help="the embedded real model")
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--ar-draft", default=None, help="autoregressive draft for HF assisted generation")
    p.add_argument("--pard2-draft", default=None, help="PARD-2 draft for the pard2 / pard2-independent methods")
    p.add_argument("--prompts", nargs="+", required=True, help='jsonl files with {"data": ...} lines')
    p.add_argument("--limit", type=int, default=20, help="first N prompts of each file (0 = all)")
    p.add_argument("--methods", default="plain,assisted,lookup,pard",
                   help="comma-separated: plain, assisted, lookup, pard, pard-compiled, pard2, pard2-independent")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.set_defaults(func=bench)

    from .recipes.smollm2 import add_recipe_arguments

    p = sub.add_parser("recipe", help="train the SmolLM2 PARD draft (resumable stages)")
    p.add_argument("model", choices=["smollm2"])
    add_recipe_arguments(p)
    p.set_defaults(func=recipe)

    try:
        from .training.cli import add_train_parser, run_train

        add_train_parser(sub).set_defaults(func=run_train)
    except ImportError:  # training extras missing: the other commands still work
        pass
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
