"""Stop work the moment the client goes away.

Once the request body is read, the next ASGI ``receive()`` only returns when the client disconnects (uvicorn's
``send`` stays silent on a closed connection, so writing cannot tell). One watcher task per request waits for
that and cancels the request's own task; the work itself runs in that task, with no other task or wait around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was complete."""


class DisconnectWatch:
    """Cancels the current task when the client disconnects, until ``stop()``.

    Use ``translated()`` around awaits in the watched task: a cancellation that the watch caused comes out as
    ``ClientDisconnected``; any other cancellation passes through untouched.
    """

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def translated(self) -> _Translate:
        return _Translate(self)


class _Translate:
    def __init__(self, watch: DisconnectWatch) -> None:
        self._watch = watch

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is asyncio.CancelledError and self._watch.disconnected:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise ClientDisconnected from exc
