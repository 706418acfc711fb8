"""OpenAI wire models and SSE framing, shared by the gateway and the engine simulator."""

from sluice.protocol._chat import ChatCompletionRequest, ChatMessage
from sluice.protocol._completions import CompletionRequest
from sluice.protocol._embeddings import EmbeddingRequest
from sluice.protocol._errors import ErrorDetail, ErrorResponse
from sluice.protocol._models import ModelCard, ModelList
from sluice.protocol._response_events import ResponseEvents
from sluice.protocol._responses import ResponsesRequest, chat_body, response_from_chat
from sluice.protocol._sse import DONE, SSEParser, sse_data, sse_event
from sluice.protocol._usage import StreamOptions, Usage
from sluice.protocol._validation import parse_request

__all__ = [
    "DONE",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ErrorDetail",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "ResponseEvents",
    "ResponsesRequest",
    "SSEParser",
    "StreamOptions",
    "Usage",
    "chat_body",
    "parse_request",
    "response_from_chat",
    "sse_data",
    "sse_event",
]
