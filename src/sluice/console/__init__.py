"""The operator's web console at ``/console``: a live view of admission, replicas and traffic, and the admin
API's keys, tiers, usage and replicas, behind the admin key (docs/console.md).

``create_console_app`` is the gateway's ``create_app`` with the console's routes and state added: what
``sluice serve`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request

from sluice.clock import Clock, MonotonicClock
from sluice.config import ConsoleSettings, ServerSettings, Settings
from sluice.console._assets import ConsoleAssets
from sluice.console._load_tests import LoadTests
from sluice.console._routes import ROUTES
from sluice.console._sessions import ConsoleSessions
from sluice.gateway._asgi import GatewayApp
from sluice.gateway.app import create_app


class Console:
    """The console's state on the app (``app.state.console``): sessions, assets, load tests, the clock."""

    def __init__(self, clock: Clock, server: ServerSettings, settings: ConsoleSettings | None = None) -> None:
        settings = settings or ConsoleSettings()
        self.clock = clock
        self.server = server
        self.sessions = ConsoleSessions(clock)
        self.assets = ConsoleAssets()
        self.load_tests = LoadTests(clock, Path(settings.runs_dir) if settings.runs_dir else None,
                                    keep_runs=settings.keep_runs)

    def admits(self, request: Request) -> bool:
        """Asked by the admin API: a call from the console's page in a live session."""
        return self.sessions.admits(request)


def create_console_app(settings: Settings, *, clock: Clock | None = None, **options: Any) -> GatewayApp:
    """The gateway for ``settings`` (``options``: ``create_app``'s) with the console's routes and state."""
    clock = clock or MonotonicClock()
    app = create_app(settings, clock=clock, extra_routes=ROUTES, **options)
    app.state.console = Console(clock, settings.server, settings.console)
    return app


__all__ = ["ROUTES", "Console", "create_console_app"]
