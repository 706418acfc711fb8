"""``--backend auto``: which engine suits a model, read from its ``config.json``.

Multimodal architectures (vision or audio towers) go to SGLang, text models to vLLM; the reason is returned so
the log can say why.
"""

from __future__ import annotations

import json
from pathlib import Path

from sluice.config import Dialect

_MULTIMODAL_HINTS = ("VL", "Vision", "Llava", "LLaVA", "InternVL", "MiniCPMV", "Idefics", "Mllama", "Pixtral",
                     "Qwen2Audio", "Paligemma", "Molmo", "Phi3V", "Phi4MM", "Gemma3ForConditionalGeneration")
_MULTIMODAL_KEYS = ("vision_config", "visual", "audio_config", "mm_vision_tower", "image_token_index")


def choose_backend(model_path: str, requested: str) -> tuple[Dialect, str]:
    if requested != "auto":
        return requested, f"--backend {requested}"  # type: ignore[return-value]
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return "vllm", f"no readable {config_file}: a text model is assumed, vLLM"
    archs = [str(a) for a in config.get("architectures") or []]
    arch = ", ".join(archs) or "unknown architecture"
    if any(key in config for key in _MULTIMODAL_KEYS) or any(h in a for a in archs for h in _MULTIMODAL_HINTS):
        return "sglang", f"{arch} is multimodal: SGLang"
    return "vllm", f"{arch} is a text model: vLLM"
