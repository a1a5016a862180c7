"""Which target layers a SmolLM2 draft should start from (draft issue, capacity lever): the untrained
agreement of cuts of the target, before any training.

    python benchmarks/layer_choice.py --layers 0,1,2 0,1,29 0,14,29 0,1,2,3,4,5 [--limit 40]

A cut keeps the target's embedding, final norm and tied head and the listed decoder layers, in order.
Agreement = share of answer positions of the target's greedy answers (``greedy_cache``: our held-out
self-instruct split, never the benchmark prompts) where the cut's argmax is the target's next token:
draft slot 1 of PARD before its mask slots learn anything. Prints one JSON line per cut.
"""

import argparse
import json

import torch
from greedy_cache import cached_answers
from transformers import AutoModelForCausalLM

from transformers_pard.apps.embedded import load_smollm2
from transformers_pard.training import greedy_sequences, load_prompts


def cut(target, layers: list[int]):
    """The target with only ``layers`` (indices into its decoder layers), sharing the target's weights."""
    config = type(target.config).from_dict(target.config.to_dict())
    config.num_hidden_layers = len(layers)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    own = {}
    for name, tensor in target.state_dict().items():
        parts = name.split(".")
        if "layers" in parts:
            at = parts.index("layers")
            source = int(parts[at + 1])
            if source not in layers:
                continue
            parts[at + 1] = str(layers.index(source))
        own[".".join(parts)] = tensor
    draft.load_state_dict(own, strict=False)
    draft.tie_weights()
    return draft.eval()


@torch.no_grad()
def agreement(draft, sequences) -> tuple[float, int]:
    hits = positions = 0
    for sequence, start in sequences:
        ids = torch.tensor(sequence)[None]  # (1, L)
        guess = draft(ids).logits[0, start - 1:-1].argmax(-1)  # (A,) after each answer prefix
        hits += int((guess == ids[0, start:]).sum())
        positions += guess.numel()
    return hits / max(positions, 1), positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", nargs="+", required=True, help="comma-separated layer indices, one cut each")
    parser.add_argument("--prompts", default="runs/smollm2-si/heldout_instruct.jsonl")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    target, tokenizer = load_smollm2(dtype=torch.float32)
    sequences = cached_answers(args.prompts, max_new_tokens=args.max_new_tokens, limit=args.limit, answer=lambda: (
        greedy_sequences(target, tokenizer, load_prompts(args.prompts)[: args.limit], max_new_tokens=args.max_new_tokens)))
    for spec in args.layers:
        layers = [int(i) for i in spec.split(",")]
        share, positions = agreement(cut(target, layers), sequences)
        print(json.dumps({"layers": layers, "agreement": round(share, 4), "positions": positions}), flush=True)


if __name__ == "__main__":
    main()
