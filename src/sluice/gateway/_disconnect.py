"""A client that left: what the request's work raises when it notices (an exchange's ``watching()`` turns the
cancellation the client's leaving caused into it; an ASGI route reads it from ``receive``)."""

from __future__ import annotations


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was complete."""
