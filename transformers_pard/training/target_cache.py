"""PARD-2 target passes precomputed to disk: the frozen target runs once per example, not once per epoch.

A PARD-2 step needs three things from the target for every real sequence of the batch (``target_pass.TargetPass``):
the features of ``pard2_target_layers``, the gold-token probabilities (CAT weights) and, for KD, the
logits. None of them changes during training, so for a run of several epochs this module computes
them once and the trainer reads them back:

* features: stored in ``dtype`` (float16 by default; the build refuses values that overflow it);
* gold probabilities ``g_u``: float32, from the exact logits;
* logits: not stored (V floats per token); recomputed as ``output_head(last hidden state)``, with the
  last hidden state taken from the features when layer -1 is among them (else stored beside them). The
  build checks on its first batch that the target's logits really are its output head on the last
  hidden state (a soft-capping model, e.g., is not); where not, KD from this cache is refused.

Folder layout: ``manifest.json`` (layers, dtype, target fingerprint, one entry per example) and
``shard-NNNNN.safetensors`` files holding ``<key>.features`` (L, D), ``<key>.gold`` (L,) and, where
needed, ``<key>.last`` (L, H). ``key`` is a digest of the example's token ids, so the cache serves
any order, batch size or COD draw; a sequence the cache lacks (other data, another ``max_length``)
is an error naming the fix, never a silent fallback to the live target.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CACHE_DTYPES
from .target_pass import TargetPass, pad_right, run_target

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
#: Examples per shard file.
SHARD_EXAMPLES = 256
#: Relative tolerance of the "logits == output head(last hidden state)" check at build time.
HEAD_TOLERANCE = 1e-3
STORAGE_DTYPES = {name: getattr(torch, name) for name in CACHE_DTYPES}


def sequence_key(input_ids: torch.Tensor | Sequence[int]) -> str:
    """Digest of one real sequence's token ids (the cache's key for it)."""
    ids = torch.as_tensor(input_ids, dtype=torch.int64).cpu().contiguous()
    return hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:20]


def _checksum(weight: torch.Tensor, samples: int = 1 << 16) -> float:
    """Sum of |w| over at most ``samples`` evenly strided entries (no full float64 copy of a big matrix)."""
    flat = weight.detach().reshape(-1)
    return float(flat[:: max(1, flat.numel() // samples)].double().abs().sum())


def target_fingerprint(target) -> dict:
    """Architecture sizes plus a checksum of the output head and the last parameter: (JSON-able)."""
    text = target.config.get_text_config()
    head = target.get_output_embeddings().weight
    last = list(target.parameters())[-1]
    return {
        "model_type": text.model_type,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
        "vocab_size": head.shape[0],
        "checksum": round(_checksum(head) + _checksum(last), 4),
    }


def _last_layer_column(layers: Sequence[int], hidden_size: int) -> slice | None:
    """Where the last hidden state (layer -1) sits inside the concatenated feature, if it does."""
    for i, layer in enumerate(layers):
        if layer == -1:
            return slice(i * hidden_size, (i + 1) * hidden_size)
    return None


def head_reproduces_logits(target, last_hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether ``logits`` (B, L, V) equal the output head on ``last_hidden`` (B, L, H), within tolerance."""
    with torch.no_grad():
        recomputed = target.get_output_embeddings()(last_hidden).float()  # (B, L, V)
    error = (recomputed - logits.float()).abs().max()
    return bool(error <= HEAD_TOLERANCE * logits.float().abs().max().clamp(min=1.0))


def _storable(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``features`` in the storage ``dtype``, refused where that overflows."""
    stored = features.to(dtype)
    if dtype != torch.float32 and not bool(torch.isfinite(stored).all()):
        raise ValueError(
            f"The target's features overflow {str(dtype)[6:]}: build the cache with dtype='float32' "
            "(or 'bfloat16')."
        )
    return stored


def _unique_sequences(examples: Sequence[Mapping], max_length: int | None) -> list[tuple[str, torch.Tensor]]:
    """(key, ids truncated to ``max_length``) of every distinct real sequence, in first-seen order."""
    sequences = {}
    for example in examples:
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[:max_length]
        sequences.setdefault(sequence_key(ids), ids)
    return list(sequences.items())


class _ShardWriter:
    """Collects per-sequence tensors into ``shard-NNNNN.safetensors`` files of ``SHARD_EXAMPLES`` each."""

    def __init__(self, folder: Path):
        self.folder, self.tensors, self.index, self.in_shard, self.entries = folder, {}, 0, 0, {}

    def add(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        length = next(iter(tensors.values())).shape[0]
        self.tensors.update({f"{key}.{name}": value.clone() for name, value in tensors.items()})
        self.entries[key] = {"shard": self.index, "length": length}
        self.in_shard += 1
        if self.in_shard >= SHARD_EXAMPLES:
            self.flush()

    def flush(self) -> None:
        if self.tensors:
            save_file(self.tensors, str(self.folder / f"shard-{self.index:05d}.safetensors"))
            self.tensors, self.index, self.in_shard = {}, self.index + 1, 0


def build_target_cache(
    target,
    examples: Sequence[Mapping],
    layers: Sequence[int],
    folder: str | Path,
    *,
    dtype: str = "float16",
    batch_size: int = 8,
    max_length: int | None = None,
) -> Path:
    """Run ``target`` once over every example (dicts with ``input_ids``, truncated to ``max_length`` as
    the collator does) and write the cache folder; returns it. The manifest is written last, so an
    interrupted build leaves a folder that ``TargetCache`` refuses and that the next build overwrites."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"Target cache dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}.")
    store, layers, folder = STORAGE_DTYPES[dtype], tuple(int(layer) for layer in layers), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    device = next(target.parameters()).device
    hidden = target.config.get_text_config().hidden_size
    store_last = _last_layer_column(layers, hidden) is None
    # one target pass gives the last hidden state too: appended to the layers when they lack it
    passed_layers = layers + (-1,) if store_last else layers
    last_in_pass, width = _last_layer_column(passed_layers, hidden), hidden * len(layers)
    sequences, writer, head_ok = _unique_sequences(examples, max_length), _ShardWriter(folder), None
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        out = run_target(target, *pad_right([s for _, s in chunk], device), passed_layers)  # (B, L, ...)
        last = out.features[..., last_in_pass]  # (B, L, H)
        head_ok = head_reproduces_logits(target, last, out.logits) if head_ok is None else head_ok
        features = _storable(out.features[..., :width], store).cpu()  # (B, L, D)
        last = _storable(last, store).cpu() if store_last and head_ok else None  # (B, L, H)
        gold = out.gold.to(device="cpu", dtype=torch.float32)  # (B, L)
        for b, (key, sequence) in enumerate(chunk):
            n = sequence.numel()
            stored = {"features": features[b, :n], "gold": gold[b, :n]}  # (L, D), (L,)
            writer.add(key, stored if last is None else {**stored, "last": last[b, :n]})  # + (L, H)
    writer.flush()
    manifest = {"format": FORMAT, "layers": list(layers), "dtype": dtype, "max_length": max_length,
                "target": target_fingerprint(target), "logits_from_last_hidden": bool(head_ok),
                "examples": writer.entries}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    logger.info("Target cache: %d sequences in %s.", len(writer.entries), folder)
    return folder


def is_target_cache(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


class TargetCache:
    """Reads a cache folder back as ``TargetPass`` batches (``target_pass``), checked against the run.

    ``target`` is the run's target: its fingerprint must match the one the cache was built from, and
    its output head recomputes the logits when ``need_logits`` (KD). ``layers`` must equal the cache's.
    """

    def __init__(self, folder: str | Path, *, target, layers: Sequence[int], need_logits: bool):
        self.folder = Path(folder)
        if not is_target_cache(self.folder):
            raise ValueError(
                f"{self.folder} is not a finished target cache (no {MANIFEST}): build it with "
                "training.target_cache.build_target_cache (the train CLI's --pard2-cache builds it when missing)."
            )
        manifest = json.loads((self.folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.folder}: target cache format {manifest.get('format')!r}, expected {FORMAT}.")
        if tuple(manifest["layers"]) != tuple(int(layer) for layer in layers):
            raise ValueError(
                f"{self.folder} holds features of layers {manifest['layers']}, the draft uses {list(layers)}: "
                "rebuild the cache (another folder) for these layers."
            )
        if manifest["target"] != target_fingerprint(target):
            raise ValueError(
                f"{self.folder} was built from another target ({manifest['target']}, this one is "
                f"{target_fingerprint(target)}): rebuild the cache with this target."
            )
        if need_logits and not manifest["logits_from_last_hidden"]:
            raise ValueError(
                f"This target's logits are not its output head applied to its last hidden state (e.g. logit "
                f"soft-capping), so {self.folder} cannot supply KD logits: train with kd_alpha=0 "
                "(--kd-alpha 0) from the cache, or without the cache."
            )
        self.manifest = manifest
        self.entries: dict[str, dict] = manifest["examples"]
        self.dtype = STORAGE_DTYPES[manifest["dtype"]]
        self.target = target
        self.need_logits = need_logits
        self.last_column = _last_layer_column(manifest["layers"], target.config.get_text_config().hidden_size)
        self._shards: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _tensor(self, key: str, name: str) -> torch.Tensor:
        shard = self.entries[key]["shard"]
        if shard not in self._shards:
            self._shards[shard] = safe_open(str(self.folder / f"shard-{shard:05d}.safetensors"), framework="pt")
        return self._shards[shard].get_tensor(f"{key}.{name}")

    def sequence(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(features (L, D), gold (L,), last hidden (L, H) or None) of one real sequence (L,)."""
        key = sequence_key(input_ids)
        if key not in self.entries:
            raise ValueError(
                f"A training sequence of {input_ids.numel()} tokens is not in the target cache {self.folder} "
                f"(built with max_length={self.manifest['max_length']}): the data or --max-length changed since "
                "it was built; rebuild it (another folder, or delete this one)."
            )
        features = self._tensor(key, "features")
        last = None
        if self.need_logits:
            last = features[:, self.last_column] if self.last_column is not None else self._tensor(key, "last")
        return features, self._tensor(key, "gold"), last

    def target_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TargetPass:
        """What ``run_target`` gives for (B, L) right-padded ids, from disk (features in float32)."""
        batch, length = input_ids.shape
        rows = [self.sequence(input_ids[b, attention_mask[b].bool()]) for b in range(batch)]
        dim = rows[0][0].shape[-1]
        features = torch.zeros(batch, length, dim)  # (B, L, D)
        gold = torch.ones(batch, length)  # (B, L); padding columns are never read
        last = torch.zeros(batch, length, rows[0][2].shape[-1]) if self.need_logits else None  # (B, L, H)
        for b, (f, g, h) in enumerate(rows):
            features[b, : len(f)] = f.float()
            gold[b, : len(g)] = g
            if last is not None:
                last[b, : len(h)] = h.float()
        device = input_ids.device
        logits = None
        if last is not None:
            head = self.target.get_output_embeddings()  # may sit on another device (a device map)
            with torch.no_grad():
                logits = head(last.to(device=head.weight.device, dtype=head.weight.dtype)).to(device)  # (B, L, V)
        return TargetPass(logits, features.to(device), gold.to(device))

    def features_of(self, examples: Sequence[Mapping], max_length: int | None = None) -> torch.Tensor:
        """The cached features of ``examples``' real tokens, stacked: (tokens, D) float32."""
        rows = [self.sequence(torch.as_tensor(e["input_ids"], dtype=torch.long)[:max_length])[0] for e in examples]
        return torch.cat(rows).float()
