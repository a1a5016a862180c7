"""The target's greedy answers to a prompt file, cached next to it: ``tf_tau.py`` and ``slot_topk.py``
read the same answers for the same (prompts, limit, new tokens)."""

from __future__ import annotations

import json
import os
from typing import Callable


def cache_path(prompts: str, *, max_new_tokens: int, limit: int) -> str:
    return f"{prompts}.greedy{max_new_tokens}-{limit}.json"


def cached_answers(prompts: str, *, max_new_tokens: int, limit: int,
                   answer: Callable[[], list[tuple[list[int], int]]]) -> list[tuple[list[int], int]]:
    """``(prompt + greedy answer ids, answer start)`` per prompt: from the cache, else ``answer()``, stored."""
    path = cache_path(prompts, max_new_tokens=max_new_tokens, limit=limit)
    if os.path.exists(path):
        with open(path) as f:
            return [tuple(sequence) for sequence in json.load(f)]
    sequences = answer()
    with open(path, "w") as f:
        json.dump(sequences, f)
    return sequences
