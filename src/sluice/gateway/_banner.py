"""The startup message: where Sluice listens, what it serves, and how to call it."""

from __future__ import annotations

from sluice.config import Settings

OPEN_ACCESS_WARNING = (
    "Access is OPEN: no API key is required (embedded default). Add keys in a config file to close it."
)


def banner(settings: Settings) -> list[str]:
    host = settings.server.host
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{settings.server.port}"
    model = settings.models[0].name
    lines = [f"Sluice is listening on {base}/v1 serving: {', '.join(m.name for m in settings.models)}"]
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
