"""The recipe's command line and run records come from its dataclasses: flags -> ``TrainSettings`` ->
``PardTrainConfig`` and ``recipe.json`` (``dataclasses.asdict``) -> the quoted command -> the same settings."""

import argparse
import dataclasses
import json
import shlex

import pytest
import torch

from transformers_pard.apps.recipes import smollm2
from transformers_pard.apps.recipes.smollm2 import RecipeOptions, TrainSettings, add_recipe_arguments, recipe_commands
from transformers_pard.apps.recipes.smollm2.common import RECIPE_FILE, read_record, write_record
from transformers_pard.apps.train_cli import flag_values


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="transformers_pard")
    sub = root.add_subparsers(dest="command", required=True)
    recipe = sub.add_parser("recipe")
    recipe.add_argument("model", choices=["smollm2"])
    add_recipe_arguments(recipe)
    return root


def parse(argv):
    return parser().parse_args(argv)


FLAGS = ["recipe", "smollm2", "--stage", "train", "--run-name", "cont", "--pard2", "--pard2-layers", "-1", "-4",
         "--pard2-scale", "0.3", "--k", "4", "--num-layers", "2", "--epochs", "2", "--max-steps", "7", "--lr", "1e-3",
         "--init-from", "runs/x", "--warmup-steps", "3", "--freeze-mask-row", "--dtype", "bf16",
         "--pard2-standardize", "--pard2-projection-only", "--optim", "sgd", "--optim-args", "momentum=0.9",
         "--pard2-cache", "runs/cache", "--vocab-subset", "4096", "--batch-size", "8", "--max-length", "256",
         "--time-budget", "90", "--save-steps", "20"]
SETTINGS = TrainSettings(k=4, num_layers=2, epochs=2.0, max_steps=7, lr=1e-3, warmup_steps=3, init_from="runs/x",
                         run_name="cont", optim="sgd", optim_args="momentum=0.9", pard2=True, pard2_layers=(-1, -4),
                         pard2_scale=0.3, pard2_standardize=True, pard2_projection_only=True, pard2_cache="runs/cache",
                         vocab_subset=4096, freeze_mask_row=True, dtype="bf16", batch_size=8, max_length=256,
                         time_budget=90.0, save_steps=20)


def test_every_flag_reaches_the_train_stage(monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, "train_stage", lambda out, **kwargs: calls.append((out, kwargs)))
    smollm2.run_stage("train", parse([*FLAGS, "--out", "runs/o"]))
    assert calls == [("runs/o", {"settings": SETTINGS})]


@pytest.mark.parametrize("stage", ["data", "instruct", "library", "stories"])
def test_generation_stages_run_where_asked_with_a_batch_for_the_device(stage, monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, f"{stage}_stage", lambda out, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    smollm2.run_stage(stage, parse(["recipe", "smollm2", "--stage", stage, "--dtype", "fp32"]))
    smollm2.run_stage(stage, parse(["recipe", "smollm2", "--stage", stage, "--dtype", "fp32", "--gen-batch-size", "7"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    smollm2.run_stage(stage, parse(["recipe", "smollm2", "--stage", stage, "--dtype", "fp32"]))
    smollm2.run_stage(stage, parse(["recipe", "smollm2", "--stage", stage, "--dtype", "fp32", "--device", "cpu"]))
    places = [(c["device"], c.get("batch_size")) for c in calls]
    assert places == [("cpu", None), ("cpu", 7), ("cuda", smollm2.GPU_GENERATION_BATCH), ("cpu", None)]
    assert all(c["dtype"] == torch.float32 for c in calls)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no such device"):
        smollm2.run_stage(stage, parse(["recipe", "smollm2", "--stage", stage, "--device", "cuda"]))


def test_a_time_budget_replaces_the_step_schedule():
    config = smollm2.train_config(TrainSettings(time_budget=60.0), draft="d", data=("x.jsonl",), output="o", bf16=False)
    assert config.time_budget == 60.0 and "lr_scheduler_type" not in config.extra_args
    assert smollm2.train_config(TrainSettings(), draft="d", data=("x.jsonl",), output="o",
                                bf16=False).extra_args["lr_scheduler_type"] == "cosine"


def test_defaults_are_the_dataclasses():
    args = parse(["recipe", "smollm2"])
    for cls in (RecipeOptions, TrainSettings):
        for f in dataclasses.fields(cls):
            value = getattr(args, f.name)
            assert (tuple(value) if isinstance(value, list) else value) == f.default, f.name


def test_train_stage_writes_its_settings_as_the_record_and_configures_the_run(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(smollm2.train, "init_draft_folder", lambda out_dir, settings: str(tmp_path / "init"))
    monkeypatch.setattr(smollm2.train, "mask_token_id", lambda folder: 7)
    monkeypatch.setattr(smollm2.train, "load_smollm2", lambda **kwargs: (f"target {kwargs['dtype']}", None))
    monkeypatch.setattr(smollm2.train, "train_draft", lambda config, callbacks, target: runs.append(
        (config, callbacks, target)) or (tmp_path / "cont").mkdir())
    settings = dataclasses.replace(SETTINGS, dtype="fp32", pard2_projection_only=False, freeze_mask_row=False)
    assert smollm2.train_stage(str(tmp_path), settings=settings) == str(tmp_path / "cont")
    (config, callbacks, target), = runs
    assert target == f"target {torch.float32}" and callbacks[0].mask_token_id == 7
    assert (config.draft, config.output, config.data) == (str(tmp_path / "init"), str(tmp_path / "cont"),
                                                        (str(tmp_path / smollm2.DATA_FILE),))
    assert (config.k, config.epochs, config.max_steps, config.learning_rate, config.warmup_steps) == (4, 2.0, 7, 1e-3, 3)
    assert (config.batch_size, config.max_length, config.vocab_subset, config.bf16) == (8, 256, 4096, False)
    assert (config.optim, config.optim_args, config.mask_token) == ("sgd", "momentum=0.9", smollm2.MASK_TOKEN)
    assert (config.pard2.layers, config.pard2.scale, config.pard2.cache) == ((-1, -4), 0.3, "runs/cache")
    record = json.loads((tmp_path / "cont" / RECIPE_FILE).read_text())
    assert record == json.loads(json.dumps(dataclasses.asdict(settings)))


def test_a_record_is_quoted_back_as_the_command_that_gives_the_same_settings(tmp_path):
    write_record(str(tmp_path), SETTINGS)
    (command,) = recipe_commands(str(tmp_path))
    assert command.startswith("python -m transformers_pard recipe smollm2 --stage train --k 4 --num-layers 2 ")
    args = parse(shlex.split(command)[3:])
    assert TrainSettings(**flag_values(TrainSettings, args)) == SETTINGS
    assert read_record(str(tmp_path / "none")) is None


@pytest.mark.parametrize("flag", ["--pard2-projection-only", "--pard2-cache=c"])
def test_pard2_only_flags_need_pard2(flag):
    with pytest.raises(ValueError, match=f"{flag.split('=')[0]}.*--pard2"):
        smollm2.run_stage("train", parse(["recipe", "smollm2", flag]))


def test_target_layers_reach_the_train_stage_and_come_back_in_the_command(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(smollm2, "train_stage", lambda out, **kwargs: calls.append(kwargs["settings"]))
    smollm2.run_stage("train", parse(["recipe", "smollm2", "--stage", "train", "--num-layers", "3",
                                      "--target-layers", "0", "1", "-1", "--out", "o"]))
    assert calls[0].target_layers == (0, 1, -1)
    write_record(str(tmp_path), calls[0])
    (command,) = recipe_commands(str(tmp_path))
    assert "--target-layers 0 1 -1" in command
    assert TrainSettings(**flag_values(TrainSettings, parse(shlex.split(command)[3:]))) == calls[0]


def test_families_reach_the_instruct_stage(monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, "instruct_stage", lambda out, **kwargs: calls.append(kwargs))
    smollm2.run_stage("instruct", parse(["recipe", "smollm2", "--stage", "instruct", "--seed", "4", "--device", "cpu",
                                         "--families", "code", "general"]))
    smollm2.run_stage("instruct", parse(["recipe", "smollm2", "--stage", "instruct", "--device", "cpu"]))
    assert [c["families"] for c in calls] == [("code", "general"), ("math", "code", "general")]
