"""Test helpers of the applications: tiny models saved to disk as a user's would be (a target folder with
its tokenizer, PARD drafts as a plain and a compact folder, an autoregressive draft, a PARD-2 draft, a
prompt file), and a PNG size reader."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from transformers_pard.draft_io import export_full_draft, save_compact_draft
from transformers_pard.testing import (
    mark_as_pard_draft,
    tiny_causal_lm,
    tiny_pard2_draft,
    tiny_pard_draft,
    tiny_tokenizer,
)

PROMPTS = ["Add 2 and 3.", "Say hi.", "Sort [3, 1, 2]."]
MASK_ID = 95  # the last id of the tiny 96-token vocabulary


@dataclass(frozen=True)
class SavedModels:
    target: str
    draft: str
    compact_draft: str
    ar_draft: str
    pard2_draft: str
    prompts: str


def write_prompts(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"data": t}) + "\n" for t in texts) + "\n")
    return str(path)


def save_models(folder: Path) -> SavedModels:
    """Everything ``bench`` / ``demo`` load, written under ``folder``; the target has tied embeddings so a
    compact draft can borrow them."""
    target = tiny_causal_lm("llama", seed=0, tie_word_embeddings=True)
    target.save_pretrained(folder / "target")
    tiny_tokenizer().save_pretrained(folder / "target")
    tiny_pard_draft(target).save_pretrained(folder / "draft")
    compact = mark_as_pard_draft(tiny_causal_lm("llama", seed=2, num_layers=1, tie_word_embeddings=True),
                                 mask_token_id=MASK_ID)
    save_compact_draft(compact, str(folder / "compact"), dtype=compact.dtype)
    # An autoregressive draft trained by the recipe with K = 1 still carries the PARD keys.
    mark_as_pard_draft(tiny_causal_lm("llama", seed=4, num_layers=1), mask_token_id=MASK_ID).save_pretrained(
        folder / "ar")
    export_full_draft(tiny_pard2_draft(target), str(folder / "pard2"))
    prompts = write_prompts(folder / "prompts.jsonl", PROMPTS)
    return SavedModels(*(str(folder / name) for name in ("target", "draft", "compact", "ar", "pard2")), prompts)


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk (PIL's answer too, where PIL is installed)."""
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", "not a PNG file"
    width, height = struct.unpack(">II", header[16:24])
    try:
        from PIL import Image
    except ImportError:
        return width, height
    with Image.open(path) as image:
        assert image.size == (width, height)
    return width, height
