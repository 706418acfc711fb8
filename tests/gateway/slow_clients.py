"""Slowloris, as a separate process: N connections that each send part of a request head, then one more header
byte now and then, and never finish it. A connection the server closes is opened again (in bounded batches, as a
patient attacker would). Prints one JSON line of counts when done.

    python -m tests.gateway.slow_clients --url http://127.0.0.1:8000 --count 2000 --duration-s 15
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from urllib.parse import urlsplit

PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\n"
TRICKLE = b"x"  # one byte of a header name that never ends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--tick-s", type=float, default=0.5, help="how often each connection sends one more byte")
    parser.add_argument("--reopen-per-tick", type=int, default=500, help="connections opened again per tick, at most")
    parser.add_argument("--ready-file", help="created once all connections are open")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    counts = {"opened": 0, "open_failed": 0, "closed_by_server": 0, "answered_503": 0, "answered_408": 0,
              "max_open": 0}
    selector = selectors.DefaultSelector()
    live: set[socket.socket] = set()

    def open_one() -> None:
        try:
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(PARTIAL_HEAD)
        except OSError:
            counts["open_failed"] += 1
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        live.add(sock)
        counts["opened"] += 1

    def drop(sock: socket.socket, answer: bytes) -> None:
        selector.unregister(sock)
        live.discard(sock)
        sock.close()
        counts["closed_by_server"] += 1
        if answer.startswith(b"HTTP/1.1 503"):
            counts["answered_503"] += 1
        elif answer.startswith(b"HTTP/1.1 408"):
            counts["answered_408"] += 1

    for _ in range(args.count):
        open_one()
    if args.ready_file:
        open(args.ready_file, "w").close()
    now = time.monotonic()
    deadline, next_tick = now + args.duration_s, now + args.tick_s
    while now < deadline:
        for key, _ in selector.select(timeout=max(0.0, next_tick - now)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
            drop(sock, answer)  # any answer, or none, means the server is done with this connection
        now = time.monotonic()
        if now < next_tick:
            continue
        next_tick += args.tick_s
        for sock in list(live):
            try:
                sock.send(TRICKLE)
            except OSError:
                drop(sock, b"")
        for _ in range(min(args.reopen_per_tick, args.count - len(live))):
            open_one()
        counts["max_open"] = max(counts["max_open"], len(live))
    for sock in live:
        sock.close()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
