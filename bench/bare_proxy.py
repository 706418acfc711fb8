"""The yardstick: the least a Python proxy can do, to measure the gateway's overhead against.

An aiohttp.web server and one pooled aiohttp.ClientSession. Every request (any method, any path) is forwarded to
``--upstream`` with its body and content type, and the answer is streamed back chunk by chunk as it arrives:
no auth, no parsing, no logging, no metrics. It runs on uvloop (as the gateway does) unless ``--loop asyncio``, and
its garbage collector is tuned as the gateway's is (``sluice.cli.tune_gc``), so that neither side is measured
with a handicap the other does not have.

    python -m bench.bare_proxy --upstream http://127.0.0.1:8001 --port 8002
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

from sluice.cli import tune_gc

_PASSED_REQUEST_HEADERS = ("content-type", "x-request-id")
_PASSED_RESPONSE_HEADERS = ("content-type", "cache-control")


def make_app(upstream: str) -> web.Application:
    upstream = upstream.rstrip("/")
    app = web.Application(client_max_size=16 * 1024 * 1024)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=1024, ttl_dns_cache=300)
        app[session_key] = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k in _PASSED_REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        async with app[session_key].request(
            request.method, upstream + request.path_qs, data=body or None, headers=headers
        ) as upstream_resp:
            response = web.StreamResponse(status=upstream_resp.status)
            for name in _PASSED_RESPONSE_HEADERS:
                if (value := upstream_resp.headers.get(name)) is not None:
                    response.headers[name] = value
            if upstream_resp.content_length is not None:
                response.content_length = upstream_resp.content_length
            try:
                await response.prepare(request)
                async for chunk in upstream_resp.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError is one)
                pass
            return response

    app.cleanup_ctx.append(open_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL of the server to forward to, e.g. http://127.0.0.1:8001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = make_app(args.upstream)
    tune_gc()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
