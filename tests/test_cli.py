"""The top-level command line: parsing, and demo / bench / recipe driven with tiny models (``train``: tests/training)."""

import json
import re

import pytest
import torch

from transformers_pard import benchmark, cli, enable_pard
from transformers_pard.draft_io import export_full_draft
from transformers_pard.recipes import smollm2
from transformers_pard.testing import mark_as_pard_draft, tiny_causal_lm, tiny_pard2_draft, tiny_pard_draft, tiny_tokenizer


def parse(argv):
    return cli.build_parser().parse_args(argv)


def test_demo_defaults():
    args = parse(["demo"])
    assert (args.draft, args.k, args.max_new_tokens, args.dtype, args.device) == (cli.DEFAULT_DRAFT, 8, 96, "fp32", "cpu")
    assert args.func is cli.demo


def test_bench_defaults_and_values():
    args = parse(["bench", "--prompts", "a.jsonl", "b.jsonl"])
    assert args.prompts == ["a.jsonl", "b.jsonl"] and args.func is cli.bench
    assert (args.target, args.draft, args.ar_draft, args.pard2_draft) == ("smollm2", cli.DEFAULT_DRAFT, None, None)
    assert (args.limit, args.k, args.max_new_tokens, args.dtype, args.json) == (20, 8, 128, "fp32", None)
    assert args.methods.split(",") == ["plain", "assisted", "lookup", "pard"]
    args = parse(["bench", "--prompts", "a.jsonl", "--methods", "plain,pard2", "--limit", "0", "--k", "4",
                  "--dtype", "bf16", "--json", "out.json", "--pard2-draft", "p2"])
    assert (args.methods, args.limit, args.k, args.dtype, args.json, args.pard2_draft) == (
        "plain,pard2", 0, 4, "bf16", "out.json", "p2")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dtype_choices_map_to_torch_dtypes(dtype):
    assert cli.DTYPES[parse(["demo", "--dtype", dtype]).dtype] == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def test_recipe_defaults():
    args = parse(["recipe", "smollm2"])
    assert (args.model, args.stage, args.out, args.k, args.num_layers) == ("smollm2", "all", "runs/smollm2", 8, 3)
    assert (args.pard2, args.run_name, args.init_from, args.export_dir) == (False, None, None, None)
    assert args.pard2_layers == list(smollm2.PARD2_LAYERS) and args.pard2_scale == smollm2.PARD2_SCALE
    assert args.func is cli.recipe


def test_train_subcommand_is_registered():
    from transformers_pard.training.cli import run_train

    assert parse(["train", "--draft", "d", "--data", "x.jsonl", "--output", "o"]).func is run_train


@pytest.mark.parametrize("argv", [
    [],
    ["serve"],
    ["demo", "--dtype", "fp16"],
    ["demo", "--k", "eight"],
    ["bench"],  # --prompts is required
    ["bench", "--prompts", "a.jsonl", "--target", "llama"],
    ["bench", "--prompts", "a.jsonl", "--dtype", "float32"],
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
# recipe: the flags reach the stage functions
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def stages(monkeypatch):
    calls = []
    for name in ("data", "train", "eval", "export"):
        def record(out, _name=name, **kwargs):
            calls.append((_name, out, kwargs))
            return f"{out}/export-dir" if _name == "export" else None

        monkeypatch.setattr(smollm2, f"{name}_stage", record)
    return calls


def test_recipe_train_flags_reach_the_train_stage(stages, tmp_path, capsys):
    cli.main(["recipe", "smollm2", "--stage", "train", "--out", str(tmp_path), "--run-name", "draft-k8-l3-cont",
              "--pard2", "--pard2-layers", "-1", "-4", "--pard2-scale", "0.3", "--k", "4", "--num-layers", "2",
              "--epochs", "2", "--max-steps", "7", "--lr", "1e-3", "--init-from", "runs/x", "--warmup-steps", "3",
              "--freeze-mask-row", "--dtype", "bf16", "--pard2-standardize", "--pard2-projection-only",
              "--optim", "sgd", "--optim-args", "momentum=0.9", "--pard2-cache", "runs/cache"])
    assert stages == [("train", str(tmp_path), dict(
        k=4, num_layers=2, epochs=2.0, max_steps=7, learning_rate=1e-3, pard2=True, init_from="runs/x",
        warmup_steps=3, run_name="draft-k8-l3-cont", pard2_layers=(-1, -4), pard2_scale=0.3, bf16=True,
        freeze_mask_row=True, pard2_standardize=True, pard2_projection_only=True, optim="sgd",
        optim_args="momentum=0.9", pard2_cache="runs/cache"))]
    assert capsys.readouterr().out == "== recipe smollm2: train\n"


def test_recipe_train_defaults(stages):
    cli.main(["recipe", "smollm2", "--stage", "train"])
    (_, out, kwargs), = stages
    assert out == "runs/smollm2"
    assert kwargs["pard2_layers"] == tuple(smollm2.PARD2_LAYERS) and kwargs["pard2_scale"] == smollm2.PARD2_SCALE
    assert kwargs["run_name"] is None and kwargs["pard2"] is False and kwargs["freeze_mask_row"] is False
    assert kwargs["pard2_projection_only"] is False and kwargs["optim"] is None and kwargs["optim_args"] is None
    assert kwargs["bf16"] is smollm2_bf16_is_native()


def smollm2_bf16_is_native() -> bool:
    from transformers_pard.hardware import bf16_is_fast

    return bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu")


def test_recipe_data_flags_reach_the_data_stage(stages):
    cli.main(["recipe", "smollm2", "--stage", "data", "--train-prompts", "12", "--dtype", "fp32"])
    (name, _, kwargs), = stages
    assert name == "data" and kwargs["train_prompts"] == 12 and kwargs["dtype"] == torch.float32


def test_recipe_all_runs_every_stage_in_order(stages, tmp_path, capsys):
    cli.main(["recipe", "smollm2", "--out", str(tmp_path), "--run-name", "r1", "--num-prompts", "12", "--k", "1",
              "--export-dir", str(tmp_path / "ship")])
    assert [name for name, _, _ in stages] == ["data", "train", "eval", "export"]
    data, train, evaluate, export = (kwargs for _, _, kwargs in stages)
    assert data["num_prompts"] == 12
    assert train["run_name"] == evaluate["run_name"] == export["run_name"] == "r1"
    assert evaluate == dict(k=1, num_layers=3, pard2=False, run_name="r1")
    assert export == dict(k=1, num_layers=3, export_dir=str(tmp_path / "ship"), pard2=False, run_name="r1")
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("==")] == [f"== recipe smollm2: {s}" for s in
                                                             ("data", "train", "eval", "export")]
    assert out[-1] == f"{tmp_path}/export-dir"  # export prints the folder it wrote


# ---------------------------------------------------------------------------------------------
# demo and bench on tiny models (the SmolLM2 loader replaced)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_pair(monkeypatch):
    """Replace the SmolLM2 loader with a tiny fp32 target + PARD draft + character tokenizer."""
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    pair = (target, tiny_pard_draft(target), tiny_tokenizer())
    loads = []

    def load(draft_path, dtype, device):
        loads.append((draft_path, dtype, device))
        return pair

    monkeypatch.setattr(cli, "_load_pair", load)
    return pair, loads


def test_demo_prints_each_prompt_and_identical_outputs(tiny_pair, capsys):
    (target, _, tokenizer), loads = tiny_pair
    cli.main(["demo", "--k", "2", "--max-new-tokens", "6", "--draft", "some/draft"])
    assert loads == [("some/draft", "fp32", "cpu")]
    out = capsys.readouterr().out
    for text in cli.DEMO_PROMPTS:
        ids = benchmark.chat_ids(tokenizer, text, "cpu")
        plain = target.generate(ids, max_new_tokens=6, do_sample=False)
        answer = tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
        assert f">>> {text}\n{answer}\n" in out  # the PARD answer is plain generate's
    assert len(re.findall(r"\[tau \d+\.\d\d, identical to plain generate: True\]", out)) == len(cli.DEMO_PROMPTS)
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"plain generate: [\d.]+ tok/s \| PARD \(K=2\): [\d.]+ tok/s \| speedup [\d.]+x \| "
                        r"tau [\d.]+ \| outputs identical: True", summary)


def write_prompts(path, texts):
    path.write_text("".join(json.dumps({"data": t}) + "\n" for t in texts) + "\n")
    return str(path)


def test_bench_runs_every_method_and_writes_the_report(tiny_pair, tmp_path, monkeypatch, capsys):
    (target, _, _), _ = tiny_pair
    # The AR draft folder carries PARD keys (a K=1 recipe draft does): bench must route it to HF assisted.
    ar = mark_as_pard_draft(tiny_causal_lm("llama", seed=4, num_layers=1), mask_token_id=95)
    ar.save_pretrained(tmp_path / "ar")
    export_full_draft(tiny_pard2_draft(target), tmp_path / "p2")
    prompts = write_prompts(tmp_path / "p.jsonl", ["Add 2 and 3.", "Say hi.", "Sort [3, 1, 2]."])
    seen = {}
    real_run = benchmark.run_benchmark

    def spy(runner, texts, methods, **kwargs):
        seen.update(runner=runner, texts=texts, methods=methods)
        return real_run(runner, texts, methods, **kwargs)

    monkeypatch.setattr(benchmark, "run_benchmark", spy)
    monkeypatch.setattr(benchmark, "forward_cost", lambda model, cache_len, width, repeats=5: 0.001 * width)
    out_json = tmp_path / "bench.json"
    cli.main(["bench", "--prompts", prompts, "--limit", "2", "--methods", "plain,assisted,lookup,pard,pard2",
              "--ar-draft", str(tmp_path / "ar"), "--pard2-draft", str(tmp_path / "p2"), "--k", "2",
              "--max-new-tokens", "6", "--json", str(out_json)])
    runner = seen["runner"]
    assert seen["methods"] == ["plain", "assisted", "lookup", "pard", "pard2"]
    assert seen["texts"] == ["Add 2 and 3.", "Say hi."]  # --limit 2
    assert (runner.k, runner.max_new_tokens) == (2, 6)
    assert runner.ar_draft.config.spd_type is None  # plain HF assisted generation
    assert runner.pard2_draft.config.spd_type == "pard2" and runner.pard2_draft.target_proj is not None

    report = json.loads(out_json.read_text())
    assert set(report) == {"methods", "per_prompt", "peak_memory_mb", "ideal", "environment", "settings"}
    assert all(m["identical_to_plain"] == "2/2" for m in report["methods"].values())
    pard = report["methods"]["pard"]
    tau = pard["drafting_tau"] or pard["tau"]
    ideal = report["ideal"]
    assert ideal["ideal_speedup"] == pytest.approx(tau * 0.001 / (0.003 + 0.004))  # costs of widths 1, K+1, 2K
    assert ideal["efficiency"] == pytest.approx(pard["speedup_vs_plain"] / ideal["ideal_speedup"])
    assert report["settings"] == {"k": 2, "max_new_tokens": 6, "dtype": "fp32", "prompts": [prompts], "limit": 2,
                                  "draft": cli.DEFAULT_DRAFT, "ar_draft": str(tmp_path / "ar"),
                                  "pard2_draft": str(tmp_path / "p2")}
    printed = capsys.readouterr().out
    for method in seen["methods"]:
        assert re.search(rf"^\| {re.escape(method)} +\|", printed, re.MULTILINE), method
    assert "ideal PARD speedup" in printed and f"wrote {out_json}" in printed


def test_bench_limit_zero_reads_every_prompt(tiny_pair, tmp_path, monkeypatch):
    first = write_prompts(tmp_path / "a.jsonl", ["One.", "Two.", "Three."])
    second = write_prompts(tmp_path / "b.jsonl", ["Four."])
    seen = {}

    def fake_run(runner, texts, methods, **kwargs):
        seen.update(texts=texts)
        plain = {"median_tokens_per_s": 1.0, "speedup_vs_plain": 1.0, "tau": None, "drafting_tau": None,
                 "identical_to_plain": "4/4", "target_forwards": 4}
        return {"methods": {"plain": plain}}

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    cli.main(["bench", "--prompts", first, second, "--limit", "0", "--methods", "plain"])
    assert seen["texts"] == ["One.", "Two.", "Three.", "Four."]


@pytest.mark.parametrize("methods, flag", [("plain,assisted", "--ar-draft"), ("pard2", "--pard2-draft"),
                                           ("plain,pard2-independent", "--pard2-draft")])
def test_bench_refuses_a_method_without_its_draft(tiny_pair, tmp_path, methods, flag):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi."])
    with pytest.raises(SystemExit, match=flag):
        cli.main(["bench", "--prompts", prompts, "--methods", methods])


@pytest.mark.parametrize("methods, message", [("plain,pardd", "'pardd'"), ("plain,pard,pard", "listed twice")])
def test_bench_refuses_bad_methods_before_loading_models(tmp_path, monkeypatch, methods, message):
    def no_load(*args, **kwargs):
        raise AssertionError("models loaded before --methods was checked")

    monkeypatch.setattr(cli, "_load_pair", no_load)
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi."])
    with pytest.raises(SystemExit, match=f"--methods: .*{message}"):
        cli.main(["bench", "--prompts", prompts, "--methods", methods])
