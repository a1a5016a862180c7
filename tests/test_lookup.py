"""Lookup candidates (``transformers_pard.lookup``): prompt lookup and the lookup store against slow
references, the store's file round trip, and which source the lookup branch takes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.lookup import (
    LOOKUP_FILE, OWN_RATES, SEPARATOR, STORE_RATES, LookupStore, attach_lookup_store, chain_log_value,
    lookup_chains, lookup_continuation, lookup_store, ngram_continuation,
)

# ----------------------------------------------------------------------------------------------
# Prompt lookup: the row's own text
# ----------------------------------------------------------------------------------------------


def lookup_reference(text: list[int], length: int, max_ngram: int) -> tuple[list[int] | None, int]:
    """The latest earlier occurrence of the longest suffix n-gram: its continuation, looping past the end, and n."""
    for n in range(max_ngram, 0, -1):
        if len(text) <= n:
            continue
        for j in range(len(text) - n - 1, -1, -1):
            if text[j:j + n] == text[-n:]:
                period = len(text) - (j + n)
                return [text[j + n + i % period] for i in range(length)], n
    return None, 0


@settings(max_examples=80)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), vocab=st.integers(2, 6), length=st.integers(1, 6),
       max_ngram=st.integers(1, 4), data=st.data())
def test_ngram_continuation_equals_the_slow_reference(seed, batch, vocab, length, max_ngram, data):
    width = 14
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (batch, width), generator=generator)  # (B, S), past `end`: stale tokens
    begin = torch.tensor([data.draw(st.integers(0, 5)) for _ in range(batch)])
    end = torch.tensor([data.draw(st.integers(int(b) + 1, width)) for b in begin])
    continuation, matched = ngram_continuation(tokens, begin, end, length=length, max_ngram=max_ngram)
    for b in range(batch):
        expected, n = lookup_reference(tokens[b, begin[b]:end[b]].tolist(), length, max_ngram)
        assert int(matched[b]) == n
        if expected is not None:
            assert continuation[b].tolist() == expected


def test_ngram_continuation_literal():
    # text 5 6 7 8 5 6: the suffix "5 6" occurred at 0, followed by 7 8 5 6 (then it loops: 7 8 ...)
    tokens = torch.tensor([[0, 0, 5, 6, 7, 8, 5, 6, 9, 9]])  # two pads in front, stale tokens after
    continuation, matched = ngram_continuation(tokens, torch.tensor([2]), torch.tensor([8]), length=6, max_ngram=3)
    assert matched.tolist() == [2] and continuation.tolist() == [[7, 8, 5, 6, 7, 8]]
    # the pads never match: "0" occurs only in the padding
    tokens = torch.tensor([[0, 0, 5, 6, 0]])
    _, matched = ngram_continuation(tokens, torch.tensor([2]), torch.tensor([5]), length=2)
    assert matched.tolist() == [0]


# ----------------------------------------------------------------------------------------------
# The lookup store
# ----------------------------------------------------------------------------------------------


def store_reference(texts: list[list[int]], suffix: list[int], length: int, max_ngram: int,
                    horizon: int) -> tuple[list[int] | None, int]:
    """The first stored occurrence (text order, then position) of the longest suffix n-gram that is
    followed by ``horizon`` tokens of its own text: the ``length`` tokens after it (the last one repeated
    past the horizon), and n."""
    for n in range(min(max_ngram, len(suffix)), 0, -1):
        for text in texts:
            for j in range(len(text) - n - horizon + 1):
                if text[j:j + n] == suffix[-n:]:
                    follow = text[j + n: j + n + horizon]
                    return [follow[min(i, horizon - 1)] for i in range(length)], n
    return None, 0


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 5), num_texts=st.integers(1, 4), max_ngram=st.integers(1, 4),
       horizon=st.integers(1, 5), length=st.integers(1, 7), data=st.data())
def test_store_continuation_equals_the_slow_reference(seed, vocab, num_texts, max_ngram, horizon, length, data):
    generator = torch.Generator().manual_seed(seed)
    texts = [torch.randint(vocab, (int(n),), generator=generator).tolist()
             for n in torch.randint(0, 12, (num_texts,), generator=generator)]
    store = LookupStore.from_texts(texts, max_ngram=max_ngram, horizon=horizon)
    batch, width = 3, 10
    tokens = torch.randint(vocab, (batch, width), generator=generator)  # (B, S); past `end`: stale tokens
    begin = torch.tensor([data.draw(st.integers(0, 4)) for _ in range(batch)])
    end = torch.tensor([data.draw(st.integers(int(b) + 1, width)) for b in begin])
    continuation, matched = store.continuation(tokens, begin, end, length=length)
    for b in range(batch):
        expected, n = store_reference(texts, tokens[b, begin[b]:end[b]].tolist(), length, max_ngram, horizon)
        assert int(matched[b]) == n
        if expected is not None:
            assert continuation[b].tolist() == expected


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), m=st.integers(1, 6), vocab=st.sampled_from([5, 70_000]))
def test_suffix_hashes_are_the_documented_polynomial_of_each_suffix(seed, batch, m, vocab):
    """Key of t_1..t_n (oldest first) = (h1 << 31) + h2, h = n b^n + sum_j (t_j + 1) b^(n-j) mod p per (p, b);
    computed here with Python's integers (no overflow to hide), ids past uint16 included."""
    from transformers_pard.lookup import _BASES, _MODULI, _suffix_hashes

    def reference(ngram):
        halves = [(len(ngram) * pow(base, len(ngram), p) + sum((t + 1) * pow(base, len(ngram) - j, p)
                                                              for j, t in enumerate(ngram, 1))) % p
                  for p, base in zip(_MODULI, _BASES)]
        return halves[0] * 2**31 + halves[1]

    text = torch.randint(0, vocab, (batch, m), generator=torch.Generator().manual_seed(seed))  # oldest first
    keys = _suffix_hashes(text.flip(1))  # newest first
    for b in range(batch):
        assert keys[b].tolist() == [reference(text[b, m - n:].tolist()) for n in range(1, m + 1)]


def test_store_continuation_literal():
    store = LookupStore.from_texts([[7, 8, 9, 1, 2, 3, 4], [5, 8, 9, 6, 6, 6, 6]], max_ngram=3, horizon=3)
    tokens = torch.tensor([[0, 4, 8, 9], [0, 5, 8, 9], [0, 0, 3, 3]])
    continuation, matched = store.continuation(tokens, torch.tensor([1, 1, 2]), torch.tensor([4, 4, 4]), length=5)
    assert matched.tolist() == [2, 3, 0]  # "8 9" first occurs in text 0; "5 8 9" only in text 1; "3 3" nowhere
    assert continuation[:2].tolist() == [[1, 2, 3, 3, 3], [6, 6, 6, 6, 6]]  # the horizon's last token repeats
    # "3" occurs, but only 1 token before its text's end: fewer than the horizon's 3, so it is not indexed
    assert len(store) == 14


@pytest.mark.parametrize("big_ids", [False, True])
def test_store_file_round_trip(tmp_path, big_ids):
    offset = 70_000 if big_ids else 0  # ids past uint16 are written as int32
    texts = [[offset + t for t in text] for text in ([1, 2, 3, 4, 5, 6], [2, 3, 9, 9, 9, 9, 9])]
    store = LookupStore.from_texts(texts, max_ngram=2, horizon=2)
    store.save(str(tmp_path))
    loaded = LookupStore.load(str(tmp_path))
    assert (loaded.max_ngram, loaded.horizon) == (2, 2) and torch.equal(loaded.texts, store.texts)
    assert all(torch.equal(a, b) for a, b in zip(loaded.index(), store.index()))
    assert LookupStore.load(str(tmp_path / "absent")) is None and (tmp_path / LOOKUP_FILE).exists()


def test_store_refuses_bad_texts():
    with pytest.raises(ValueError, match="token ids >= 0"):
        LookupStore.from_texts([[1, -3, 2]])
    with pytest.raises(ValueError, match="at least one text"):
        LookupStore.from_texts([])
    with pytest.raises(ValueError, match="followed by -1"):
        LookupStore(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="max_ngram >= 1"):
        LookupStore.from_texts([[1, 2]], max_ngram=0)


def test_the_own_text_comes_first_and_the_store_fills_in():
    store = LookupStore.from_texts([[4, 5, 6, 7, 7, 7, 7, 7], [1, 2, 3, 9, 9, 9, 9]], max_ngram=4, horizon=4)
    # row 0: its own text repeats "1 2 3" (n = 3 = max_ngram): the own continuation, whatever the store holds
    # row 1: its own text matches only "6" (n = 1); the store holds "5 6" (n = 2): the store's
    # row 2: nothing in either: no candidates
    tokens = torch.tensor([[1, 2, 3, 8, 1, 2, 3], [6, 0, 0, 0, 0, 5, 6], [20, 21, 22, 23, 24, 25, 26]])
    begin, end = torch.zeros(3, dtype=torch.long), torch.full((3,), 7)
    found = lookup_continuation(tokens, begin, end, length=3, max_ngram=3, store=store)
    assert found.own_ngram.tolist() == [3, 1, 0] and found.from_store.tolist() == [False, True, False]
    assert found.tokens[:2].tolist() == [[8, 1, 2], [7, 7, 7]]
    alone = lookup_continuation(tokens, begin, end, length=3, max_ngram=3)
    assert not bool(alone.from_store.any()) and alone.tokens[1].tolist() == [0, 0, 0]


def test_chain_log_value_literal():
    rates = {1: (0.5, 0.25), 2: (0.8, 0.5)}
    value = chain_log_value(torch.tensor([0, 1, 2, 3]), 3, rates).exp()  # n = 3: past the table, its last row
    assert value[0].tolist() == [0.0, 0.0, 0.0]  # no match: no candidate
    torch.testing.assert_close(value[1:], torch.tensor([[0.5, 0.125, 0.03125], [0.8, 0.4, 0.2], [0.8, 0.4, 0.2]]))


def test_lookup_chains_hold_each_source_with_its_estimates():
    store = LookupStore.from_texts([[4, 5, 6, 7, 7, 7, 7, 7], [1, 2, 3, 9, 9, 9, 9]], max_ngram=4, horizon=4)
    # row 0: its own text repeats "1 2 3" (n = 3), the store holds "1 2 3" (n = 3) with another continuation
    # row 1: its own text matches only "6" (n = 1); the store holds "4 5 6" (n = 3)
    # row 2: nothing in either: every value -inf
    tokens = torch.tensor([[1, 2, 3, 8, 1, 2, 3], [6, 0, 0, 0, 4, 5, 6], [20, 21, 22, 23, 24, 25, 26]])
    begin, end = torch.zeros(3, dtype=torch.long), torch.full((3,), 7)
    found = lookup_chains(tokens, begin, end, length=3, max_ngram=3, store=store)
    assert found.tokens.shape == (3, 2, 3) and found.tokens[0].tolist() == [[8, 1, 2], [9, 9, 9]]
    assert found.tokens[1, 1].tolist() == [7, 7, 7]
    value = lambda n, rates: chain_log_value(torch.tensor([n]), 3, rates)[0]  # noqa: E731
    expected = [[value(3, OWN_RATES), value(3, STORE_RATES)], [value(1, OWN_RATES), value(3, STORE_RATES)]]
    torch.testing.assert_close(found.log_value[:2], torch.stack([torch.stack(row) for row in expected]))
    assert bool(torch.isinf(found.log_value[2]).all())
    alone = lookup_chains(tokens, begin, end, length=3, max_ngram=3)
    assert alone.tokens.shape == (3, 1, 3) and alone.tokens[0, 0].tolist() == [8, 1, 2]


def test_a_draft_carries_its_store():
    class Draft(torch.nn.Module):
        pass

    draft, store = Draft(), LookupStore.from_texts([[1, 2, 3]])
    assert lookup_store(draft) is None
    attach_lookup_store(draft, store)
    assert lookup_store(draft) is store and "pard_lookup_store" not in dict(draft.named_buffers())
    attach_lookup_store(draft, None)
    assert lookup_store(draft) is None
    assert SEPARATOR == -1
