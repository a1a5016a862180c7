"""The corpus stage: real text from Python's standard library, cut into chunks at line boundaries."""

import ast
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformers_pard.apps.recipes import corpus
from transformers_pard.apps.recipes.self_instruct import CODE_STYLES
from transformers_pard.apps.recipes.smollm2 import data as smollm2_data
from transformers_pard.apps.recipes.smollm2.common import CORPUS_FILE, HELDOUT_FILE, LIBRARY_FILE, training_files


class WordTokenizer:
    """One token per whitespace-separated word: enough to count chunk sizes by hand."""

    def __call__(self, texts, add_special_tokens=False):
        many = isinstance(texts, list)
        ids = [[0] * len(text.split()) for text in (texts if many else [texts])]
        return {"input_ids": ids if many else ids[0]}


@given(counts=st.lists(st.integers(0, 12), max_size=40), max_tokens=st.integers(1, 20), min_tokens=st.integers(0, 10))
def test_chunks_are_runs_of_whole_lines_within_the_limits(counts, max_tokens, min_tokens):
    lines = [f"line{i}\n" for i in range(len(counts))]
    chunks = list(corpus.line_chunks(lines, counts, max_tokens, min_tokens))
    size = dict(zip(lines, counts))
    position = 0
    for chunk in chunks:
        run = chunk.splitlines(keepends=True)
        assert min_tokens <= sum(size[line] for line in run) <= max_tokens
        start = lines.index(run[0])
        assert start >= position and lines[start:start + len(run)] == run  # consecutive, in file order
        position = start + len(run)
    kept = {line for chunk in chunks for line in chunk.splitlines(keepends=True)}
    assert not any(size[line] > max_tokens for line in kept)
    if min_tokens == 0 and all(n <= max_tokens for n in counts):
        assert "".join(chunks) == "".join(lines)  # nothing is lost when every line fits and nothing is too short


def make_library(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("".join(f"def f{i}(): return {i} + {i}\n" for i in range(30)))
    (root / "a.py").write_text("x = 1\n" * 40)
    for skipped in ("test", "site-packages", "__pycache__"):
        (root / skipped).mkdir()
        (root / skipped / "b.py").write_text("skipped = True\n" * 40)
    (root / "notes.txt").write_text("not python\n" * 40)


def test_source_files_skip_tests_and_installed_packages(tmp_path):
    make_library(tmp_path)
    assert corpus.source_files(str(tmp_path)) == ["a.py", "pkg/mod.py"]


def test_the_sample_is_deterministic_and_refuses_more_than_the_library_has(tmp_path):
    make_library(tmp_path)
    take = dict(max_tokens=12, min_tokens=3, root=str(tmp_path))
    first = corpus.stdlib_chunks(WordTokenizer(), num_chunks=5, seed=1, **take)
    assert first == corpus.stdlib_chunks(WordTokenizer(), num_chunks=5, seed=1, **take)
    assert first != corpus.stdlib_chunks(WordTokenizer(), num_chunks=5, seed=2, **take)
    assert corpus.corpus_digest(first) != corpus.corpus_digest(first[1:])
    assert not any("skipped" in chunk for chunk in first)
    with pytest.raises(ValueError, match="fewer than the 500 asked"):
        corpus.stdlib_chunks(WordTokenizer(), num_chunks=500, **take)


def test_corpus_stage_writes_text_records_the_train_stage_reads(tmp_path, monkeypatch):
    make_library(tmp_path / "lib")
    monkeypatch.setattr(smollm2_data, "stdlib_root", lambda: str(tmp_path / "lib"))
    monkeypatch.setattr(smollm2_data, "stdlib_chunks",
                        lambda tokenizer, **kw: corpus.stdlib_chunks(tokenizer, root=str(tmp_path / "lib"), min_tokens=3, **kw))
    monkeypatch.setattr(smollm2_data, "load_smollm2_tokenizer", WordTokenizer)
    out = tmp_path / "out"
    path = smollm2_data.corpus_stage(str(out), num_chunks=4, max_tokens=12)
    records = [json.loads(line) for line in open(path)]
    assert len(records) == 4 and all(set(r) == {"text"} for r in records)
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["chunks"] == 4 and manifest["digest"] == corpus.corpus_digest([r["text"] for r in records])
    assert manifest["tokens"] == sum(len(r["text"].split()) for r in records)
    assert training_files(str(out)) == (str(out / CORPUS_FILE),)


MODULE = '''
import functools


def public(a, b=2):
    """Add two numbers and return the sum of them both."""
    return a + b


@functools.cache
def decorated(x: int) -> int:
    """A decorated function keeps its def line and docstring only."""
    return x


def _private(x):
    """Private helpers are not requests a user would make."""


def undocumented(x):
    return x


def terse(x):
    """Too short."""


class Box:
    def method(self, item):
        """Put an item into the box, keeping the order of arrival."""
        self.items.append(item)
'''


def test_function_stubs_are_def_lines_and_docstrings_of_documented_public_functions():
    stubs = list(corpus.function_stubs(MODULE, min_doc_chars=20))
    assert [stub.split("(")[0] for stub in stubs] == ["def public", "def decorated", "def method"]
    for stub in stubs:
        (node,) = ast.parse(stub).body  # valid Python by itself, dedented, no decorator
        assert isinstance(node, ast.FunctionDef) and not node.decorator_list
        assert len(node.body) == 1 and ast.get_docstring(node)  # the docstring and nothing of the body
    assert list(corpus.function_stubs(MODULE, min_doc_chars=20, max_doc_chars=50)) == stubs[:1]
    assert list(corpus.function_stubs("def broken(:\n")) == []


def test_stdlib_stubs_are_a_seeded_distinct_sample_and_refuse_more_than_there_are(tmp_path):
    (tmp_path / "a.py").write_text(MODULE)
    (tmp_path / "b.py").write_text(MODULE + MODULE.replace("public", "other"))  # repeats count once
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "c.py").write_text(MODULE.replace("public", "tested"))
    every = corpus.stdlib_stubs(num_stubs=0, root=str(tmp_path), min_doc_chars=20)
    assert len(every) == 4 and len(set(every)) == 4 and not any("tested" in stub for stub in every)
    two = corpus.stdlib_stubs(num_stubs=2, seed=3, root=str(tmp_path), min_doc_chars=20)
    assert two == corpus.stdlib_stubs(num_stubs=2, seed=3, root=str(tmp_path), min_doc_chars=20)
    assert [every.index(stub) for stub in two] == sorted(every.index(stub) for stub in two)  # file order
    with pytest.raises(ValueError, match="fewer than the 5 asked"):
        corpus.stdlib_stubs(num_stubs=5, root=str(tmp_path), min_doc_chars=20)


def test_library_stage_answers_completion_requests_the_train_stage_reads(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text(MODULE)
    out = tmp_path / "out"
    out.mkdir()
    stubs = corpus.stdlib_stubs(num_stubs=0, root=str(tmp_path / "lib"), min_doc_chars=20)
    held = [style.format(code=stubs[0]) for style in CODE_STYLES]  # a tuning prompt is never trained on
    (out / HELDOUT_FILE).write_text("".join(json.dumps({"data": prompt}) + "\n" for prompt in held))
    monkeypatch.setattr(smollm2_data, "stdlib_stubs",
                        lambda **kw: corpus.stdlib_stubs(root=str(tmp_path / "lib"), min_doc_chars=20, **kw))
    monkeypatch.setattr(smollm2_data, "load_smollm2", lambda **kw: (None, None))
    answered = []
    monkeypatch.setattr(smollm2_data, "distill", lambda model, tok, jobs, path, **kw: answered.append((jobs, path)))
    for seed in (0, 1):
        smollm2_data.library_stage(str(out), seed=seed)
    (jobs, path), (jobs1, path1) = answered
    prompts = [prompt for _, prompt, sampled in jobs if not sampled]
    assert len(prompts) == len(jobs) == len(stubs) - 1 and not set(held) & set(prompts)
    assert sorted(prompt.split("\n\n", 1)[1] for prompt in prompts) == sorted(stubs[1:])
    assert path.endswith(LIBRARY_FILE) and path1.endswith("distill-library-s1.jsonl")
    manifest = json.loads((out / "distill-library.json").read_text())
    assert manifest["stubs"] == len(stubs) and manifest["prompts"] == len(prompts)
    assert manifest["digest"] == corpus.corpus_digest(prompts)
    for name in (path, path1):
        open(name, "w").close()
    assert training_files(str(out)) == (path, path1)
