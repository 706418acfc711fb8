"""A chat completion stream, told as the Responses API's events.

``response.created`` and ``response.in_progress``, the message and its text part opened, one
``response.output_text.delta`` per chat content delta, then the text, part and message closed and
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it) with the usage. An error frame
from the gateway (an engine that died mid-answer) ends it with ``error`` and ``response.failed``. Each frame is
``event: <type>`` + ``data: <json>``, numbered by ``sequence_number``; there is no ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluice.protocol._responses import ResponsesRequest, output_message, output_text, response_object
from sluice.protocol._sse import DONE, SSEParser, sse_data


class ResponseEvents:
    def __init__(self, req: ResponsesRequest, response_id: str, created_at: int) -> None:
        self._req = req
        self._id = response_id
        self._created_at = created_at
        self._item_id = f"msg_{response_id}"
        self._parser = SSEParser()
        self._sequence = 0
        self._text: list[str] = []
        self._usage: Any = None
        self._finish_reason: str | None = None
        self._over = False

    def opening(self) -> bytes:
        response = response_object(self._req, self._id, self._created_at, status="in_progress")
        return b"".join([
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
            self._event("response.output_item.added", output_index=0,
                        item=output_message(self._id, "", "in_progress")),
            self._event("response.content_part.added", item_id=self._item_id, output_index=0, content_index=0,
                        part=output_text("")),
        ])

    def feed(self, chunk: bytes) -> bytes:
        """The events for the chat stream's bytes ``chunk`` (however they were cut)."""
        out: list[bytes] = []
        for frame in self._parser.feed(chunk):
            data = sse_data(frame)
            if self._over or data is None or frame == DONE:
                continue
            out.append(self._translate(orjson.loads(data)))
        return b"".join(out)

    def closing(self) -> bytes:
        """The closing events; nothing after a failure."""
        if self._over:
            return b""
        self._over = True
        text = "".join(self._text)
        done = response_object(self._req, self._id, self._created_at, text=text, usage=self._usage,
                               finish_reason=self._finish_reason,
                               status="incomplete" if self._finish_reason == "length" else "completed")
        return b"".join([
            self._event("response.output_text.done", item_id=self._item_id, output_index=0, content_index=0,
                        text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=self._item_id, output_index=0, content_index=0,
                        part=output_text(text)),
            self._event("response.output_item.done", output_index=0, item=output_message(self._id, text, "completed")),
            self._event(f"response.{done['status']}", response=done),
        ])

    def _translate(self, chunk: Any) -> bytes:
        if not isinstance(chunk, dict):
            return b""
        if isinstance(error := chunk.get("error"), dict):
            return self._failed(error)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        self._finish_reason = choice.get("finish_reason") or self._finish_reason
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if not isinstance(content, str) or not content:
            return b""
        self._text.append(content)
        return self._event("response.output_text.delta", item_id=self._item_id, output_index=0, content_index=0,
                           delta=content, logprobs=[])

    def _failed(self, error: dict[str, Any]) -> bytes:
        self._over = True
        failed = response_object(self._req, self._id, self._created_at, status="failed", usage=self._usage)
        failed["error"] = {"code": error.get("code") or "server_error", "message": error.get("message") or ""}
        return b"".join([
            self._event("error", code=error.get("code"), message=error.get("message"), param=error.get("param")),
            self._event("response.failed", response=failed),
        ])

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
