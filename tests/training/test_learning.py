"""End to end on CPU: PARD training makes a tiny draft's parallel guesses acceptable to the target.

Language: a random permutation f of 24 words; a sentence is ``w, f(w), f(f(w)), ...``. A 1-layer target
learns it in ~100 steps. The PARD draft must predict ``f^(j+1)(x_p)`` from the last real token x_p
followed by j mask tokens, which only PARD's K-copy training teaches. tau is measured by the engine
(greedy, K = 4, so tau is between 1 and 5).
"""

from __future__ import annotations

import copy

import torch

from transformers_pard.testing import tiny_causal_lm
from transformers_pard.training import PardDataCollator, PardTrainer, measure_tau, prepare_draft

from .helpers import trainer_args, word_tokenizer

V = 24
K = 4


def language(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    successor = torch.randperm(V, generator=generator).tolist()

    def sentence(start: int, length: int) -> list[int]:
        words = [start]
        while len(words) < length:
            words.append(successor[words[-1]])
        return words

    return sentence, generator


def train_target(tokenizer, sentences: torch.Tensor, generator: torch.Generator):
    """Plain next-token training of a 1-layer target on the language (about a second)."""
    target = tiny_causal_lm("llama", seed=0, vocab_size=len(tokenizer) + 2, hidden_size=32, num_layers=1).train()
    optimizer = torch.optim.AdamW(target.parameters(), lr=1e-2)
    for _ in range(100):
        batch = sentences[torch.randint(len(sentences), (32,), generator=generator)]  # (32, L)
        loss = target(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return target.eval()


def train_pard(draft, mask_id: int, examples: list[dict], output_dir) -> None:
    args = trainer_args(output_dir, max_steps=120, learning_rate=3e-3, warmup_steps=10,
                        per_device_train_batch_size=16)
    collator = PardDataCollator(mask_token_id=mask_id, k=K, cod_ratio=0.7, cod_min=0.3, pad_token_id=0)
    PardTrainer(model=draft.train(), args=args, train_dataset=examples, data_collator=collator).train()
    draft.eval()


def test_pard_training_raises_tau_well_above_untrained_and_ar_drafts(tmp_path):
    tokenizer = word_tokenizer([f"t{i}" for i in range(V)])
    sentence, generator = language()
    ids = [tokenizer.convert_tokens_to_ids(f"t{i}") for i in range(V)]
    encode = lambda words: [ids[w] for w in words]  # noqa: E731
    starts = torch.randint(V, (512,), generator=generator).tolist()
    data = [encode(sentence(start, 24)) for start in starts]
    target = train_target(tokenizer, torch.tensor(data), generator)

    prompts = [" ".join(f"t{w}" for w in sentence(start, 3)) for start in range(0, V, 3)]

    def tau(draft) -> float:
        report = measure_tau(target, draft, tokenizer, prompts, k=K, max_new_tokens=24, chat_template=False)
        assert report.rounds > 0 and len(report.per_prompt) == len(prompts)
        return report.mean_tau

    # 1. untrained 2-layer draft: almost nothing accepted
    draft = tiny_causal_lm("llama", seed=1, vocab_size=len(tokenizer) + 2, hidden_size=64, num_layers=2)
    draft, _, mask_id, source = prepare_draft(draft, copy.deepcopy(tokenizer))
    assert source == "spare_row"
    untrained = tau(draft)
    # 2. a perfect AR model used as a parallel draft: only its first guess is right (tau ~ 2)
    ar_draft, _, _, _ = prepare_draft(copy.deepcopy(target), copy.deepcopy(tokenizer))
    ar = tau(ar_draft)
    # 3. the untrained draft after PARD training
    train_pard(draft, mask_id, [{"input_ids": d} for d in data], tmp_path)
    pard = tau(draft)

    print(f"\ntau at K={K}: untrained {untrained:.2f}, AR target as draft {ar:.2f}, PARD-trained {pard:.2f}")
    assert untrained < 1.5
    assert ar < 2.6
    assert pard > 3.5
    assert pard > ar + 1.0
