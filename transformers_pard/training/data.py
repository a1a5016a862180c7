"""Training data for PARD drafts: jsonl records -> tokenised examples ``{"input_ids", "labels"}``.

One record per line, in one of three shapes:

* ``{"text": "..."}``: plain text; every token carries loss (an EOS token is appended).
* ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}``:
  rendered with the tokenizer's chat template; only assistant turns (their content and the template's
  end-of-turn markup) carry loss, every other label is -100.
* ``{"conversation": [{"human": "...", "assistant": "..."}, ...]}``: turned into ``messages``.

Sequences are truncated to ``max_length`` tokens; records left with no loss token are skipped.
Examples are kept whole, one per batch row (padding, not packing): the PARD mask is per sample and
quadratic in the row length, so packing samples into one long row would make every step pay for the
cross-sample blocks of the mask that are all False.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .collator import IGNORE_INDEX

logger = logging.getLogger(__name__)

RECORD_KINDS = ("text", "messages", "conversation")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for every non-empty line of a jsonl file."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from error
                yield number, record


def load_prompts(path: str | Path) -> list[str]:
    """Prompts of an evaluation file: one ``{"data": "..."}`` record per line."""
    prompts = []
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("data"), str):
            raise ValueError(f'{path}:{number}: expected a record {{"data": "<prompt>"}}.')
        prompts.append(record["data"])
    return prompts


def record_kind(record: Mapping) -> str:
    """Which of ``RECORD_KINDS`` a record is; ValueError if none."""
    kinds = [kind for kind in RECORD_KINDS if kind in record] if isinstance(record, Mapping) else []
    if len(kinds) != 1:
        raise ValueError(f"a record needs exactly one of the keys {RECORD_KINDS}; got {sorted(record)[:5]!r}.")
    return kinds[0]


def conversation_to_messages(turns: Sequence[Mapping]) -> list[dict]:
    """``[{"human": h, "assistant": a}, ...]`` -> chat messages (user, assistant, user, ...)."""
    messages = []
    for turn in turns:
        if "human" in turn:
            messages.append({"role": "user", "content": turn["human"]})
        if "assistant" in turn:
            messages.append({"role": "assistant", "content": turn["assistant"]})
    return messages


def tokenize_text(text: str, tokenizer) -> tuple[list[int], list[int]]:
    """Plain text: the tokenizer's own special tokens plus EOS; every token carries loss."""
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids, list(ids)


def render_chat(tokenizer, messages: Sequence[Mapping], *, add_generation_prompt: bool = False) -> str:
    """The one place the package applies a chat template: ``messages`` rendered as text."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def user_turn(tokenizer, text: str) -> str:
    """``text`` as one user turn through the tokenizer's chat template, ready for the assistant's answer."""
    return render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)


def chat_segments(messages: Sequence[Mapping], tokenizer) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, carries loss) pieces: prompt, answer, prompt, ...

    An answer runs from the end of the generation prompt before it to the end of its rendered turn
    (end-of-turn markup included). Needs a chat template under which a shorter conversation renders
    as a prefix of a longer one (true of common templates); ValueError otherwise.
    """
    full = render_chat(tokenizer, messages)
    segments, cursor = [], 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        turn = render_chat(tokenizer, messages[: index + 1])
        if not (full.startswith(turn) and turn.startswith(prompt) and len(prompt) >= cursor):
            raise ValueError(
                "The chat template does not render conversations prefix by prefix, so assistant tokens cannot "
                "be located; use {'text': ...} records or a template without history rewriting."
            )
        segments += [(full[cursor : len(prompt)], False), (turn[len(prompt) :], True)]
        cursor = len(turn)
    segments.append((full[cursor:], False))
    return [(text, loss) for text, loss in segments if text]


def tokenize_messages(messages: Sequence[Mapping], tokenizer) -> tuple[list[int], list[int]]:
    """Chat: ids of the rendered conversation; labels -100 except on assistant answers."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("Chat records need a tokenizer with a chat template (tokenizer.chat_template is unset).")
    ids, labels = [], []
    for text, carries_loss in chat_segments(messages, tokenizer):
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if carries_loss else [IGNORE_INDEX] * len(piece)
    return ids, labels


def tokenize_record(record: Mapping, tokenizer, *, max_length: int | None = None) -> dict | None:
    """One record -> ``{"input_ids", "labels"}`` truncated to ``max_length``; None if nothing to learn."""
    kind = record_kind(record)
    if kind == "text":
        ids, labels = tokenize_text(record["text"], tokenizer)
    else:
        messages = record["messages"] if kind == "messages" else conversation_to_messages(record["conversation"])
        ids, labels = tokenize_messages(messages, tokenizer)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if len(ids) < 2 or all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels}


def load_training_examples(
    paths: str | Path | Iterable[str | Path], tokenizer, *, max_length: int | None = None
) -> list[dict]:
    """Read and tokenise every record of one or more jsonl files (in memory; skipped records are logged)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    examples, skipped = [], 0
    for path in paths:
        for number, record in read_jsonl(path):
            try:
                example = tokenize_record(record, tokenizer, max_length=max_length)
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: {error}") from error
            if example is None:
                skipped += 1
            else:
                examples.append(example)
    if skipped:
        logger.warning("Skipped %d record(s) with no token to learn after truncation.", skipped)
    if not examples:
        raise ValueError(f"No training examples in {', '.join(map(str, paths))}.")
    return examples
