"""How the gateway is served: uvicorn (uvloop, httptools) with Sluice's HTTP limits, the hot routes served
straight from its protocol (``_http_protocol``, ``_exchange``).

``sluice serve`` and the tests' live servers both build their server here, so tests meet the limits users get.
With ``server.ops_port``, the server listens on a second socket, the operations port (admin API, metrics), bound
before the app starts; every worker of several binds it too (SO_REUSEPORT).
At start the soft file-descriptor limit is raised to the hard one (as nginx's ``worker_rlimit_nofile`` or a
systemd ``LimitNOFILE`` would), and the connection cap is sized to it unless ``server.max_connections`` is set.
"""

from __future__ import annotations

import logging
import resource
import socket
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp

from sluice.config import ServerSettings
from sluice.gateway._asgi import GatewayApp
from sluice.gateway._http_protocol import HttpLimits, protocol_class
from sluice.gateway._startup import bind_port
from sluice.telemetry import GatewayMetrics

log = logging.getLogger("sluice")

# File descriptors kept for everything but client connections: listening sockets, Redis, log files, engine
# processes' pipes, metrics scrapes, and connections being refused or shed.
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start (also a supervisor's)
FD_RESERVE = 256
MIN_CONNECTIONS = 16
LISTEN_BACKLOG = 2048  # uvicorn's default


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(fd_limit: int) -> int:
    """Client connections a process with ``fd_limit`` descriptors can hold: each may need a second descriptor,
    its connection to an engine, while its request runs."""
    return max(MIN_CONNECTIONS, (fd_limit - FD_RESERVE) // 2)


def http_limits(server: ServerSettings, fd_limit: int) -> HttpLimits:
    cap = connection_cap(fd_limit)
    if server.max_connections is not None and server.max_connections > cap:
        log.warning("server.max_connections=%d is more than a file-descriptor limit of %d can hold (about %d): "
                    "past that, accepting fails and healthy requests with it", server.max_connections, fd_limit, cap)
    return HttpLimits(max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                      header_timeout_s=server.header_timeout_s, max_connections=server.max_connections or cap)


def uvicorn_config(app: ASGIApp, server: ServerSettings, limits: HttpLimits,
                   metrics: GatewayMetrics | None = None) -> uvicorn.Config:
    protocol = protocol_class(limits, metrics, app.hot() if isinstance(app, GatewayApp) else None)
    if metrics is not None:
        metrics.watch_connections(protocol.table.count)
    return uvicorn.Config(app, host=server.host, port=server.port, loop="uvloop", http=protocol,
                          ws="none", lifespan="on", access_log=False, log_level="warning", timeout_graceful_shutdown=5)


class GatewayServer(uvicorn.Server):
    """uvicorn's server, plus the operations port's socket when ``server.ops_port`` is set."""

    def __init__(self, config: uvicorn.Config, server: ServerSettings) -> None:
        super().__init__(config)
        self.settings = server

    async def serve(self, sockets: Sequence[socket.socket] | None = None) -> None:
        ops_port = self.settings.ops_port
        if ops_port is None:
            await super().serve(list(sockets) if sockets is not None else None)
            return
        host = self.settings.host
        try:
            public = list(sockets) if sockets is not None else [self.config.bind_socket()]
            ops = reuseport_socket(host, ops_port) if self.settings.workers > 1 else bind_port(host, ops_port)
        except OSError as exc:  # told once, in a line: the caller sees the server never started
            log.error("cannot listen on the operations port %s:%d: %s", host, ops_port, exc.strerror or exc)
            return
        with ops:
            await super().serve([*public, ops])


def gateway_server(app: ASGIApp, server: ServerSettings, metrics: GatewayMetrics | None = None) -> GatewayServer:
    """The uvicorn server for ``app`` with ``server``'s HTTP limits (run it with ``.run()``); ``metrics`` count
    the connections it holds and refuses."""
    fd_limit = raise_fd_limit()
    limits = http_limits(server, fd_limit)
    log.info("HTTP limits: %d connections (file-descriptor limit %d), head %d bytes / %d fields / %g s, body %d "
             "bytes / %g s", limits.max_connections, fd_limit, limits.max_header_bytes, limits.max_headers,
             limits.header_timeout_s, server.max_body_bytes, server.body_timeout_s)
    return GatewayServer(uvicorn_config(app, server, limits, metrics), server)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT, not yet listening: every worker binds its own on the
    same port and the kernel spreads new connections over those listening. Port 0 picks a free port."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
