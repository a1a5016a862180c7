"""Lookup candidates: token continuations that cost no forward, for the token tree's lookup branch.

Two sources, both *conditioned on the tokens before them* (unlike PARD's mask slots):

* **prompt lookup** (``ngram_continuation``) -- the row's own text (prompt + output so far) continued
  after the latest earlier occurrence of its last n tokens;
* **a lookup store** (``LookupStore``; REST, He et al. 2023, arXiv 2311.08252) -- a corpus of the
  target's own text (e.g. the draft's training answers), continued after the first occurrence of the
  row's last n tokens there. A draft folder may ship one (``pard_lookup.safetensors``: the texts back
  to back, -1 between them); its index is built on first use.

``lookup_continuation`` prefers the row's own text; the store fills in where the own text matched
less. Where the candidates come from never changes the output: the target verifies them like any
node (greedy: token-identical; sampling: a fixed candidate is a draw from a one-hot q,
``tree.sampling_accept``).

Store index: every n-gram (n = 1..``max_ngram``) of the stored texts that is followed by at least
``horizon`` tokens of the same text, keyed by a 62-bit hash (``_suffix_hashes``: two 31-bit polynomial
hashes, no int64 overflow; the queries use the same function), sorted; a lookup is one ``searchsorted``
over the (B, max_ngram) suffix keys of the rows, on the rows' device, with no host sync. A hash collision can only propose a wrong candidate, which the target rejects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

LOOKUP_FILE = "pard_lookup.safetensors"
#: Longest n-gram a store is indexed by.
STORE_MAX_NGRAM = 4
#: Continuation tokens every indexed n-gram is followed by (a longer branch repeats the last one).
STORE_HORIZON = 16
SEPARATOR = -1
_U16_SEPARATOR = 65535  # SEPARATOR in a uint16 file
_MODULI = (2_147_483_647, 2_147_483_629)  # two primes < 2**31: each product stays below 2**62
_BASES = (1_000_003, 999_983)


def ngram_continuation(tokens: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, *, length: int,
                       max_ngram: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt lookup, per row: the ``length`` tokens that followed the most recent earlier occurrence of
    the row's last n tokens (n = ``max_ngram`` down to 1, the longest n that occurs), and that n.

    ``tokens`` (B, S): row b's text is ``tokens[b, begin[b]:end[b]]`` (prompt + committed output, its
    newest token at ``end - 1``). When the continuation runs into the suffix itself (a loop of period
    ``end - s`` shorter than ``length``, s = where the continuation starts), it repeats that period: the
    text is predicted to keep looping. Rows with no match get ``matched`` 0 and unspecified tokens.
    Returns ``(continuation (B, length) long, matched (B,) long: the n that matched, 0 = none)``; all on the
    tokens' device, no host sync.
    """
    batch, width = tokens.shape  # (B, S)
    best = torch.full_like(begin, -1)  # (B,) start of the chosen earlier occurrence
    best_n = torch.zeros_like(begin)  # (B,)
    for n in range(min(max_ngram, width - 1), 0, -1):
        suffix = tokens.gather(1, (end[:, None] - n + torch.arange(n, device=tokens.device)).clamp(min=0))  # (B, n)
        windows = tokens.unfold(1, n, 1)  # (B, S-n+1, n): window j = tokens[j:j+n]
        start = torch.arange(windows.shape[1], device=tokens.device)  # (S-n+1,)
        match = ((windows == suffix[:, None, :]).all(-1) & (start >= begin[:, None])
                 & (start + n < end[:, None]) & (end - n >= begin)[:, None])  # (B, S-n+1): strictly earlier
        latest = torch.where(match, start, -1).amax(1)  # (B,)
        take = (best < 0) & (latest >= 0)  # (B,) the longest n wins
        best, best_n = torch.where(take, latest, best), torch.where(take, n, best_n)
    follow = best + best_n  # (B,) where the continuation starts
    period = (end - follow).clamp(min=1)  # (B,)
    index = follow[:, None] + torch.arange(length, device=tokens.device) % period[:, None]  # (B, L)
    return tokens.gather(1, index.clamp(0, width - 1)), best_n


class LookupStore:
    """A corpus of token texts and its n-gram index (module docstring). Build with ``from_texts``, read a
    draft folder's with ``load``. The index is built on first use, once per device the rows are on."""

    def __init__(self, texts: torch.Tensor, *, max_ngram: int = STORE_MAX_NGRAM, horizon: int = STORE_HORIZON):
        if max_ngram < 1 or horizon < 1:
            raise ValueError(f"A lookup store needs max_ngram >= 1 and horizon >= 1, got {max_ngram}, {horizon}.")
        texts = torch.as_tensor(texts).long().flatten().cpu()
        if texts.numel() == 0 or int(texts[-1]) != SEPARATOR or int(texts.min()) < SEPARATOR:
            raise ValueError("A lookup store's texts are token ids >= 0, each text followed by -1 (SEPARATOR).")
        self.texts, self.max_ngram, self.horizon = texts, max_ngram, horizon  # (S,)
        self._indexed: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_texts(cls, texts: Iterable[Iterable[int]], **options) -> "LookupStore":
        """A store of ``texts`` (token id lists, e.g. the target's own answers with their prompts)."""
        parts = []
        for text in texts:
            ids = torch.as_tensor(list(text), dtype=torch.long)
            if ids.numel() and int(ids.min()) < 0:
                raise ValueError("A lookup store holds token ids >= 0; got a negative id.")
            parts += [ids, torch.tensor([SEPARATOR])]
        if not parts:
            raise ValueError("A lookup store needs at least one text.")
        return cls(torch.cat(parts), **options)

    def __len__(self) -> int:
        """Stored tokens (separators excluded)."""
        return int((self.texts != SEPARATOR).sum())

    def index(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(texts (S,), keys (M,) sorted n-gram hashes, follow (M,) where each key's first occurrence is
        continued in texts)`` on ``device`` (built once per device)."""
        device = torch.device(device or "cpu")
        if device not in self._indexed:
            keys, follow = _build_index(self.texts, self.max_ngram, self.horizon)
            self._indexed[device] = tuple(t.to(device) for t in (self.texts, keys, follow))
        return self._indexed[device]

    def save(self, folder: str) -> None:
        """Write the texts into ``folder``'s ``pard_lookup.safetensors`` (uint16 where every id fits)."""
        os.makedirs(folder, exist_ok=True)
        narrow = int(self.texts.max()) < _U16_SEPARATOR
        texts = torch.where(self.texts == SEPARATOR, _U16_SEPARATOR, self.texts).to(torch.uint16) if narrow \
            else self.texts.to(torch.int32)
        save_file({"texts": texts.contiguous()}, os.path.join(folder, LOOKUP_FILE),
                  metadata={"format": "pt", "max_ngram": str(self.max_ngram), "horizon": str(self.horizon)})

    @classmethod
    def load(cls, folder: str) -> "LookupStore | None":
        """The store a draft folder ships, or None."""
        path = os.path.join(folder, LOOKUP_FILE)
        if not os.path.exists(path):
            return None
        with safe_open(path, "pt") as f:
            meta, texts = f.metadata() or {}, f.get_tensor("texts")
        if texts.dtype == torch.uint16:
            texts = texts.to(torch.int32)
            texts = torch.where(texts == _U16_SEPARATOR, SEPARATOR, texts)
        return cls(texts, max_ngram=int(meta.get("max_ngram", STORE_MAX_NGRAM)),
                   horizon=int(meta.get("horizon", STORE_HORIZON)))

    def continuation(self, tokens: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, *,
                     length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``ngram_continuation``, from the store: the ``length`` tokens after the first stored
        occurrence of the row's last n tokens (n = ``max_ngram`` down to 1, the longest found), and that n
        (0: none, tokens unspecified). Past ``horizon`` tokens the last one repeats."""
        texts, keys, follow = self.index(tokens.device)
        if keys.numel() == 0:  # texts too short to index: nothing ever matches
            return tokens.new_zeros(tokens.shape[0], length), torch.zeros_like(begin)
        n = torch.arange(1, self.max_ngram + 1, device=tokens.device)  # (M,)
        last = tokens.gather(1, (end[:, None] - n).clamp(min=0))  # (B, M): column n-1 = the n-th token from the end
        key = _suffix_hashes(last)  # (B, M): column n-1 = the key of the last n tokens
        at = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)  # (B, M)
        found = (keys[at] == key) & (end[:, None] - n >= begin[:, None])  # (B, M)
        best_n = torch.where(found, n, 0).amax(1)  # (B,) the longest n found, 0: none
        best = follow[at.gather(1, (best_n - 1).clamp(min=0)[:, None])[:, 0]]  # (B,) where its continuation starts
        steps = torch.arange(length, device=tokens.device).clamp(max=self.horizon - 1)  # (L,)
        return texts[best[:, None] + steps].clamp(min=0), best_n  # (B, L), (B,)


def _suffix_hashes(last: torch.Tensor) -> torch.Tensor:
    """62-bit keys of every suffix of a text at once (the one n-gram hash of this module, for the index and the
    queries alike): ``last`` (..., M) holds the text's last M tokens newest first, ids >= -1; column n-1 of the
    result is the key of the last n tokens. Two 31-bit polynomial hashes, the length part of the key: the
    n-gram t_1..t_n hashes to n b^n + sum_j (t_j + 1) b^(n-j) mod p, a running sum over the reversed tokens
    (every product stays below 2**62: no int64 overflow)."""
    m = last.shape[-1]
    halves = []
    for modulus, base in zip(_MODULI, _BASES):
        power = _powers(base, modulus, m + 1, last.device)  # (M+1,) b^i mod p
        terms = (last + 1) * power[:m] % modulus  # (..., M): (t + 1) b^i, i = distance from the newest token
        lengths = torch.arange(1, m + 1, device=last.device)  # (M,)
        halves.append((terms.cumsum(-1) + lengths * power[1:]) % modulus)  # (..., M)
    return halves[0] * (1 << 31) + halves[1]  # (..., M) < 2**62


_CONSTANTS: dict = {}


def _device_constant(key: tuple, device, build) -> torch.Tensor:
    """``build()`` (a small constant tensor) on ``device``, built once per key and device: no host-to-device
    copy a round."""
    key = (*key, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = build().to(device)
    return _CONSTANTS[key]


def _powers(base: int, modulus: int, count: int, device) -> torch.Tensor:
    """(count,) b^i mod p."""
    return _device_constant(("powers", base, modulus, count), device,
                            lambda: torch.tensor([pow(base, i, modulus) for i in range(count)]))


def _build_index(texts: torch.Tensor, max_ngram: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted keys (M,) of every n-gram (n <= max_ngram) followed by ``horizon`` tokens of its own text,
    and where the first occurrence of each is continued (M,)."""
    position = torch.arange(texts.numel())  # (S,)
    is_separator = texts == SEPARATOR  # (S,)
    separators = torch.nonzero(is_separator)[:, 0]  # (T,) the last entry ends the last text
    text_id = torch.cumsum(is_separator, 0) - is_separator.long()  # (S,) a separator belongs to its text
    text_end = separators[text_id]  # (S,) the separator after each position
    text_start = torch.cat([separators.new_zeros(1), separators[:-1] + 1])[text_id]  # (S,)
    n = torch.arange(1, max_ngram + 1)  # (N,)
    last = texts[(position[:, None] - n + 1).clamp(min=0)]  # (S, N): the n-gram ending at each position, newest first
    indexed = (position[:, None] - n + 1 >= text_start[:, None]) & (position + horizon < text_end)[:, None]  # (S, N)
    keys = _suffix_hashes(last)[indexed]  # (P,) position-major: occurrences of a key in text order
    follow = (position + 1)[:, None].expand(-1, max_ngram)[indexed]  # (P,)
    keys, order = torch.sort(keys, stable=True)  # the earliest occurrence first within a key
    follow = follow[order]
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], follow[first]


@dataclass(frozen=True)
class LookupCandidates:
    """The lookup branch's candidates of a round, and the evidence behind them (per row)."""

    tokens: torch.Tensor  # (B, L) the continuation
    own_ngram: torch.Tensor  # (B,) the n of the row's own text's match (0: none)
    from_store: torch.Tensor  # (B,) bool: the tokens are the store's


def lookup_continuation(tokens: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, *, length: int,
                        max_ngram: int = 3, store: LookupStore | None = None) -> LookupCandidates:
    """The lookup branch's candidates: the row's own text (``ngram_continuation``, n <= ``max_ngram``);
    where that matched fewer than ``max_ngram`` tokens and ``store`` matched more, the store's."""
    own, own_n = ngram_continuation(tokens, begin, end, length=length, max_ngram=max_ngram)  # (B, L), (B,)
    if store is None:
        return LookupCandidates(own, own_n, torch.zeros_like(own_n, dtype=torch.bool))
    stored, stored_n = store.continuation(tokens, begin, end, length=length)  # (B, L), (B,)
    use = (own_n < max_ngram) & (stored_n > own_n)  # (B,)
    return LookupCandidates(torch.where(use[:, None], stored, own), own_n, use)


#: Estimated acceptance of lookup candidates, by source and matched n: (P(the first candidate is right),
#: P(the next is right | the ones before it were)). Measured teacher-forced at every answer position of 28
#: of our held-out prompts (13-40) with the shipped draft's store: ``benchmarks/lookup_rates.py``.
OWN_RATES = {1: (0.194, 0.676), 2: (0.524, 0.811), 3: (0.852, 0.919)}
STORE_RATES = {1: (0.096, 0.25), 2: (0.268, 0.382), 3: (0.307, 0.494), 4: (0.524, 0.648)}


def _rate_table(rates: dict[int, tuple[float, float]], device) -> torch.Tensor:
    """(max n + 1, 2) log rates by matched n; row 0 (no match) is -inf."""
    def build():
        table = torch.full((max(rates) + 1, 2), -torch.inf)
        for n, (first, next_) in rates.items():
            table[n] = torch.tensor([first, next_]).log()
        return table
    return _device_constant(("rates", tuple(sorted(rates.items()))), device, build)


def chain_log_value(matched: torch.Tensor, length: int, rates: dict[int, tuple[float, float]]) -> torch.Tensor:
    """(B, L): the estimated log probability that a lookup chain's first j + 1 candidates are all right,
    from the n its source matched (B,) (0: -inf everywhere): log first + j log next."""
    table = _rate_table(rates, matched.device)
    first, next_ = table[matched.clamp(max=table.shape[0] - 1)].unbind(-1)  # (B,) each
    steps = torch.arange(length, device=matched.device)  # (L,)
    return first[:, None] + steps * torch.where(torch.isinf(first), 0.0, next_)[:, None]  # (B, L)


@dataclass(frozen=True)
class LookupChains:
    """A round's lookup chains for ``tree.ranked_tree``, one per source (C: the own text, then the store's)."""

    tokens: torch.Tensor  # (B, C, L)
    log_value: torch.Tensor  # (B, C, L) estimated log acceptance of each candidate (-inf: the source found none)


def lookup_chains(tokens: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, *, length: int, max_ngram: int = 3,
                  store: LookupStore | None = None) -> LookupChains:
    """The row's own continuation and, given a ``store``, the store's, each with its candidates' estimated
    acceptance (``OWN_RATES``, ``STORE_RATES``): both compete in the ranked tree, which shares what they agree
    on (engine tau, docs/results.md: 2.784 -> 2.810 over keeping the better-valued one alone)."""
    own, own_n = ngram_continuation(tokens, begin, end, length=length, max_ngram=max_ngram)  # (B, L), (B,)
    chains, values = [own], [chain_log_value(own_n, length, OWN_RATES)]
    if store is not None:
        stored, stored_n = store.continuation(tokens, begin, end, length=length)  # (B, L), (B,)
        chains.append(stored)
        values.append(chain_log_value(stored_n, length, STORE_RATES))
    return LookupChains(torch.stack(chains, dim=1), torch.stack(values, dim=1))


def attach_lookup_store(draft, store: LookupStore | None) -> None:
    """Give ``draft`` a lookup store (``generate(pard_tree=N, pard_lookup=L)`` uses it); None removes it."""
    draft.__dict__["pard_lookup_store"] = store


def lookup_store(draft) -> LookupStore | None:
    """The lookup store ``draft`` carries (loaded from its folder's ``pard_lookup.safetensors``), or None."""
    return getattr(draft, "__dict__", {}).get("pard_lookup_store")
