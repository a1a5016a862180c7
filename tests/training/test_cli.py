"""``train`` CLI subcommand end to end on a tiny saved model folder and a tiny jsonl file."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from transformers_pard.draft_config import is_pard_draft
from transformers_pard.apps.train_cli import add_train_parser, parse_mask_token

from .helpers import text_records, write_draft, write_jsonl


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="transformers_pard")
    add_train_parser(root.add_subparsers(dest="command", required=True))
    return root


def run(argv: list[str]):
    args = parser().parse_args(argv)
    return args.func(args)


def test_train_cli_end_to_end_and_resume(tmp_path, capsys):
    draft = write_draft(tmp_path / "draft")
    records = [
        *text_records(6),
        {"messages": [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"}]},
        {"conversation": [{"human": "w6", "assistant": "w7 w8"}]},
    ]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "out"
    common = ["train", "--draft", str(draft), "--data", str(data), "--output", str(out), "--k", "3",
              "--cod-ratio", "0.7", "--cod-min", "0.2", "--batch-size", "4", "--max-length", "16",
              "--save-steps", "2", "--lr", "1e-3", "--logging-steps", "1"]
    assert run([*common, "--max-steps", "2"]) == out
    assert "PARD draft saved to" in capsys.readouterr().out
    assert (out / "checkpoint-2").is_dir()

    run([*common, "--max-steps", "3", "--resume", "--bf16", "--gradient-checkpointing"])
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["spd_type"] == "pard" and isinstance(config["pard_token"], int)
    assert is_pard_draft(AutoModelForCausalLM.from_pretrained(out))


def test_train_cli_with_explicit_mask_token(tmp_path):
    draft = write_draft(tmp_path / "draft")
    data = write_jsonl(tmp_path / "train.jsonl", text_records(4))
    out = tmp_path / "out"
    run(["train", "--draft", str(draft), "--data", str(data), "--output", str(out), "--k", "2",
         "--max-steps", "1", "--mask-token", "w23", "--max-length", "8"])
    config = json.loads((out / "config.json").read_text())
    assert config["pard_token"] == config["mask_token_id"] == 6 + 23  # specials 0..5, then w0.. (w23 never in data)


def test_mask_token_found_in_the_data_is_refused_before_training(tmp_path):
    draft = write_draft(tmp_path / "draft")
    data = write_jsonl(tmp_path / "train.jsonl", text_records(4))
    with pytest.raises(ValueError, match="contains the mask token"):
        run(["train", "--draft", str(draft), "--data", str(data), "--output", str(tmp_path / "out"),
             "--max-steps", "1", "--mask-token", "w1"])
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_cli_rejects_bad_k(tmp_path):
    with pytest.raises(ValueError, match="K"):
        run(["train", "--draft", "d", "--data", "x.jsonl", "--output", str(tmp_path), "--k", "0"])


def test_parse_mask_token():
    assert parse_mask_token("128020") == 128020
    assert parse_mask_token("<|pard_mask|>") == "<|pard_mask|>"
    assert parse_mask_token(None) is None


def test_help_lists_the_flags():
    text = parser().parse_args(["train", "--draft", "d", "--data", "x", "--output", "o"])
    assert (text.k, text.cod_ratio, text.cod_min, text.resume) == (8, 0.7, 0.2, None)


LAUNCHER = """
import argparse, sys
from transformers_pard.apps.train_cli import add_train_parser
root = argparse.ArgumentParser()
add_train_parser(root.add_subparsers(dest="command", required=True))
args = root.parse_args(sys.argv[1:])
args.func(args)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_torchrun_trains(tmp_path):
    """Nothing is single-process-only: DDP on two CPU processes (gloo), checkpoints, one final folder."""
    draft = write_draft(tmp_path / "draft")
    data = write_jsonl(tmp_path / "train.jsonl", text_records(32))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "out"

    def torchrun(max_steps: int, *extra: str) -> str:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(launcher), "train", "--draft", str(draft), "--data", str(data), "--output", str(out),
                   "--k", "3", "--batch-size", "4", "--max-length", "16", "--save-steps", "2",
                   "--max-steps", str(max_steps), *extra]
        # own process group, so a hang cannot leave worker processes behind
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail("torchrun did not finish in 120 s")
        assert process.returncode == 0, stderr[-3000:]
        return stdout

    stdout = torchrun(4)  # resuming: test_train_cli_end_to_end_and_resume (one process, same code path)
    assert stdout.count("PARD draft saved to") == 1  # printed by rank 0 only
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 0.5  # 2 steps x 2 ranks x 4 samples = 16 of 32
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert is_pard_draft(AutoModelForCausalLM.from_pretrained(out))
