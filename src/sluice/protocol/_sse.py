"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` frames ending with ``data: [DONE]``."""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


class SSEParser:
    """Splits a byte stream into SSE events, however the bytes were chunked on the wire.

    ``feed`` returns complete events as ``(raw_frame, data)``: ``raw_frame`` is the frame's exact bytes
    (to forward untouched) and ``data`` the joined ``data:`` payload (``None`` for frames without one, such as
    comments).
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        self._buf += chunk
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        events: list[tuple[bytes, bytes | None]] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return events
            frame, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
            events.append((frame, _data_of(frame)))

    def tail(self) -> bytes:
        """Bytes received after the last complete event (an unterminated frame)."""
        return self._buf


def _data_of(frame: bytes) -> bytes | None:
    parts = [line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None
