"""Token trees (``transformers_pard.tree``): literal masks, builders against slow references, greedy
acceptance against a slow reference and the chain verifier, and chi-square tests of the sampling rule."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from transformers_pard import tree as tree_module
from transformers_pard.scoring import Scorer
from transformers_pard.tree import (
    TokenTree, TreeShape, dynamic_tree, dynamic_tree_from_topk, greedy_accept, ranked_tree, sampled_tree, sampling_accept, shape_attention,
    static_shape, static_tree, tree_attention, verify_layout, with_chain,
)
from transformers_pard.drafting import DraftLogits
from transformers_pard.verification import GreedyVerifier

# The module docstring's example.
DOC_PATHS = ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))


def literal(rows: str) -> torch.Tensor:
    """A bool matrix written as rows of '1' / '.'."""
    return torch.tensor([[c == "1" for c in row.split()] for row in rows.strip().splitlines()])


def make_tree(tokens, parents, k) -> TokenTree:
    """A TokenTree from literal tokens / parents (B, N); depth and rank derived (rank = sibling index)."""
    tokens, parents = torch.tensor(tokens), torch.tensor(parents)
    depth, rank = torch.zeros_like(parents), torch.zeros_like(parents)
    for b, i in itertools.product(range(parents.shape[0]), range(parents.shape[1])):
        p = int(parents[b, i])
        depth[b, i] = 1 if p < 0 else depth[b, p] + 1
        rank[b, i] = int((parents[b, :i] == p).sum())
    return TokenTree(tokens, parents, depth, rank, k)


# ----------------------------------------------------------------------------------------------
# Literal trees and masks
# ----------------------------------------------------------------------------------------------


def test_shape_tensors_and_attention_of_the_docstring_example():
    shape = TreeShape(DOC_PATHS[::-1], k=3)  # any order in, canonical order out
    assert shape.paths == DOC_PATHS
    parents, depth, rank = shape.tensors()
    assert parents.tolist() == [-1, -1, 0, 0, 1, 2]
    assert depth.tolist() == [1, 1, 2, 2, 2, 3]
    assert rank.tolist() == [0, 1, 0, 1, 0, 0]
    tree = static_tree(torch.randn(1, 3, 7), shape)
    assert torch.equal(tree_attention(tree)[0], literal("""
        1 . . . . .
        . 1 . . . .
        1 . 1 . . .
        1 . . 1 . .
        . 1 . . 1 .
        1 . 1 . . 1
    """))


def test_attention_per_row_trees_differ():
    # Row 0: a chain of 4. Row 1: root with two children, each with one child.
    tree = make_tree([[5, 6, 7, 8], [5, 6, 7, 8]], [[-1, 0, 1, 2], [-1, -1, 0, 1]], k=4)
    tree.check()
    attention = tree_attention(tree)
    assert torch.equal(attention[0], literal("""
        1 . . .
        1 1 . .
        1 1 1 .
        1 1 1 1
    """))
    assert torch.equal(attention[1], literal("""
        1 . . .
        . 1 . .
        1 . 1 .
        . 1 . 1
    """))


def test_verify_layout_adds_the_root():
    tree = make_tree([[11, 12, 13]], [[-1, -1, 0]], k=2)
    layout = verify_layout(tree, torch.tensor([10]))
    assert layout.input_ids.tolist() == [[10, 11, 12, 13]]
    assert layout.position_offsets.tolist() == [[0, 1, 1, 2]]
    assert torch.equal(layout.attention[0], literal("""
        1 . . .
        1 1 . .
        1 . 1 .
        1 1 . 1
    """))


def test_shape_attention_is_the_static_trees_attention():
    shape = TreeShape(DOC_PATHS, k=3)
    tree = static_tree(torch.randn(2, 3, 7), shape)
    assert torch.equal(shape_attention(shape), tree_attention(tree)[0])
    last = torch.tensor([4, 5])
    given, built = verify_layout(tree, last, node_attention=shape_attention(shape)), verify_layout(tree, last)
    assert torch.equal(given.attention, built.attention) and torch.equal(given.input_ids, built.input_ids)


def test_a_measured_table_makes_the_greedy_tree_static():
    from transformers_pard.scoring import Scorer
    from transformers_pard.verification import GreedyTreeVerifier

    table = [[0.3, 0.5, 0.6], [0.2, 0.3, 0.4], [0.1, 0.2, 0.25]]
    logits = torch.randn(2, 3, 11)
    static = GreedyTreeVerifier(Scorer(None), budget=5, k=3, topk_accuracy=table)
    assert static.shape == static_shape(torch.tensor(table), 5)
    tree, q = static.propose(None, DraftLogits(logits, None, 11))
    expected = static_tree(logits, static.shape)
    assert q is None and torch.equal(tree.tokens, expected.tokens) and torch.equal(tree.parents, expected.parents)
    dynamic = GreedyTreeVerifier(Scorer(None), budget=5, k=3)
    too_small = GreedyTreeVerifier(Scorer(None), budget=5, k=1, topk_accuracy=table)  # 3 ranks, 1 level
    below = GreedyTreeVerifier(Scorer(None), budget=5, k=3, topk_accuracy=table, static_min_nodes=6)
    assert dynamic.shape is None and too_small.shape is None and below.shape is None
    assert torch.equal(dynamic.propose(None, DraftLogits(logits, None, 11))[0].tokens,
                       dynamic_tree(logits, budget=5, top_n=4).tokens)


@pytest.mark.parametrize("table", [None, [[0.3, 0.5, 0.6], [0.2, 0.3, 0.4], [0.1, 0.2, 0.25]]])
def test_a_subset_heads_tree_is_built_on_its_columns_and_equals_the_full_vocabulary_tree(table):
    """Greedy trees from a subset head's N columns, mapped to target ids, are the trees of the scattered
    (B, K, V) logits."""
    from transformers_pard.scoring import Scorer
    from transformers_pard.verification import GreedyTreeVerifier

    torch.manual_seed(0)
    ids = torch.randperm(50)[:12]  # (N,) subset columns -> target ids
    draft = DraftLogits(torch.randn(2, 3, 12), ids, 50)
    verifier = GreedyTreeVerifier(Scorer(None), budget=5, k=3, topk_accuracy=table)
    on_columns, _ = verifier.propose(None, draft)
    on_full = verifier._greedy_tree(draft.full(), lambda columns: columns)
    assert torch.equal(on_columns.tokens, on_full.tokens) and torch.equal(on_columns.parents, on_full.parents)
    assert torch.isin(on_columns.tokens, ids).all()


@pytest.mark.parametrize("parents, message", [([[-1, 1]], "topological"), ([[0, -1]], "topological")])
def test_check_rejects_bad_parents(parents, message):
    tree = TokenTree(torch.zeros(1, 2, dtype=torch.long), torch.tensor(parents), torch.ones(1, 2, dtype=torch.long),
                     torch.zeros(1, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=message):
        tree.check()


def test_check_rejects_bad_depth():
    tree = TokenTree(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]), torch.tensor([[1, 1]]),
                     torch.zeros(1, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="depth"):
        tree.check()


def test_shape_must_be_prefix_closed():
    with pytest.raises(ValueError, match="prefix-closed"):
        TreeShape(((0,), (1, 0)), k=2)
    with pytest.raises(ValueError, match="1..K"):
        TreeShape(((0,), (0, 0), (0, 0, 0)), k=2)


# ----------------------------------------------------------------------------------------------
# Static shapes
# ----------------------------------------------------------------------------------------------


def path_probability(path, share) -> float:
    return math.prod(share[d][r] for d, r in enumerate(path))


def cumulative(share: torch.Tensor) -> torch.Tensor:
    return share.cumsum(dim=1)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), r=st.integers(1, 3), data=st.data())
def test_static_shape_is_the_best_prefix_closed_set(seed, k, r, data):
    """Best-first growth = the brute-force maximum of the summed path probabilities."""
    generator = torch.Generator().manual_seed(seed)
    share = torch.rand(k, r, generator=generator, dtype=torch.float64)
    share = share / share.sum(1, keepdim=True) * torch.rand(k, 1, generator=generator, dtype=torch.float64)
    every = [p for d in range(1, k + 1) for p in itertools.product(range(r), repeat=d)]
    budget = data.draw(st.integers(1, min(len(every), 6)))
    shape = static_shape(cumulative(share), budget)
    assert shape.num_nodes == budget and shape.k == k
    closed = [set(c) for c in itertools.combinations(every, budget) if all(len(p) == 1 or p[:-1] in c for p in c)]
    best = max(sum(path_probability(p, share.tolist()) for p in c) for c in closed)
    assert sum(path_probability(p, share.tolist()) for p in shape.paths) == pytest.approx(best, rel=1e-12)


def test_static_shape_follows_the_accuracies():
    # Slot 1 almost always right at top-1: the budget goes into a chain. A flat slot 1: into width.
    sharp = torch.tensor([[0.9, 0.95, 0.97], [0.9, 0.95, 0.97], [0.9, 0.95, 0.97]])
    assert static_shape(sharp, 3).paths == ((0,), (0, 0), (0, 0, 0))
    flat = torch.tensor([[0.3, 0.6, 0.9], [0.05, 0.1, 0.15], [0.05, 0.1, 0.15]])
    assert static_shape(flat, 3).paths == ((0,), (1,), (2,))
    issue = torch.tensor([[0.29, 0.36, 0.42, 0.44, 0.46], [0.18, 0.24, 0.28, 0.31, 0.33]])
    assert static_shape(issue, 4).paths == ((0,), (1,), (2,), (0, 0))  # 0.29, 0.07, 0.06, then 0.29*0.18


def test_static_shape_budget_bounds():
    with pytest.raises(ValueError, match="budget"):
        static_shape(torch.full((2, 2), 0.5), 7)  # at most 2 + 4 nodes


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), k=st.integers(1, 4), budget=st.integers(1, 12))
def test_static_tree_holds_each_slots_top_k(seed, batch, k, budget):
    generator = torch.Generator().manual_seed(seed)
    accuracy = torch.rand(k, 3, generator=generator).sort(dim=1).values
    shape = static_shape(accuracy, min(budget, sum(3**d for d in range(1, k + 1))))
    logits = torch.randn(batch, k, 11, generator=generator)
    tree = static_tree(logits, shape)
    tree.check()
    assert tree.tokens.shape == (batch, shape.num_nodes)
    top = logits.topk(3, dim=-1).indices  # (B, K, 3)
    for i, path in enumerate(shape.paths):
        assert tree.tokens[:, i].tolist() == top[:, len(path) - 1, path[-1]].tolist()


# ----------------------------------------------------------------------------------------------
# Dynamic trees
# ----------------------------------------------------------------------------------------------


def rank_paths(tree: TokenTree, b: int) -> dict[tuple[int, ...], list[int]]:
    """Row b as {rank path: token path}, read off parents / rank / tokens."""
    out = {}
    for i in range(tree.num_nodes):
        ranks, tokens, node = [], [], i
        while node >= 0:
            ranks.append(int(tree.rank[b, node]))
            tokens.append(int(tree.tokens[b, node]))
            node = int(tree.parents[b, node])
        out[tuple(ranks[::-1])] = tokens[::-1]
    return out


def dynamic_reference(logits: torch.Tensor, budget: int, top_n: int, b: int) -> dict[tuple[int, ...], list[int]]:
    """Every rank path up to depth K, scored by its summed log-probability; the best ``budget``."""
    log_q, tokens = logits[b].log_softmax(-1).topk(top_n, dim=-1)  # (K, n)
    k = logits.shape[1]
    every = [p for d in range(1, k + 1) for p in itertools.product(range(top_n), repeat=d)]
    score = {p: sum(float(log_q[d, r]) for d, r in enumerate(p)) for p in every}
    best = sorted(every, key=lambda p: -score[p])[:budget]
    return {p: [int(tokens[d, r]) for d, r in enumerate(p)] for p in best}


@settings(max_examples=60)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), k=st.integers(1, 4), top_n=st.integers(1, 3),
       data=st.data())
def test_dynamic_tree_equals_the_slow_reference(seed, batch, k, top_n, data):
    budget = data.draw(st.integers(1, min(sum(top_n**d for d in range(1, k + 1)), 20)))
    logits = 3 * torch.randn(batch, k, 9, generator=torch.Generator().manual_seed(seed))
    tree = dynamic_tree(logits, budget=budget, top_n=top_n)
    tree.check()
    assert tree.tokens.shape == (batch, budget)
    for b in range(batch):
        assert rank_paths(tree, b) == dynamic_reference(logits, budget, top_n, b)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), k=st.integers(1, 4), top_n=st.integers(1, 3),
       budgets=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True))
def test_dynamic_trees_of_several_budgets_equal_one_tree_each(seed, batch, k, top_n, budgets):
    logits = torch.randn(batch, k, 6, generator=torch.Generator().manual_seed(seed))
    capacity = sum(min(max(budgets), top_n**d) for d in range(1, k + 1))
    budgets = tuple(b for b in budgets if b <= capacity) or (1,)
    trees = tree_module.dynamic_trees(logits, budgets=budgets, top_n=top_n)
    for budget in budgets:
        one = dynamic_tree(logits, budget=budget, top_n=top_n)
        for field in ("tokens", "parents", "depth", "rank"):
            assert torch.equal(getattr(trees[budget], field), getattr(one, field)), (budget, field)


def _token_path(tree: TokenTree, b: int, node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(int(tree.tokens[b, node]))
        node = int(tree.parents[b, node])
    return path[::-1]


def ranked_reference(log_q, tokens, chain, chain_value, budget, weight, b) -> set[tuple[int, ...]]:
    """Every draft token path (weight x summed log-probability) and every chain prefix (its value; the
    larger where the two coincide); the ``budget`` best."""
    k, top_n = log_q.shape[1:]
    value = {}
    for d in range(1, k + 1):
        for ranks in itertools.product(range(top_n), repeat=d):
            path = tuple(int(tokens[b, j, r]) for j, r in enumerate(ranks))
            value[path] = weight * sum(float(log_q[b, j, r]) for j, r in enumerate(ranks))
    chains, chain_values = chain.reshape(chain.shape[0], -1, chain.shape[-1]), chain_value.reshape(chain.shape[0], -1, chain.shape[-1])
    for one, one_value in zip(chains[b], chain_values[b]):
        for j in range(one.shape[0]):
            if math.isfinite(float(one_value[j])):
                path = tuple(one[: j + 1].tolist())
                value[path] = max(value.get(path, -math.inf), float(one_value[j]))
    return set(sorted(value, key=lambda p: -value[p])[:budget])


@settings(max_examples=60)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), k=st.integers(1, 4), top_n=st.integers(1, 3),
       weight=st.sampled_from([0.5, 1.0, 2.0]), chains=st.sampled_from([None, 1, 2, 3]), data=st.data())
def test_ranked_tree_equals_the_slow_reference(seed, batch, k, top_n, weight, chains, data):
    generator = torch.Generator().manual_seed(seed)
    budget = data.draw(st.integers(1, min(sum(top_n**d for d in range(1, k + 1)), 12)))
    length = data.draw(st.integers(1, k))
    log_q, tokens = (3 * torch.randn(batch, k, 5, generator=generator)).log_softmax(-1).topk(top_n, dim=-1)
    # each chain: the draft's top tokens where a coin says so (shared nodes), else ids 5-6 (its own nodes,
    # which the chains share among themselves now and then); chains=None: one chain as (B, L)
    shape = (batch, chains or 1, length)
    agree = torch.rand(shape, generator=generator) < 0.6
    chain = torch.where(agree, tokens[:, None, :length, 0], torch.randint(5, 7, shape, generator=generator))
    chain_value = (-torch.rand(shape, generator=generator)).cumsum(2)  # falling along each chain
    chain_value[torch.rand(shape[:2], generator=generator) < 0.3] = -torch.inf  # chains that found nothing
    if chains is None:
        chain, chain_value = chain[:, 0], chain_value[:, 0]
    tree = ranked_tree(log_q, tokens, chain, chain_value, budget=budget, draft_weight=weight)
    tree.check()
    assert tree.tokens.shape == (batch, budget)
    for b in range(batch):
        paths = [tuple(_token_path(tree, b, i)) for i in range(budget)]
        assert len(set(paths)) == budget  # a trie: no path twice
        assert set(paths) == ranked_reference(log_q, tokens, chain, chain_value, budget, weight, b)


def test_ranked_tree_without_a_chain_is_the_dynamic_tree():
    log_q, tokens = torch.randn(3, 4, 9).log_softmax(-1).topk(3, dim=-1)
    tree = ranked_tree(log_q, tokens, tokens[:, :2, 0], torch.full((3, 2), -torch.inf), budget=7)
    one = dynamic_tree_from_topk(log_q, tokens, budget=7)
    for field in ("tokens", "parents", "depth", "rank"):
        assert torch.equal(getattr(tree, field), getattr(one, field)), field


def test_ranked_tree_hangs_a_sure_chain_under_the_shared_nodes():
    log_q = torch.tensor([[[0.6, 0.35], [0.5, 0.4], [0.5, 0.2]]]).log()  # (1, K=3, 2)
    tokens = torch.tensor([[[10, 11], [20, 21], [30, 31]]])
    chain = torch.tensor([[10, 21, 99]])  # the draft's top-1, then its second token, then a token it lacks
    tree = ranked_tree(log_q, tokens, chain, torch.tensor([[0.95, 0.9, 0.85]]).log(), budget=4)
    tree.check()
    paths = {tuple(_token_path(tree, 0, i)): int(tree.rank[0, i]) for i in range(4)}
    assert paths == {(10,): 0, (10, 21): 1, (10, 21, 99): -1, (11,): 1}  # 99 is the chain's own node (rank -1)


def test_ranked_tree_refuses_a_chain_deeper_than_k():
    log_q, tokens = torch.randn(1, 2, 5).log_softmax(-1).topk(2, dim=-1)
    with pytest.raises(ValueError, match="1..K"):
        ranked_tree(log_q, tokens, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3), budget=2)


def test_dynamic_tree_rows_get_their_own_shape():
    logits = torch.full((2, 2, 4), -9.0)
    logits[0, 0, 0] = logits[0, 1, 0] = 9.0  # row 0: sure of both slots -> depth first
    logits[1, 0, :3] = 9.0  # row 1: three-way tie at slot 1, unsure of slot 2 -> width first
    tree = dynamic_tree(logits, budget=2, top_n=3)
    tree.check()
    assert tree.depth.tolist() == [[1, 2], [1, 1]]


def test_dynamic_tree_budget_bounds():
    with pytest.raises(ValueError, match="budget"):
        dynamic_tree(torch.randn(1, 2, 5), budget=7, top_n=2)


# ----------------------------------------------------------------------------------------------
# Greedy acceptance
# ----------------------------------------------------------------------------------------------


def random_tree(generator, batch, n, k, vocab) -> TokenTree:
    parents = []
    for _ in range(batch):
        row, depth = [], []
        for i in range(n):
            options = [-1] + [j for j in range(i) if depth[j] < k]
            p = options[int(torch.randint(len(options), (1,), generator=generator))]
            row.append(p)
            depth.append(1 if p < 0 else depth[p] + 1)
        parents.append(row)
    tokens = torch.randint(vocab, (batch, n), generator=generator)
    return make_tree(tokens.tolist(), parents, k)


def greedy_reference(tree: TokenTree, choice: torch.Tensor, b: int):
    """(path, chunk) of row b: the deepest node whose whole chain matches; lowest index on ties."""
    def chain(i):
        nodes = []
        while i >= 0:
            nodes.append(i)
            i = int(tree.parents[b, i])
        return nodes[::-1]

    def correct(i):
        return int(tree.tokens[b, i]) == int(choice[b, int(tree.parents[b, i]) + 1])

    ok = [i for i in range(tree.num_nodes) if all(correct(j) for j in chain(i))]
    if not ok:
        return [], [int(choice[b, 0])]
    leaf = max(ok, key=lambda i: (len(chain(i)), -i))
    path = chain(leaf)
    return path, [int(tree.tokens[b, i]) for i in path] + [int(choice[b, 1 + leaf])]


@settings(max_examples=80)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), n=st.integers(1, 10), k=st.integers(1, 5),
       vocab=st.integers(1, 3))
def test_greedy_accept_equals_the_slow_reference(seed, batch, n, k, vocab):
    generator = torch.Generator().manual_seed(seed)
    tree = random_tree(generator, batch, n, k, vocab)
    tree.check()
    choice = torch.randint(vocab, (batch, 1 + n), generator=generator)
    out = greedy_accept(tree, choice)
    assert out.path.shape == (batch, k) and out.chunk.shape == (batch, k + 1)
    for b in range(batch):
        path, chunk = greedy_reference(tree, choice, b)
        a = len(path)
        assert int(out.num_accepted[b]) == a and int(out.length[b]) == a + 1
        assert out.path[b].tolist() == path + [-1] * (k - a)
        assert out.chunk[b, : a + 1].tolist() == chunk
        assert out.path_slots[b, : a + 1].tolist() == [0] + [1 + i for i in path]
        assert out.path_slots[b, a + 1:].tolist() == [min(j, n) for j in range(a + 1, k + 1)]


@settings(max_examples=60)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), k=st.integers(1, 6), vocab=st.integers(1, 3))
def test_greedy_accept_on_a_chain_is_the_greedy_verifier(seed, batch, k, vocab):
    generator = torch.Generator().manual_seed(seed)
    draft = torch.randint(vocab, (batch, k), generator=generator)  # (B, K)
    choice = torch.randint(vocab, (batch, k + 1), generator=generator)  # (B, K+1)
    chain = make_tree(draft.tolist(), [list(range(-1, k - 1))] * batch, k)
    out = greedy_accept(chain, choice)
    logits = torch.nn.functional.one_hot(choice, vocab).float()  # (B, K+1, V): argmax = choice
    verdict = GreedyVerifier(Scorer(None)).accept(None, draft, None, logits)
    assert torch.equal(out.chunk, verdict.chunk) and torch.equal(out.length, verdict.length)
    assert torch.equal(out.path_slots, torch.arange(k + 1).expand(batch, -1))


def test_greedy_accept_literal():
    # Root -> {a=0: 7, b=1: 8}; 0 -> {2: 9}; 1 -> {3: 9, 4: 5}. The target: 8 after the root, 5 after node 1.
    tree = make_tree([[7, 8, 9, 9, 5]], [[-1, -1, 0, 1, 1]], k=3)
    choice = torch.tensor([[8, 1, 5, 1, 1, 4]])  # root, nodes 0..4
    out = greedy_accept(tree, choice)
    assert out.path.tolist() == [[1, 4, -1]]
    assert out.chunk[0, :3].tolist() == [8, 5, 4] and out.length.tolist() == [3]
    assert out.path_slots[0, :3].tolist() == [0, 2, 5]


# ----------------------------------------------------------------------------------------------
# The lookup branch (its candidates: test_lookup.py)
# ----------------------------------------------------------------------------------------------


def test_with_chain_appends_a_root_branch_and_its_static_attention():
    shape = TreeShape(DOC_PATHS, k=3)
    tree = with_chain(static_tree(torch.randn(2, 3, 10), shape), torch.tensor([[4, 5], [6, 7]]))
    tree.check()
    assert tree.parents[0, 6:].tolist() == [-1, 6] and tree.depth[0, 6:].tolist() == [1, 2]
    assert tree.rank[:, 6:].tolist() == [[-1, -1]] * 2 and tree.tokens[1, 6:].tolist() == [6, 7]
    seen = tree_attention(tree)[0]  # (8, 8): the branch sees only itself, no other node sees it
    assert seen[6].tolist() == [False] * 6 + [True, False] and seen[7].tolist() == [False] * 6 + [True, True]
    assert not seen[:6, 6:].any() and torch.equal(seen[:6, :6], shape_attention(shape))
    with pytest.raises(ValueError, match="1..K = 3"):
        with_chain(tree, torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Sampling acceptance: chi-square on an exact small distribution
# ----------------------------------------------------------------------------------------------

DRAWS = 20_000
VOCAB = 5
P0 = torch.tensor([0.45, 0.25, 0.15, 0.10, 0.05], dtype=torch.float64)  # target after the root
Q1 = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.35], dtype=torch.float64)  # draft slot 1, far from P0
Q2 = torch.tensor([0.30, 0.05, 0.05, 0.30, 0.30], dtype=torch.float64)  # draft slot 2
SIBLINGS_SHAPE = TreeShape(tuple((r,) for r in range(3)) + tuple((r, s) for r in range(3) for s in range(2)), k=2)


def second_token_table(seed: int) -> torch.Tensor:
    """P1[x] = the target's distribution after first token x (V, V), each row different."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.rand(VOCAB, VOCAB, generator=generator, dtype=torch.float64) + 0.2
    return table / table.sum(1, keepdim=True)


def run_sampling_rounds(seed: int, lookup: tuple[int, ...] = (), lookup_rank: int = -1):
    """DRAWS independent rounds (one per row) of a sampled tree: root -> 3 i.i.d. children -> 2 each,
    plus, when ``lookup`` is given, a fixed chain of those tokens under the root (a lookup branch; its
    nodes get ``lookup_rank``, -1 = fixed candidates).

    Returns the committed first token (B,) and the first two tokens (B, 2), the second one drawn from
    the target itself (the next round) when the round committed only one token."""
    generator = torch.Generator().manual_seed(seed)
    p1 = second_token_table(seed + 1)  # (V, V)
    q = torch.stack([Q1, Q2]).expand(DRAWS, -1, -1)  # (B, K, V)
    tree = sampled_tree(q, SIBLINGS_SHAPE, generator=generator)
    if lookup:
        tree = with_chain(tree, torch.tensor(lookup).expand(DRAWS, -1))
        tree = TokenTree(tree.tokens, tree.parents, tree.depth, torch.where(tree.rank < 0, lookup_rank, tree.rank), tree.k)
    tree.check()
    node_p = torch.where((tree.depth == 1)[..., None], p1[tree.tokens], torch.full((VOCAB,), 1 / VOCAB, dtype=p1.dtype))
    target_probs = torch.cat([P0.expand(DRAWS, 1, -1), node_p], dim=1)  # (B, 1+N, V)
    out = sampling_accept(tree, q, target_probs, generator=generator)
    first = out.chunk[:, 0]
    next_round = torch.multinomial(p1[first], 1, generator=generator)[:, 0]  # (B,)
    second = torch.where(out.length >= 2, out.chunk[:, 1], next_round)
    return first, torch.stack([first, second], dim=1), out, p1


def chi_square_p_values(seed: int, **lookup) -> tuple[float, float]:
    first, pair, _, p1 = run_sampling_rounds(seed, **lookup)
    observed = torch.bincount(first, minlength=VOCAB).double()
    p_first = chisquare(observed.numpy(), (P0 * DRAWS).numpy()).pvalue
    joint = (P0[:, None] * p1).flatten()  # (V*V,)
    observed_pair = torch.bincount(pair[:, 0] * VOCAB + pair[:, 1], minlength=VOCAB * VOCAB).double()
    p_pair = chisquare(observed_pair.numpy(), (joint * DRAWS).numpy()).pvalue
    return p_first, p_pair


def test_sampling_accept_follows_the_target_distribution():
    _, _, out, _ = run_sampling_rounds(0)
    histogram = torch.bincount(out.num_accepted, minlength=3).tolist()
    assert all(count > 500 for count in histogram)  # every outcome (0, 1, 2 accepted) is exercised
    for seed in (0, 1):
        p_first, p_pair = chi_square_p_values(seed)
        assert p_first > 1e-3, p_first
        assert p_pair > 1e-3, p_pair


def test_sampling_accept_with_a_lookup_branch_follows_the_target_distribution():
    """A fixed candidate chain (token 1, then 3) beside the i.i.d. siblings: one-hot q keeps the rule exact,
    and the branch is taken (its first token is accepted in some rounds)."""
    _, _, out, _ = run_sampling_rounds(0, lookup=(1, 3))
    lookup_first = SIBLINGS_SHAPE.num_nodes  # the chain's first node
    assert int((out.path[:, 0] == lookup_first).sum()) > 500
    for seed in (0, 1):
        p_first, p_pair = chi_square_p_values(seed, lookup=(1, 3))
        assert p_first > 1e-3, p_first
        assert p_pair > 1e-3, p_pair


def test_chi_square_catches_a_lookup_branch_treated_as_a_draft_sample():
    """The same branch with rank 0 (as if drawn from q): accepted with p/q instead of p, biased."""
    p_first, p_pair = chi_square_p_values(0, lookup=(1, 3), lookup_rank=0)
    assert p_first < 1e-6 and p_pair < 1e-6, (p_first, p_pair)


WRONG_RESIDUALS = {
    # Each sibling tested against the original p, and the last token drawn from it too: biased to q.
    "forgets the rejected mass": lambda right: (lambda p, q: p),
    # A subtle bug: 10 % of the original p left in every residual.
    "residual 10% off": lambda right: (lambda p, q: 0.9 * right(p, q) + 0.1 * p),
}


@pytest.mark.parametrize("name", WRONG_RESIDUALS)
def test_chi_square_catches_a_wrong_sibling_rule(monkeypatch, name):
    """The same rule with a wrong update between siblings: the chi-square tests reject it."""
    monkeypatch.setattr(tree_module, "residual_distribution", WRONG_RESIDUALS[name](tree_module.residual_distribution))
    p_first, p_pair = chi_square_p_values(0)
    assert p_first < 1e-6 and p_pair < 1e-6, (p_first, p_pair)


def test_sampled_tree_draws_every_node_from_its_slot():
    q = torch.stack([Q1, Q2]).expand(DRAWS, -1, -1)  # (B, K, V)
    tree = sampled_tree(q, SIBLINGS_SHAPE, generator=torch.Generator().manual_seed(5))
    for node, slot in ((0, Q1), (2, Q1), (3, Q2), (8, Q2)):
        observed = torch.bincount(tree.tokens[:, node], minlength=VOCAB).double()
        assert chisquare(observed.numpy(), (slot * DRAWS).numpy()).pvalue > 1e-3


def test_sampling_accept_path_contract():
    _, _, out, _ = run_sampling_rounds(3)
    a = out.num_accepted
    assert torch.equal(out.length, a + 1)
    depth_one = out.path[:, 0]
    assert bool(((a >= 1) == (depth_one >= 0)).all())
    assert bool(((depth_one < 3) | (depth_one < 0)).all())  # the first accepted node is a child of the root
    assert bool(((a < 2) | ((out.path[:, 1] - 3) // 2 == out.path[:, 0])).all())  # node 3+2r+s is a child of r


# ----------------------------------------------------------------------------------------------
# The engine with a tree verifier (generate(..., pard_tree=N))
# ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    k=st.sampled_from([1, 2, 4, 8]),
    budget=st.sampled_from([1, 3, 8, 16, 32]),
    lengths=st.sampled_from([1, 3]).flatmap(lambda b: st.lists(st.integers(1, 10), min_size=b, max_size=b)),
    max_new_tokens=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    measured=st.booleans(),
    lookup=st.integers(0, 8),
    store=st.booleans(),
)
def test_greedy_tree_decoding_is_lossless(targets, arch, k, budget, lengths, max_new_tokens, seed, measured, lookup, store):
    from transformers_pard import LookupStore
    from transformers_pard.testing import left_padded_batch, perturbed_pard_draft

    target = targets[arch]
    ids, mask = left_padded_batch(lengths, seed)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    draft = perturbed_pard_draft(target, seed=seed, noise=0.5)
    if measured:  # a static shape from a per-slot table (ranks 1..3), else the dynamic tree
        draft.config.pard_tree_topk_accuracy = [[0.4, 0.5, 0.55], [0.25, 0.35, 0.4], [0.1, 0.2, 0.25]]
    lookup = min(lookup, k)  # up to K lookup candidates, ranked against the draft's nodes (greedy)
    extra = {}
    if store and lookup:  # a store of the prompts and of random texts: candidates right and wrong
        noise = torch.randint(3, 90, (4, 12), generator=torch.Generator().manual_seed(seed)).tolist()
        extra["pard_lookup_store"] = LookupStore.from_texts(ids.tolist() + noise, horizon=4)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pard_draft=draft,
                          num_assistant_tokens=k, pard_tree=budget, pard_lookup=lookup, pard_min_tau=None, **extra)
    assert torch.equal(out, expected)


def test_a_lookup_branch_accepts_more_on_repeating_text(targets):
    """A prompt that repeats a phrase: a target that continues it (a tiny random model often loops) is
    predicted by the lookup branch better than by a weak draft alone; outputs stay identical."""
    from transformers_pard.testing import perturbed_pard_draft

    target = targets["llama"]
    ids = torch.tensor([[11, 12, 13, 14, 15, 16] * 4])
    draft = perturbed_pard_draft(target, seed=1, noise=2.0)
    runs = {lookup: target.generate(ids, max_new_tokens=48, pard_draft=draft, num_assistant_tokens=8, pard_tree=12,
                                    pard_lookup=lookup, pard_min_tau=None, return_dict_in_generate=True)
            for lookup in (0, 8)}
    assert torch.equal(runs[0].sequences, target.generate(ids, max_new_tokens=48, do_sample=False))
    assert torch.equal(runs[0].sequences, runs[8].sequences)
    assert runs[8].pard_stats.tau > runs[0].pard_stats.tau
    assert runs[8].pard_stats.lookup_nodes == 8 and runs[0].pard_stats.lookup_nodes == 0
    # the lookup branch's share is counted: some of the committed tokens, never more than were accepted
    stats = runs[8].pard_stats
    assert 0 < stats.lookup_tokens <= stats.committed_tokens - stats.row_rounds and runs[0].pard_stats.lookup_tokens == 0


def test_ranked_lookup_leaves_a_sure_draft_its_nodes(targets):
    """An always-right draft (one-hot q: path value log 1) outranks every lookup candidate, even on text
    whose 3-gram recurs: the ranked tree takes no more rounds than the draft's chain (a fixed share did)."""
    from transformers_pard.testing import OracleDraft, reference_by_position

    target = targets["llama"]
    ids = torch.tensor([[11, 12, 13, 14, 15, 16] * 3])
    expected = target.generate(ids, max_new_tokens=24, do_sample=False)
    draft = OracleDraft(target.config, reference_by_position(expected, torch.ones_like(ids), 0))
    call = dict(max_new_tokens=24, pard_draft=draft, num_assistant_tokens=4, pard_min_tau=None, return_dict_in_generate=True)
    chain, ranked = target.generate(ids, **call), target.generate(ids, pard_tree=4, pard_lookup=4, **call)
    assert torch.equal(chain.sequences, expected) and torch.equal(ranked.sequences, expected)
    assert ranked.pard_stats.row_rounds == chain.pard_stats.row_rounds == 5  # 24 tokens, 5 a round
    assert ranked.pard_stats.lookup_tokens == 0


def test_a_lookup_store_that_holds_the_answer_raises_tau(targets):
    """A store holding the target's own answer to a prompt (its text the row has not written yet, so
    prompt lookup cannot find it): the lookup branch proposes it; outputs stay identical."""
    from transformers_pard import LookupStore
    from transformers_pard.lookup import attach_lookup_store
    from transformers_pard.testing import perturbed_pard_draft

    target = targets["qwen2"]
    ids = torch.tensor([[21, 34, 55, 8, 13]])
    expected = target.generate(ids, max_new_tokens=32, do_sample=False)
    draft = perturbed_pard_draft(target, seed=2, noise=2.0)
    call = dict(max_new_tokens=32, pard_draft=draft, num_assistant_tokens=8, pard_tree=8, pard_lookup=4,
                pard_min_tau=None, return_dict_in_generate=True)
    own = target.generate(ids, **call)
    store = LookupStore.from_texts(expected.tolist())
    explicit = target.generate(ids, pard_lookup_store=store, **call)
    attach_lookup_store(draft, store)  # pard_lookup_store=True: the draft's own store
    carried = target.generate(ids, pard_lookup_store=True, **call)
    for run in (own, explicit, carried):
        assert torch.equal(run.sequences, expected)
    assert explicit.pard_stats.tau > own.pard_stats.tau and carried.pard_stats.tau == explicit.pard_stats.tau
    assert explicit.pard_stats.lookup_tokens > own.pard_stats.lookup_tokens
    assert target.generate(ids, **call).pard_stats.tau == own.pard_stats.tau  # off unless asked for


def test_a_tree_accepts_more_than_the_chain_with_the_same_draft(targets):
    from transformers_pard.testing import left_padded_batch, perturbed_pard_draft

    target = targets["llama"]
    ids, mask = left_padded_batch([6, 9], seed=5)
    draft = perturbed_pard_draft(target, seed=1, noise=0.6)
    runs = {budget: target.generate(ids, attention_mask=mask, max_new_tokens=40, pard_draft=draft, num_assistant_tokens=4,
                                    pard_tree=budget, pard_min_tau=None, return_dict_in_generate=True)
            for budget in (None, 24)}
    assert torch.equal(runs[None].sequences, runs[24].sequences)
    assert runs[24].pard_stats.tau > runs[None].pard_stats.tau
    assert runs[24].pard_stats.tree_nodes == 24 and runs[None].pard_stats.tree_nodes is None


def test_tree_refuses_what_it_cannot_honour(targets):
    from transformers_pard import LookupStore
    from transformers_pard.testing import perturbed_pard_draft

    target = targets["llama"]
    ids = torch.randint(3, 90, (1, 5))
    draft = perturbed_pard_draft(target)
    with pytest.raises(ValueError, match="integer >= 1"):
        target.generate(ids, pard_draft=draft, pard_tree=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="prefix-dependent logits processors"):
        target.generate(ids, pard_draft=draft, pard_tree=8, repetition_penalty=1.2, max_new_tokens=3)
    with pytest.raises(ValueError, match="'constant' num_assistant_tokens_schedule"):
        target.generate(ids, pard_draft=draft, pard_tree=8, num_assistant_tokens_schedule="heuristic", max_new_tokens=3)
    with pytest.raises(ValueError, match="pard_lookup=4 needs a token tree: pass pard_tree=N"):
        target.generate(ids, pard_draft=draft, pard_lookup=4, max_new_tokens=3)
    with pytest.raises(ValueError, match="integer >= 0"):
        target.generate(ids, pard_draft=draft, pard_tree=8, pard_lookup=-1, max_new_tokens=3)
    with pytest.raises(ValueError, match="at most K = 4"):
        target.generate(ids, pard_draft=draft, pard_tree=12, pard_lookup=5, num_assistant_tokens=4, max_new_tokens=3)
    with pytest.raises(ValueError, match="with sampling takes that many of the pard_tree=4 nodes"):
        target.generate(ids, pard_draft=draft, pard_tree=4, pard_lookup=4, num_assistant_tokens=8, max_new_tokens=3,
                        do_sample=True)
    with pytest.raises(ValueError, match="this draft carries none"):
        target.generate(ids, pard_draft=draft, pard_tree=8, pard_lookup=2, pard_lookup_store=True, max_new_tokens=3)
    with pytest.raises(ValueError, match="pard_lookup_store takes True"):
        target.generate(ids, pard_draft=draft, pard_tree=8, pard_lookup=2, pard_lookup_store=[[1, 2]], max_new_tokens=3)
    with pytest.raises(ValueError, match="read by the lookup branch only: pass pard_lookup=L"):
        target.generate(ids, pard_draft=draft, pard_tree=8, pard_lookup_store=LookupStore.from_texts([[4, 5]]),
                        max_new_tokens=3)


def test_pard2_tree_decoding_is_lossless_and_compiles_once(targets):
    from torch._dynamo.testing import CompileCounter

    from transformers_pard import enable_pard
    from transformers_pard.testing import left_padded_batch, tiny_causal_lm, tiny_pard2_draft

    target = targets["llama"]
    ids, mask = left_padded_batch([4, 7], seed=11)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    pard2 = tiny_pard2_draft(target, layers=(-1, 1))
    out = target.generate(ids, attention_mask=mask, max_new_tokens=16, pard_draft=pard2, num_assistant_tokens=3,
                          pard_tree=10, pard_min_tau=None, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter)
    draft = tiny_pard2_draft(compiled, layers=(-1, 1))
    for seed, length in ((0, 5), (1, 12)):
        ids = torch.randint(3, 90, (1, length), generator=torch.Generator().manual_seed(seed))
        reference = compiled.generate(ids, max_new_tokens=12, do_sample=False)
        for lookup in (0, 3):  # a lookup branch inside the same 10 nodes: no new shape
            tree_out = compiled.generate(ids, pard_draft=draft, max_new_tokens=12, num_assistant_tokens=3, pard_tree=10,
                                         pard_lookup=lookup, pard_min_tau=None)
            assert torch.equal(tree_out, reference)
    assert counter.frame_count == 3  # the draft (width 2K), the tree verify (width 1 + N), the accepted path's KV move
