"""The applications live in ``transformers_pard.apps``: the old module paths warn and re-export, and both
entry points call ``apps.cli.main`` (that the library never imports the applications: tests/training/test_imports.py)."""

import importlib
import sys
import warnings

import pytest

#: old module -> {new module: names the old path still offers}
MOVED = {
    "cli": {"cli": ("main", "build_parser", "bench", "demo", "DEFAULT_DRAFT", "DTYPES"), "demo": ("DEMO_PROMPTS",)},
    "benchmark": {"benchmark": ("Runner", "run_benchmark", "METHODS", "chat_ids", "MethodResult", "parse_methods"),
                  "report": ("format_table", "environment", "save_report", "peak_memory_mb")},
    "embedded": {"embedded": ("load_smollm2", "chat_prompt", "GGUF_FILE")},
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_old_paths_warn_and_reexport(name):
    sys.modules.pop(f"transformers_pard.{name}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(f"transformers_pard.{name}")
    assert any(issubclass(w.category, DeprecationWarning) and f"transformers_pard.apps.{name}" in str(w.message)
               for w in caught)
    for module, names in MOVED[name].items():
        new = importlib.import_module(f"transformers_pard.apps.{module}")
        for attr in names:
            assert getattr(old, attr) is getattr(new, attr), attr


def test_module_entry_point_and_console_script_call_apps_cli():
    import configparser
    from pathlib import Path

    import transformers_pard.__main__ as entry
    from transformers_pard.apps import cli

    assert entry.main is cli.main
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"].strip()
    assert scripts == "transformers-pard = transformers_pard.apps.cli:main"
