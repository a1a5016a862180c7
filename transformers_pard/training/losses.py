"""The losses of PARD training, as pure functions of logits, labels and weights.

* ``pard_loss``: cross-entropy on already aligned labels (the PARD layout has no "next row"), with
  optional per-row weights (PARD-2's CAT weights).
* ``cat_weights``: PARD-2's CAT weight of every row (PARD_NOTES section 5).
* ``distill_kl``: per-row ``T**2 KL(teacher || draft)``, forward and backward in row chunks.
* ``pard2_loss``: ``ce_alpha * CAT-weighted CE + kd_alpha * CAT-weighted KL``.

Every mean is over the labelled rows (label != -100), so weights below 1 lower a row's share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .collator import IGNORE_INDEX

#: Rows of the vocabulary-wide KD tensors handled at once: about 2**24 floats (64 MB in fp32) per chunk.
KD_CHUNK_ELEMENTS = 1 << 24


def pard_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled rows; labels are aligned (row n predicts ``labels[n]``).

    Args:
        logits: (B, N, V) draft logits.
        labels: (B, N) target ids, -100 where no loss.
        weights: optional (B, N) per-row weights (e.g. PARD-2 CAT weights); the weighted sum is still
            divided by the number of labelled rows, so weights below 1 lower a row's share.
    """
    per_row = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B*N,), 0 on ignored rows
    if weights is not None:
        per_row = per_row * weights.flatten().to(per_row.dtype)
    labelled = labels.ne(IGNORE_INDEX).sum()
    return per_row.sum() / labelled.clamp(min=1)


def cat_weights(
    gold: torch.Tensor, copy_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """CAT weight of every row: ``prod_{s=t-i+1}^{t} g_s`` for row (copy i, position t): (B, N).

    1 for copy 0; 0 on padding rows (copy -1) and, given ``labels``, on rows labelled -100.
    ``gold`` (B, L) comes from ``target_pass.gold_probs``; ``copy_ids`` / ``position_ids`` (B, N) from
    the collator. Exact products (no logs), one gather per copy.
    """
    weights = torch.ones(copy_ids.shape, dtype=gold.dtype, device=gold.device)  # (B, N)
    copies = int(copy_ids.max()) + 1 if copy_ids.numel() else 0
    for i in range(1, copies):
        factor = gold.gather(1, (position_ids - i + 1).clamp(min=0))  # (B, N) g_{t-i+1}
        weights = torch.where(copy_ids >= i, weights * factor, weights)
    valid = copy_ids >= 0
    if labels is not None:
        valid = valid & labels.ne(IGNORE_INDEX)
    return weights * valid.to(weights.dtype)


def _kd_chunks(batch: int, rows: int, vocab: int):
    """(sample, row slice) pairs covering a (batch, rows) grid, ~``KD_CHUNK_ELEMENTS / vocab`` rows each."""
    step = max(1, KD_CHUNK_ELEMENTS // max(vocab, 1))
    for b in range(batch):
        for start in range(0, rows, step):
            yield b, slice(start, min(start + step, rows))


def _teacher_log_probs(teacher: torch.Tensor, vocab: int, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``log softmax(teacher / T)`` over the shared ids: (r, V')."""
    return F.log_softmax(teacher[:, :vocab].to(dtype) / temperature, dim=-1)


class _DistillKL(torch.autograd.Function):
    """Per-row ``T**2 KL(p_T || q_T)``, computed and differentiated chunk by chunk.

    Only the inputs are kept for backward; every vocabulary-wide temporary (softmaxes, the gathered
    teacher rows) lives for one chunk. The gradient w.r.t. the draft logits is
    ``T * (softmax(z / T) - p_T)`` per row (p_T is 0 on draft-only ids), scaled by the incoming grad.
    """

    @staticmethod
    def forward(ctx, draft_logits, teacher_logits, teacher_positions, temperature):
        batch, rows, vocab_draft = draft_logits.shape
        vocab = min(vocab_draft, teacher_logits.shape[-1])
        dtype = torch.promote_types(draft_logits.dtype, torch.float32)
        kl = draft_logits.new_empty((batch, rows), dtype=dtype)  # (B, n)
        for b, part in _kd_chunks(batch, rows, vocab_draft):
            log_q = F.log_softmax(draft_logits[b, part].to(dtype) / temperature, dim=-1)[:, :vocab]  # (r, V')
            log_p = _teacher_log_probs(teacher_logits[b, teacher_positions[b, part]], vocab, temperature, dtype)
            kl[b, part] = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
        ctx.save_for_backward(draft_logits, teacher_logits, teacher_positions)
        ctx.temperature = temperature
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        draft_logits, teacher_logits, teacher_positions = ctx.saved_tensors
        temperature = ctx.temperature
        batch, rows, vocab_draft = draft_logits.shape
        vocab = min(vocab_draft, teacher_logits.shape[-1])
        dtype = torch.promote_types(draft_logits.dtype, torch.float32)
        grad = torch.empty_like(draft_logits)  # (B, n, V)
        for b, part in _kd_chunks(batch, rows, vocab_draft):
            q = F.softmax(draft_logits[b, part].to(dtype) / temperature, dim=-1)  # (r, V)
            p = _teacher_log_probs(teacher_logits[b, teacher_positions[b, part]], vocab, temperature, dtype).exp()
            q[:, :vocab] -= p
            grad[b, part] = (q * (temperature * grad_kl[b, part, None].to(dtype))).to(grad.dtype)
        return grad, None, None, None


def distill_kl(
    draft_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    teacher_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row ``T**2 * KL(softmax(teacher / T) || softmax(draft / T))``: (B, n), float32 (or float64).

    Args:
        draft_logits: (B, n, V) draft logits (differentiable).
        teacher_logits: (B, n, V_t) teacher logits row by row, or, with ``teacher_positions``, (B, L, V_t)
            target logits from which row j takes position ``teacher_positions[:, j]`` (no (B, n, V_t)
            copy is made). The teacher is a constant: no gradient flows into it.
        teacher_positions: optional (B, n) long.

    Vocabularies may differ in size (the draft may carry extra rows, e.g. its mask token): the sum
    runs over the shared ids (the first ``min(V, V_t)``); the draft's softmax is over its whole
    vocabulary, so mass it puts on ids the target lacks is penalised. Exactly 0 where both logits are
    equal. Forward and backward run in row chunks, so memory beyond the logits stays at one chunk.
    """
    if teacher_positions is None:
        teacher_positions = torch.arange(draft_logits.shape[1], device=draft_logits.device)
        teacher_positions = teacher_positions.expand(draft_logits.shape[0], -1)  # (B, n)
    return _DistillKL.apply(draft_logits, teacher_logits.detach(), teacher_positions, float(temperature))


def pard2_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_positions: torch.Tensor | None = None,
    ce_alpha: float = 0.1,
    kd_alpha: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``ce_alpha * CE + kd_alpha * KL``, both CAT-weighted and divided by the number of labelled rows.

    Args:
        logits: (B, n, V) draft logits of the scored rows.
        labels: (B, n) aligned gold ids, -100 where no loss.
        weights: (B, n) CAT weights (``cat_weights``).
        teacher_logits: (B, n, V_t) target logits at each row's position, or (B, L, V_t) target
            logits of the whole sequence with ``teacher_positions`` (B, n) naming each row's position.
    """
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce_alpha:
        loss = loss + ce_alpha * pard_loss(logits, labels, weights)
    if kd_alpha:
        labelled = labels.ne(IGNORE_INDEX)  # (B, n)
        kl = distill_kl(logits, teacher_logits, temperature, teacher_positions)  # (B, n)
        kl = kl * weights.to(kl.dtype) * labelled
        loss = loss + kd_alpha * kl.sum() / labelled.sum().clamp(min=1)
    return loss
