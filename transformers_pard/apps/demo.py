"""``python -m transformers_pard demo``: plain ``generate`` vs PARD on three built-in prompts.

Offline by default (the embedded SmolLM2 and the shipped draft); ``--target`` / ``--draft`` take a
local folder or a Hub id as ``bench`` does. One warm-up call per method runs first and is excluded from
the timings (with ``torch.compile``, on by default for a CPU target, it is also where the compilation is paid).
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from ..lookup import lookup_store
from ..modeling import enable_pard
from .benchmark import chat_ids, timed_generate
from .models import load_pard_draft, load_settings, load_target

DEMO_PROMPTS = [
    "A baker makes 24 muffins and sells 3 boxes of 5. How many muffins are left? Explain step by step.",
    "Write a Python function that returns the sum of the even numbers in a list.",
    "Explain in a few sentences why the sky is blue.",
]


def pard_kwargs(draft, args: argparse.Namespace) -> dict:
    """The PARD ``generate`` keywords: K, and a token tree of ``--tree-nodes`` nodes unless 0 (the chain),
    up to ``--lookup-nodes`` of them lookup candidates (docs/results.md: at the chain's verify width this beat
    both the chain and the draft-only tree on our held-out prompts)."""
    chain = {"pard_draft": draft, "num_assistant_tokens": args.k}
    if args.tree_nodes <= 0:
        return chain
    tree = {**chain, "pard_tree": args.tree_nodes, "pard_lookup": lookup_nodes(args)}
    return {**tree, "pard_lookup_store": True} if store_on(args, draft) and lookup_nodes(args) else tree


def store_on(args: argparse.Namespace, draft) -> bool:
    """``--lookup-store`` / ``--no-lookup-store``, or by default: on when the draft carries a lookup store
    (docs/results.md: with the ranked tree it raised tau on our held-out prompts and the demo's)."""
    return args.lookup_store if args.lookup_store is not None else lookup_store(draft) is not None


def lookup_nodes(args: argparse.Namespace) -> int:
    """``--lookup-nodes``; by default min(K, --tree-nodes): a chain as long as the tree can hold, ranked
    against the draft's nodes (docs/results.md: a shorter cap accepted less). Sampling (bench
    ``--temperature``) gives the lookup a fixed share of the tree instead, and the draft keeps the rest: half
    of it by default, the best share of the fixed-share table (docs/results.md, "A lookup branch")."""
    if args.lookup_nodes is not None:
        return args.lookup_nodes
    if sampled(args):
        return max(min(args.k, args.tree_nodes // 2), 0)
    return max(min(args.k, args.tree_nodes), 0)


def sampled(args: argparse.Namespace) -> bool:
    return getattr(args, "temperature", None) is not None


def check_tree_arguments(args: argparse.Namespace) -> None:
    """Refuse lookup candidates the tree cannot hold before any model loads."""
    lookup = lookup_nodes(args)
    if args.tree_nodes > 0 and not 0 <= lookup <= args.k:
        raise SystemExit(f"--lookup-nodes {lookup}: a round holds 0 .. K = {args.k} lookup candidates (a chain "
                         f"at most K deep).")
    if args.tree_nodes > 0 and sampled(args) and lookup >= args.tree_nodes:
        raise SystemExit(f"--lookup-nodes {lookup}: sampling gives the lookup a fixed share of the {args.tree_nodes} "
                         f"tree nodes and the draft keeps at least one: use --lookup-nodes {args.tree_nodes - 1} or less.")


def pard_name(args: argparse.Namespace, draft) -> str:
    if args.tree_nodes <= 0:
        return f"PARD (K={args.k})"
    store = " and the draft's store" if store_on(args, draft) else ""
    lookup = f", up to {lookup_nodes(args)} of them lookup candidates (the text{store})" if lookup_nodes(args) > 0 else ""
    return f"PARD (K={args.k}, tree of {args.tree_nodes} nodes{lookup})"


def warm_up(target, draft, tokenizer, device, args: argparse.Namespace) -> float:
    """One short call per method (compilation, caches, allocator); returns its seconds."""
    start = time.perf_counter()
    ids = chat_ids(tokenizer, "Hi!", device)
    timed_generate(target, ids, {"max_new_tokens": 8})
    timed_generate(target, ids, {"max_new_tokens": 8, **pard_kwargs(draft, args)})
    return time.perf_counter() - start


def use_compile(choice: bool | None, device: torch.device) -> bool:
    """``--compile`` / ``--no-compile``, or by default: compiled on a CPU (frozen, pre-packed weights: a round
    costs ~1.2 plain decode steps compiled vs ~2.1 eager on the 2-core Xeon of docs/results.md), eager elsewhere."""
    return choice if choice is not None else device.type == "cpu"


def compare(target, draft, ids: torch.Tensor, args: argparse.Namespace):
    """(plain output, plain seconds, PARD output dict, PARD seconds) for one prompt."""
    common = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    plain, plain_s = timed_generate(target, ids, common)
    pard, pard_s = timed_generate(target, ids, {**common, **pard_kwargs(draft, args), "return_dict_in_generate": True})
    return plain, plain_s, pard, pard_s


def demo(args: argparse.Namespace) -> None:
    check_tree_arguments(args)
    settings = load_settings(args)
    print(f"Loading the target {args.target} ({args.dtype}, {args.attn}) and the PARD draft {args.draft} ...")
    target, tokenizer = load_target(args.target, settings)
    device = next(target.parameters()).device
    compiled = use_compile(args.compile, device)
    if compiled:
        enable_pard(target, compile=True)
    draft = load_pard_draft(args.draft, target, settings)
    print(f"draft dtype: {str(draft.dtype).removeprefix('torch.')} (--draft-dtype {args.draft_dtype}; the "
          "target verifies every token, so the output does not depend on it)")
    warm = warm_up(target, draft, tokenizer, device, args)
    what = "torch.compile included" if compiled else "no torch.compile"
    print(f"warm-up {warm:.1f} s ({what}): excluded from the timings below")
    tokens, seconds, committed, rounds, all_identical = [0, 0], [0.0, 0.0], 0, 0, True
    for text in tqdm(DEMO_PROMPTS, desc="prompts"):
        ids = chat_ids(tokenizer, text, device)
        plain, plain_s, pard, pard_s = compare(target, draft, ids, args)
        stats = pard.pard_stats
        for i, (out, s) in enumerate(((plain, plain_s), (pard.sequences, pard_s))):
            tokens[i], seconds[i] = tokens[i] + out.shape[1] - ids.shape[1], seconds[i] + s
        committed, rounds = committed + stats.committed_tokens, rounds + stats.row_rounds
        identical = torch.equal(plain, pard.sequences)
        all_identical &= identical
        print(f"\n>>> {text}\n{tokenizer.decode(pard.sequences[0, ids.shape[1]:], skip_special_tokens=True)}")
        print(f"[tau {stats.tau:.2f}, identical to plain generate: {identical}]")
    plain_rate, pard_rate = tokens[0] / seconds[0], tokens[1] / seconds[1]
    print(f"\nplain generate: {plain_rate:.1f} tok/s | {pard_name(args, draft)}: {pard_rate:.1f} tok/s | "
          f"speedup {pard_rate / plain_rate:.2f}x | tau {committed / max(rounds, 1):.2f} | "
          f"outputs identical: {all_identical}")
