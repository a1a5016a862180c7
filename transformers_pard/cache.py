"""Static KV caches for the PARD engine: the only module that touches transformers' cache internals.

Layout (one cache per model, allocated once and reused across ``generate`` calls)::

    slot:   0 .. pad_b-1 | pad_b .. length_b-1 | length_b .. capacity-2 | capacity-1
    row b:  left padding | live tokens          | stale (rejected) / free | trash

* Every row has its own ``length`` (live slots, left padding included). Rows accept different numbers
  of tokens per round, so lengths diverge; positions are ``slot - pad``.
* Rewinding is free: a rejected token is simply left past ``length`` and is overwritten by the next
  forward, which always writes contiguously from ``length``. Queries never see it because a query at
  slot ``s`` attends only to slots ``pad <= k <= s``.
* Filler columns (used to give every row the same input width) write to the trash slot, which no
  real query can reach.
* Windowed reads (CPU): attention reads slots ``[0, W)`` only, W = the highest real query slot + 1
  rounded up to 64, not the whole capacity (a compiled graph takes W as its one dynamic size). On a
  2-core CPU this took a SmolLM2 verify's attention from ~10 % of the round to ~3 %.

Tested against transformers 5.23 (``Cache`` made of ``CacheLayerMixin`` layers whose ``update`` is
called as ``update(key_states, value_states)`` with no cache position).
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.generation.utils import GenerateDecoderOnlyOutput

#: Attention implementations that accept our 4D per-row mask.
SUPPORTED_ATTENTION = ("sdpa", "eager")


class _RowSlotLayer(CacheLayerMixin):
    """One layer's keys/values; writes go to the per-row slots chosen by the owning cache."""

    is_compileable = True

    def __init__(self, owner: "PardStaticCache"):
        super().__init__()
        self._owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads = key_states.shape[:2]
        capacity = self._owner.capacity
        self.keys = key_states.new_zeros(batch, heads, capacity, key_states.shape[-1])  # (B, H, C, Dk)
        self.values = value_states.new_zeros(batch, heads, capacity, value_states.shape[-1])  # (B, H, C, Dv)
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # keys[b, :, slots[b, t]] = key_states[b, :, t]. An index_put_, not a scatter_: inductor writes an
        # index_put into a graph input in place, while a scatter_ became a clone of every layer's cache inside
        # the graph plus a copy back at its end (the copy alone 2.8 ms of a SmolLM2 verify on a 2-core CPU).
        slots = self._owner.write_slots  # (B, T)
        rows = torch.arange(slots.shape[0], device=slots.device)[:, None]  # (B, 1)
        self.keys[rows, :, slots] = key_states.transpose(1, 2)  # (B, T, H, Dk) into (B, H, C, Dk)
        self.values[rows, :, slots] = value_states.transpose(1, 2)  # (B, T, H, Dv)
        # Attention reads only the first `window` slots (the mask's width, see PardStaticCache.plan).
        window = self._owner.mask.shape[-1]
        return self.keys[:, :, :window], self.values[:, :, :window]  # (B, H, W, D)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.mask.shape[-1], 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self._owner.capacity


class PardStaticCache(Cache):
    """A static cache with per-row write slots and per-row live lengths (see module docstring)."""

    def __init__(self, *, num_layers: int, capacity: int, max_positions: int | None, attn_implementation: str):
        if attn_implementation not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"PARD needs a model loaded with attn_implementation in {SUPPORTED_ATTENTION} (per-row 4D "
                f"attention masks), got {attn_implementation!r}. Reload it with "
                "`from_pretrained(..., attn_implementation='sdpa')`."
            )
        self.capacity = capacity  # includes the trash slot
        self.max_positions = max_positions
        self.attn_implementation = attn_implementation
        self.write_slots: torch.Tensor | None = None  # (B, T) set by `plan` before every forward
        self.mask: torch.Tensor | None = None  # (B, 1, T, W) the attention mask `plan` built for it
        #: Attention reads slots [0, W), W = the highest real query slot + 1 rounded up to this many
        #: slots (None: the whole capacity, W = C). Needs one host read of the lengths a forward. Set by
        #: the cache manager for each call (``PardCacheManager.cache(windowed=...)``).
        self.window_granularity: int | None = None
        self.length: torch.Tensor | None = None  # (B,) live slots per row
        self.pad: torch.Tensor | None = None  # (B,) left-padding slots per row
        super().__init__(layers=[_RowSlotLayer(self) for _ in range(num_layers)])

    @property
    def trash_slot(self) -> int:
        return self.capacity - 1

    @property
    def usable_length(self) -> int:
        return self.capacity - 1

    def fits(self, batch_size: int, dtype: torch.dtype) -> bool:
        """Whether the allocated tensors (if any yet) hold ``batch_size`` rows of ``dtype``."""
        layer = self.layers[0]
        return not layer.is_initialized or (layer.keys.shape[0], layer.keys.dtype) == (batch_size, dtype)

    def begin(self, pad: torch.Tensor) -> None:
        """Start a new batch: every row empty, ``pad`` (B,) left-padding slots per row."""
        self.pad = pad
        self.length = torch.zeros_like(pad)

    def contiguous_slots(self, width: int) -> torch.Tensor:
        """Slots ``length_b + [0, width)`` for every row: (B, width)."""
        return self.length[:, None] + torch.arange(width, device=self.length.device)  # (B, W)

    def plan(self, slots: torch.Tensor, dtype: torch.dtype, *, offsets: torch.Tensor | None = None,
             attention: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the write slots of the next forward; return its ``position_ids`` (B, T) and 4D mask.

        The mask is (B, 1, T, capacity): query at slot s of row b sees key k iff ``pad_b <= k <= s``,
        and always itself (so a padding query has one key and no NaN).

        A token-tree block (``offsets`` (B, T) position offsets from the block's first slot, ``attention``
        (B, T, T) who sees whom inside the block; ``slots`` then must be ``contiguous_slots(T)``): query
        j sees the live keys ``pad_b <= k < length_b`` and the block slots ``length_b + j'`` with
        ``attention[b, j, j']``.
        """
        self.write_slots = slots
        positions = slots - self.pad[:, None] if offsets is None else (self.length - self.pad)[:, None] + offsets
        positions = positions.clamp(min=0)  # (B, T)
        if self.max_positions is not None:
            # Only speculative slots past the requested length can exceed it; they are never committed.
            positions = positions.clamp(max=self.max_positions - 1)
        keys = torch.arange(self._window(slots), device=slots.device)  # (W,)
        if attention is None:
            query = slots[:, :, None]  # (B, T, 1)
            visible = (keys >= self.pad[:, None, None]) & (keys <= query)  # (B, T, W)
            # Every query sees itself; a filler query (trash slot, past the window) sees slot 0 instead.
            visible = visible | (keys == query.masked_fill(query == self.trash_slot, 0))
            visible = visible[:, None]  # (B, 1, T, W)
        else:
            visible = self._tree_visibility(keys, attention)[:, None]  # (B, 1, T, W)
        if self.attn_implementation == "eager":
            additive = torch.zeros(visible.shape, dtype=dtype, device=slots.device)
            visible = additive.masked_fill_(~visible, torch.finfo(dtype).min)
        self.mask = visible
        return positions, visible

    def _window(self, slots: torch.Tensor) -> int:
        """How many slots the next forward's attention reads: the whole capacity, or (windowed) the highest
        real query slot + 1 rounded up to ``window_granularity`` (at most every slot but the trash)."""
        if self.window_granularity is None:
            return self.capacity
        highest = int(slots.masked_fill(slots == self.trash_slot, 0).max())
        step = self.window_granularity
        return min(-(-(highest + 1) // step) * step, self.trash_slot)

    def _tree_visibility(self, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(B, T, C): live keys for every query, plus the block slots its tree attention allows."""
        width = attention.shape[-1]
        live = (keys >= self.pad[:, None]) & (keys < self.length[:, None])  # (B, C)
        rel = keys - self.length[:, None]  # (B, C) index into the block
        in_block = (rel >= 0) & (rel < width)
        block = attention.gather(2, rel.clamp(0, width - 1)[:, None, :].expand(-1, attention.shape[1], -1))  # (B, T, C)
        return live[:, None, :] | (block & in_block[:, None, :])

    def gather_path(self, path_slots: torch.Tensor, *, move=None) -> None:
        """Move the KV of block slot ``length + path_slots[b, j]`` to ``length + j`` (B, J) in every layer:
        a token tree's accepted path becomes contiguous before ``advance`` commits it. ``move``:
        ``move_slots`` or a compiled copy of it (one kernel instead of two small ops per layer tensor)."""
        source = self.length[:, None] + path_slots  # (B, J)
        target = self.length[:, None] + torch.arange(path_slots.shape[1], device=path_slots.device)  # (B, J)
        tensors = [tensor for layer in self.layers for tensor in (layer.keys, layer.values)]
        (move or move_slots)(tensors, source, target)

    def advance(self, n: torch.Tensor) -> None:
        """Commit ``n`` (B,) more slots per row; everything past the new length is stale."""
        self.length += n


def move_slots(tensors: list[torch.Tensor], source: torch.Tensor, target: torch.Tensor) -> None:
    """``tensor[b, :, target[b, j]] = tensor[b, :, source[b, j]]`` for every (B, H, C, D) tensor, in place;
    all sources are read before any slot is written. An index_put_, which inductor keeps in place on a
    graph input (a scatter_ would copy the whole cache)."""
    rows = torch.arange(source.shape[0], device=source.device)[:, None]  # (B, 1)
    for tensor in tensors:
        tensor[rows, :, target] = tensor[rows, :, source]  # (B, J, H, D)


def _generate_cache_field() -> str:
    names = {f.name for f in fields(GenerateDecoderOnlyOutput)}
    return "cache" if "cache" in names else "past_key_values"


#: Name of the cache in ``generate``'s outputs and kwargs: ``cache`` from transformers 5.24 on.
GENERATE_CACHE_FIELD = _generate_cache_field()


def cache_keyword(model) -> str:
    """The keyword a model's forward takes its cache by: ``cache`` (transformers >= 5.24, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (older)."""
    explicit = getattr(model, "pard_cache_keyword", None)
    if explicit is not None:
        return explicit
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _num_attention_layers(config) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text_config.num_hidden_layers


def _max_positions(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "max_position_embeddings", None)


class PardCacheManager:
    """Owns the target's and the draft's caches; allocates once and reuses them across calls.

    ``max_cache_len`` fixes the capacity (useful with ``torch.compile``: no reallocation, no
    recompilation); a request that does not fit raises. Without it the capacity grows in steps of
    ``granularity`` slots as needed.
    """

    def __init__(self, *, max_cache_len: int | None = None, granularity: int = 64, static: bool = False):
        self.max_cache_len = max_cache_len
        self.granularity = granularity
        #: Compiled forwards: grow by doubling from ``STATIC_START`` and never shrink, so a graph is
        #: built once per capacity (a few in a process's life), never for every new request length.
        self.static = static
        self._caches: dict[str, PardStaticCache] = {}

    STATIC_START = 512

    def capacity_for(self, needed: int, current: int | None = None) -> int:
        if self.max_cache_len is not None:
            if needed > self.max_cache_len:
                raise ValueError(
                    f"The PARD cache is too small: this call needs {needed} slots (prompt + max_new_tokens + "
                    f"2*K speculative slots) but max_cache_len={self.max_cache_len}. Pass a larger "
                    "max_cache_len to enable_pard(), or lower max_new_tokens / num_assistant_tokens."
                )
            return self.max_cache_len + 1
        if self.static:
            capacity = max(self.STATIC_START, (current or 0) - 1)
            while capacity < needed:
                capacity *= 2
            return capacity + 1
        steps = -(-needed // self.granularity)
        return steps * self.granularity + 1

    #: Slots a windowed attention read rounds up to (see ``PardStaticCache.plan``).
    WINDOW_GRANULARITY = 64

    def cache(self, role: str, model, *, batch_size: int, needed: int, windowed: bool = False) -> PardStaticCache:
        """The cache for ``role`` ("target" or "draft") able to hold ``needed`` slots for ``batch_size`` rows.
        ``windowed``: attention reads only the slots in use (rounded up), not the whole capacity."""
        cache = self._caches.get(role)
        capacity = self.capacity_for(needed, cache.capacity if cache is not None else None)
        config = model.config
        attn = getattr(config, "_attn_implementation", None) or "eager"
        reusable = (
            cache is not None
            and cache.capacity == capacity
            and cache.attn_implementation == attn
            and cache.fits(batch_size, model.dtype)  # another draft of the role may run in another dtype
            and len(cache.layers) == _num_attention_layers(config)
        )
        if not reusable:
            cache = PardStaticCache(
                num_layers=_num_attention_layers(config),
                capacity=capacity,
                max_positions=_max_positions(config),
                attn_implementation=attn,
            )
            self._caches[role] = cache
        cache.window_granularity = self.WINDOW_GRANULARITY if windowed else None
        return cache
