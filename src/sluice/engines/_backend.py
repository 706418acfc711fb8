"""``--backend auto``: which engine suits a model, read from its ``config.json``; and the context length that
file declares.

Multimodal architectures (vision or audio towers) go to SGLang, text models to vLLM; the reason is returned so
the log can say why, and ``guessed`` says when there was no config to read (a hub id, a missing directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

_MULTIMODAL_HINTS = ("VL", "Vision", "Llava", "LLaVA", "InternVL", "MiniCPMV", "Idefics", "Mllama", "Pixtral",
                     "Qwen2Audio", "Paligemma", "Molmo", "Phi3V", "Phi4MM", "Gemma3ForConditionalGeneration")
_MULTIMODAL_KEYS = ("vision_config", "visual", "audio_config", "mm_vision_tower", "image_token_index")


class BackendChoice(NamedTuple):
    backend: str  # a dialect, or "sim"
    why: str
    guessed: bool = False  # no readable config.json: vLLM by default, which may be wrong


def read_model_config(model_path: str) -> dict[str, Any] | None:
    """The model directory's ``config.json``, or ``None`` (no such directory or file, or not JSON)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return config if isinstance(config, dict) else None


def choose_backend(model_path: str, requested: str) -> BackendChoice:
    if requested != "auto":
        return BackendChoice(requested, f"--backend {requested}")
    config = read_model_config(model_path)
    if config is None:
        where = "a Hugging Face hub id" if not Path(model_path).exists() else "a directory without one"
        return BackendChoice("vllm", f"no readable {Path(model_path) / 'config.json'} ({model_path} looks like "
                             f"{where}): a text model is assumed and vLLM chosen; pass --backend to be sure", True)
    archs = [str(a) for a in config.get("architectures") or []]
    arch = ", ".join(archs) or "unknown architecture"
    if any(key in config for key in _MULTIMODAL_KEYS) or any(h in a for a in archs for h in _MULTIMODAL_HINTS):
        return BackendChoice("sglang", f"{arch} is multimodal: SGLang")
    return BackendChoice("vllm", f"{arch} is a text model: vLLM")


def context_length(model_path: str) -> int | None:
    """The context length ``config.json`` declares (``max_position_embeddings``, or its text model's), if any."""
    config = read_model_config(model_path)
    if config is None:
        return None
    for section in (config, config.get("text_config") or {}):
        value = section.get("max_position_embeddings") if isinstance(section, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
