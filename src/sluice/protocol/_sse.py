"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` frames ending with ``data: [DONE]``."""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def sse_data(frame: bytes) -> bytes | None:
    """The joined ``data:`` payload of one frame, or ``None`` for frames without one (comments)."""
    if frame.startswith(b"data: ") and frame.count(b"\n") == 2:  # the usual one-line frame, fast
        return frame[6:-2]
    parts = [_one_space_off(line[5:]) for line in frame.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def _one_space_off(value: bytes) -> bytes:
    return value[1:] if value.startswith(b" ") else value


class SSEParser:
    """Splits a byte stream into complete SSE frames, however the bytes were chunked on the wire.

    ``feed`` returns each complete frame's bytes, ending in a blank line (``\\r\\n`` normalized to ``\\n``), to be
    forwarded as they are or read with ``sse_data``.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [part + b"\n\n" for part in parts]

    def tail(self) -> bytes:
        """Bytes received after the last complete frame (an unterminated frame)."""
        return self._buf
