"""How good is a draft? Mean accepted length tau, measured by running the PARD engine (greedy).

tau = tokens committed per verify round (1 .. K+1); the ideal speedup over plain decoding is
tau x T_target(1) / (T_target(K+1) + T_draft). Prompts run one at a time (batch 1), so each prompt
gets its own tau; the overall tau is committed tokens / rounds over all prompts.

``teacher_forced_tau`` is the fast proxy used while tuning a training run: no generation, one target
forward and one draft forward (the K-copy layout, every row kept) per sequence of target-greedy text;
a round is imagined to start at every answer position; ``greedy_sequences`` writes such text.

Only the engine's public surface is used: ``generate(..., pard_draft=, return_dict_in_generate=True)``
and its ``pard_stats``; the draft's PARD-2 mode is decided by the engine's resolver
(``drafting.resolve_pard2``) and a vocabulary-subset draft drafts from its subset, as in ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import PardGenerationMixin, enable_pard
from ..draft_config import mask_token_id
from ..drafting import resolve_pard2
from ..pard2 import draft_inputs_embeds, target_features
from ..vocab import vocab_subset
from .collator import PardLayoutConfig, build_example, collate_examples, cod_keep_positions
from .data import load_prompts, user_turn
from .target_pass import row_features

__all__ = [
    "TauReport",
    "TeacherForcedReport",
    "greedy_sequences",
    "load_prompts",
    "measure_tau",
    "prompt_ids",
    "teacher_forced_tau",
]


@dataclass(frozen=True)
class TauReport:
    """Acceptance of a draft on a prompt set at one K."""

    k: int
    #: committed tokens / verify rounds over all prompts
    mean_tau: float
    #: tau of each prompt, in prompt order
    per_prompt: tuple[float, ...]
    #: histogram[n] = rounds that committed n tokens (n = 1 .. K+1; index 0 unused)
    histogram: tuple[int, ...]
    rounds: int
    committed_tokens: int

    def summary(self) -> str:
        shares = ", ".join(f"{n}:{c}" for n, c in enumerate(self.histogram) if n and c)
        prompts = len(self.per_prompt)
        return f"K={self.k} tau={self.mean_tau:.2f} over {prompts} prompts, {self.rounds} rounds [{shares}]"


def prompt_ids(tokenizer, prompt: str, *, chat_template: bool) -> torch.Tensor:
    """Token ids (1, P) of a prompt, as a user turn of the chat template when asked and available."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer(user_turn(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def measure_tau(
    target,
    draft,
    tokenizer,
    prompts: Sequence[str],
    *,
    k: int = 8,
    max_new_tokens: int = 64,
    chat_template: bool = True,
    pard_mode: str | None = None,
) -> TauReport:
    """Greedy PARD generation of every prompt with ``draft`` drafting K tokens for ``target``.

    ``target`` is PARD-enabled in place if it is not already (``transformers_pard.enable_pard``).
    """
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}.")
    if not prompts:
        raise ValueError("measure_tau needs at least one prompt.")
    if not isinstance(target, PardGenerationMixin):
        enable_pard(target)
    device = next(target.parameters()).device
    per_prompt, histogram, rounds, committed = [], [0] * (k + 2), 0, 0
    for prompt in prompts:
        input_ids = prompt_ids(tokenizer, prompt, chat_template=chat_template).to(device)  # (1, P)
        out = target.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            pard_draft=draft,
            num_assistant_tokens=k,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            pard_min_tau=None,  # measure the draft, never the auto-disabled plain steps
            pard_mode=pard_mode,  # PARD-2 drafts: "dependent" / "independent" (None: the engine's default)
        )
        stats = out.pard_stats
        per_prompt.append(stats.tau)
        histogram = [a + b for a, b in zip(histogram, stats.accepted_histogram)]
        rounds += stats.rounds
        committed += stats.committed_tokens
    return TauReport(
        k=k,
        mean_tau=committed / max(rounds, 1),
        per_prompt=tuple(per_prompt),
        histogram=tuple(histogram),
        rounds=rounds,
        committed_tokens=committed,
    )


@dataclass(frozen=True)
class TeacherForcedReport:
    """Acceptance of a draft on fixed target-greedy text, a round imagined at every answer position."""

    k: int
    #: mean over round starts p of 1 + (number of draft tokens the target would accept)
    mean_tau: float
    #: accuracy[j]: of the rounds that accepted draft tokens 1..j, the share that accepts token j+1 too
    accuracy: tuple[float, ...]
    #: round starts counted
    positions: int

    def summary(self) -> str:
        accuracy = ", ".join(f"{a:.3f}" for a in self.accuracy[:4])
        return f"K={self.k} teacher-forced tau={self.mean_tau:.3f} over {self.positions} positions, accuracy [{accuracy}, ...]"


@torch.no_grad()
def draft_layout_tokens(target, draft, input_ids: torch.Tensor, k: int, pard2) -> tuple[torch.Tensor, torch.Tensor]:
    """Target greedy tokens (L,) and draft tokens (K, L) of one sequence ``input_ids`` (L,).

    ``draft_tokens[j, t]`` is the draft's choice at copy j, position t (real prefix ``x_0..x_{t-j}``, then
    j masks), i.e. draft token j+1 of a round whose last real token is ``x_{t-j}``; -1 where t < j.
    ``pard2``: a ``Pard2Config`` for target-dependent mode, else None. A vocabulary-subset draft
    chooses among its subset's ids only (``vocab.vocab_subset``).
    """
    length = input_ids.numel()
    out = target(input_ids[None], output_hidden_states=pard2 is not None)
    greedy = out.logits[0].argmax(-1)  # (L,) the target's token after x_0..x_t
    keep = cod_keep_positions(length, config=PardLayoutConfig(k=k), generator=None)  # every row
    batch = collate_examples([build_example(input_ids.cpu(), input_ids.cpu(), keep=keep,
                                            mask_token_id=mask_token_id(draft.config))], pad_token_id=0)
    batch = {key: value.to(input_ids.device) for key, value in batch.items()}
    if pard2 is None:
        embeds = draft.get_input_embeddings()(batch["input_ids"])  # (1, N, H)
    else:
        features = target_features(out.hidden_states, pard2.target_layers)  # (1, L, D)
        rows = row_features(features, batch["copy_ids"], batch["position_ids"])  # (1, N, D)
        embeds = draft_inputs_embeds(draft, batch["input_ids"], rows, pard2.scale)  # (1, N, H)
    logits = draft(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[0]  # (N, V)
    draft_tokens = torch.full((k, length), -1, dtype=torch.long, device=input_ids.device)  # (K, L)
    draft_tokens[batch["copy_ids"][0], batch["position_ids"][0]] = draft_choice(draft, logits)
    return greedy, draft_tokens


def draft_choice(draft, logits: torch.Tensor) -> torch.Tensor:
    """The draft's greedy token of each row of ``logits`` (N, V): (N,), within its vocabulary subset if any."""
    ids = vocab_subset(draft)
    return logits.argmax(-1) if ids is None else ids[logits[:, ids].argmax(-1)]


def accepted_lengths(input_ids: torch.Tensor, greedy: torch.Tensor, draft_tokens: torch.Tensor, start: int) -> list[int]:
    """Draft tokens accepted by greedy verification for a round at every p in ``start-1 .. L-2``.

    Round at p (context ``x_0..x_p``): draft token j+1 (``draft_tokens[j, p+j]``) is accepted while every
    earlier one was and it equals the target's greedy token ``greedy[p+j]``. The target's token is read
    off the text, so for j >= 1 the text must hold the accepted tokens: ``x_{p+j} == greedy[p+j-1]``
    (on target-greedy text always; elsewhere the chain stops there).
    """
    length, k = input_ids.numel(), draft_tokens.shape[0]
    on_path = torch.zeros(length, dtype=torch.bool, device=input_ids.device)  # (L,) x_{t+1} == greedy[t]
    on_path[:-1] = input_ids[1:] == greedy[:-1]
    hit = draft_tokens == greedy[None, :]  # (K, L) copy j's token is the target's at t
    lengths = []
    for p in range(max(start - 1, 0), length - 1):
        n = 0
        while n < k and p + n < length and bool(hit[n, p + n]) and (n == 0 or bool(on_path[p + n - 1])):
            n += 1
        lengths.append(n)
    return lengths


def teacher_forced_tau(
    target, draft, sequences: Sequence[tuple[Sequence[int], int]], *, k: int = 8, pard_mode: str | None = None
) -> TeacherForcedReport:
    """Expected tau of ``draft`` on target-greedy text, without generating (the fast proxy of ``measure_tau``).

    Args:
        sequences: ``(token ids, start)`` pairs: a prompt and the target's greedy answer, ``start`` the
            index of the first answer token; a round is counted at every p from ``start - 1`` on. Any
            text works as context, but a chain stops where the text leaves the target's greedy path.
        pard_mode: PARD-2 drafts: "dependent" / "independent" (None: as ``generate`` would choose).
    """
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}.")
    if not sequences:
        raise ValueError("teacher_forced_tau needs at least one sequence.")
    pard2 = resolve_pard2(target, draft, pard_mode)
    device = next(target.parameters()).device
    lengths, hits = [], [0] * k
    for ids, start in sequences:
        input_ids = torch.as_tensor(list(ids), dtype=torch.long, device=device)  # (L,)
        greedy, draft_tokens = draft_layout_tokens(target, draft, input_ids, k, pard2)
        accepted = accepted_lengths(input_ids, greedy, draft_tokens, start)
        lengths += accepted
        for n in accepted:  # token j+1 is reached and right in every round that accepted more than j
            for j in range(min(n, k)):
                hits[j] += 1
    rounds = max(len(lengths), 1)
    accuracy = tuple(hits[j] / max(sum(n >= j for n in lengths), 1) for j in range(k))
    return TeacherForcedReport(k=k, mean_tau=1 + sum(lengths) / rounds, accuracy=accuracy, positions=len(lengths))


def greedy_sequences(
    target, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, chat_template: bool = True
) -> list[tuple[list[int], int]]:
    """``(prompt + the target's greedy answer, answer start)`` for each prompt, one at a time: the
    sequences ``teacher_forced_tau`` reads."""
    device = next(target.parameters()).device
    sequences = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt, chat_template=chat_template).to(device)  # (1, P)
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
        sequences.append((out[0].tolist(), ids.shape[1]))
    return sequences
