"""``/v1/embeddings``: deterministic unit vectors derived from a hash of each input, so equal inputs embed equally."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import uuid

import orjson

from sluice.protocol import EmbeddingRequest
from sluice.sim._bodies import usage
from sluice.sim._tokenizer import count_prompt


def embed(item: str | list[int], dim: int) -> list[float]:
    """A unit vector of ``dim`` floats, a pure function of the input."""
    raw = item.encode() if isinstance(item, str) else orjson.dumps(item)
    rng = random.Random(hashlib.blake2b(raw, digest_size=16).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def embedding_response(req: EmbeddingRequest, *, created: int, default_dim: int) -> bytes:
    items = _inputs(req)
    dim = req.dimensions or default_dim
    data = []
    for i, item in enumerate(items):
        vec = embed(item, dim)
        encoded: list[float] | str = vec
        if req.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
        data.append({"index": i, "object": "embedding", "embedding": encoded})
    prompt_tokens = sum(count_prompt(item) for item in items)
    return orjson.dumps(
        {
            "id": "embd-" + uuid.uuid4().hex,
            "object": "list",
            "created": created,
            "model": req.model,
            "data": data,
            "usage": usage(prompt_tokens, 0),
        }
    )


def _inputs(req: EmbeddingRequest) -> list[str | list[int]]:
    value = req.input
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(x, int) for x in value):
        return [value]  # type: ignore[list-item]
    return list(value)  # type: ignore[arg-type]
