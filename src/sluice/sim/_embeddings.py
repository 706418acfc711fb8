"""``/v1/embeddings``: deterministic unit vectors derived from a hash of each input, so equal inputs embed equally.

The request is held to the model, as vLLM holds it: ``dimensions`` at most the model's own (``embedding_dim``;
vLLM refuses any other than its Matryoshka sizes), each input within the context (``max_model_len``), token ids
within the vocabulary. So the work is bounded: at most 2048 inputs (the protocol's bound) of ``embedding_dim``
floats each.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import uuid

import orjson

from sluice.errors import InvalidRequestError
from sluice.protocol import EmbeddingRequest
from sluice.sim._bodies import usage
from sluice.sim._tokenizer import check_ids, count_prompt


def embed(item: str | list[int], dim: int) -> list[float]:
    """A unit vector of ``dim`` floats, a pure function of the input."""
    raw = item.encode() if isinstance(item, str) else orjson.dumps(item)
    rng = random.Random(hashlib.blake2b(raw, digest_size=16).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def embedding_response(req: EmbeddingRequest, *, created: int, default_dim: int, max_model_len: int) -> bytes:
    """The response; ``default_dim`` is the model's own size, the most ``dimensions`` may ask for."""
    items = _inputs(req)
    dim = req.dimensions or default_dim
    if dim > default_dim:
        raise InvalidRequestError(
            f"dimensions must be between 1 and {default_dim} for this model, not {dim}.", param="dimensions"
        )
    counts = []
    for item in items:
        check_ids(item, param="input")
        counts.append(count_prompt(item))
        if counts[-1] > max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{counts[-1]} tokens in the input for embedding generation. Please reduce the length of the input.",
                param="input", code="context_length_exceeded",
            )
    data = []
    for i, item in enumerate(items):
        vec = embed(item, dim)
        encoded: list[float] | str = vec
        if req.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
        data.append({"index": i, "object": "embedding", "embedding": encoded})
    prompt_tokens = sum(counts)
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
    if value and isinstance(value[0], int):  # one input of token ids (the union is decided by its first item)
        return [value]
    return list(value)  # type: ignore[arg-type]
