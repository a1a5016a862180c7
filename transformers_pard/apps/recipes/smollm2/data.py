"""Stage 1, ``data``: ``build_prompts`` (templates, not the benchmark prompts), greedy answers of the
target for every prompt plus sampled answers for the non-arithmetic ones; a held-out split for tau.
"""

from __future__ import annotations

import json
import os
import platform
import random
from collections.abc import Sequence

import torch

from ....hardware import fast_dtype
from ...embedded import load_smollm2, load_smollm2_tokenizer
from ..corpus import corpus_digest, stdlib_chunks, stdlib_root, stdlib_stubs
from ..distill import distill
from ..prompts import build_prompt_records
from ..self_instruct import CODE_STYLES, FAMILY_MIX, heldout_prompts, seeded_name, self_instruct_stage
from ..stories import SCENARIOS, story_problems
from .common import CORPUS_FILE, DATA_FILE, HELDOUT_FILE, LIBRARY_FILE, STORIES_FILE


def data_stage(out_dir: str, *, num_prompts: int = 2000, heldout: int = 40, sampled_repeats: int = 1,
               batch_size: int = 48, max_new_tokens: int = 128, seed: int = 0, train_prompts: int | None = None,
               dtype: torch.dtype | None = None, device: str = "cpu") -> str:
    """Build the prompt set, write the held-out prompts, self-distil the rest. Returns the data path.

    ``train_prompts`` answers only the first N training prompts (the split, and so the held-out prompts,
    stay those of ``num_prompts``); ``dtype`` of the answering target: default bf16 where it is faster on
    ``device`` (``hardware.fast_dtype``), else fp32.
    """
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
    model, tokenizer = load_smollm2(dtype=dtype or fast_dtype(device), device=device)
    path = os.path.join(out_dir, DATA_FILE)
    distill(model, tokenizer, jobs, path, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return path


def instruct_stage(out_dir: str, *, num_questions: int = 1280, seed: int = 0, dtype: torch.dtype | None = None,
                   batch_size: int = 64, max_new_tokens: int = 128, style: str = "short", device: str = "cpu",
                   families: Sequence[str] = tuple(FAMILY_MIX)) -> str:
    """Stage ``instruct``: the target writes ``num_questions`` requests of its own (``self_instruct``; of
    ``families``), then answers the usable ones (greedy); the first 40 go to the held-out file. Returns the
    data path."""
    model, tokenizer = load_smollm2(dtype=dtype or fast_dtype(device), device=device)
    return self_instruct_stage(model, tokenizer, out_dir, num_questions=num_questions, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, seed=seed, style=style, families=families)


def corpus_stage(out_dir: str, *, num_chunks: int = 3000, max_tokens: int = 300, seed: int = 0) -> str:
    """Stage ``corpus``: ``num_chunks`` chunks of Python's standard library source as ``{"text": ...}`` records
    (``corpus.stdlib_chunks``) in ``out_dir/corpus.jsonl``, which the train stage then reads with the answers;
    what was taken (Python version, chunk count, tokens, digest) goes to ``corpus.json``. No target runs here:
    its distribution over the text comes from the train stage's own target pass (``--pard2 --pard2-loss-only``)."""
    tokenizer = load_smollm2_tokenizer()
    texts = stdlib_chunks(tokenizer, num_chunks=num_chunks, max_tokens=max_tokens, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CORPUS_FILE)
    with open(path, "w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    record = {"source": "python standard library", "python": platform.python_version(), "root": stdlib_root(),
              "chunks": num_chunks, "max_tokens": max_tokens, "seed": seed, "tokens": tokens,
              "digest": corpus_digest(texts)}
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record))
    return path


def library_stage(out_dir: str, *, num_stubs: int = 0, seed: int = 0, **generation) -> str:
    """Stage ``library``: completion requests made of the standard library's documented public functions
    (``corpus.stdlib_stubs``: the ``def`` line and docstring, no body; ``num_stubs`` of them, 0 = all), answered
    greedily by the target into ``distill-library.jsonl`` (another seed: ``-s{seed}``). Real requests that cost
    nothing to write: the instruct stage spends about four fifths of its time having the target write its
    requests. Returns the data path."""
    rng = random.Random(seed)
    stubs = stdlib_stubs(num_stubs=num_stubs, seed=seed)
    source = {"source": "python standard library: documented public functions", "python": platform.python_version(),
              "root": stdlib_root(), "stubs": len(stubs)}
    return answer_requests(out_dir, LIBRARY_FILE, [rng.choice(CODE_STYLES).format(code=stub) for stub in stubs],
                           source, seed=seed, **generation)


def stories_stage(out_dir: str, *, num_problems: int = 2000, seed: int = 0, **generation) -> str:
    """Stage ``stories``: ``num_problems`` multi-step word problems composed from story steps
    (``stories.story_problems``), answered greedily by the target into ``distill-stories.jsonl`` (another seed:
    ``-s{seed}``): the math requests the target cannot write well itself. Returns the data path."""
    source = {"source": "composed word problems (recipes.stories)", "scenarios": sorted(SCENARIOS)}
    return answer_requests(out_dir, STORIES_FILE, story_problems(num_problems, seed=seed), source, seed=seed,
                           **generation)


def answer_requests(out_dir: str, name: str, prompts: list[str], source: dict, *, seed: int = 0,
                    dtype: torch.dtype | None = None, batch_size: int = 64, max_new_tokens: int = 128,
                    device: str = "cpu") -> str:
    """The target's greedy answers to ``prompts`` (minus any of the held-out splits under ``out_dir``) appended
    to ``out_dir/name`` (``-s{seed}`` for a seed other than 0; resumable), with a manifest beside it (``.json``:
    ``source``, the counts and a digest of the prompts). Returns the data path."""
    exclude = heldout_prompts(out_dir) | heldout_prompts(out_dir, HELDOUT_FILE)  # tuning splits stay unseen
    kept = [prompt for prompt in prompts if prompt not in exclude]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, seeded_name(name, seed))
    record = {**source, "prompts": len(kept), "seed": seed, "digest": corpus_digest(kept)}
    with open(path.replace(".jsonl", ".json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record))
    torch.manual_seed(seed)
    model, tokenizer = load_smollm2(dtype=dtype or fast_dtype(device), device=device)
    prefix = name.removeprefix("distill-")[0]
    distill(model, tokenizer, [(f"{prefix}-{i}", prompt, False) for i, prompt in enumerate(kept)], path,
            batch_size=batch_size, max_new_tokens=max_new_tokens)
    return path
