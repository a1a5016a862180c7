"""PARD-2 drafts: the target-feature projection, its checkpoint formats, and feature alignment.

Target-dependent mode (PARD_NOTES section 3): the feature of position u is the concatenation of the
target's hidden states at u over ``pard2_target_layers`` (indices into ``output_hidden_states``).
The draft's input embedding at position t gets ``pard2_scale * target_proj(feature(t-1))`` (zeros at
position 0); every mask slot of a round gets the feature of that round's last real token.
Target-independent mode is the same draft with nothing added.

Checkpoints: config keys ``pard2``, ``pard2_scale``, ``pard2_target_dim``, ``pard2_target_layers``,
``pard2_proj_bias`` (+ ``spd_type="pard2"``). The projection lives in ``pard2_proj.safetensors``
(ours) and/or ``warp_model.bin`` (the published format: a plain state dict with
``target_proj.weight`` / ``target_proj.bias``, read with ``torch.load(weights_only=True)`` only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

PROJ_SAFETENSORS = "pard2_proj.safetensors"
WARP_FILE = "warp_model.bin"
PROJ_PREFIX = "target_proj."
MODES = ("dependent", "independent")


@dataclass(frozen=True)
class Pard2Config:
    scale: float
    target_dim: int
    target_layers: tuple[int, ...]
    proj_bias: bool

    @classmethod
    def from_model_config(cls, config) -> "Pard2Config | None":
        if not getattr(config, "pard2", False):
            return None
        return cls(
            scale=float(config.pard2_scale),
            target_dim=int(config.pard2_target_dim),
            target_layers=tuple(int(i) for i in config.pard2_target_layers),
            proj_bias=bool(getattr(config, "pard2_proj_bias", False)),
        )


def pard2_fit_problem(target_config, pard2: Pard2Config) -> str | None:
    """Why a PARD-2 draft's projection cannot take this target's features, or None when it fits: the
    feature size must be hidden x len(layers) and every layer an index into ``output_hidden_states``."""
    text_config = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    hidden, num_states = text_config.hidden_size, text_config.num_hidden_layers + 1
    expected = hidden * len(pard2.target_layers)
    bad_layers = [i for i in pard2.target_layers if not -num_states <= i < num_states]
    if expected == pard2.target_dim and not bad_layers:
        return None
    return (f"This PARD-2 draft expects target features of size {pard2.target_dim} from layers "
            f"{list(pard2.target_layers)}, but this target gives {hidden} x {len(pard2.target_layers)} = "
            f"{expected} over {num_states} hidden states" + (f" (no layer {bad_layers})" if bad_layers else "") + ".")


def make_projection(draft, pard2: Pard2Config) -> nn.Linear:
    """A fresh ``target_proj`` (target feature -> draft hidden) attached to ``draft`` as ``draft.target_proj``."""
    hidden = draft.config.get_text_config().hidden_size
    embedding = draft.get_input_embeddings().weight
    proj = nn.Linear(pard2.target_dim, hidden, bias=pard2.proj_bias, device=embedding.device, dtype=embedding.dtype)
    draft.target_proj = proj
    return proj


class StandardizedProjection(nn.Linear):
    """``target_proj`` as trained with standardized features: ``W ((f - mean) / std) + b``.

    Raw target features differ in scale by orders of magnitude between dimensions and layers, so a
    zero-initialised projection trained with Adam injects mostly noise at first; on standardized
    features every input dimension moves the output alike. The function is still affine in ``f``, so
    it is stored folded, as the plain ``nn.Linear`` of the published format:
    ``weight = W / std``, ``bias = b - (W / std) @ mean`` (``folded_state`` / ``load_folded_state``).
    A zero feature (no predecessor) maps to ``-mean / std`` here and to ``bias`` folded: the same.
    """

    def __init__(self, in_features: int, out_features: int, mean: torch.Tensor, std: torch.Tensor, **factory):
        super().__init__(in_features, out_features, bias=True, **factory)
        self.register_buffer("feature_mean", mean.to(self.weight), persistent=False)  # (D,)
        self.register_buffer("feature_std", std.to(self.weight), persistent=False)  # (D,)

    @classmethod
    def wrap(cls, proj: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> "StandardizedProjection":
        """The same affine map as ``proj`` (a plain ``nn.Linear``), reparameterised on standardized features."""
        new = cls(proj.in_features, proj.out_features, mean, std, device=proj.weight.device, dtype=proj.weight.dtype)
        state = {"weight": proj.weight.detach()}
        state["bias"] = proj.bias.detach() if proj.bias is not None else torch.zeros_like(new.bias)
        new.load_folded_state(state)
        return new

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear((features - self.feature_mean) / self.feature_std, self.weight, self.bias)

    def folded_state(self) -> dict[str, torch.Tensor]:
        weight = self.weight / self.feature_std  # (H, D)
        return {"weight": weight, "bias": self.bias - weight @ self.feature_mean}

    def load_folded_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"] * self.feature_std)
            self.bias.copy_(state["bias"] + state["weight"] @ self.feature_mean)


def projection_state(proj: nn.Linear) -> dict[str, torch.Tensor]:
    """What is stored for ``proj``: its folded state (``StandardizedProjection``) or its state dict."""
    return proj.folded_state() if isinstance(proj, StandardizedProjection) else proj.state_dict()


def load_projection_state(proj: nn.Linear, state: dict[str, torch.Tensor]) -> None:
    """Load a stored (folded) projection into ``proj``, unfolding it for a ``StandardizedProjection``."""
    if isinstance(proj, StandardizedProjection):
        proj.load_folded_state(state)
    else:
        proj.load_state_dict(state)


def _check_state_dict(state: object, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{source} must hold a plain state dict of tensors (names -> torch.Tensor); refusing it.")
    return state


def read_projection_state(folder: str) -> dict[str, torch.Tensor]:
    """``target_proj`` weights from our safetensors file, else from ``warp_model.bin`` (tensors only)."""
    path = os.path.join(folder, PROJ_SAFETENSORS)
    if os.path.exists(path):
        state = load_file(path)
    else:
        path = os.path.join(folder, WARP_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No PARD-2 projection in {folder}: expected {PROJ_SAFETENSORS} or {WARP_FILE}.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses any pickle that is not plain tensors/containers
            raise ValueError(f"{path} is not a plain tensor state dict ({error}); refusing to unpickle it.") from None
        state = _check_state_dict(state, path)
    return {key.removeprefix(PROJ_PREFIX): value for key, value in state.items() if key.startswith(PROJ_PREFIX)}


def load_projection(draft, folder: str) -> nn.Linear | None:
    """Attach the stored ``target_proj`` to a PARD-2 ``draft`` (None for a PARD-1 draft)."""
    pard2 = Pard2Config.from_model_config(draft.config)
    if pard2 is None:
        return None
    proj = make_projection(draft, pard2)
    state = read_projection_state(folder)
    missing, unexpected = proj.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"PARD-2 projection in {folder} does not fit pard2_target_dim / pard2_proj_bias: "
                         f"missing {missing}, unexpected {unexpected}.")
    return proj


def save_projection(draft, folder: str) -> None:
    """Write the projection as safetensors (ours) and as ``warp_model.bin`` (existing readers)."""
    state = {PROJ_PREFIX + key: value.detach().cpu().contiguous() for key, value in projection_state(draft.target_proj).items()}
    save_file(state, os.path.join(folder, PROJ_SAFETENSORS), metadata={"format": "pt"})
    torch.save(state, os.path.join(folder, WARP_FILE))


# ----------------------------------------------------------------------------------------------
# Features and their alignment
# ----------------------------------------------------------------------------------------------


def target_features(hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...]) -> torch.Tensor:
    """Concatenate the chosen layers' hidden states: (B, T, H * len(layers))."""
    return torch.cat([hidden_states[i] for i in layers], dim=-1)


def shift_right(features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Row t gets the feature of t-1 (zeros at each row's first real position and on padding)."""
    shifted = torch.cat([torch.zeros_like(features[:, :1]), features[:, :-1]], dim=1)  # (B, T, D)
    predecessor_real = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask[:, :-1]], dim=1)
    return shifted * predecessor_real[..., None].to(shifted.dtype)


def draft_round_features(unseen_features: torch.Tensor, num_unseen: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """Features for a right-aligned draft input ``[filler][unseen][mask]*(K-1)``: (B, width, D).

    Unseen token i (0-based) gets ``unseen_features[:, i]`` (the feature of its predecessor); every
    mask gets the last unseen token's feature; filler gets zeros.
    """
    cols = torch.arange(width, device=unseen_features.device)  # (W,)
    first_real = width - (k - 1) - num_unseen[:, None]  # (B, 1)
    rel = cols - first_real  # (B, W)
    is_unseen = (rel >= 0) & (rel < num_unseen[:, None])
    is_mask = cols >= width - (k - 1)
    index = torch.where(is_mask, num_unseen[:, None] - 1, rel).clamp(0, unseen_features.shape[1] - 1)  # (B, W)
    gathered = unseen_features.gather(1, index[..., None].expand(-1, -1, unseen_features.shape[-1]))
    return gathered * (is_unseen | is_mask)[..., None].to(gathered.dtype)


def draft_inputs_embeds(draft, input_ids: torch.Tensor, features: torch.Tensor, scale: float) -> torch.Tensor:
    """``embed(input_ids) + scale * target_proj(features)``: (B, T, H_draft)."""
    embeds = draft.get_input_embeddings()(input_ids)
    return embeds + scale * draft.target_proj(features.to(embeds.dtype))
