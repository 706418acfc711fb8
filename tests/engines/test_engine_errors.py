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


VLLM_TOO_LONG = (b'{"error": {"message": "This model\'s maximum context length is 2048 tokens. However, your prompt '
                 b'contains 3000 input tokens, which exceeds this limit even without any output tokens. Please '
                 b'reduce the length of the input prompt.", "type": "BadRequestError", "param": "input_tokens", '
                 b'"code": 400}}')
VLLM_PROMPT_TOO_LONG = (b'{"error": {"message": "The decoder prompt (length 3000) is longer than the maximum model '
                        b'length of 2048. Make sure that `max_model_len` is no smaller than the number of text '
                        b'tokens.", '
                        b'"type": "BadRequestError", "param": null, "code": 400}}')
SGLANG_TOO_LONG = (b'{"object": "error", "message": "The input (3000 tokens) is longer than the model\'s context '
                   b'length (2048 tokens).", "type": "BadRequestError", "param": null, "code": 400}')


def test_a_prompt_too_long_for_the_context_is_context_length_exceeded_as_openai_says():
    for body in (VLLM_TOO_LONG, VLLM_PROMPT_TOO_LONG, SGLANG_TOO_LONG):
        error = engine_error(400, body, "http://10.0.0.5:8000", path="/v1/chat/completions")
        assert (error.status, error.type, error.code, error.param) == (
            400, "invalid_request_error", "context_length_exceeded", "messages"), body
    assert engine_error(400, VLLM_TOO_LONG, "r", path="/v1/completions").param == "prompt"
    assert engine_error(400, VLLM_TOO_LONG, "r", path="/v1/embeddings").param == "input"


def test_an_engine_failure_names_neither_the_engine_nor_what_it_said():
    body = b'{"error": {"message": "worker 10.0.0.5:8000 ran out of memory", "code": 500}}'
    error = engine_error(500, body, "http://10.0.0.5:8000")
    assert (error.status, error.code) == (502, "engine_error")
    assert "10.0.0.5" not in error.message and "8000" not in error.message
