"""Engines: the inference servers behind Sluice, reached over their OpenAI HTTP API."""

from sluice.engines._errors import engine_error
from sluice.engines._pool import EnginePool, Replica, UpstreamResponse

__all__ = ["EnginePool", "Replica", "UpstreamResponse", "engine_error"]
