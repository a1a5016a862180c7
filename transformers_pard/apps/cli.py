"""Command line: ``python -m transformers_pard {demo,bench,plot,recipe,train}`` (also ``transformers-pard``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .benchmark import METHODS, Runner, Sampling, parse_methods, run_benchmark
from .demo import check_tree_arguments, demo, lookup_nodes, store_on
from .models import (
    ATTENTION,
    DEFAULT_DRAFT,
    DRAFT_DTYPES,
    DTYPES,
    EMBEDDED_TARGET,
    LoadSettings,
    describe,
    load_autoregressive_draft,
    load_pard_draft,
    load_settings,
    load_target,
)
from .plot import render  # matplotlib itself is imported only to draw
from .recipes import smollm2
from .report import build_report, format_ideal, format_table, load_report, save_report
from .train_cli import add_train_parser, run_train

PROG = "python -m transformers_pard"
#: The draft flag each method needs (methods absent here need no draft).
DRAFT_FLAGS = {"assisted": "--ar-draft", "pard": "--draft", "pard-compiled": "--draft", "pard-tree": "--draft",
               "pard-tree-compiled": "--draft", "pard-lookup": "--draft", "pard-lookup-compiled": "--draft",
               "pard2": "--pard2-draft", "pard2-independent": "--pard2-draft"}


def read_prompts(paths: list[str], limit: int) -> list[str]:
    """The ``"data"`` of each jsonl line, the first ``limit`` of each file (0 = all)."""
    prompts = []
    for path in paths:
        with open(path) as f:
            lines = [json.loads(line)["data"] for line in f if line.strip()]
        prompts += lines[:limit] if limit else lines
    return prompts


def check_drafts(args: argparse.Namespace, methods: list[str]) -> None:
    """Refuse, before any model loads, a method whose draft flag is missing."""
    for method in methods:
        flag = DRAFT_FLAGS.get(method)
        if flag is not None and getattr(args, flag[2:].replace("-", "_")) is None:
            raise SystemExit(f"--methods {method} needs {flag} (a local folder or Hub id).")


def load_drafts(args: argparse.Namespace, methods: list[str], target, settings: LoadSettings) -> dict:
    """The drafts the methods use, keyed by ``Runner`` argument; the others are not loaded."""
    needed = {DRAFT_FLAGS[m] for m in methods if m in DRAFT_FLAGS}
    drafts = {}
    if "--draft" in needed:
        drafts["draft"] = load_pard_draft(args.draft, target, settings)
    if "--ar-draft" in needed:
        drafts["ar_draft"] = load_autoregressive_draft(args.ar_draft, target, settings)
    if "--pard2-draft" in needed:
        drafts["pard2_draft"] = load_pard_draft(args.pard2_draft, target, settings, flag="--pard2-draft")
    return drafts


def run_settings(args: argparse.Namespace, methods: list[str], lookup_store: bool = False) -> dict:
    """What was asked for, as given on the command line."""
    return {"target": args.target, "draft": args.draft, "ar_draft": args.ar_draft, "pard2_draft": args.pard2_draft,
            "methods": methods, "k": args.k, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
            "draft_dtype": args.draft_dtype, "device": args.device, "attn": args.attn, "min_tau": args.min_tau,
            "phase_timing": args.phase_timing, "tree_nodes": args.tree_nodes, "lookup_nodes": lookup_nodes(args),
            "lookup_store": lookup_store, "prompts": args.prompts, "limit": args.limit,
            "sampling": None if args.temperature is None else {"temperature": args.temperature, "top_p": args.top_p,
                                                                "seed": args.seed}}


def sampling_of(args: argparse.Namespace) -> Sampling | None:
    """``--temperature`` / ``--top-p`` / ``--seed`` as a ``Sampling`` (None: greedy); bad values exit with the fix."""
    if args.temperature is None:
        if args.top_p is not None:
            raise SystemExit("--top-p samples: add --temperature T (e.g. --temperature 0.7 --top-p 0.9).")
        return None
    try:
        return Sampling(args.temperature, args.top_p, args.seed)
    except ValueError as err:
        raise SystemExit(f"--temperature / --top-p: {err}") from None


def bench(args: argparse.Namespace) -> None:
    try:
        methods = parse_methods(args.methods)
    except ValueError as err:
        raise SystemExit(f"--methods: {err}") from None
    check_drafts(args, methods)
    sampling = sampling_of(args)
    if {"pard-lookup", "pard-lookup-compiled"} & set(methods):
        check_tree_arguments(args)
    prompts = read_prompts(args.prompts, args.limit)
    settings = load_settings(args)
    target, tokenizer = load_target(args.target, settings)
    drafts = load_drafts(args, methods, target, settings)
    store = store_on(args, drafts.get("draft"))
    runner = Runner(target, tokenizer, **drafts, k=args.k, max_new_tokens=args.max_new_tokens,
                    min_tau=args.min_tau, phase_timing=args.phase_timing, tree_nodes=args.tree_nodes,
                    lookup_nodes=lookup_nodes(args), lookup_store=store, sampling=sampling)
    results = run_benchmark(runner, prompts, methods,
                            progress=lambda i, n: print(f"\rprompt {i}/{n}", end="", flush=True))
    print()
    device = next(target.parameters()).device
    report = build_report(results, device=device, settings=run_settings(args, methods, store), command=args.command_line)
    report["models"] = {"target": describe(args.target, target, embedded=EMBEDDED_TARGET)}
    report["models"].update({name: describe(getattr(args, name), model, embedded=DEFAULT_DRAFT)
                             for name, model in drafts.items()})
    print(format_table(report))
    print("\n".join(format_ideal(report)))
    print("warm-up (one call per method, torch.compile included) excluded from every timing")
    if sampling is not None:
        print(f"sampled at temperature {sampling.temperature} (top_p {sampling.top_p}, seed {sampling.seed} + prompt "
              "index): outputs differ by design and are not compared (exactness: tests/test_sampling.py)")
    if args.json:
        save_report(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        render(report, args.plot)
        print(f"wrote {args.plot}")


def plot(args: argparse.Namespace) -> None:
    try:
        report = load_report(args.report)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    render(report, args.out)
    print(f"wrote {args.out}")


def recipe(args: argparse.Namespace) -> None:
    stages = ["data", "instruct", "train", "eval", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        print(f"== recipe smollm2: {stage}")
        smollm2.run_stage(stage, args)


def optional_float(text: str) -> float | None:
    """A float, or "none" for None."""
    return None if text.lower() == "none" else float(text)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--target`` / ``--draft`` / ``--device`` / ``--dtype`` / ``--attn``, shared by demo and bench."""
    p.add_argument("--target", default=EMBEDDED_TARGET,
                   help=f"'{EMBEDDED_TARGET}' (the embedded GGUF, default), a local folder or a Hub id")
    p.add_argument("--draft", default=DEFAULT_DRAFT, help="PARD draft: a local folder (default: the shipped one) "
                   "or a Hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="auto = bf16 where faster (GPUs, AMX CPUs, CPUs where it times faster), else fp32")
    p.add_argument("--attn", choices=ATTENTION, default="sdpa", help="attention implementation")
    p.add_argument("--draft-dtype", choices=DRAFT_DTYPES, default="auto",
                   help="dtype of the drafts (never changes the output): auto = bf16 where faster (GPUs, AMX CPUs, CPUs where it times faster), else the "
                        "target's; target = the target's")
    p.add_argument("--k", type=int, default=8, help="draft tokens per round")
    p.add_argument("--tree-nodes", type=int, default=8,
                   help="token-tree nodes verified per round (8: the chain's verify width at K=8): the bench's "
                        "pard-tree methods, and the demo's PARD (0 there: the chain)")
    p.add_argument("--lookup-nodes", type=int, default=None,
                   help="the most lookup candidates (the text's own n-gram continuation) a round's tree holds, ranked "
                        "against the draft's nodes (at most K; default min(K, --tree-nodes)): the bench's pard-lookup "
                        "methods, and the demo's PARD (0: none)")
    p.add_argument("--lookup-store", action=argparse.BooleanOptionalAction, default=None,
                   help="the lookup candidates also come from the draft's lookup store (its folder's "
                        "pard_lookup.safetensors) where it is expected to do better than the text itself "
                        "(pard_lookup_store=True); default: on when the draft carries one")


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="plain generate vs PARD on three built-in prompts (offline by default)")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="enable_pard(target, compile=True); default: on for a CPU target (a compiled round costs "
                        "about half an eager one there), off elsewhere")
    p.set_defaults(func=demo)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark plain / AR+ / assisted / lookup / PARD on prompt files")
    add_model_arguments(p)
    p.add_argument("--ar-draft", default=None, help="autoregressive draft for HF assisted generation")
    p.add_argument("--pard2-draft", default=None, help="PARD-2 draft for the pard2 / pard2-independent methods")
    p.add_argument("--prompts", nargs="+", required=True, help='jsonl files with {"data": ...} lines')
    p.add_argument("--limit", type=int, default=20, help="first N prompts of each file (0 = all)")
    p.add_argument("--methods", default="plain,ar-plus,pard,pard-compiled", help=f"comma-separated: {', '.join(METHODS)}")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--min-tau", type=optional_float, default=None,
                   help="pard_min_tau of the PARD methods (default none: drafting never switches off, so every "
                        "round drafts; 1.3 = the library default)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sample every method at this temperature (default: greedy); outputs are then not compared")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling with --temperature")
    p.add_argument("--seed", type=int, default=0, help="with --temperature: prompt i's calls start from seed + i")
    p.add_argument("--no-phase-timing", dest="phase_timing", action="store_false",
                   help="do not ask the engine for per-phase times (pard_timing)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--plot", default=None, help="draw the report to this PNG (needs matplotlib)")
    p.set_defaults(func=bench)


def add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw a report written by bench --json (tokens/s, accepted lengths, phases)")
    p.add_argument("report", help="a bench --json file, e.g. benchmarks/results/*.json")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=plot)


def add_recipe_parser(sub) -> None:
    p = sub.add_parser("recipe", help="train the SmolLM2 PARD draft (resumable stages)")
    p.add_argument("model", choices=["smollm2"])
    smollm2.add_recipe_arguments(p)
    p.set_defaults(func=recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_plot_parser(sub)
    add_recipe_parser(sub)
    add_train_parser(sub).set_defaults(func=run_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = f"{PROG} {shlex.join(argv)}"
    args.func(args)
