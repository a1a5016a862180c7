"""The top-level command line: parsing, demo / bench / plot on tiny models saved to disk, and recipe.

``train`` is tested in tests/training. The models here are folders a user would have: a saved tiny
Llama with its tokenizer (chat template included) and PARD drafts, loaded through ``--target`` /
``--draft`` exactly as a real checkpoint would be.
"""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from saved_models import png_size, save_models, write_prompts
from transformers_pard.apps import cli, demo
from transformers_pard.apps.benchmark import Sampling, chat_ids
from transformers_pard.apps.models import DEFAULT_DRAFT, LoadSettings, load_target
from transformers_pard.apps.plot import DPI, FIGSIZE
from transformers_pard.apps.report import recorded_cpu_flags
from transformers_pard.apps.recipes import smollm2

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    return cli.build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


def test_demo_defaults():
    args = parse(["demo"])
    assert (args.target, args.draft, args.k, args.max_new_tokens, args.tree_nodes) == ("smollm2", DEFAULT_DRAFT, 8, 96, 8)
    assert (args.dtype, args.device, args.attn, args.compile) == ("fp32", "cpu", "sdpa", None)
    assert args.func is demo.demo
    assert demo.use_compile(None, torch.device("cpu")) and not demo.use_compile(None, torch.device("cuda"))
    assert parse(["demo", "--no-compile"]).compile is False and not demo.use_compile(False, torch.device("cpu"))


def test_lookup_defaults_follow_the_tree_and_the_draft():
    from transformers_pard import LookupStore
    from transformers_pard.lookup import attach_lookup_store

    args = parse(["demo"])
    assert demo.lookup_nodes(args) == 8 and demo.lookup_nodes(parse(["demo", "--k", "4"])) == 4  # min(K, N)
    carrying, bare = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    attach_lookup_store(carrying, LookupStore.from_texts([[1, 2, 3, 4]]))
    assert demo.store_on(args, carrying) and not demo.store_on(args, bare)  # on where the draft carries one
    assert not demo.store_on(parse(["demo", "--no-lookup-store"]), carrying)
    assert "pard_lookup_store" in demo.pard_kwargs(carrying, args) and "pard_lookup_store" not in demo.pard_kwargs(bare, args)
    assert "the draft's store" in demo.pard_name(args, carrying) and "store" not in demo.pard_name(args, bare)


def test_bench_defaults_and_values():
    args = parse(["bench", "--prompts", "a.jsonl", "b.jsonl"])
    assert args.prompts == ["a.jsonl", "b.jsonl"] and args.func is cli.bench
    assert (args.target, args.draft, args.ar_draft, args.pard2_draft) == ("smollm2", DEFAULT_DRAFT, None, None)
    assert (args.limit, args.k, args.max_new_tokens, args.dtype, args.json, args.plot) == (20, 8, 128, "fp32", None, None)
    assert (args.device, args.attn, args.min_tau, args.phase_timing) == ("cpu", "sdpa", None, True)
    assert args.methods.split(",") == ["plain", "ar-plus", "pard", "pard-compiled"]  # needs no draft but the shipped one
    args = parse(["bench", "--prompts", "a.jsonl", "--methods", "plain,pard2", "--limit", "0", "--k", "4",
                  "--dtype", "auto", "--attn", "eager", "--json", "out.json", "--pard2-draft", "org/p2",
                  "--target", "org/model", "--draft", "some/folder", "--device", "cuda:1", "--min-tau", "1.3",
                  "--no-phase-timing", "--plot", "out.png"])
    assert (args.methods, args.limit, args.k, args.dtype, args.attn, args.json, args.pard2_draft) == (
        "plain,pard2", 0, 4, "auto", "eager", "out.json", "org/p2")
    assert (args.target, args.draft, args.device, args.min_tau, args.phase_timing, args.plot) == (
        "org/model", "some/folder", "cuda:1", 1.3, False, "out.png")
    assert parse(["bench", "--prompts", "a", "--min-tau", "None"]).min_tau is None
    assert (args.temperature, args.top_p, args.seed) == (None, None, 0) and cli.sampling_of(args) is None
    sampled = parse(["bench", "--prompts", "a", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"])
    assert cli.sampling_of(sampled) == Sampling(0.7, 0.9, 3)
    assert cli.run_settings(sampled, ["plain"])["sampling"] == {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    greedy = parse(["bench", "--prompts", "a"])
    assert (cli.lookup_nodes(greedy), cli.lookup_nodes(sampled)) == (8, 4)  # sampling: a fixed share, half the tree


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "0.9"], "--top-p samples: add --temperature"),
    (["--temperature", "0"], "--temperature / --top-p: .*greedy"),
    (["--temperature", "0.7", "--methods", "plain,pard-lookup", "--lookup-nodes", "8"],
     "--lookup-nodes 8: sampling .* use --lookup-nodes 7 or less"),
])
def test_bench_refuses_sampling_flags_that_do_not_sample(no_loading, tmp_path, flags, message):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi."])
    with pytest.raises(SystemExit, match=message):
        cli.main(["bench", "--prompts", prompts, *flags])


def test_plot_arguments():
    args = parse(["plot", "r.json", "--out", "r.png"])
    assert (args.report, args.out, args.func) == ("r.json", "r.png", cli.plot)


def test_recipe_defaults():
    args = parse(["recipe", "smollm2"])
    assert (args.model, args.stage, args.out, args.k, args.num_layers) == ("smollm2", "all", "runs/smollm2", 8, 3)
    assert (args.pard2, args.run_name, args.init_from, args.export_dir) == (False, None, None, None)
    assert args.pard2_layers == list(smollm2.PARD2_LAYERS) and args.pard2_scale == smollm2.PARD2_SCALE
    assert args.func is cli.recipe


def test_train_subcommand_is_registered():
    from transformers_pard.apps.train_cli import run_train

    assert parse(["train", "--draft", "d", "--data", "x.jsonl", "--output", "o"]).func is run_train


@pytest.mark.parametrize("argv", [
    [],
    ["serve"],
    ["demo", "--dtype", "fp8"],
    ["demo", "--attn", "flash_attention_2"],
    ["demo", "--k", "eight"],
    ["bench"],  # --prompts is required
    ["bench", "--prompts", "a.jsonl", "--dtype", "float32"],
    ["bench", "--prompts", "a.jsonl", "--min-tau", "low"],
    ["plot", "r.json"],  # --out is required
    ["recipe", "llama"],
    ["recipe", "smollm2", "--stage", "deploy"],
    ["recipe", "smollm2", "--pard2-layers"],
    ["recipe", "smollm2", "--pard2-layers", "last"],
    ["recipe", "smollm2", "--pard2-scale", "big"],
])
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as error:
        parse(argv)
    assert error.value.code == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# recipe: the top-level command dispatches the stages (each flag -> stage: tests/recipes/test_recipe_cli.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def stages(monkeypatch):
    calls = []
    for name in ("data", "instruct", "train", "eval", "export"):
        def record(out, _name=name, **kwargs):
            calls.append((_name, out, kwargs))
            return f"{out}/export-dir" if _name == "export" else None

        monkeypatch.setattr(smollm2, f"{name}_stage", record)
    return calls


def test_recipe_data_flags_reach_the_data_stage(stages):
    cli.main(["recipe", "smollm2", "--stage", "data", "--train-prompts", "12", "--dtype", "fp32"])
    (name, _, kwargs), = stages
    assert name == "data" and kwargs["train_prompts"] == 12 and kwargs["dtype"] == torch.float32


def test_recipe_all_runs_every_stage_in_order(stages, tmp_path, capsys):
    cli.main(["recipe", "smollm2", "--out", str(tmp_path), "--run-name", "r1", "--num-prompts", "12", "--k", "1",
              "--export-dir", str(tmp_path / "ship")])
    assert [name for name, _, _ in stages] == ["data", "instruct", "train", "eval", "export"]
    data, instruct, train, evaluate, export = (kwargs for _, _, kwargs in stages)
    assert data["num_prompts"] == 12 and instruct["num_questions"] == 1280
    assert train["settings"].run_name == evaluate["run_name"] == export["run_name"] == "r1"
    assert evaluate == dict(k=1, num_layers=3, pard2=False, run_name="r1")
    assert export == dict(k=1, num_layers=3, export_dir=str(tmp_path / "ship"), pard2=False, run_name="r1")
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("==")] == [f"== recipe smollm2: {s}" for s in
                                                             ("data", "instruct", "train", "eval", "export")]
    assert out[-1] == f"{tmp_path}/export-dir"  # export prints the folder it wrote


# ---------------------------------------------------------------------------------------------
# demo and bench on tiny models saved to disk
# ---------------------------------------------------------------------------------------------


def test_demo_on_saved_folders_prints_plain_generates_answers(saved, capsys):
    cli.main(["demo", "--target", saved.target, "--draft", saved.compact_draft, "--k", "2", "--max-new-tokens", "6",
              "--no-compile"])
    out = capsys.readouterr().out
    target, tokenizer = load_target(saved.target, LoadSettings())
    for text in demo.DEMO_PROMPTS:
        ids = chat_ids(tokenizer, text, "cpu")
        plain = target.generate(ids, max_new_tokens=6, do_sample=False)
        answer = tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
        assert f">>> {text}\n{answer}\n" in out  # the PARD answer is plain generate's
    assert len(re.findall(r"\[tau \d+\.\d\d, identical to plain generate: True\]", out)) == len(demo.DEMO_PROMPTS)
    assert re.search(r"^warm-up [\d.]+ s \(no torch.compile\): excluded from the timings below$", out, re.MULTILINE)
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"plain generate: [\d.]+ tok/s \| PARD \(K=2, tree of 8 nodes, up to 2 of them lookup candidates \(the text\)\): [\d.]+ tok/s \| speedup [\d.]+x \| "
                        r"tau [\d.]+ \| outputs identical: True", summary)


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_a_lookup_branch_the_tree_cannot_hold_is_refused_before_loading(command, tmp_path):
    extra = ["--prompts", str(tmp_path / "absent.jsonl"), "--methods", "plain,pard-lookup"] if command == "bench" else []
    with pytest.raises(SystemExit, match=r"--lookup-nodes 9: a round holds 0 \.\. K = 8 lookup candidates"):
        cli.main([command, "--target", str(tmp_path / "absent"), "--tree-nodes", "8", "--lookup-nodes", "9", *extra])


def test_bench_on_saved_folders_end_to_end(saved, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    argv = ["bench", "--target", saved.target, "--draft", saved.compact_draft, "--ar-draft", saved.ar_draft,
            "--pard2-draft", saved.pard2_draft, "--prompts", saved.prompts, "--limit", "2",
            "--methods", "plain,assisted,lookup,pard,pard2,pard2-independent", "--k", "2", "--max-new-tokens", "6",
            "--json", str(out_json)]
    cli.main(argv)
    report = json.loads(out_json.read_text())
    methods = ["plain", "assisted", "lookup", "pard", "pard2", "pard2-independent"]
    assert list(report["methods"]) == methods
    assert all(m["identical_to_plain"] == "2/2" for m in report["methods"].values())
    assert report["command"] == "python -m transformers_pard " + " ".join(argv)
    assert report["settings"] == {
        "target": saved.target, "draft": saved.compact_draft, "ar_draft": saved.ar_draft,
        "pard2_draft": saved.pard2_draft, "methods": methods, "k": 2, "max_new_tokens": 6, "dtype": "fp32", "draft_dtype": "auto",
        "device": "cpu", "attn": "sdpa", "min_tau": None, "phase_timing": True, "tree_nodes": 8, "lookup_nodes": 2,
        "lookup_store": False, "prompts": [saved.prompts],
        "limit": 2, "sampling": None}
    models = report["models"]
    assert set(models) == {"target", "draft", "ar_draft", "pard2_draft"}
    assert models["target"]["source"] == models["draft"]["source"] == "folder"
    assert models["target"]["class"] == "LlamaForCausalLM" and models["target"]["dtype"] == "float32"
    assert models["draft"]["parameters"] < models["target"]["parameters"]
    env = report["environment"]
    assert env["cpu_flags"] == recorded_cpu_flags() and env["torch"] == torch.__version__ and env["device"] == "cpu"
    per = report["per_prompt"]
    for name in methods:
        assert per[name]["tokens"] == per["plain"]["tokens"] and len(per[name]["phases"]) == 2
    for name in ("pard", "pard2", "pard2-independent"):
        summary = report["methods"][name]
        assert summary["tau"] == pytest.approx(sum(per[name]["tokens"]) / sum(per[name]["rounds"]))
        assert summary["ms_per_round"] == pytest.approx(sum(summary["phase_ms_per_round"].values()))
    printed = capsys.readouterr().out
    for method in methods:
        assert re.search(rf"^\| {re.escape(method)} +\|", printed, re.MULTILINE), method
    assert f"wrote {out_json}" in printed and "excluded from every timing" in printed


def test_bench_limit_zero_reads_every_prompt(tmp_path):
    first = write_prompts(tmp_path / "a.jsonl", ["One.", "Two.", "Three."])
    second = write_prompts(tmp_path / "b.jsonl", ["Four."])
    assert cli.read_prompts([first, second], 0) == ["One.", "Two.", "Three.", "Four."]
    assert cli.read_prompts([first, second], 2) == ["One.", "Two.", "Four."]


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_target", refuse)


@pytest.mark.parametrize("methods, flag", [("plain,assisted", "--ar-draft"), ("pard2", "--pard2-draft"),
                                           ("plain,pard2-independent", "--pard2-draft")])
def test_bench_refuses_a_method_without_its_draft_before_loading(no_loading, tmp_path, methods, flag):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi."])
    with pytest.raises(SystemExit, match=f"needs {flag}"):
        cli.main(["bench", "--prompts", prompts, "--methods", methods])


@pytest.mark.parametrize("methods, message", [("plain,pardd", "'pardd'"), ("plain,pard,pard", "listed twice")])
def test_bench_refuses_bad_methods_before_loading(no_loading, tmp_path, methods, message):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi."])
    with pytest.raises(SystemExit, match=f"--methods: .*{message}"):
        cli.main(["bench", "--prompts", prompts, "--methods", methods])


def test_bench_sampled_end_to_end(saved, tmp_path, capsys):
    out_json = tmp_path / "sampled.json"
    cli.main(["bench", "--target", saved.target, "--draft", saved.compact_draft, "--prompts", saved.prompts,
              "--limit", "1", "--methods", "plain,pard", "--k", "2", "--max-new-tokens", "4", "--temperature", "0.8",
              "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert report["settings"]["sampling"] == {"temperature": 0.8, "top_p": None, "seed": 0}
    assert {m["identical_to_plain"] for m in report["methods"].values()} == {None}
    assert "sampled at temperature 0.8" in capsys.readouterr().out


def test_bench_loads_only_the_drafts_its_methods_use(saved, tmp_path, capsys):
    out_json = tmp_path / "plain.json"
    cli.main(["bench", "--target", saved.target, "--draft", str(tmp_path / "missing"), "--prompts", saved.prompts,
              "--limit", "1", "--methods", "plain,lookup", "--max-new-tokens", "4", "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert set(report["models"]) == {"target"} and list(report["methods"]) == ["plain", "lookup"]


def test_plot_command_redraws_a_saved_report(tmp_path, capsys):
    """From a committed results file (in process: the module entry point is ``test_module_entry_point``)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.png"
    cli.main(["plot", str(ROOT / "benchmarks/results/smollm2-cpu-fp32.json"), "--out", str(out)])
    assert capsys.readouterr().out.strip().endswith(f"wrote {out}")
    assert png_size(out) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)


def test_module_entry_point_runs_the_cli(monkeypatch, capsys):
    """``python -m transformers_pard`` (run in process: a subprocess would re-import torch for nothing)."""
    monkeypatch.setattr(sys, "argv", ["transformers_pard", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("transformers_pard", run_name="__main__")
    assert exit_info.value.code == 0
    assert "{demo,bench,plot,recipe,train}" in capsys.readouterr().out


def test_plot_command_refuses_a_file_that_is_not_a_report(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="not a bench report"):
        cli.main(["plot", str(path), "--out", str(tmp_path / "x.png")])
