"""Engines' error answers, translated: a refusal keeps what the engine said about it."""

from __future__ import annotations

from sluice.engines._errors import engine_error


def test_an_engine_refusal_keeps_its_param_and_string_code():
    vllm = b'{"error": {"message": "bad", "type": "BadRequestError", "param": "max_tokens", "code": 400}}'
    error = engine_error(400, vllm, "http://10.0.0.5:8000")
    assert (error.status, error.param, error.code, error.message) == (400, "max_tokens", None, "bad")
    openai = b'{"error": {"message": "long", "param": "messages", "code": "context_length_exceeded"}}'
    assert engine_error(400, openai, "r").code == "context_length_exceeded"
    assert engine_error(400, b"plain text", "r").param is None
