"""Propose draft tokens and accept them: greedy, and lossless speculative sampling.

Both verifiers return, per round, the committed chunk (B, K+1) and its length a+1 (B,): the first a
entries are the accepted drafts, entry a is the target's own token (correction or bonus).

Sampling follows the standard lossless rule (PARD_NOTES section 1). With p the target's processed
distribution at a slot and q the distribution the draft token was *actually drawn from* (the draft's
logits after the same processors):
    accept d_j with probability min(1, p_{j-1}(d_j) / q_j(d_j));
    at the first rejection draw from norm(max(0, p_{j-1} - q_j)); if all K pass, draw the bonus from p_K.
Every committed token is then distributed exactly as under the target alone.
"""

from __future__ import annotations

import torch

from .scoring import Scorer


class GreedyVerifier:
    """Draft: argmax of the draft's logits. Accept: while the target's processed argmax agrees."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def propose(self, state, draft_logits: torch.Tensor):
        return draft_logits.argmax(-1), None  # (B, K), no q needed

    def accept(self, state, draft_tokens, q, target_logits):
        """Returns (chunk (B, K+1), length (B,), scores (B, K+1, V))."""
        scores = self.scorer.scores(state, draft_tokens, target_logits)  # (B, K+1, V)
        target_choice = scores.argmax(-1)  # (B, K+1)
        agree = draft_tokens == target_choice[:, :-1]  # (B, K)
        num_accepted = agree.long().cumprod(dim=1).sum(dim=1)  # (B,)
        # The accepted drafts equal the target's choices, so the chunk is the target's choices.
        return target_choice, num_accepted + 1, scores


class SamplingVerifier:
    """Draft: sample from q = softmax(processed draft logits). Accept: the speculative sampling rule."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def propose(self, state, draft_logits: torch.Tensor):
        """Sample d_1..d_K; returns (tokens (B, K), q (B, K, V))."""
        batch, k, vocab = draft_logits.shape
        if self.scorer.prefix_free:
            q = torch.softmax(self.scorer.scores(state, draft_logits.new_zeros(batch, 0, dtype=torch.long), draft_logits), -1)
            tokens = torch.multinomial(q.reshape(-1, vocab), 1).reshape(batch, k)  # (B, K)
            return tokens, q
        # Prefix-dependent processors: slot j's q depends on d_1..d_{j}, so draw one slot at a time.
        tokens = draft_logits.new_zeros(batch, 0, dtype=torch.long)
        qs = []
        for j in range(k):
            q_j = torch.softmax(self.scorer.slot_scores(state, tokens, draft_logits[:, j]), -1)  # (B, V)
            tokens = torch.cat([tokens, torch.multinomial(q_j, 1)], dim=1)
            qs.append(q_j)
        return tokens, torch.stack(qs, dim=1)

    def accept(self, state, draft_tokens, q, target_logits):
        scores = self.scorer.scores(state, draft_tokens, target_logits)  # (B, K+1, V)
        p = torch.softmax(scores, -1)  # (B, K+1, V)
        k = draft_tokens.shape[1]
        if q is None:  # K = 0 (drafting switched off): a plain sampling step from p
            q = p[:, :0]  # (B, 0, V)
        p_d = p[:, :k].gather(-1, draft_tokens[..., None])[..., 0]  # (B, K) p_{j-1}(d_j)
        q_d = q.gather(-1, draft_tokens[..., None])[..., 0]  # (B, K) q_j(d_j) > 0: d_j was drawn from q_j
        accepted = torch.rand_like(p_d) * q_d < p_d  # u < p/q
        num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)  # (B,)
        next_token = self._sample_after(p, q, num_accepted)  # (B,)
        chunk = torch.cat([draft_tokens, draft_tokens.new_zeros(draft_tokens.shape[0], 1)], dim=1)  # (B, K+1)
        chunk = chunk.scatter(1, num_accepted[:, None], next_token[:, None])
        return chunk, num_accepted + 1, scores

    @staticmethod
    def _sample_after(p, q, num_accepted):
        """The token at slot a: from norm(max(0, p_a - q_{a+1})) after a rejection, else from p_K."""
        batch, slots, vocab = p.shape
        rows = torch.arange(batch, device=p.device)
        p_a = p[rows, num_accepted]  # (B, V)
        q_padded = torch.cat([q, q.new_zeros(batch, 1, vocab)], dim=1)  # (B, K+1, V): no q after d_K
        residual = (p_a - q_padded[rows, num_accepted]).clamp(min=0)  # (B, V)
        mass = residual.sum(-1, keepdim=True)
        # mass == 0 only when p_a == q exactly, where rejection has probability 0: keep p_a.
        residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p_a)
        return torch.multinomial(residual, 1)[:, 0]
