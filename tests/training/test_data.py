"""jsonl records -> tokenised examples: text, chat messages (loss on answers only), conversation pairs."""

from __future__ import annotations

import json

import pytest

from transformers_pard.training.data import (
    chat_segments,
    load_prompts,
    load_training_examples,
    tokenize_record,
)

from .helpers import word_tokenizer

WORDS = ["hi", "there", "how", "are", "you", "fine", "thanks", "bye", "ok"]


@pytest.fixture()
def tokenizer():
    return word_tokenizer(WORDS)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_text_record_appends_eos_and_learns_every_token(tokenizer):
    example = tokenize_record({"text": "hi there how"}, tokenizer)
    assert example["input_ids"] == ids(tokenizer, "hi there how") + [tokenizer.eos_token_id]
    assert example["labels"] == example["input_ids"]


def test_messages_record_learns_only_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "fine"},
        {"role": "assistant", "content": "ok bye"},
    ]
    example = tokenize_record({"messages": messages}, tokenizer)
    # rendered: <user> hi there </s> <assistant> how are you </s> <user> fine </s> <assistant> ok bye </s>
    assert example["input_ids"] == ids(tokenizer, "<user> hi there </s> <assistant> how are you </s> "
                                                  "<user> fine </s> <assistant> ok bye </s>")
    learned = [tok if lab != -100 else None for tok, lab in zip(example["input_ids"], example["labels"])]
    assert learned == [None] * 5 + ids(tokenizer, "how are you </s>") + [None] * 4 + ids(tokenizer, "ok bye </s>")


def test_conversation_record_equals_its_messages(tokenizer):
    conversation = {"conversation": [{"human": "hi", "assistant": "fine thanks"}, {"human": "bye", "assistant": "ok"}]}
    messages = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "fine thanks"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ok"},
        ]
    }
    assert tokenize_record(conversation, tokenizer) == tokenize_record(messages, tokenizer)


def test_truncation_and_records_with_nothing_to_learn(tokenizer):
    example = tokenize_record({"text": "hi there how are you"}, tokenizer, max_length=3)
    assert len(example["input_ids"]) == len(example["labels"]) == 3
    messages = [{"role": "user", "content": "hi there how are you fine"}, {"role": "assistant", "content": "ok"}]
    assert tokenize_record({"messages": messages}, tokenizer, max_length=4) is None  # the answer was cut off
    assert tokenize_record({"text": ""}, tokenizer) is None


def test_template_that_rewrites_history_is_refused(tokenizer):
    # renders only the last message: a shorter conversation is not a prefix of a longer one
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match="prefix"):
        chat_segments(messages, tokenizer)


def test_chat_without_template_is_refused():
    tokenizer = word_tokenizer(WORDS, chat_template=None)
    with pytest.raises(ValueError, match="chat template"):
        tokenize_record({"messages": [{"role": "assistant", "content": "ok"}]}, tokenizer)


def test_load_training_examples_reads_every_format(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    records = [
        {"text": "hi there"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
        {"conversation": [{"human": "hi", "assistant": "bye"}]},
        {"text": ""},  # skipped: nothing to learn
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    examples = load_training_examples(path, tokenizer, max_length=32)
    assert len(examples) == 3


def test_bad_records_name_their_line(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "hi"}\n{"prompt": "hi"}\n')
    with pytest.raises(ValueError, match="data.jsonl:2"):
        load_training_examples(path, tokenizer)
    path.write_text('{"text": "hi"\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_training_examples(path, tokenizer)


def test_load_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"data": "hi there"}\n{"data": "how are you"}\n')
    assert load_prompts(path) == ["hi there", "how are you"]
    path.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="data"):
        load_prompts(path)
