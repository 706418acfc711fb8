"""The startup message: where Sluice listens, what it serves, from which configuration, and how to call it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from sluice.config import Settings

log = logging.getLogger("sluice")


def open_access_warning(config_path: str | Path | None) -> str:
    where = "the embedded default" if config_path is None else f"auth.mode open in {config_path}"
    return (f"Access is OPEN ({where}): no API key is required. Add keys in a config file (auth.mode api_key) "
            "to close it.")


def banner(settings: Settings, config_path: str | Path | None = None) -> list[str]:
    host = settings.server.host
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{settings.server.port}"
    model = settings.models[0].name
    lines = [f"Sluice is listening on {base}/v1 serving: {', '.join(m.name for m in settings.models)}",
             f"Config: {config_path if config_path is not None else 'the embedded default (no --config)'}"]
    if any(m.sim for m in settings.models):
        lines.append("Engines: built-in simulator (no GPU needed) for " +
                     ", ".join(m.name for m in settings.models if m.sim))
    lines.append(f"State: {settings.state.split('@')[-1] if settings.state.startswith('redis') else settings.state}")
    if settings.auth.mode == "open":
        auth = ""
    else:
        lines.append(f"Access: API keys ({len(settings.keys)} configured)")
        auth = ' -H "Authorization: Bearer $SLUICE_API_KEY"'
    lines.append(
        f"Try: curl {base}/v1/chat/completions{auth} -H 'content-type: application/json' "
        f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
    )
    return lines


def console_line(settings: Settings, console_key: str) -> str:
    """Where the console is and the admin key made for this run (the embedded default has none of its own)."""
    return (f"Console: http://{settings.server.host}:{settings.server.port}/console - admin key for this run "
            f"(shown once, not logged; a new one at each start): {console_key}")


def announce(settings: Settings, config_path: str | Path | None, console_key: str | None = None) -> None:
    """Log the banner (once the port serves) and, in open mode, the warning that anyone may call. A
    ``console_key`` (the embedded default's, made for this run) is written once to stderr, past the log handlers:
    it never reaches a log file or a log collector."""
    for line in banner(settings, config_path):
        log.info(line)
    if settings.auth.mode == "open":
        log.warning(open_access_warning(config_path))
    if console_key is not None:
        print(console_line(settings, console_key), file=sys.stderr, flush=True)
