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

Tested against transformers 5.23 (``Cache`` made of ``CacheLayerMixin`` layers whose ``update`` is
called as ``update(key_states, value_states)`` with no cache position).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

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
        slots = self._owner.write_slots[:, None, :, None]  # (B, 1, T, 1)
        self.keys.scatter_(2, slots.expand_as(key_states), key_states)
        self.values.scatter_(2, slots.expand_as(value_states), value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.capacity, 0

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
        self.length: torch.Tensor | None = None  # (B,) live slots per row
        self.pad: torch.Tensor | None = None  # (B,) left-padding slots per row
        super().__init__(layers=[_RowSlotLayer(self) for _ in range(num_layers)])

    @property
    def trash_slot(self) -> int:
        return self.capacity - 1

    @property
    def usable_length(self) -> int:
        return self.capacity - 1

    def allocated_batch(self) -> int | None:
        layer = self.layers[0]
        return layer.keys.shape[0] if layer.is_initialized else None

    def begin(self, pad: torch.Tensor) -> None:
        """Start a new batch: every row empty, ``pad`` (B,) left-padding slots per row."""
        self.pad = pad
        self.length = torch.zeros_like(pad)

    def contiguous_slots(self, width: int) -> torch.Tensor:
        """Slots ``length_b + [0, width)`` for every row: (B, width)."""
        return self.length[:, None] + torch.arange(width, device=self.length.device)  # (B, W)

    def plan(self, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the write slots of the next forward; return its ``position_ids`` (B, T) and 4D mask.

        The mask is (B, 1, T, capacity): query at slot s of row b sees key k iff ``pad_b <= k <= s``,
        and always itself (so a padding query has one key and no NaN).
        """
        self.write_slots = slots
        positions = slots - self.pad[:, None]  # (B, T)
        positions = positions.clamp(min=0)
        if self.max_positions is not None:
            # Only speculative slots past the requested length can exceed it; they are never committed.
            positions = positions.clamp(max=self.max_positions - 1)
        keys = torch.arange(self.capacity, device=slots.device)  # (C,)
        query = slots[:, :, None]  # (B, T, 1)
        visible = (keys >= self.pad[:, None, None]) & (keys <= query)  # (B, T, C)
        visible = (visible | (keys == query))[:, None]  # (B, 1, T, C)
        if self.attn_implementation == "eager":
            additive = torch.zeros(visible.shape, dtype=dtype, device=slots.device)
            return positions, additive.masked_fill_(~visible, torch.finfo(dtype).min)
        return positions, visible

    def advance(self, n: torch.Tensor) -> None:
        """Commit ``n`` (B,) more slots per row; everything past the new length is stale."""
        self.length += n


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

    def __init__(self, *, max_cache_len: int | None = None, granularity: int = 64):
        self.max_cache_len = max_cache_len
        self.granularity = granularity
        self._caches: dict[str, PardStaticCache] = {}

    def capacity_for(self, needed: int) -> int:
        if self.max_cache_len is not None:
            if needed > self.max_cache_len:
                raise ValueError(
                    f"The PARD cache is too small: this call needs {needed} slots (prompt + max_new_tokens + "
                    f"2*K speculative slots) but max_cache_len={self.max_cache_len}. Pass a larger "
                    "max_cache_len to enable_pard(), or lower max_new_tokens / num_assistant_tokens."
                )
            return self.max_cache_len + 1
        steps = -(-needed // self.granularity)
        return steps * self.granularity + 1

    def cache(self, role: str, model, *, batch_size: int, needed: int) -> PardStaticCache:
        """The cache for ``role`` ("target" or "draft") able to hold ``needed`` slots for ``batch_size`` rows."""
        capacity = self.capacity_for(needed)
        config = model.config
        attn = getattr(config, "_attn_implementation", None) or "eager"
        cache = self._caches.get(role)
        reusable = (
            cache is not None
            and cache.capacity == capacity
            and cache.attn_implementation == attn
            and cache.allocated_batch() in (None, batch_size)
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
        return cache
