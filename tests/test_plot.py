"""The report picture: rendered from a synthetic report and from bench --plot, opened, measured."""

import json
import sys

import pytest
import torch

from saved_models import png_size, save_models
from test_report import ar_plus_result, pard_result, plain_result
from transformers_pard.apps import cli, plot
from transformers_pard.apps.report import build_report

SIZE = (int(plot.FIGSIZE[0] * plot.DPI), int(plot.FIGSIZE[1] * plot.DPI))


@pytest.fixture
def synthetic_report():
    results = {"plain": plain_result(), "ar-plus": ar_plus_result(), "pard": pard_result()}
    return build_report(results, device=torch.device("cpu"), settings={"target": "tiny", "k": 3, "dtype": "fp32",
                                                                       "max_new_tokens": 11}, command="bench ...")


def distinct_colours(path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def test_render_writes_a_png_of_the_declared_size(synthetic_report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "report.png"
    plot.render(synthetic_report, str(path))
    assert png_size(path) == SIZE
    pytest.importorskip("PIL")
    assert distinct_colours(path) > 20  # bars, text and legends, not a blank canvas


def test_render_an_older_report_without_phases(tmp_path):
    """The committed results of earlier runs have no phase times: that panel says so instead of failing."""
    pytest.importorskip("matplotlib")
    with open("benchmarks/results/smollm2-cpu-fp32.json") as f:
        report = json.load(f)
    path = tmp_path / "old.png"
    plot.render(report, str(path))
    assert png_size(path) == SIZE


def test_caption_names_the_run(synthetic_report):
    caption = plot.caption(synthetic_report)
    assert caption.startswith("tiny | ") and "K=3" in caption and "fp32" in caption and torch.__version__ in caption


def test_missing_matplotlib_names_the_install_command(monkeypatch, synthetic_report, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plot.render(synthetic_report, str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_bench_plot_draws_the_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    saved = save_models(tmp_path / "models")
    out_png = tmp_path / "bench.png"
    cli.main(["bench", "--target", saved.target, "--draft", saved.draft, "--prompts", saved.prompts, "--limit", "1",
              "--methods", "plain,pard", "--k", "2", "--max-new-tokens", "5", "--plot", str(out_png)])
    assert png_size(out_png) == SIZE
    assert f"wrote {out_png}" in capsys.readouterr().out
