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

from dataclasses import dataclass, replace

import torch

from .drafting import DraftLogits
from .scoring import Scorer
from .lookup import LookupStore, lookup_chains, lookup_continuation
from .tree import (TokenTree, dynamic_tree, greedy_accept, ranked_tree, sampled_tree, sampling_accept, shape_attention,
                   slot_topk, static_shape, static_tree, verify_layout, with_chain)


@dataclass
class VerifyInput:
    """The target's verify block: ``[last_token, proposal...]`` (B, T); a tree also gives each slot's
    position offset from the root (B, T) and the block's own attention (B, T, T)."""

    input_ids: torch.Tensor  # (B, T)
    position_offsets: torch.Tensor | None = None  # (B, T) None: a chain (offset = column)
    attention: torch.Tensor | None = None  # (B, T, T) None: causal within the block


@dataclass
class Verdict:
    """A round's outcome: the committed ``chunk`` (B, K+1) of ``length`` (B,) tokens, and the processed
    scores of the verify forward by verify slot, ``slot_scores`` (B, T, V); ``path_slots`` (B, K+1): the
    verify slot behind each committed token when it is not simply its column (token trees), else None."""

    chunk: torch.Tensor
    length: torch.Tensor
    slot_scores: torch.Tensor
    path_slots: torch.Tensor | None = None
    lookup_accepted: torch.Tensor | None = None  # (B,) accepted nodes only the lookup candidates held (rank -1)

    def scores(self) -> torch.Tensor:
        """The processed scores behind each committed token (B, K+1, V): a copy for a tree, so only
        gathered where they are kept (``output_scores``) or read (stopping criteria)."""
        return along_path(self.slot_scores, self.path_slots)


def along_path(values: torch.Tensor | None, path_slots: torch.Tensor | None) -> torch.Tensor | None:
    """``values`` (B, T, D) of a verify forward at the slots behind the committed tokens (B, K+1, D)."""
    if values is None or path_slots is None:
        return values
    return values.gather(1, path_slots[..., None].expand(-1, -1, values.shape[-1]))


def greedy_choice(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(-1)`` (the first maximum, like stock ``generate``'s greedy step), through ``max``:
    the same indices (documented tie rule; tested), ~3x faster on a CPU (one thread, 9 x 49,152 fp32:
    0.19 ms against 0.57)."""
    return scores.max(-1).indices


class ChainVerifier:
    """The verify block of a chain of K draft tokens: ``[last_token, d_1..d_K]``."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def verify_input(self, state, draft_tokens: torch.Tensor) -> VerifyInput:
        return VerifyInput(torch.cat([state.last_token[:, None], draft_tokens], dim=1))  # (B, K+1)

    def verify_width(self, k: int) -> int:
        return k + 1


class GreedyVerifier(ChainVerifier):
    """Draft: argmax of the draft's logits. Accept: while the target's processed argmax agrees."""

    def propose(self, state, draft: DraftLogits):
        return draft.target_ids(greedy_choice(draft.values)), None  # (B, K), no q needed

    def accept(self, state, draft_tokens, q, target_logits) -> Verdict:
        """chunk (B, K+1), length (B,), scores (B, K+1, V)."""
        scores = self.scorer.scores(state, draft_tokens, target_logits)  # (B, K+1, V)
        target_choice = greedy_choice(scores)  # (B, K+1)
        agree = draft_tokens == target_choice[:, :-1]  # (B, K)
        num_accepted = agree.long().cumprod(dim=1).sum(dim=1)  # (B,)
        # The accepted drafts equal the target's choices, so the chunk is the target's choices.
        return Verdict(target_choice, num_accepted + 1, scores)


def draft_q(scorer: Scorer, state, draft: DraftLogits) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's K proposal distributions with prefix-free processors: q over the draft's own columns
    (B, K, N) and on the target's vocabulary (B, K, V), 0 where the draft cannot propose.

    The processors act on values, not on token ids, so processing a subset head's N columns gives the q that
    processing its full-vocabulary logits (-inf outside the subset) would; top-p's sort and the draws then
    cost N/V of theirs (SmolLM2: 8,192 of 49,152 columns)."""
    q_columns = torch.softmax(scorer.unconditioned_scores(state, draft.values), -1)  # (B, K, N)
    return q_columns, draft.on_vocab(q_columns, 0.0)  # (B, K, N), (B, K, V)


class SamplingVerifier(ChainVerifier):
    """Draft: sample from q = softmax(processed draft logits). Accept: the speculative sampling rule."""

    def propose(self, state, draft: DraftLogits):
        """Sample d_1..d_K; returns (tokens (B, K), q (B, K, V))."""
        if self.scorer.prefix_free:
            q_columns, q = draft_q(self.scorer, state, draft)  # (B, K, N), (B, K, V)
            batch, k, columns = q_columns.shape
            drawn = torch.multinomial(q_columns.reshape(-1, columns), 1).reshape(batch, k)  # (B, K) columns
            return draft.target_ids(drawn), q
        draft_logits = draft.full()  # (B, K, V): q lives on the target's vocabulary
        batch, k, vocab = draft_logits.shape
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
        return Verdict(chunk, num_accepted + 1, scores)

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


#: Per-slot cumulative top-k accuracy that shapes sampled trees when the draft records none
#: (``pard_tree_topk_accuracy`` in its config, written by benchmarks/slot_topk.py --write-config): a
#: generic, fairly confident draft, ranks 1..4. A greedy tree without a measured table is dynamic instead.
DEFAULT_TOPK_ACCURACY = (
    (0.62, 0.73, 0.79, 0.81), (0.43, 0.58, 0.65, 0.70), (0.30, 0.44, 0.51, 0.55), (0.24, 0.38, 0.45, 0.50),
    (0.19, 0.32, 0.40, 0.45), (0.17, 0.29, 0.35, 0.42), (0.14, 0.25, 0.31, 0.36), (0.12, 0.22, 0.29, 0.35),
)


def dynamic_capacity(budget: int, k: int, width: int) -> int:
    """Nodes K levels of a dynamic tree can hold with ``width`` children per node (each level keeps at
    most ``budget``)."""
    return sum(min(budget, width**d) for d in range(1, k + 1))


def expansion_width(budget: int, k: int, vocab: int, preferred: int) -> int:
    """Children per expanded node of a dynamic tree: ``preferred``, or more when K levels of it cannot
    hold ``budget`` nodes."""
    width = min(preferred, vocab)
    while width < vocab and dynamic_capacity(budget, k, width) < budget:
        width += 1
    return width


#: The draft's path log-probabilities are scaled by this before they compete with the lookup chain's
#: estimated log acceptance (a calibration: engine tau of the shipped SmolLM2 draft on 12 held-out prompts,
#: 8 nodes, weights 0.3 / 0.5 / 0.7 / 1.0 / 1.5 -> 1.919 / 1.966 / 1.981 / 1.966 / 1.933; docs/results.md).
RANKED_DRAFT_WEIGHT = 0.7


class TreeVerifier:
    """Verify a token tree of N nodes per row (``tree.py``) built from the K slot distributions of one
    draft forward, then accept the longest agreeing root path: what both tree verifiers share (the verify
    layout, the fall-back to a chain step in rounds without drafting, the draft tree's static shape and the
    lookup options). ``GreedyTreeVerifier`` and ``SamplingTreeVerifier`` build and accept the trees.
    Logits processors must not depend on the prefix (each node has its own).

    ``lookup`` = L > 0 adds lookup candidates, up to L a source: the row's own text continued after the
    latest earlier occurrence of its last ``lookup_ngram``..1 tokens (prompt lookup), and ``store``'s
    continuation (``lookup.py``). Every row verifies N nodes."""

    chain_verifier: type = ChainVerifier

    def __init__(self, scorer: Scorer, *, budget: int, k: int, topk_accuracy=None, top_n: int = 4,
                 static_min_nodes: int = 1, lookup: int = 0, lookup_ngram: int = 3, store: LookupStore | None = None):
        self.scorer, self.budget, self.top_n = scorer, budget, top_n
        self.lookup, self.lookup_ngram, self.store = lookup, lookup_ngram, store
        self.chain = self.chain_verifier(scorer)
        accuracy = torch.tensor(topk_accuracy or DEFAULT_TOPK_ACCURACY, dtype=torch.float32)
        if accuracy.shape[0] < k:  # deeper than measured: repeat the last slot's accuracies
            accuracy = torch.cat([accuracy, accuracy[-1:].expand(k - accuracy.shape[0], -1)])
        measured = topk_accuracy is not None
        self.shapes = {n: self._shape(accuracy[:k], n, measured, static_min_nodes) for n in self._draft_nodes(k)}
        shape = self.shapes[budget]  # with lookup candidates the layout differs from row to row: built per round
        self.node_attention = shape_attention(shape) if not lookup and shape is not None else None  # (N, N)

    def _draft_nodes(self, k: int) -> set[int]:
        """The node counts of the draft's trees this verifier builds."""
        return {self.budget}

    def _shape(self, accuracy: torch.Tensor, nodes: int, measured: bool, static_min_nodes: int):
        """The static shape of a draft tree of ``nodes``, or None (dynamic)."""
        raise NotImplementedError

    @property
    def shape(self):
        """The static shape of the draft's tree, or None (dynamic)."""
        return self.shapes[self.budget]

    def verify_width(self, k: int) -> int:
        return 1 + self.budget

    def verify_input(self, state, proposal) -> VerifyInput:
        if not isinstance(proposal, TokenTree):  # drafting switched off: a plain step
            return self.chain.verify_input(state, proposal)
        layout = verify_layout(proposal, state.last_token, node_attention=self.node_attention)
        return VerifyInput(layout.input_ids, layout.position_offsets, layout.attention)

    def accept(self, state, proposal, q, target_logits) -> Verdict:
        if not isinstance(proposal, TokenTree):
            return self.chain.accept(state, proposal, q, target_logits)
        scores = self.scorer.unconditioned_scores(state, target_logits)  # (B, 1+N, V) each node its own prefix
        verdict = self._accept_tree(proposal, q, scores)
        lookup_only = proposal.rank.gather(1, verdict.path.clamp(min=0)) < 0  # (B, K) nodes only the lookup held
        return Verdict(verdict.chunk, verdict.length, scores, verdict.path_slots,
                       ((verdict.path >= 0) & lookup_only).sum(1))

    def _accept_tree(self, proposal: TokenTree, q, scores: torch.Tensor):
        raise NotImplementedError


class GreedyTreeVerifier(TreeVerifier):
    """Greedy trees: the static shape chosen from the draft's measured per-slot top-k accuracies
    (``pard_tree_topk_accuracy``) for budgets from ``pard_tree_static_min_nodes`` on (where
    benchmarks/slot_topk.py measured it to accept more); otherwise (no table, a smaller budget, or ranks
    that cannot hold N nodes in K levels) the EAGLE-2-style dynamic tree, the N nodes of highest draft
    path probability.

    With lookup candidates: one ranked tree (``tree.ranked_tree``, ``_ranked``): each source's chain, its
    candidates valued by how often the source is right for the n-gram length it matched
    (``lookup.lookup_chains``), competes with the draft's nodes, valued by ``RANKED_DRAFT_WEIGHT`` x their
    path log-probability, for all N; a chain that starts like the draft's nodes shares them. A sure draft
    keeps its nodes, a sure chain takes them."""

    chain_verifier = GreedyVerifier

    def _shape(self, accuracy: torch.Tensor, nodes: int, measured: bool, static_min_nodes: int):
        holds = nodes <= sum(accuracy.shape[1] ** d for d in range(1, accuracy.shape[0] + 1))
        return static_shape(accuracy, nodes) if measured and holds and nodes >= static_min_nodes else None

    def propose(self, state, draft: DraftLogits):
        if self.lookup:
            return self._ranked(state, draft), None
        if not self.scorer.processors and self._fits(draft.values.shape[1:]):
            return self._greedy_tree(draft.values, draft.target_ids), None
        scores = self.scorer.unconditioned_scores(state, draft.full())  # (B, K, V) prefix-free processors
        return self._greedy_tree(scores, lambda columns: columns), None

    def _ranked(self, state, draft: DraftLogits) -> TokenTree:
        """The round's ``tree.ranked_tree``: the N best of the draft's (dynamic) nodes and the lookup chains."""
        scores, target_ids = draft.values, draft.target_ids
        k, columns = scores.shape[1:]
        if self.scorer.processors or dynamic_capacity(self.budget, k, columns) < self.budget:
            scores, target_ids = self.scorer.unconditioned_scores(state, draft.full()), lambda ids: ids  # (B, K, V)
        top_n = expansion_width(self.budget, k, scores.shape[2], self.top_n)
        log_q, columns = slot_topk(scores, top_n)  # (B, K, n) each
        end = state.prompt_len + state.num_generated  # (B,) one past the newest committed token
        found = lookup_chains(state.tokens, state.pad, end, length=min(self.lookup, self.budget),
                              max_ngram=self.lookup_ngram, store=self.store)  # (B, C, L) candidates and values
        return ranked_tree(log_q, target_ids(columns), found.tokens, found.log_value, budget=self.budget,
                           draft_weight=RANKED_DRAFT_WEIGHT)

    def _fits(self, slots_columns: torch.Size) -> bool:
        """Whether K slots of C columns each hold the draft's tree (a small subset head may not)."""
        k, columns = slots_columns
        shape = self.shapes[self.budget]
        if shape is not None:
            return shape.max_rank < columns
        return dynamic_capacity(self.budget, k, columns) >= self.budget

    def _greedy_tree(self, scores: torch.Tensor, target_ids) -> TokenTree:
        """The static or dynamic tree over ``scores`` (B, K, C), tokens mapped by ``target_ids``."""
        shape = self.shapes[self.budget]
        if shape is not None:
            tree = static_tree(scores, shape)
        else:
            top_n = expansion_width(self.budget, scores.shape[1], scores.shape[2], self.top_n)
            tree = dynamic_tree(scores, budget=self.budget, top_n=top_n)
        return replace(tree, tokens=target_ids(tree.tokens))

    def _accept_tree(self, proposal: TokenTree, q, scores: torch.Tensor):
        known = None if self.node_attention is None else self.node_attention.to(scores.device).expand(
            proposal.batch_size, -1, -1)  # (B, N, N) the static shape's, built once
        return greedy_accept(proposal, greedy_choice(scores), ancestors=known)


class SamplingTreeVerifier(TreeVerifier):
    """Sampled trees: i.i.d. draws from q in a static shape (from the measured per-slot top-k accuracies, or
    a default table) and the multi-candidate rule (exact; see ``tree.sampling_accept``).

    With lookup candidates (they must be fixed before the coin flips, ``tree.sampling_accept``): a lookup
    branch (``tree.with_chain``) of the row's own text, or the store's where the own text matched less
    (``lookup.lookup_continuation``), in a share that follows the match: nothing -> none (the draft's tree
    keeps all N); the own text's longest n-gram -> ``min(K, N - 1)``; a shorter one, or the store's -> L."""

    chain_verifier = SamplingVerifier

    def __init__(self, scorer: Scorer, *, budget: int, k: int, lookup: int = 0, **options):
        self.lookup_long = max(min(k, budget - 1), lookup)  # the branch after a full-length match
        super().__init__(scorer, budget=budget, k=k, lookup=lookup, **options)

    def _draft_nodes(self, k: int) -> set[int]:
        """N, and beside a lookup branch N - L and N - (the long share)."""
        return {self.budget} | ({self.budget - self.lookup, self.budget - self.lookup_long} if self.lookup else set())

    def _shape(self, accuracy: torch.Tensor, nodes: int, measured: bool, static_min_nodes: int):
        return static_shape(accuracy, nodes)

    @property
    def shape(self):
        """The static shape of the draft's tree (N nodes; N - L beside a lookup branch)."""
        return self.shapes[self.budget - self.lookup]

    def propose(self, state, draft: DraftLogits):
        q_columns, q = draft_q(self.scorer, state, draft)  # (B, K, N), (B, K, V)
        trees = lambda counts: {n: self._sampled(q_columns, n, draft) for n in counts}  # noqa: E731
        return self._tree(state, trees), q

    def _sampled(self, q_columns: torch.Tensor, nodes: int, draft: DraftLogits) -> TokenTree:
        """The draft's tree of ``nodes`` drawn from q over its columns, its tokens as target ids."""
        tree = sampled_tree(q_columns, self.shapes[nodes])
        return replace(tree, tokens=draft.target_ids(tree.tokens))

    def _tree(self, state, build) -> TokenTree:
        """The round's tree: ``build(counts)`` gives the draft's trees of those node counts; plus the lookup
        branch, read off the committed text ``state.tokens``, in the share its match earns (class docstring)."""
        if not self.lookup:
            return build((self.budget,))[self.budget]
        end = state.prompt_len + state.num_generated  # (B,) one past the newest committed token
        found = lookup_continuation(state.tokens, state.pad, end, length=self.lookup_long, max_ngram=self.lookup_ngram,
                                    store=self.store)  # (B, L') candidates, the evidence per row
        trees = build(tuple(self.shapes))  # the draft's trees of N, N - L and N - L' nodes
        short = with_chain(trees[self.budget - self.lookup], found.tokens[:, : self.lookup])
        long = with_chain(trees[self.budget - self.lookup_long], found.tokens)
        tree = _select_rows(found.own_ngram >= self.lookup_ngram, long, short)  # the store never earns the long share
        return _select_rows((found.own_ngram == 0) & ~found.from_store, trees[self.budget], tree)

    def _accept_tree(self, proposal: TokenTree, q, scores: torch.Tensor):
        return sampling_accept(proposal, q, torch.softmax(scores, -1))


def _select_rows(rows: torch.Tensor, chosen: TokenTree, other: TokenTree) -> TokenTree:
    """Per row: ``chosen`` where ``rows`` (B,) is True, else ``other`` (two trees of the same N and K)."""
    pick = lambda a, b: torch.where(rows[:, None], a, b)  # noqa: E731
    return TokenTree(pick(chosen.tokens, other.tokens), pick(chosen.parents, other.parents),
                     pick(chosen.depth, other.depth), pick(chosen.rank, other.rank), chosen.k)
