"""transformers_pard ("Transformers+"): lossless PARD parallel-draft speculative decoding for HF transformers.

    from transformers_pard import PardAutoModelForCausalLM
    target = PardAutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-7B-Instruct")
    draft = PardAutoModelForCausalLM.from_pretrained("amd/PARD-Qwen2.5-0.5B")
    out = target.generate(input_ids, pard_draft=draft, max_new_tokens=256)
"""

from .draft_config import DEFAULT_K, is_pard_draft, mask_token_id
from .engine import PardStats
from .generation import PardGenerateOutput, PardGenerationMixin, PardOptions
from .lookup import LookupStore
from .modeling import PardAutoModelForCausalLM, enable_pard

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_K",
    "LookupStore",
    "PardAutoModelForCausalLM",
    "PardGenerateOutput",
    "PardGenerationMixin",
    "PardOptions",
    "PardStats",
    "enable_pard",
    "is_pard_draft",
    "mask_token_id",
]
