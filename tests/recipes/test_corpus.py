"""The corpus stage: real text from Python's standard library, cut into chunks at line boundaries."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformers_pard.apps.recipes import corpus
from transformers_pard.apps.recipes.smollm2 import data as smollm2_data
from transformers_pard.apps.recipes.smollm2.common import CORPUS_FILE, training_files


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
