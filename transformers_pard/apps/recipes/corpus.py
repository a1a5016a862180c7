"""Real text already on the machine, as ``{"text": ...}`` training records: Python's standard library.

The draft issue's "prefill" lever: a target *prefill* over existing text costs a small fraction of
generating that many tokens, so teacher-forced KD from the target's distribution over real text (PARD-2's
loss, ``--pard2 --pard2-loss-only``) can add far more data per CPU-hour than self-distillation. Nothing
may be downloaded here, and the one sizeable body of real text every Python install carries is its
standard library: code, comments and docstrings (explanations in English). The benchmark prompts are
never read.

The selection is deterministic for a given Python installation: files sorted by path, each cut at line
boundaries into chunks of at most ``max_tokens`` tokens, a seeded sample of the chunks. ``corpus_digest``
names the exact text (the manifest records it with the Python version).
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sysconfig
import textwrap
from collections.abc import Iterator

#: Folders of the standard library that are not library code (test suites, demos, vendored wheels).
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "ensurepip", "turtledemo",
                          "__pycache__", "lib2to3", "pydoc_data", "config-3"})


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def source_files(root: str) -> list[str]:
    """Every ``.py`` file under ``root`` outside ``SKIPPED_DIRS``, sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("config-")]
        found += [os.path.relpath(os.path.join(folder, name), root) for name in files if name.endswith(".py")]
    return sorted(found)


def source_texts(root: str) -> Iterator[str]:
    """The text of each ``source_files(root)`` file, in that order."""
    for path in source_files(root):
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
            yield f.read()


def seeded_sample(items: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``items`` drawn with ``seed``, kept in their order."""
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def line_chunks(lines: list[str], counts: list[int], max_tokens: int, min_tokens: int) -> Iterator[str]:
    """Consecutive runs of whole ``lines`` (``counts[i]`` tokens each) of at most ``max_tokens`` tokens (a
    longer single line is skipped and ends the run), dropping runs under ``min_tokens``."""
    run, size = [], 0
    for line, n in zip(lines, counts):
        if size + n > max_tokens and run:
            if size >= min_tokens:
                yield "".join(run)
            run, size = [], 0
        if n <= max_tokens:
            run.append(line)
            size += n
    if run and size >= min_tokens:
        yield "".join(run)


def stdlib_chunks(tokenizer, *, num_chunks: int, max_tokens: int = 300, min_tokens: int = 64, seed: int = 0,
                  root: str | None = None) -> list[str]:
    """A seeded sample of ``num_chunks`` line chunks (``line_chunks``) of the standard library's source,
    in file order. Raises if the library holds fewer."""
    root = root or stdlib_root()
    chunks = []
    for text in source_texts(root):
        lines = text.splitlines(keepends=True)
        if lines:
            counts = [len(ids) for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]
            chunks += line_chunks(lines, counts, max_tokens, min_tokens)
    if len(chunks) < num_chunks:
        raise ValueError(f"The standard library under {root} gives {len(chunks)} chunks of {min_tokens}-{max_tokens} "
                         f"tokens, fewer than the {num_chunks} asked: ask for fewer.")
    return seeded_sample(chunks, num_chunks, seed)


def corpus_digest(texts: list[str]) -> str:
    """sha256 (first 16 hex digits) of the texts in order: the same digest means the same training text."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def function_stubs(source: str, *, min_doc_chars: int = 40, max_doc_chars: int = 1000) -> Iterator[str]:
    """The public functions and methods of one module's ``source`` that carry a docstring of
    ``min_doc_chars``-``max_doc_chars`` characters, each as its ``def`` line(s) and docstring, dedented and
    without decorators or body: a completion request of the kind users write. Unparsable source gives none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if doc is None or not min_doc_chars <= len(doc) <= max_doc_chars:
            continue
        yield textwrap.dedent("".join(lines[node.lineno - 1 : node.body[0].end_lineno]))


def stdlib_stubs(*, num_stubs: int, seed: int = 0, root: str | None = None, **limits) -> list[str]:
    """A seeded sample of ``num_stubs`` distinct ``function_stubs`` of the standard library, in file order
    (``num_stubs=0``: all of them). Raises if the library holds fewer."""
    root = root or stdlib_root()
    stubs: dict[str, None] = {}  # distinct, in file order
    for text in source_texts(root):
        stubs.update(dict.fromkeys(function_stubs(text, **limits)))
    found = list(stubs)
    if len(found) < num_stubs:
        raise ValueError(f"The standard library under {root} has {len(found)} documented public functions, fewer "
                         f"than the {num_stubs} asked: ask for fewer (0 takes all).")
    return seeded_sample(found, num_stubs, seed) if num_stubs else found
