"""The instruct stage: questions the target writes, its answers, and more data from other seeds."""

import json

import pytest

from transformers_pard.apps.recipes import self_instruct
from transformers_pard.apps.recipes.smollm2.common import training_files


def fake_distill(model, tokenizer, jobs, out_path, **kwargs):
    """Questions: "How many apples are 2 + n apples?" with n from the job's index mod 12 (so seeds overlap); answers: "ok"."""
    with open(out_path, "a") as f:
        for job_id, prompt, _ in jobs:
            text = f"How many apples are 2 + {int(job_id.rsplit('-', 1)[1]) % 12} apples?" if job_id.startswith("q-") else "ok"
            f.write(json.dumps({"id": job_id, "messages": [{"role": "user", "content": prompt},
                                                           {"role": "assistant", "content": text}]}) + "\n")
    return len(jobs)


def prompts_of(path):
    return [json.loads(line)["messages"][0]["content"] for line in open(path)]


def test_another_seed_adds_data_and_never_a_held_out_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(self_instruct, "distill", fake_distill)
    out = str(tmp_path)
    with pytest.raises(ValueError, match="--seed 0"):
        self_instruct.self_instruct_stage(None, None, out, num_questions=30, seed=1, heldout=3)
    first = self_instruct.self_instruct_stage(None, None, out, num_questions=30, seed=0, heldout=3)
    held = (tmp_path / self_instruct.HELDOUT_INSTRUCT_FILE).read_text()
    second = self_instruct.self_instruct_stage(None, None, out, num_questions=30, seed=1, heldout=3)
    assert second.endswith("distill-instruct-s1.jsonl") and (tmp_path / "questions-s1.jsonl").exists()
    assert (tmp_path / self_instruct.HELDOUT_INSTRUCT_FILE).read_text() == held  # seed 0's split stays
    held_prompts = {json.loads(line)["data"] for line in held.splitlines()}
    assert len(held_prompts) == 3
    assert not held_prompts & set(prompts_of(first)) and not held_prompts & set(prompts_of(second))
    assert prompts_of(second)  # seed 1 still found usable questions of its own
    assert training_files(out) == (first, second)


def test_long_meta_prompts_are_another_set_and_never_write_the_held_out_split(tmp_path, monkeypatch):
    long = self_instruct.meta_jobs(40, seed=2, style="long")
    assert long == self_instruct.meta_jobs(40, seed=2, style="long")  # deterministic for a seed
    for family, metas in (("math", self_instruct.LONG_MATH_META), ("code", self_instruct.LONG_CODE_META)):
        texts = [text for job_id, text, _ in long if job_id.startswith(f"q-{family}")]
        assert texts and all(any(text.startswith(m.split("{")[0]) for m in metas) for text in texts)
    with pytest.raises(ValueError, match="meta-prompt style"):
        self_instruct.meta_jobs(3, style="wide")
    monkeypatch.setattr(self_instruct, "distill", fake_distill)
    with pytest.raises(ValueError, match="held-out split"):
        self_instruct.self_instruct_stage(None, None, str(tmp_path), num_questions=30, seed=0, style="long")
    assert not list(tmp_path.iterdir())


def test_families_leave_a_kind_of_request_out_and_keep_the_default_draws():
    assert self_instruct.meta_jobs(60, seed=3) == self_instruct.meta_jobs(60, seed=3, families=("math", "code", "general"))
    jobs = self_instruct.meta_jobs(200, seed=3, style="long", families=("code", "general"))
    kinds = {job_id.split("-")[1] for job_id, _, _ in jobs}
    assert kinds == {"code", "general"} and len(jobs) == 200
    code = sum(job_id.startswith("q-code") for job_id, _, _ in jobs)
    weights = self_instruct.FAMILY_MIX
    assert abs(code / 200 - weights["code"] / (weights["code"] + weights["general"])) < 0.1  # the mix's own ratio
    assert {job_id.split("-")[1] for job_id, _, _ in self_instruct.meta_jobs(20, seed=1, families=("math",))} == {"math"}
    for bad in [("math", "poetry"), ()]:
        with pytest.raises(ValueError, match="request families must be some of math, code, general"):
            self_instruct.meta_jobs(3, families=bad)


def test_seed_0_keeps_every_family(tmp_path, monkeypatch):
    monkeypatch.setattr(self_instruct, "distill", fake_distill)
    with pytest.raises(ValueError, match="keep every request family"):
        self_instruct.self_instruct_stage(None, None, str(tmp_path), num_questions=30, seed=0, families=("code",))
    assert not list(tmp_path.iterdir())
    self_instruct.self_instruct_stage(None, None, str(tmp_path), num_questions=30, seed=0, heldout=3)
    path = self_instruct.self_instruct_stage(None, None, str(tmp_path), num_questions=30, seed=1, heldout=3,
                                             families=("code", "general"))
    questions = [json.loads(line)["id"] for line in open(tmp_path / "questions-s1.jsonl")]
    assert questions and not any(q.startswith("q-math") for q in questions) and path.endswith("-s1.jsonl")
