"""Self-distillation: the target's answers written as chat records, batched, resumable."""

import json

import pytest
import torch

from transformers_pard.apps.embedded import chat_prompt
from transformers_pard.apps.recipes import distill as distill_module
from transformers_pard.apps.recipes.distill import distill
from transformers_pard.testing import tiny_causal_lm, tiny_tokenizer

NEW = 5
JOBS = [
    ("g0", "Hi there", False),
    ("g1", "Add 2 and 3, please.", False),
    ("s0", "Hi there", True),
    ("g2", "Why?", False),
    ("s1", "Tell me a joke about cats.", True),
]


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("llama", seed=0, num_layers=1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def read(path):
    return [json.loads(line) for line in open(path)]


def greedy_answer(model, tokenizer, prompt):
    ids = tokenizer(chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_writes_one_chat_record_per_job(model, tokenizer, tmp_path):
    path = tmp_path / "distill.jsonl"
    torch.manual_seed(0)
    assert distill(model, tokenizer, JOBS, str(path), batch_size=2, max_new_tokens=NEW) == len(JOBS)
    rows = read(path)
    assert sorted(r["id"] for r in rows) == sorted(job_id for job_id, _, _ in JOBS)
    for job_id, prompt, sampled in JOBS:
        row = next(r for r in rows if r["id"] == job_id)
        assert row["mode"] == ("sampled" if sampled else "greedy")
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": prompt}
        assert assistant["role"] == "assistant" and isinstance(assistant["content"], str)
        if not sampled:  # batched (left-padded) greedy answers are the target's own answers
            assert assistant["content"] == greedy_answer(model, tokenizer, prompt)
    assert all(len(r["messages"][1]["content"]) > 0 for r in rows)


def test_resume_skips_finished_ids(model, tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "distill.jsonl"
    assert distill(model, tokenizer, JOBS[:3], str(path), batch_size=4, max_new_tokens=NEW) == 3
    first = path.read_text()
    more = [*JOBS, ("g9", "New prompt.", False)]
    assert distill(model, tokenizer, more, str(path), batch_size=4, max_new_tokens=NEW) == 3
    assert path.read_text().startswith(first)  # appended, earlier rows untouched
    assert sorted(r["id"] for r in read(path)) == sorted(job_id for job_id, _, _ in more)

    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1))
    assert distill(model, tokenizer, more, str(path), batch_size=4, max_new_tokens=NEW) == 0
    assert calls == [] and len(read(path)) == len(more)


def test_blank_lines_do_not_break_resume(model, tokenizer, tmp_path):
    path = tmp_path / "distill.jsonl"
    path.write_text(json.dumps({"id": "g0", "mode": "greedy", "messages": []}) + "\n\n")
    assert distill_module._done_ids(str(path)) == {"g0"}
    assert distill_module._done_ids(str(tmp_path / "missing.jsonl")) == set()


def test_batches_are_homogeneous_bounded_and_length_sorted(model, tokenizer, tmp_path, monkeypatch):
    batches = []

    def fake_answer(model, tokenizer, batch, max_new_tokens, temperature):
        batches.append(list(batch))
        return [f"answer to {job_id}" for job_id, _, _ in batch]

    monkeypatch.setattr(distill_module, "_answer", fake_answer)
    jobs = [(f"j{i}", "x" * (i * 7 % 11 + 1), i % 3 == 0) for i in range(11)]
    assert distill(model, tokenizer, jobs, str(tmp_path / "d.jsonl"), batch_size=3) == 11
    assert all(1 <= len(batch) <= 3 for batch in batches)
    assert all(len({sampled for _, _, sampled in batch}) == 1 for batch in batches)  # greedy or sampled, never both
    flat = [job for batch in batches for job in batch]
    assert sorted(flat) == sorted(jobs)
    assert flat == sorted(jobs, key=lambda job: (job[2], len(job[1])))  # greedy first, short to long
    rows = read(tmp_path / "d.jsonl")
    assert all(r["messages"][1]["content"] == f"answer to {r['id']}" for r in rows)

