"""The example notebooks run (their code cells, in order, in one namespace) so they cannot rot."""

import json
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
NOTEBOOKS = sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".ipynb"))


def run_notebook(path):
    with open(path) as f:
        cells = json.load(f)["cells"]
    namespace = {"__name__": "__notebook__"}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), path, "exec"), namespace)
    return namespace


def test_all_notebooks_are_listed():
    assert NOTEBOOKS == ["pipeline_streaming.ipynb", "quickstart.ipynb", "train_draft.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_notebook(os.path.join(EXAMPLES, name))
