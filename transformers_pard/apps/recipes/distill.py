"""Self-distillation: the target answers our prompts, batched; the draft will learn those answers.

Output: a jsonl of ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "mode": ...}``
(the chat format the PARD trainer reads). Resumable: finished prompts (by id) are skipped on restart.
"""

from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from ..embedded import chat_prompt


def _done_ids(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def distill(
    model,
    tokenizer,
    jobs: list[tuple[str, str, bool]],
    out_path: str,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 160,
    temperature: float = 0.8,
) -> int:
    """Answer each job ``(id, prompt, sample)`` with the target; append to ``out_path``. Returns new rows."""
    done = _done_ids(out_path)
    todo = [job for job in jobs if job[0] not in done]
    # Similar lengths together: less padding per batch. Greedy and sampled jobs go in separate batches.
    todo.sort(key=lambda job: (job[2], len(job[1])))
    batches = [
        group[start : start + batch_size]
        for group in ([job for job in todo if not job[2]], [job for job in todo if job[2]])
        for start in range(0, len(group), batch_size)
    ]
    written = 0
    with open(out_path, "a") as out, tqdm(total=len(todo), desc="self-distillation", unit="answer") as bar:
        for batch in batches:
            for (job_id, prompt, sampled), answer in zip(batch, _answer(model, tokenizer, batch, max_new_tokens, temperature)):
                row = {"id": job_id, "mode": "sampled" if sampled else "greedy", "messages": [
                    {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
                out.write(json.dumps(row) + "\n")
                written += 1
            out.flush()
            bar.update(len(batch))
    return written


def _answer(model, tokenizer, batch, max_new_tokens: int, temperature: float) -> list[str]:
    groups = {sampled for _, _, sampled in batch}
    assert len(groups) == 1, "a batch is either all greedy or all sampled"
    sampled = groups.pop()
    texts = [chat_prompt(tokenizer, prompt) for _, prompt, _ in batch]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=sampled, temperature=temperature if sampled else None,
            top_k=None, top_p=None, pad_token_id=pad_id,
        )
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
