"""Composed word problems: well-formed, consistent numbers, deterministic; the stories stage answers them."""

import json
import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.apps.recipes import stories
from transformers_pard.apps.recipes.smollm2 import data as smollm2_data
from transformers_pard.apps.recipes.smollm2.common import HELDOUT_FILE, STORIES_FILE, training_files


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_every_scenario_writes_a_filled_problem_that_ends_with_its_question(seed):
    for name, scenario in stories.SCENARIOS.items():
        text = scenario(random.Random(seed))
        assert text.endswith("?") and text.count("?") == 1, (name, text)
        assert "{" not in text and "}" not in text and "  " not in text, (name, text)
        assert not re.search(r"-\d", text), (name, text)  # no negative quantity
        quantities = re.findall(r"\d+|\b(?:half|third|quarter|fifth|twice)\b", text, flags=re.I)
        assert len(quantities) >= 2, (name, text)  # several quantities to combine
        assert not re.search(r"\b1 (hours|years|days)\b", text), (name, text)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_item_counts_never_go_negative_and_fractions_divide(seed):
    text = stories._items_flow(random.Random(seed))
    have = int(re.search(r"(?:has|with) (\d+)", text).group(1))
    for sentence in re.split(r"(?<=[.?]) ", text)[1:]:
        if m := re.search(r"buys (\d+) \w+s of .* with (\d+)", sentence):
            have += int(m.group(1)) * int(m.group(2))
        elif m := re.search(r"(?:gives \w+|another) (\d+)( more| \w)", sentence):
            have += int(m.group(1))
        elif m := re.search(r"(?:loses|gives) (\d+)", sentence):
            have -= int(m.group(1))
        elif m := re.search(r"gives (half|a third|a quarter|a fifth)", sentence):
            d = {v: k for k, v in stories.FRACTIONS.items()}[m.group(1)]
            assert have % d == 0
            have -= have // d
        elif m := re.search(r"among (\d+) friends", sentence):
            assert have % int(m.group(1)) == 0
        assert have >= 0, text


def test_problems_are_distinct_and_deterministic_for_a_seed():
    first = stories.story_problems(300, seed=4)
    assert len(set(first)) == 300 and first == stories.story_problems(300, seed=4)
    assert first != stories.story_problems(300, seed=5)
    starts = {problem.split()[0] for problem in first}
    assert len(starts) > 5  # several scenarios and names, not one shape


def test_stories_stage_answers_them_beside_a_manifest(tmp_path, monkeypatch):
    held = stories.story_problems(3, seed=0)[1]
    (tmp_path / HELDOUT_FILE).write_text(json.dumps({"data": held}) + "\n")
    monkeypatch.setattr(smollm2_data, "load_smollm2", lambda **kw: (None, None))
    answered = []
    monkeypatch.setattr(smollm2_data, "distill", lambda model, tok, jobs, path, **kw: answered.append((jobs, path)))
    path = smollm2_data.stories_stage(str(tmp_path), num_problems=3)
    (jobs, written), = answered
    assert written == path and path.endswith(STORIES_FILE)
    assert [prompt for _, prompt, _ in jobs] == [p for p in stories.story_problems(3, seed=0) if p != held]
    assert not any(sampled for _, _, sampled in jobs) and len({job_id for job_id, _, _ in jobs}) == 2
    manifest = json.loads((tmp_path / "distill-stories.json").read_text())
    assert manifest["prompts"] == 2 and manifest["scenarios"] == sorted(stories.SCENARIOS)
    open(path, "w").close()
    assert training_files(str(tmp_path)) == (path,)
