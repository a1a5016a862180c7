"""Helpers for the training tests: a tiny word-level tokenizer, draft folder and jsonl corpus, built in code."""

from __future__ import annotations

import json

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast, TrainingArguments

from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import PardTrainConfig

#: ids 0/1/2 match transformers_pard.testing.tiny_config (pad/bos/eos)
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
#: a chat template whose markup is made of whole words of the tiny vocabulary
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
#: the words of the tiny training corpora (ids 6..29)
WORDS = [f"w{i}" for i in range(24)]


def word_tokenizer(words, *, chat_template: str | None = CHAT_TEMPLATE, pad_token: str = "<pad>"):
    """A whitespace word-level tokenizer: specials first (ids 0..3), then ``words`` in order."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, "<user>", "<assistant>", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad_token, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def write_draft(folder, *, seed: int = 0):
    """A tiny AR draft + tokenizer saved as a plain HF folder (what --draft points at)."""
    tokenizer = word_tokenizer(WORDS)
    model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def text_records(n: int = 16):
    return [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12))} for i in range(n)]


def train_config(tmp_path, **overrides) -> PardTrainConfig:
    """A short run on ``text_records`` (K=4, 4 steps, checkpoints every 2); the draft folder is written
    to ``tmp_path / "draft"`` unless ``draft`` is given or it is there already."""
    values = dict(
        data=(str(write_jsonl(tmp_path / "data.jsonl", text_records())),),
        output=str(tmp_path / "out"),
        k=4,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        batch_size=4,
        learning_rate=3e-3,
        max_length=16,
    )
    values.update(overrides)
    if "draft" not in values:
        folder = tmp_path / "draft"
        values["draft"] = str(folder if folder.exists() else write_draft(folder))
    return PardTrainConfig(**values)


def trainer_args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        save_strategy="no",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)
