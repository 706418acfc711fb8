"""One gateway process started: the port bound before anything else runs, the banner once it serves.

A taken port is found before the engines start or the banner speaks (one line, exit status 3), and "listening"
is said only once uvicorn accepts connections on the socket bound here. The socket is bound, not listening, while
the app starts (engines launched, state opened): a client connecting then is refused, not left waiting.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import uvicorn

from sluice.clock import Clock

STARTUP_POLL_S = 0.05


def bind_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), not yet listening; ``OSError`` if it is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, never past a listener
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_then_announce(server: uvicorn.Server, sock: socket.socket, announce: Callable[[], None],
                              clock: Clock) -> None:
    """Run ``server`` on ``sock``; call ``announce`` once it has started serving (never if it failed to start)."""
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await clock.sleep(STARTUP_POLL_S)
    if server.started:
        announce()
    await serving
