"""Token trees from one PARD draft forward: build them, mask them, accept a path (greedy or sampling).

One PARD forward gives K draft distributions q_1..q_K (one per draft slot). Instead of keeping only
the top token of each (a chain), a *token tree* keeps several candidates per slot and the target
verifies all of them in one forward (Medusa, EAGLE-2, SpecInfer). Terms:

* **root** -- the row's newest committed token (``last_token``): slot 0 of the verify input, not a node.
* **node** i -- a candidate token at verify slot ``1 + i``; ``parents[i]`` is its parent node (-1 =
  the root) and ``depth[i]`` (1-based) the draft slot it is a candidate for, so its position is the
  root's position + ``depth[i]``. Nodes are in topological order (a parent before its children).
* **N** -- the node budget. Every row has exactly N nodes (rows may differ in shape, not in size), so
  the verify forward has the fixed width 1 + N and torch.compile sees one shape.
* **path** -- the accepted nodes, root side first; a = its length (0..K). The round commits a + 1
  tokens: the accepted ones and one token of the target's own (the *recovered* token after a
  rejection, or the *bonus* token after a leaf), as ``verification.py``'s chain verifiers do.

PARD's mask slots are not conditioned on the draft tokens before them: q_d is the same distribution
for every node at depth d, whatever its ancestors. That is why a whole tree costs no extra draft
forward, and also its price: an autoregressive draft (EAGLE) would give each child a distribution
conditioned on its own path, PARD gives every path the same K slot distributions. So the path
probability of a node is simply the product of q_d(token) along its path.

A tree shape is a set of *paths* of per-depth ranks (Medusa's notation): ``(0, 1)`` = the top-2
token of slot 2 under the top-1 token of slot 1. Example, paths ``(0,) (1,) (0,0) (0,1) (1,0)
(0,0,0)``, N = 6; ``tree_attention`` (node i sees node j iff j is i or an ancestor of i)::

    node  path      parent  depth        0  1  2  3  4  5
    0     (0,)      -1      1        0 [ 1  .  .  .  .  . ]
    1     (1,)      -1      1        1 [ .  1  .  .  .  . ]
    2     (0, 0)    0       2        2 [ 1  .  1  .  .  . ]
    3     (0, 1)    0       2        3 [ 1  .  .  1  .  . ]
    4     (1, 0)    1       2        4 [ .  1  .  .  1  . ]
    5     (0, 0, 0) 2       3        5 [ 1  .  1  .  .  1 ]

A *lookup branch* (``with_chain``) adds one more path under the root: the n-gram continuation of the
row's own text (prompt lookup, ``lookup.ngram_continuation``), which, unlike the draft's slots, is conditioned
on the tokens before it. It costs no forward, only verify width.

Builders: ``static_tree`` (a fixed ``TreeShape`` from ``static_shape``, chosen once per draft from its
measured per-slot top-k accuracies), ``dynamic_tree`` (EAGLE-2: the N nodes of highest path
probability, per row) -- both *deterministic* candidate sets, for greedy acceptance only -- and
``sampled_tree`` (every node drawn from q_depth, independently), the only kind ``sampling_accept``
takes: its multi-candidate rule is exact for i.i.d. sibling draws (see ``sampling_accept``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

__all__ = [
    "TokenTree", "TreeShape", "TreeAcceptance", "VerifyLayout", "static_shape", "static_tree", "dynamic_tree",
    "dynamic_tree_from_topk", "dynamic_trees", "dynamic_trees_from_topk", "shape_attention", "slot_topk",
    "sampled_tree", "with_chain", "ranked_tree", "tree_attention", "verify_layout", "greedy_accept", "sampling_accept", "residual_distribution",
]


@dataclass(frozen=True)
class TokenTree:
    """A flattened token tree per row (see the module docstring); every tensor is (B, N) long."""

    tokens: torch.Tensor  # (B, N) candidate token of each node
    parents: torch.Tensor  # (B, N) parent node index, -1 = the root
    depth: torch.Tensor  # (B, N) 1-based: node i is a candidate for draft slot depth[i]
    rank: torch.Tensor  # (B, N) top-k index of the token in q_depth (sampled trees: its draw among siblings)
    k: int  # draft slots the tree was built from: no node is deeper

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    def check(self) -> None:
        """Raise ``ValueError`` unless the tree is well formed (host syncs: for tests and debugging)."""
        shape = tuple(self.tokens.shape)
        if any(tuple(t.shape) != shape for t in (self.parents, self.depth, self.rank)):
            raise ValueError(f"TokenTree fields disagree in shape: tokens {shape}, "
                             f"parents {tuple(self.parents.shape)}, "
                             f"depth {tuple(self.depth.shape)}, rank {tuple(self.rank.shape)}.")
        index = torch.arange(shape[1], device=self.parents.device)  # (N,)
        if bool(((self.parents < -1) | (self.parents >= index)).any()):
            raise ValueError("Every parent must be -1 (the root) or an earlier node (topological order).")
        parent_depth = self.depth.gather(1, self.parents.clamp(min=0))  # (B, N)
        expected = torch.where(self.parents < 0, 1, parent_depth + 1)  # (B, N)
        if bool((self.depth != expected).any()) or bool((self.depth > self.k).any()):
            raise ValueError(f"Every depth must be its parent's + 1 (1 under the root) and at most K = {self.k}.")


# ----------------------------------------------------------------------------------------------
# Static shapes (Medusa)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeShape:
    """A fixed tree shape: N rank paths (prefix-closed), kept in canonical order (by depth, then path)."""

    paths: tuple[tuple[int, ...], ...]
    k: int  # draft slots: no path is longer

    def __post_init__(self):
        paths = tuple(sorted({tuple(int(r) for r in path) for path in self.paths}, key=lambda p: (len(p), p)))
        if len(paths) != len(self.paths) or not paths:
            raise ValueError("A tree shape needs at least one path and no path twice.")
        for path in paths:
            if not 1 <= len(path) <= self.k or min(path) < 0:
                raise ValueError(f"Path {path} must have 1..K={self.k} non-negative ranks.")
            if len(path) > 1 and path[:-1] not in paths:
                raise ValueError(f"Path {path} has no parent {path[:-1]} in the shape (paths must be prefix-closed).")
        object.__setattr__(self, "paths", paths)

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def max_rank(self) -> int:
        return max(path[-1] for path in self.paths)

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(parents, depth, rank)``, each (N,) long."""
        index = {path: i for i, path in enumerate(self.paths)}
        parents = [index[path[:-1]] if len(path) > 1 else -1 for path in self.paths]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return as_tensor(parents), as_tensor([len(p) for p in self.paths]), as_tensor([p[-1] for p in self.paths])


def static_shape(topk_accuracy: torch.Tensor, budget: int) -> TreeShape:
    """The N = ``budget`` paths of highest estimated acceptance probability (Medusa's tree choice).

    ``topk_accuracy`` (K, R): entry [i, r] = share of positions where the target's token is among the
    draft's top-(r+1) tokens at slot i+1 (cumulative, as ``benchmarks/slot_topk.py`` writes it). The
    rank-r share is its difference ``acc[i, r] - acc[i, r-1]``, and a path's estimated probability of
    being accepted is the product of the rank shares of its ranks, one per depth (slots treated as
    independent). A child never beats its parent, so growing the tree best-first (a heap of the
    children of the nodes chosen so far) gives the prefix-closed set with the largest sum, i.e. the
    largest estimated tau. Ties go to the lexicographically smaller path.
    """
    acc = topk_accuracy.detach().double().cpu()  # (K, R)
    k, r = acc.shape
    if budget < 1 or budget > sum(r**d for d in range(1, k + 1)):
        raise ValueError(f"A tree of depth <= {k} with {r} ranks per node has 1..{sum(r**d for d in range(1, k + 1))} "
                         f"nodes; got budget {budget}.")
    share = torch.diff(acc, dim=1, prepend=acc.new_zeros(k, 1)).clamp(min=0).tolist()  # (K, R) rank shares
    frontier = [(-share[0][j], (j,)) for j in range(r)]  # (-probability, path)
    heapq.heapify(frontier)
    chosen = []
    while len(chosen) < budget:
        negative, path = heapq.heappop(frontier)
        chosen.append(path)
        if len(path) < k:
            for j in range(r):
                heapq.heappush(frontier, (negative * share[len(path)][j], path + (j,)))
    return TreeShape(tuple(chosen), k)


def static_tree(draft_logits: torch.Tensor, shape: TreeShape) -> TokenTree:
    """The tree of ``shape`` filled with each slot's top-k tokens: node (d, r) = rank r of slot d."""
    batch, k, _ = draft_logits.shape  # (B, K, V)
    if shape.k > k:
        raise ValueError(f"The tree shape has depth up to {shape.k} but the draft gave only K = {k} slots.")
    parents, depth, rank = shape.tensors(draft_logits.device)  # (N,) each
    top = draft_logits.topk(shape.max_rank + 1, dim=-1).indices  # (B, K, R)
    tokens = top[:, depth - 1, rank]  # (B, N)
    return TokenTree(tokens, parents.expand(batch, -1), depth.expand(batch, -1), rank.expand(batch, -1), k)


# ----------------------------------------------------------------------------------------------
# Dynamic trees (EAGLE-2)
# ----------------------------------------------------------------------------------------------


def dynamic_trees(draft_logits: torch.Tensor, *, budgets: tuple[int, ...], top_n: int) -> dict[int, TokenTree]:
    """``dynamic_tree`` for several budgets at once (one top-k, one expansion at the largest budget): the
    best-b nodes of the largest budget's kept layers are the best-b tree, since every node of the best b
    is among the best b of its depth (``dynamic_tree``'s argument). The engine asks for one budget."""
    return dynamic_trees_from_topk(*slot_topk(draft_logits, top_n), budgets=budgets)


def slot_topk(draft_logits: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slot's ``top_n`` log-probabilities and their columns: (B, K, n) each, from logits (B, K, V)."""
    vocab = draft_logits.shape[-1]
    if not 1 <= top_n <= vocab:
        raise ValueError(f"top_n must be in 1..{vocab}, got {top_n}.")
    # log_softmax then topk: logsumexp alone is ~6x slower than log_softmax on CPU over a subset head's -inf tail
    return draft_logits.float().log_softmax(-1).topk(top_n, dim=-1)  # (B, K, n) each


def dynamic_tree(draft_logits: torch.Tensor, *, budget: int, top_n: int) -> TokenTree:
    """EAGLE-2's tree, per row: of all nodes (each node's children = the top-``top_n`` tokens of the
    next slot), the ``budget`` with the highest path probability prod_d q_d(token_d).

    Since every path sees the same slot distributions (module docstring), a path's probability is a
    sum of per-slot log-probabilities. A node in the overall best N is among the best N of its depth,
    so each depth keeps its best N and expands only those (a loop over K, batched over rows); then
    the best N of all kept nodes are taken. A child never beats its parent, and on ties the stable
    sort prefers the shallower node, so the chosen set always contains every chosen node's parent.
    """
    return dynamic_trees(draft_logits, budgets=(budget,), top_n=top_n)[budget]


def dynamic_tree_from_topk(log_q: torch.Tensor, candidates: torch.Tensor, *, budget: int) -> TokenTree:
    """``dynamic_tree`` given each slot's top-n already: ``log_q`` (B, K, n) their log-probabilities
    (descending), ``candidates`` (B, K, n) their token ids."""
    return dynamic_trees_from_topk(log_q, candidates, budgets=(budget,))[budget]


def dynamic_trees_from_topk(log_q: torch.Tensor, candidates: torch.Tensor, *,
                            budgets: tuple[int, ...]) -> dict[int, TokenTree]:
    """``dynamic_trees`` given each slot's top-n already (as ``dynamic_tree_from_topk``)."""
    layers = _kept_layers(log_q, candidates, max(budgets))  # (B, T) each
    order = layers[0].sort(dim=1, descending=True, stable=True).indices  # (B, T) ids, best first
    return {budget: _best_nodes(layers, order[:, :budget], log_q.shape[1]) for budget in budgets}


def _kept_layers(log_q: torch.Tensor, candidates: torch.Tensor, budget: int):
    """``_dynamic_layers``, refusing slots too narrow to hold ``budget`` nodes."""
    layers = _dynamic_layers(log_q, candidates, budget)  # (B, T) each
    if layers[0].shape[1] < budget:
        raise ValueError(f"K = {log_q.shape[1]} slots with top_n = {log_q.shape[2]} give only {layers[0].shape[1]} "
                         f"nodes, fewer than budget {budget}.")
    return layers


def _best_nodes(layers, best: torch.Tensor, k: int) -> TokenTree:
    """The tree of the kept nodes ``best`` (B, N) (ids into ``_dynamic_layers``' columns)."""
    score, parent, depth, rank, tokens = layers  # (B, T) each
    batch, budget = best.shape
    chosen = best.sort(dim=1).values  # (B, N) ids are depth-major, parent < child: topological order
    node_of = torch.full_like(score, -1, dtype=torch.long)  # (B, T) id -> node index (-1: not chosen)
    node_of.scatter_(1, chosen, torch.arange(budget, device=score.device).expand(batch, -1))
    parent_id = parent.gather(1, chosen)  # (B, N)
    parents = torch.where(parent_id < 0, -1, node_of.gather(1, parent_id.clamp(min=0)))  # (B, N)
    pick = lambda values: values.gather(1, chosen)  # noqa: E731
    return TokenTree(pick(tokens), parents, pick(depth), pick(rank), k)


def _dynamic_layers(log_q: torch.Tensor, candidates: torch.Tensor, budget: int):
    """Kept nodes of every depth, depth-major: (path log-prob, parent id or -1, depth, rank, token), each (B, T)."""
    batch, k, n = log_q.shape  # (B, K, n)
    layer_score = log_q.new_zeros(batch, 1)  # (B, 1) the root: log 1
    layer_id = torch.full((batch, 1), -1, dtype=torch.long, device=log_q.device)  # (B, 1) the root's id
    columns = [], [], [], [], []
    for d in range(k):
        children = (layer_score[:, :, None] + log_q[:, d, None, :]).flatten(1)  # (B, M*n) parent-major
        keep = min(budget, children.shape[1])
        score, order = children.sort(dim=1, descending=True, stable=True)  # (B, M*n)
        score, order = score[:, :keep], order[:, :keep]  # (B, M')
        rank = order % n  # (B, M')
        values = (score, layer_id.gather(1, order // n), torch.full_like(rank, d + 1), rank,
                  candidates[:, d].gather(1, rank))
        for column, value in zip(columns, values):
            column.append(value)
        offset = sum(c.shape[1] for c in columns[0][:-1])
        layer_score, layer_id = score, offset + torch.arange(keep, device=log_q.device).expand(batch, -1)
    return tuple(torch.cat(column, dim=1) for column in columns)


# ----------------------------------------------------------------------------------------------
# Sampled trees (for the lossless multi-candidate rule)
# ----------------------------------------------------------------------------------------------


def sampled_tree(q: torch.Tensor, shape: TreeShape, *, generator: torch.Generator | None = None) -> TokenTree:
    """The tree of ``shape`` with every node's token drawn from q_depth, independently of every other
    node: the children of a node are i.i.d. draws *with replacement* (two siblings may hold the same
    token; each keeps its own subtree). ``rank`` is then the draw's index among its siblings.

    ``q`` (B, K, V): the distributions the tokens are drawn from (the draft's processed probabilities);
    pass the same ``q`` to ``sampling_accept``.
    """
    batch, k, vocab = q.shape  # (B, K, V)
    if shape.k > k:
        raise ValueError(f"The tree shape has depth up to {shape.k} but q has only K = {k} slots.")
    parents, depth, rank = shape.tensors(q.device)  # (N,) each
    node_q = q[:, depth - 1].reshape(-1, vocab)  # (B*N, V)
    tokens = torch.multinomial(node_q, 1, generator=generator).reshape(batch, -1)  # (B, N)
    return TokenTree(tokens, parents.expand(batch, -1), depth.expand(batch, -1), rank.expand(batch, -1), k)


# ----------------------------------------------------------------------------------------------
# A lookup branch: fixed candidates under the root (``lookup.py`` finds them)
# ----------------------------------------------------------------------------------------------


def with_chain(tree: TokenTree, tokens: torch.Tensor) -> TokenTree:
    """``tree`` plus one more branch under the root: a chain of ``tokens`` (B, L), L <= K, appended after
    the tree's nodes (topological order kept). Its nodes get rank -1: fixed candidates, not draws from
    the draft's q (``sampling_accept`` gives them a one-hot q)."""
    batch, length = tokens.shape  # (B, L)
    if not 1 <= length <= tree.k:
        raise ValueError(f"A chain under the root has 1..K = {tree.k} nodes, got {length}.")
    n = tree.num_nodes
    steps = torch.arange(length, device=tokens.device)  # (L,)
    parents = torch.where(steps == 0, -1, n + steps - 1).expand(batch, -1)  # (B, L)
    cat = lambda old, new: torch.cat([old, new.to(old.dtype)], dim=1)  # noqa: E731
    return TokenTree(cat(tree.tokens, tokens), cat(tree.parents, parents), cat(tree.depth, (steps + 1).expand(batch, -1)),
                     cat(tree.rank, torch.full_like(tokens, -1)), tree.k)


def ranked_tree(log_q: torch.Tensor, candidates: torch.Tensor, lookup_tokens: torch.Tensor,
                lookup_log_value: torch.Tensor, *, budget: int, draft_weight: float = 1.0) -> TokenTree:
    """One tree over every source, per row: the ``budget`` nodes of highest estimated acceptance among the
    draft's nodes (EAGLE-2: ``draft_weight`` x the path log-probability, ``dynamic_tree``) and C lookup
    chains (``lookup_tokens`` (B, L) or (B, C, L); their nodes' estimated log acceptance
    ``lookup_log_value``, the same shape, non-increasing along each chain; -inf: no candidate).

    All sources share one trie: where a chain's first j tokens are already a path (of the draft's kept
    nodes, or of an earlier chain), those nodes hold the chain's estimate when it is higher (the same
    token, two pieces of evidence), and the rest of the chain hangs under the last shared one. Every node's
    value is at most its parent's (each source's own values fall along a path, and a shared node takes the
    larger), and ids put parents first, so the N best (stable sort) always hold every chosen node's
    parent. A lookup-only node gets rank -1. ``log_q``, ``candidates``: each slot's top-n
    (``dynamic_tree_from_topk``'s).
    """
    batch, k, _ = log_q.shape  # (B, K, n)
    chains = lookup_tokens.reshape(batch, -1, lookup_tokens.shape[-1])  # (B, C, L)
    values = lookup_log_value.reshape(chains.shape)  # (B, C, L)
    if not 1 <= chains.shape[2] <= k:
        raise ValueError(f"A lookup chain has 1..K = {k} nodes, got {chains.shape[2]}.")
    score, parent, depth, rank, tokens = _kept_layers(log_q, candidates, budget)  # (B, T) each
    layers = (draft_weight * score, parent, depth, rank, tokens)
    for c in range(chains.shape[1]):
        layers = _merge_chain(layers, chains[:, c], values[:, c])
    best = layers[0].sort(dim=1, descending=True, stable=True).indices[:, :budget]  # (B, N)
    return _best_nodes(layers, best, k)


def _merge_chain(layers, chain: torch.Tensor, chain_value: torch.Tensor):
    """``layers`` (value, parent, depth, rank, token; (B, T) each) with one lookup chain (B, L) merged in:
    shared nodes take the larger value; the chain's other nodes are appended (T .. T+L-1). A shared node's
    own entry stays as a never-chosen duplicate (-inf, after every draft node) to keep ids simple."""
    value, parent, depth, rank, tokens = layers
    batch, length = chain.shape
    shared = _shared_prefix(parent, depth, tokens, chain)  # (B, L) node id, -1 where not shared
    value = value.scatter_reduce(1, shared.clamp(min=0), torch.where(shared >= 0, chain_value, -torch.inf), "amax")
    steps = torch.arange(length, device=chain.device)  # (L,)
    previous = torch.cat([shared.new_full((batch, 1), -1), shared[:, :-1]], dim=1)  # (B, L) parent if shared
    own_parent = torch.where(steps == 0, -1, value.shape[1] + steps - 1).expand(batch, -1)  # (B, L)
    appended = (torch.where(shared >= 0, -torch.inf, chain_value), torch.where(previous >= 0, previous, own_parent),
                (steps + 1).expand(batch, -1), torch.full_like(chain, -1), chain)
    return tuple(torch.cat([a, b.to(a.dtype)], dim=1) for a, b in zip((value, parent, depth, rank, tokens), appended))


def _shared_prefix(parent: torch.Tensor, depth: torch.Tensor, tokens: torch.Tensor,
                   chain: torch.Tensor) -> torch.Tensor:
    """(B, L): the id of the node that is the chain's first j+1 tokens (the lowest id: a duplicate comes after
    its original), or -1 from the first token no node holds.

    A node is on the chain when its token and every ancestor's are the chain's at their depths: its own
    match, ANDed up its root path by pointer jumping (log2 L rounds of "and my ancestor's; skip to its
    ancestor"), with no loop over the chain."""
    length = chain.shape[1]
    within = depth <= length  # (B, T)
    on_chain = within & (tokens == chain.gather(1, (depth - 1).clamp(0, length - 1)))  # (B, T) its own token
    ancestor = parent  # (B, T) -1: the root
    for _ in range(max(length - 1, 0).bit_length()):
        up = ancestor.clamp(min=0)
        on_chain = on_chain & ((ancestor < 0) | on_chain.gather(1, up))  # (B, T)
        ancestor = torch.where(ancestor < 0, -1, ancestor.gather(1, up))  # (B, T) twice as far up
    level = torch.arange(1, length + 1, device=chain.device)  # (L,)
    hit = on_chain[:, None, :] & (depth[:, None, :] == level[None, :, None])  # (B, L, T)
    return torch.where(hit.any(2), hit.long().argmax(2), -1)  # (B, L)


# ----------------------------------------------------------------------------------------------
# The verify forward's layout
# ----------------------------------------------------------------------------------------------


def tree_attention(tree: TokenTree) -> torch.Tensor:
    """(B, N, N) bool: node i sees node j iff j is i or an ancestor of i (literal example: module docstring).

    Built by K-1 rounds of "my row = me | my parent's row", which completes every chain of depth <= K.
    """
    batch, n = tree.tokens.shape
    eye = torch.eye(n, dtype=torch.bool, device=tree.tokens.device).expand(batch, n, n)  # (B, N, N)
    parent_row = (tree.parents + 1)[:, :, None].expand(batch, n, n)  # (B, N, N) row of the parent in `padded`
    seen = eye
    for _ in range(tree.k - 1):
        padded = torch.cat([seen.new_zeros(batch, 1, n), seen], dim=1)  # (B, 1+N, N): row 0 = the root, no node
        seen = eye | padded.gather(1, parent_row)  # (B, N, N)
    return seen


def shape_attention(shape: TreeShape) -> torch.Tensor:
    """``tree_attention`` of a static shape (N, N): the same every round, so build it once."""
    parents, depth, rank = shape.tensors()  # (N,) each
    tokens = torch.zeros_like(parents)[None]  # (1, N) the tokens play no part in the mask
    return tree_attention(TokenTree(tokens, parents[None], depth[None], rank[None], shape.k))[0]


@dataclass(frozen=True)
class VerifyLayout:
    """The target's verify input over ``[root, node 0 .. node N-1]`` (width 1 + N)."""

    input_ids: torch.Tensor  # (B, 1+N) the root token, then the node tokens
    position_offsets: torch.Tensor  # (B, 1+N) position - the root's position: 0, then each node's depth
    attention: torch.Tensor  # (B, 1+N, 1+N) bool: everyone sees the root; nodes see their ancestors and themselves


def verify_layout(tree: TokenTree, last_token: torch.Tensor, *, node_attention: torch.Tensor | None = None) -> VerifyLayout:
    """The verify block of a round; ``last_token`` (B,) is the root. The cache part (committed keys,
    visible to every query of the block) is the cache's own mask; combine the two. ``node_attention``
    (N, N): ``shape_attention`` of the tree's static shape, when it has one (saves K-1 gathers)."""
    batch, n = tree.tokens.shape
    input_ids = torch.cat([last_token[:, None], tree.tokens], dim=1)  # (B, 1+N)
    offsets = torch.cat([torch.zeros_like(tree.depth[:, :1]), tree.depth], dim=1)  # (B, 1+N)
    root_row = torch.zeros(batch, 1, n, dtype=torch.bool, device=tree.tokens.device)  # (B, 1, N) the root sees no node
    seen = tree_attention(tree) if node_attention is None else node_attention.to(tree.tokens.device).expand(batch, n, n)
    nodes = torch.cat([root_row, seen], dim=1)  # (B, 1+N, N)
    attention = torch.cat([nodes.new_ones(batch, 1 + n, 1), nodes], dim=2)  # (B, 1+N, 1+N)
    return VerifyLayout(input_ids, offsets, attention)


# ----------------------------------------------------------------------------------------------
# Acceptance
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeAcceptance:
    """One round's outcome per row. Entries of ``chunk`` past ``length`` are unspecified.

    ``path_slots[b, j]`` (j <= a) is the verify-block slot (0 = root, 1 + i = node i) whose KV belongs
    at committed position root + j, and whose logits / features produced ``chunk[b, j]``: move the KV
    of slot ``path_slots[j]`` to slot j, gather scores and PARD-2 features with it. Past a it is
    ``min(j, N)``: nothing moves.
    """

    path: torch.Tensor  # (B, K) accepted node indices, root side first, -1 padded
    num_accepted: torch.Tensor  # (B,) a = accepted nodes, 0..K
    chunk: torch.Tensor  # (B, K+1) the a accepted tokens, then the target's token
    length: torch.Tensor  # (B,) a + 1
    path_slots: torch.Tensor  # (B, K+1) verify-block slot behind each committed token


def _path_to(tree: TokenTree, leaf: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The root path (B, K) to ``leaf`` (B,) (-1: the root itself), -1 padded, and its length (B,);
    ``seen`` (B, N, N) is ``tree_attention(tree)``: a node's row holds its root path."""
    batch, n, k = leaf.shape[0], tree.num_nodes, tree.k
    members = seen.gather(1, leaf.clamp(min=0)[:, None, None].expand(-1, 1, n))[:, 0] & (leaf >= 0)[:, None]  # (B, N)
    path = leaf.new_full((batch, k + 1), -1)  # (B, K+1): column K collects the nodes off the path
    index = torch.arange(n, device=leaf.device).expand(batch, -1)  # (B, N)
    path.scatter_(1, torch.where(members, tree.depth - 1, k), index)  # one node per depth along a path
    return path[:, :k], members.sum(1)


def _path_slots(path: torch.Tensor, num_accepted: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(B, K+1): 0 (the root), then 1 + each accepted node; ``min(j, N)`` past a."""
    cols = torch.arange(path.shape[1] + 1, device=path.device)  # (K+1,)
    along = torch.cat([torch.zeros_like(path[:, :1]), path + 1], dim=1)  # (B, K+1)
    return torch.where(cols <= num_accepted[:, None], along, cols.clamp(max=num_nodes))


def greedy_accept(tree: TokenTree, target_choice: torch.Tensor, *, ancestors: torch.Tensor | None = None) -> TreeAcceptance:
    """The longest root path whose every node token equals the target's choice at its parent.

    ``target_choice`` (B, 1+N): the target's processed argmax at the root (index 0) and at every node
    (index 1 + i), from one verify forward. Node i is *correct* if ``tokens[i] == target_choice[parent
    + 1]``; the path ends at the deepest node whose ancestors are all correct (lowest index on ties,
    which only duplicate siblings can cause). ``chunk`` = the path's tokens + the target's choice at
    its last node (at the root if a = 0): the same contract as ``GreedyVerifier.accept``, and on a
    chain-shaped tree (N = K, node i = d_{i+1}) the very same chunk and length. ``ancestors``: the
    tree's ``tree_attention`` when the caller has it already (a static shape's ``shape_attention``).
    """
    batch, n = tree.tokens.shape
    correct = tree.tokens == target_choice.gather(1, tree.parents + 1)  # (B, N)
    seen = tree_attention(tree) if ancestors is None else ancestors  # (B, N, N): node i's row = its root path
    on_path = ~(seen & ~correct[:, None, :]).any(-1)  # (B, N) every node of its root path is correct
    index = torch.arange(n, device=tree.tokens.device)  # (N,)
    key = torch.where(on_path, tree.depth * (n + 1) + (n - index), 0)  # (B, N) deepest, then lowest index
    leaf = torch.where(key.amax(1) > 0, key.argmax(1), -1)  # (B,)
    path, num_accepted = _path_to(tree, leaf, seen)  # (B, K), (B,)
    path_slots = _path_slots(path, num_accepted, n)  # (B, K+1)
    chunk = target_choice.gather(1, path_slots)  # (B, K+1): accepted tokens equal the target's choices
    return TreeAcceptance(path, num_accepted, chunk, num_accepted + 1, path_slots)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) (B, V): what a rejection leaves of p. Where the mass is 0 (p == q, so a
    rejection had probability 0) p itself is kept."""
    residual = (p - q).clamp(min=0)  # (B, V)
    mass = residual.sum(-1, keepdim=True)  # (B, 1)
    return torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)


def sampling_accept(tree: TokenTree, q: torch.Tensor, target_probs: torch.Tensor, *,
                    generator: torch.Generator | None = None) -> TreeAcceptance:
    """Lossless multi-candidate speculative sampling over a ``sampled_tree`` (SpecInfer's rule).

    ``q`` (B, K, V): the distributions the nodes were drawn from (q[:, d-1] for depth d);
    ``target_probs`` (B, 1+N, V): the target's processed distribution p after the root and every node.
    From the root down: with p the target's distribution at the current node, try its children in
    node order: accept child c with probability min(1, p(c) / q(c)) and move to it (p <- the target's
    distribution at c); on a rejection p <- norm(max(0, p - q)) and try the next sibling. When every
    child is rejected (or the node is a leaf) draw the last token from the current p.

    Exact when siblings are i.i.d. draws from q (``sampled_tree``): one step turns (target p, a fresh
    draw from q) into "accept" with mass min(p, q) and a rejection with mass sum max(0, p - q), after
    which the remaining siblings, by induction, produce exactly norm(max(0, p - q)); the sum is p. An
    accepted child's own children are independent of the decisions that chose it, so the same holds
    one level down: every committed token follows the target. The argument needs each sibling to be
    drawn independently of the others and of the coin flips, from a q it knows, not the same q for all:
    a fixed candidate (rank -1, ``with_chain``'s lookup branch, chosen from the committed text alone)
    is a draw from a one-hot q, accepted with probability p(c), and a rejection removes c from p. Not
    exact for top-k trees (their siblings depend on each other): use ``greedy_accept`` with those.
    """
    batch, n = tree.tokens.shape
    rows = torch.arange(batch, device=q.device)  # (B,)
    p = target_probs[:, 0].float()  # (B, V) the target's distribution at the current node, as reduced so far
    cur = torch.full((batch,), -1, dtype=torch.long, device=q.device)  # (B,) current node, -1 = the root
    for j in range(n):  # topological order: every child of `cur` comes after it, siblings in node order
        token = tree.tokens[:, j]  # (B,)
        tried = tree.parents[:, j] == cur  # (B,) node j is the next untried child of the current node
        q_j = q[rows, tree.depth[:, j] - 1].float()  # (B, V) the distribution node j was drawn from
        fixed = (tree.rank[:, j] < 0)[:, None]  # (B, 1) a fixed candidate (lookup branch): q is one-hot
        q_j = torch.where(fixed, torch.nn.functional.one_hot(token, q_j.shape[-1]).float(), q_j)  # (B, V)
        u = torch.rand(batch, generator=generator, device=q.device)  # (B,)
        accept = tried & (u * q_j[rows, token] < p[rows, token])  # u < p(c) / q(c)
        p = torch.where((tried & ~accept)[:, None], residual_distribution(p, q_j), p)
        p = torch.where(accept[:, None], target_probs[:, 1 + j].float(), p)
        cur = torch.where(accept, j, cur)
    path, num_accepted = _path_to(tree, cur, tree_attention(tree))  # (B, K), (B,)
    last = torch.multinomial(p, 1, generator=generator)  # (B, 1) recovered or bonus token from the final p
    chunk = torch.where(path >= 0, tree.tokens.gather(1, path.clamp(min=0)), 0)  # (B, K)
    chunk = torch.cat([chunk, torch.zeros_like(last)], dim=1).scatter(1, num_accepted[:, None], last)  # (B, K+1)
    return TreeAcceptance(path, num_accepted, chunk, num_accepted + 1, _path_slots(path, num_accepted, n))
