"""Self-instruct prompts: the target writes new requests, then answers them (``distill``).

The template prompts of ``prompts.py`` have a few hundred distinct non-arithmetic members and a narrow
style. Here the target itself is asked (sampled) to write a new grade-school word problem, a Python
exercise given as a function header with a docstring, or a student's question, seeded by a topic and a
name drawn from our own lists; what it writes becomes a training prompt. Deterministic for a seed (the
sampling generator is seeded), resumable (questions and answers are appended by id), and never reads
the benchmark prompts.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence

import torch

from .distill import distill
from .prompts import NAMES, TOPICS

MATH_TOPICS = [
    "shopping for groceries", "baking cookies", "a school trip", "saving pocket money", "a lemonade stand",
    "planting a garden", "a soccer season", "reading books", "a bus route", "a birthday party", "painting a fence",
    "feeding farm animals", "a library", "collecting stamps", "a road trip", "a pizza order", "a bake sale",
    "building a bookshelf", "a swimming pool", "selling tickets", "a fruit orchard", "a toy store", "a marathon",
    "packing boxes", "a zoo visit", "renting bikes", "a class election", "a recipe for pancakes", "a phone plan",
    "a car wash fundraiser", "knitting scarves", "a movie night", "a fish tank", "a train journey",
]
CODE_TASKS = [
    "strings", "lists of numbers", "dictionaries", "sorting", "prime numbers", "counting characters",
    "palindromes", "matrices", "dates", "temperatures", "grades of students", "shopping carts", "words in a sentence",
    "binary numbers", "even and odd numbers", "averages", "intervals", "vowels", "anagrams", "parentheses",
    "Fibonacci numbers", "digits of an integer", "the maximum of a list", "duplicates in a list", "rotating a list",
    "caesar ciphers", "leap years", "triangles", "fractions", "run-length encoding", "nested lists", "factorials",
]
MATH_META = [
    "Write one new math word problem for a grade-school student about {topic}. Use the name {name}. The problem "
    "should need two or three steps of arithmetic. Write only the problem, not the answer.",
    "Create a short word problem about {topic} where {name} has to calculate a total. Do not solve it.",
]
CODE_META = [
    "Write a Python function header with a docstring and two examples for a small exercise about {topic}. "
    "Do not write the function body.",
    "Invent a beginner Python exercise about {topic}. Give only the `def` line and a docstring that explains the "
    "task with an example.",
]
GENERAL_META = [
    "Write one question that a curious student might ask about {topic}. Write only the question.",
    "Ask a short question about {topic} that needs an explanation.",
]
#: ``--meta-prompts long``: requests nearer to what users ask a small assistant for: word problems with
#: several quantities and steps, typed function stubs whose docstrings carry ``>>>`` examples.
LONG_MATH_META = [
    "Write a grade-school math word problem about {topic} with {name}. Use four or five sentences, at least "
    "three different numbers (prices, percentages, fractions, hours or ages), and end with one question. "
    "Do not solve it.",
    "Write a word problem in which {name} buys, sells or shares things for {topic} over several days, and the "
    "question asks how much money or how many items are left at the end. It should need four steps. Write only "
    "the problem.",
    "Write a math problem about {topic} that compares two people, {name} and a friend, using a ratio or a "
    "percentage, and asks for a total or a difference. Write only the problem, not the answer.",
]
LONG_CODE_META = [
    "Write the header of a Python function with type hints for a small task about {topic}, and a docstring "
    "that explains the task and shows two or three `>>>` examples with their results. Do not write the body.",
    "Write a Python function signature and a detailed docstring for an exercise about {topic}. The docstring "
    "should describe the input, the output, one edge case, and give examples. Do not implement it.",
]
META_PROMPTS = {"short": (MATH_META, CODE_META, GENERAL_META), "long": (LONG_MATH_META, LONG_CODE_META, GENERAL_META)}
QUESTION_TOKENS = {"short": 96, "long": 192}  # a longer request needs room to end with its question
CODE_STYLES = ["Complete the code I provided.\n\n{code}", "Complete the following Python function.\n\n{code}"]
FAMILY_MIX = {"math": 0.45, "code": 0.35, "general": 0.20}
QUESTIONS_FILE = "questions.jsonl"
INSTRUCT_FILE = "distill-instruct.jsonl"  # answers to the usable questions (training data)
HELDOUT_INSTRUCT_FILE = "heldout_instruct.jsonl"  # the first usable questions, held out for tuning


def seeded_name(name: str, seed: int) -> str:
    """``name`` for seed 0, ``stem-s{seed}.jsonl`` for another seed: more data in the same folder."""
    return name if seed == 0 else name.replace(".jsonl", f"-s{seed}.jsonl")


def heldout_prompts(out_dir: str, name: str = HELDOUT_INSTRUCT_FILE) -> set[str]:
    """The prompts of ``out_dir``'s held-out split ``name`` (default the instruct one; empty before the stage
    that writes it has run)."""
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {json.loads(line)["data"] for line in f if line.strip()}


def meta_jobs(n: int, *, seed: int = 0, style: str = "short",
              families: Sequence[str] = tuple(FAMILY_MIX)) -> list[tuple[str, str, bool]]:
    """``n`` sampled jobs ``(id, meta-prompt, True)`` of ``META_PROMPTS[style]``, drawn from ``families``
    with their ``FAMILY_MIX`` weights; the id names the family (``q-math-17``)."""
    if style not in META_PROMPTS:
        raise ValueError(f"meta-prompt style must be one of {sorted(META_PROMPTS)}, got {style!r}.")
    unknown = sorted(set(families) - set(FAMILY_MIX))
    if unknown or not families:
        raise ValueError(f"request families must be some of {', '.join(FAMILY_MIX)}, got {list(families)}.")
    math_meta, code_meta, general_meta = META_PROMPTS[style]
    rng = random.Random(seed)
    drawn, weights = zip(*((family, weight) for family, weight in FAMILY_MIX.items() if family in families))
    jobs = []
    for i in range(n):
        family = rng.choices(drawn, weights)[0]
        if family == "math":
            text = rng.choice(math_meta).format(topic=rng.choice(MATH_TOPICS), name=rng.choice(NAMES))
        elif family == "code":
            text = rng.choice(code_meta).format(topic=rng.choice(CODE_TASKS))
        else:
            text = rng.choice(general_meta).format(topic=rng.choice(TOPICS + MATH_TOPICS))
        jobs.append((f"q-{family}-{i}", text, True))
    return jobs


_FENCE = re.compile(r"```(?:python)?\n(.*?)(?:```|$)", re.S)


def extract_code_header(text: str) -> str | None:
    """The ``def`` line and docstring of a generated exercise (no body), or None if there is none."""
    match = _FENCE.search(text)
    code = match.group(1) if match else text
    start = code.find("def ")
    if start < 0:
        return None
    code = code[start:]
    quotes = re.search(r'("""|\'\'\')', code)
    if quotes is None:
        return None
    close = code.find(quotes.group(1), quotes.end())
    if close < 0:
        return None
    return code[: close + 3].rstrip() + "\n"


def to_prompt(family: str, generated: str, rng: random.Random) -> str | None:
    """A training prompt from what the target wrote for a meta-prompt of ``family``; None to skip it."""
    text = generated.strip()
    if family == "code":
        header = extract_code_header(text)
        return None if header is None else rng.choice(CODE_STYLES).format(code=header)
    text = re.sub(r"^(Problem|Question|Word problem)\s*\d*\s*:\s*", "", text, flags=re.I).strip()
    if "?" not in text:  # a request ends with its question; anything after it is the writer's own answer
        return None
    text = text[: text.index("?") + 1].strip()
    if family == "math" and not re.search(r"\d", text):
        return None
    return text if 20 <= len(text) <= 800 else None


def usable_prompts(questions: str, rng: random.Random, exclude: set[str]) -> list[tuple[str, str]]:
    """``(answer id, prompt)`` for each distinct usable question of the file, none of ``exclude``."""
    with open(questions) as f:
        rows = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: int(r["id"].rsplit("-", 1)[1]))
    prompts, seen = [], set(exclude)
    for row in rows:
        prompt = to_prompt(row["id"].split("-")[1], row["messages"][1]["content"], rng)
        if prompt is not None and prompt not in seen:
            seen.add(prompt)
            prompts.append((row["id"].replace("q-", "a-", 1), prompt))
    return prompts


def self_instruct_stage(model, tokenizer, out_dir: str, *, num_questions: int, batch_size: int = 64,
                        max_new_tokens: int = 128, seed: int = 0, heldout: int = 40, style: str = "short",
                        families: Sequence[str] = tuple(FAMILY_MIX)) -> str:
    """Questions (``questions.jsonl``), then greedy answers to them (``distill-instruct.jsonl``). Seed 0's
    first ``heldout`` usable questions go to ``heldout_instruct.jsonl`` instead (tuning split); another seed
    adds ``questions-s{seed}.jsonl`` / ``distill-instruct-s{seed}.jsonl``, never a held-out prompt.
    ``style`` picks the meta-prompts (``META_PROMPTS``), ``families`` the kinds of request (all by default);
    seed 0's held-out split is always "short" with every family. Returns the data path."""
    if seed == 0 and style != "short":
        raise ValueError("seed 0 writes the held-out split every draft is tuned on: keep its meta-prompts 'short' "
                         "and use --seed 1 or higher for --meta-prompts long.")
    if seed == 0 and set(families) != set(FAMILY_MIX):
        raise ValueError("seed 0 writes the held-out split every draft is tuned on: keep every request family "
                         "and use --seed 1 or higher for --families.")
    held = heldout_prompts(out_dir)
    if seed != 0 and not held:
        raise ValueError(f"run the instruct stage with --seed 0 on {out_dir} first: it writes the held-out split "
                         "that other seeds' data must not contain.")
    os.makedirs(out_dir, exist_ok=True)
    questions = os.path.join(out_dir, seeded_name(QUESTIONS_FILE, seed))
    torch.manual_seed(seed)
    distill(model, tokenizer, meta_jobs(num_questions, seed=seed, style=style, families=families), questions,
            batch_size=batch_size, max_new_tokens=QUESTION_TOKENS[style], temperature=0.9)
    prompts = usable_prompts(questions, random.Random(seed), held)
    if seed == 0:
        with open(os.path.join(out_dir, HELDOUT_INSTRUCT_FILE), "w") as f:
            for _, prompt in prompts[:heldout]:
                f.write(json.dumps({"data": prompt}) + "\n")
        prompts = prompts[heldout:]
    path = os.path.join(out_dir, seeded_name(INSTRUCT_FILE, seed))
    distill(model, tokenizer, [(job_id, prompt, False) for job_id, prompt in prompts], path,
            batch_size=batch_size, max_new_tokens=max_new_tokens)
    return path
