"""Per-slot top-k accuracy of a PARD draft, teacher-forced on the target's own greedy answers (issue 21).

    python benchmarks/slot_topk.py --draft transformers_pard/assets/smollm2-pard-k8 --limit 40 \\
        --max-new-tokens 128 --k 8 --topk 8

table[i][r] = share of round starts p (every answer position) where the target's token for draft
slot i+1 is among the draft's top-(r+1) tokens of that slot: unconditional per slot (slot i counts
whether or not the slots before it were right), which is what a tree branching under every slot needs.

How: the target answers every prompt greedily (batched ``generate``); one target forward over
prompt + answer gives its choice after every prefix; one draft forward over PARD's K-copy training
layout (``training.collator``), restricted to the answer, gives every slot of every round at once:
copy j at position t = real prefix ``x_0..x_{t-j}`` + j masks = draft slot j+1 of the round whose last
real token is ``x_{t-j}``, and the target's token there is its argmax after ``x_0..x_t``.

Prompts: ``--prompts FILE.jsonl`` (``{"data": ...}`` records) or, by default, the held-out split of the
SmolLM2 recipe (``build_prompt_records``, shuffled as the recipe's data stage does). Never the
benchmark prompts. Writes JSON: the table, positions per slot, and the static tree shapes
(``transformers_pard.tree.static_shape``) for budgets 16/32/64 with their estimated tau.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

import torch
import transformers
from greedy_cache import cached_answers

import transformers_pard
from transformers_pard.draft_io import load_draft
from transformers_pard.drafting import Pard2Inputs, resolve_draft
from transformers_pard.pard2 import draft_inputs_embeds, target_features
from transformers_pard.training.collator import build_example, collate_examples
from transformers_pard.training.data import load_prompts
from transformers_pard.training.evaluate import prompt_ids
from transformers_pard.lookup import ngram_continuation
from transformers_pard.tree import TokenTree, dynamic_tree_from_topk, greedy_accept, static_shape, with_chain

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.apps.recipes.prompts import build_prompt_records
from transformers_pard.training.target_pass import row_features

DEFAULT_DRAFT = os.path.join(os.path.dirname(transformers_pard.__file__), "assets", "smollm2-pard-k8")
BUDGETS = (16, 32, 64)
TREE_BUDGETS = (8, 12, 16, 24, 32)  # dynamic trees simulated on the same rounds
TREE_TOP_N = 4  # children per expanded node (GreedyTreeVerifier's default)


def heldout_prompts(limit: int, *, num_prompts: int, heldout: int, seed: int) -> list[str]:
    """The first ``limit`` held-out prompts of the recipe's split (``recipes.smollm2.data_stage``)."""
    records = build_prompt_records(num_prompts + heldout, seed=seed)
    random.Random(seed).shuffle(records)
    return [prompt for _, prompt in records[:heldout]][:limit]


def refuse_benchmark_prompts(path: str) -> None:
    if os.sep + os.path.join("shared", "bench") + os.sep in os.path.realpath(path):
        raise SystemExit(f"{path} is a benchmark prompt file: measure the draft on held-out prompts instead.")


@torch.no_grad()
def greedy_answers(target, tokenizer, prompts, *, max_new_tokens: int, batch_size: int) -> list[tuple[list[int], int]]:
    """(prompt + the target's greedy answer up to its first EOS, answer start), in batches (left padding)."""
    eos = target.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    out = []
    for first in range(0, len(prompts), batch_size):
        ids = [prompt_ids(tokenizer, p, chat_template=True)[0].tolist() for p in prompts[first:first + batch_size]]
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids])  # (b, P) left-padded
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])  # (b, P)
        generated = target.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad)[:, width:].tolist()  # (b, <= max_new)
        for row, answer in zip(ids, generated):
            end = next((i + 1 for i, token in enumerate(answer) if token in eos), len(answer))
            out.append((row + answer[:end], len(row)))
    return out


def answer_layout(input_ids: torch.Tensor, start: int, k: int, mask_token_id: int) -> dict[str, torch.Tensor]:
    """The K-copy layout of one sequence (L,): copy 0 whole, copy j >= 1 only at answer positions
    ``start-1+j .. L-2`` (rows that are some round's slot j+1 with a known next token)."""
    length = input_ids.numel()
    keep = [torch.arange(length)] + [torch.arange(start - 1 + j, length - 1) for j in range(1, k)]
    example = build_example(input_ids, input_ids, keep=keep, mask_token_id=mask_token_id)
    return collate_examples([example], pad_token_id=0)


@torch.no_grad()
def slot_logits(target, drafter, sequence: list[int], start: int, *, k: int):
    """One target and one draft forward over a sequence: the target's choice after every prefix (L,),
    and the draft's target-vocabulary logits (n, V) of the answer rows with their copy and position (n,)."""
    input_ids = torch.tensor(sequence)  # (L,)
    pard2 = drafter.inputs.config if isinstance(drafter.inputs, Pard2Inputs) else None
    out = target(input_ids[None], output_hidden_states=pard2 is not None)
    choice = out.logits[0].argmax(-1)  # (L,) the target's token after x_0..x_t
    batch = answer_layout(input_ids, start, k, drafter.spec.mask_token_id)
    copy, position = batch["copy_ids"][0], batch["position_ids"][0]  # (N,) each
    embeds = None
    if pard2 is not None:
        rows = row_features(target_features(out.hidden_states, pard2.target_layers), batch["copy_ids"],
                            batch["position_ids"])  # (1, N, D)
        embeds = draft_inputs_embeds(drafter.model, batch["input_ids"], rows, pard2.scale)  # (1, N, H)
    logits = drafter.forward_module(input_ids=None if embeds is not None else batch["input_ids"], inputs_embeds=embeds,
                                    attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
    counted = (position >= start - 1 + copy) & (position <= input_ids.numel() - 2)  # (N,) answer rows only
    return choice, drafter.to_target_vocab(logits)[0, counted], copy[counted], position[counted]


def slot_hits(choice, logits, copy, position, *, k: int, topk: int):
    """hits (K, R) -- target token within the draft's top-(r+1) at slot i+1 -- and positions (K,) per slot."""
    top = logits.topk(topk, dim=-1).indices  # (n, R)
    within = (top == choice[position, None]).long().cumsum(1).clamp(max=1)  # (n, R) cumulative hit
    hits = torch.zeros(k, topk, dtype=torch.long).index_add_(0, copy, within)  # (K, R)
    return hits, torch.bincount(copy, minlength=k)  # (K, R), (K,)


def round_slots(choice, logits, copy, position, start: int, *, k: int, top_n: int):
    """Every round start p = start-1 .. L-2 at once: the K slot top-n (log q (P, K, n), ids (P, K, n);
    -inf where the slot is past the text) and the target's choice at each depth, ``choice[p + d]``
    (P, K+1; -1 past the text), which on target-greedy text is its choice after any correct node."""
    first, last = start - 1, choice.numel() - 2
    rounds = last - first + 1
    log_q = torch.full((rounds, k, top_n), float("-inf"))  # (P, K, n)
    ids = torch.zeros(rounds, k, top_n, dtype=torch.long)  # (P, K, n)
    for chunk in torch.arange(logits.shape[0]).split(512):
        values, indices = logits[chunk].float().log_softmax(-1).topk(top_n, dim=-1)  # (c, n)
        p = position[chunk] - copy[chunk] - first  # (c,) the round each row is a slot of
        log_q[p, copy[chunk]], ids[p, copy[chunk]] = values, indices
    at = torch.arange(first, last + 1)[:, None] + torch.arange(k + 1)  # (P, K+1) p + d
    by_depth = torch.where(at <= last, choice[at.clamp(max=choice.numel() - 1)], -1)  # (P, K+1)
    return log_q, ids, by_depth


def tree_accepted(log_q, ids, by_depth, budget: int) -> torch.Tensor:
    """Tokens a greedy dynamic tree of ``budget`` nodes accepts in each round (P,); ``budget`` = K with
    one child per node is the chain."""
    return greedy_accepted(dynamic_tree_from_topk(log_q, ids, budget=budget), by_depth)


def greedy_accepted(tree: TokenTree, by_depth: torch.Tensor) -> torch.Tensor:
    """Tokens ``tree`` (P rounds) accepts per round (P,): on target-greedy text the target's choice at a
    node of depth d is ``by_depth[:, d]``, whatever the path."""
    depth = torch.cat([torch.zeros_like(tree.depth[:, :1]), tree.depth], dim=1)  # (P, 1+N)
    return greedy_accept(tree, by_depth.gather(1, depth)).num_accepted


def conditioned_accepted(log_q, ids, by_depth, *, candidates: int, sub_budget: int) -> torch.Tensor:
    """The ideal a PARD tree lacks (issue 21): a second draft forward per slot-1 candidate, fed that
    candidate, so its subtree's slots are conditioned on it. Tokens accepted per round (P,), rounds of ONE
    sequence in order. On target-greedy text only the correct candidate's subtree can be accepted, and
    its second forward (``x_0..x_p, x_{p+1}, masks``) is exactly round p+1's draft input: its subtree is
    round p+1's tree of ``sub_budget`` nodes, K-1 deep. Nodes: ``candidates * (1 + sub_budget)``."""
    k = ids.shape[1]
    lq, ii, truth = log_q[:, : k - 1], ids[:, : k - 1], by_depth[:, :k]  # next round's first K-1 slots
    sub = (tree_accepted(lq[..., :1], ii[..., :1], truth, k - 1) if sub_budget == k - 1
           else tree_accepted(lq, ii, truth, sub_budget))  # (P,) accepted by round p's K-1 deep subtree
    after = torch.cat([sub[1:], sub.new_zeros(1)])  # (P,) round p+1's, as round p's continuation
    hit = (ids[:, 0, :candidates] == by_depth[:, :1]).any(1)  # (P,) the target's token among the candidates
    return hit.long() * (1 + after)


CONDITIONED = ((1, 7), (1, 15), (2, 7), (3, 7), (3, 11), (4, 15))  # (slot-1 candidates, nodes under each)
LOOKUP = ((0, 8), (4, 4), (4, 8), (8, 4), (8, 8), (16, 8))  # (draft tree nodes, lookup branch nodes); 0: lookup alone


def lookup_tokens(sequence: list[int], start: int, rounds: int, length: int) -> torch.Tensor:
    """Round p's lookup branch (``lookup.ngram_continuation``, the engine's own) for every round start
    p = start-1 .. start-2+rounds at once: row i sees only ``x_0..x_p``, p = start-1+i (P, L)."""
    text = torch.tensor(sequence).expand(rounds, -1)  # (P, L_seq): past `end` never read
    end = start + torch.arange(rounds)  # (P,) one past round i's last real token
    continuation, matched = ngram_continuation(text, torch.zeros_like(end), end, length=length)  # (P, L), (P,)
    return torch.where(matched[:, None] > 0, continuation, -1)  # (P, L): -1 never equals the target's token


def lookup_accepted(log_q, ids, by_depth, lookup: torch.Tensor, draft_nodes: int) -> torch.Tensor:
    """Tokens accepted per round (P,) by a dynamic tree of ``draft_nodes`` plus the lookup branch ``lookup``
    (P, L) (``tree.with_chain``) in a fixed share; 0 draft nodes: the lookup chain alone. Rounds with no
    recurring n-gram get no lookup candidate. (The engine's sampled share follows the match instead,
    ``verification.SamplingTreeVerifier``; greedy, it ranks every node, ``GreedyTreeVerifier``.)"""
    if draft_nodes == 0:
        return (lookup == by_depth[:, : lookup.shape[1]]).long().cumprod(1).sum(1)
    return greedy_accepted(with_chain(dynamic_tree_from_topk(log_q, ids, budget=draft_nodes), lookup), by_depth)


def static_accepted(ids, by_depth, shape) -> torch.Tensor:
    """Tokens the static tree ``shape`` (ranks within ``ids``' top-n) accepts in each round (P,)."""
    parents, depth, rank = shape.tensors()  # (N,) each
    rounds = ids.shape[0]
    tree = TokenTree(ids[:, depth - 1, rank], parents.expand(rounds, -1), depth.expand(rounds, -1),
                     rank.expand(rounds, -1), shape.k)
    return greedy_accepted(tree, by_depth)


def estimated_tau(paths, share: list[list[float]]) -> float:
    """1 + sum over nodes of the product of their rank shares (independent slots): Medusa's estimate."""
    total = 0.0
    for path in paths:
        probability = 1.0
        for depth, rank in enumerate(path):
            probability *= share[depth][rank]
        total += probability
    return 1.0 + total


def tree_shapes(table: torch.Tensor) -> dict:
    """The static shape ``static_shape`` picks for each budget, and the chain's, with estimated tau."""
    k, r = table.shape
    share = torch.diff(table, dim=1, prepend=table.new_zeros(k, 1)).clamp(min=0).tolist()  # (K, R)
    chain = [(0,) * d for d in range(1, k + 1)]
    shapes = {"chain": {"nodes": k, "estimated_tau": estimated_tau(chain, share)}}
    for budget in BUDGETS:
        if budget <= sum(r**d for d in range(1, k + 1)):
            paths = static_shape(table, budget).paths
            depths = [sum(len(p) == d for p in paths) for d in range(1, k + 1)]
            shapes[str(budget)] = {"nodes": budget, "estimated_tau": estimated_tau(paths, share),
                                   "nodes_per_depth": depths, "paths": [list(p) for p in paths]}
    return shapes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draft", default=DEFAULT_DRAFT, help="draft folder (default: the shipped SmolLM2 draft)")
    parser.add_argument("--pard-mode", choices=("dependent", "independent"), default=None, help="PARD-2 drafts")
    parser.add_argument("--prompts", default=None, help='JSONL of {"data": prompt} (default: recipe held-out)')
    parser.add_argument("--limit", type=int, default=40, help="prompts to use")
    parser.add_argument("--num-prompts", type=int, default=2000, help="recipe split: training prompts")
    parser.add_argument("--heldout", type=int, default=40, help="recipe split: held-out prompts")
    parser.add_argument("--seed", type=int, default=0, help="recipe split: seed")
    parser.add_argument("--k", type=int, default=8, help="draft slots")
    parser.add_argument("--topk", type=int, default=8, help="ranks in the table")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--write-config", action="store_true",
                        help="store the table in the draft folder's config.json (pard_tree_topk_accuracy): "
                             "generate(pard_tree=N) then builds the greedy tree's static shape from it")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/slot-topk-<draft>.json)")
    return parser.parse_args()


def load_prompt_set(args) -> tuple[list[str], str]:
    if args.prompts is not None:
        refuse_benchmark_prompts(args.prompts)
        return load_prompts(args.prompts)[: args.limit], args.prompts
    source = f"recipe held-out split (num_prompts={args.num_prompts}, heldout={args.heldout}, seed={args.seed})"
    return heldout_prompts(args.limit, num_prompts=args.num_prompts, heldout=args.heldout, seed=args.seed), source


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    prompts, source = load_prompt_set(args)
    target, tokenizer = load_smollm2(dtype=torch.float32)
    drafter = resolve_draft(target, load_draft(args.draft, target=target).eval(), pard_mode=args.pard_mode)
    answer = lambda: greedy_answers(target, tokenizer, prompts, max_new_tokens=args.max_new_tokens,  # noqa: E731
                                    batch_size=args.batch_size)
    sequences = (cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.limit, answer=answer)
                 if args.prompts else answer())  # a --prompts file shares benchmarks/tf_tau.py's answers
    answered = time.perf_counter()
    hits, positions = torch.zeros(args.k, args.topk, dtype=torch.long), torch.zeros(args.k, dtype=torch.long)
    rounds, replayed = [], {}  # per-sequence replays: name -> accepted per round
    for sequence, start in sequences:
        choice, logits, copy, position = slot_logits(target, drafter, sequence, start, k=args.k)
        row_hits, row_positions = slot_hits(choice, logits, copy, position, k=args.k, topk=args.topk)
        hits, positions = hits + row_hits, positions + row_positions
        rounds.append(round_slots(choice, logits, copy, position, start, k=args.k, top_n=args.topk))
        log_q, ids, by_depth = rounds[-1]
        for c, sub in CONDITIONED if args.k == 8 else ():
            replayed.setdefault(f"conditioned-{c}x{1 + sub}", []).append(
                conditioned_accepted(log_q[..., :TREE_TOP_N], ids[..., :TREE_TOP_N], by_depth, candidates=c, sub_budget=sub))
        for nodes, length in LOOKUP:
            if length <= args.k:
                name = f"dynamic-{nodes}+lookup-{length}" if nodes else f"lookup-{length}"
                lookup = lookup_tokens(sequence, start, by_depth.shape[0], length)
                replayed.setdefault(name, []).append(
                    lookup_accepted(log_q[..., :TREE_TOP_N], ids[..., :TREE_TOP_N], by_depth, lookup, nodes))
    table = hits.double() / positions.clamp(min=1)[:, None].double()  # (K, R)
    log_q, ids, by_depth = (torch.cat(parts) for parts in zip(*rounds))
    accepted = {"chain": tree_accepted(log_q[..., :1], ids[..., :1], by_depth, args.k)}
    for budget in TREE_BUDGETS:
        accepted[f"dynamic-{budget}"] = tree_accepted(log_q[..., :TREE_TOP_N], ids[..., :TREE_TOP_N], by_depth, budget)
        accepted[f"static-{budget}"] = static_accepted(ids, by_depth, static_shape(table, budget))
    accepted.update({name: torch.cat(parts) for name, parts in replayed.items()})
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "draft": args.draft, "pard_mode": args.pard_mode, "prompts": source, "num_prompts_used": len(prompts),
        "max_new_tokens": args.max_new_tokens, "k": args.k, "topk": args.topk,
        "answer_tokens": sum(len(s) - start for s, start in sequences),
        "positions_per_slot": positions.tolist(),
        "table": [[round(v, 4) for v in row] for row in table.tolist()],  # [slot][r]: within top-(r+1)
        "tree_shapes": tree_shapes(table),
        # teacher-forced tau (a round at every answer position) of the chain, of greedy dynamic trees
        # (top-TREE_TOP_N children), of the static shapes chosen from this table, and of the conditioned
        # ideal "conditioned-CxM" (C slot-1 candidates, each with its own second draft forward and a
        # dynamic subtree: M nodes per candidate, C*M in all), and of a dynamic tree of N nodes plus a
        # lookup branch of L ("dynamic-N+lookup-L"; "lookup-L": the text's n-gram continuation alone),
        # on the same rounds
        "rounds": int(by_depth.shape[0]),
        "tree_tau": {name: round(1 + a.double().mean().item(), 4) for name, a in accepted.items()},
        "seconds": {"answers": round(answered - started, 1), "total": round(time.perf_counter() - started, 1)},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "processor": platform.processor(), "threads": torch.get_num_threads()},
    }
    name = os.path.basename(os.path.normpath(args.draft))
    out = args.out or os.path.join("benchmarks", "results", f"slot-topk-{name}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    if args.write_config:
        write_table(args.draft, result["table"], static_min_nodes(result["tree_tau"]))
    print_table(table)
    print("teacher-forced tau:", result["tree_tau"])
    print(f"wrote {out}")


def static_min_nodes(tree_tau: dict) -> int:
    """The smallest measured budget from which the static shape accepts at least as much as the dynamic
    tree at every measured budget (one past the largest when it never does)."""
    budgets = sorted(TREE_BUDGETS, reverse=True)
    smallest = budgets[0] + 1
    for budget in budgets:
        if tree_tau[f"static-{budget}"] < tree_tau[f"dynamic-{budget}"]:
            break
        smallest = budget
    return smallest


def write_table(folder: str, table: list[list[float]], static_from: int) -> None:
    """The table and the budget the greedy tree turns static at, into the draft folder's config.json."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["pard_tree_topk_accuracy"] = table
    config["pard_tree_static_min_nodes"] = static_from
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote pard_tree_topk_accuracy and pard_tree_static_min_nodes = {static_from} to {path}")


def print_table(table: torch.Tensor) -> None:
    k, r = table.shape
    print("slot  " + " ".join(f"{i + 1:>5}" for i in range(k)))
    for rank in sorted({0, min(2, r - 1), min(4, r - 1), r - 1}):
        print(f"top-{rank + 1:<2}" + " ".join(f"{v:5.2f}" for v in table[:, rank].tolist()))


if __name__ == "__main__":
    main()
