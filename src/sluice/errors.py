"""One exception tree for Sluice.

Every error knows the HTTP status it maps to and the OpenAI error ``type`` and ``code`` it carries, so the
HTTP boundary turns any of them into ``{"error": {"message", "type", "param", "code"}}`` in one place.
``reason`` is what the gateway puts in ``x-sluice-reason`` (and in metrics and the access log).

    SluiceError
    ├── ConfigError                      bad configuration (not an HTTP error; raised at startup)
    ├── InvalidRequestError      400     malformed JSON, schema violation, prompt too long
    ├── AuthenticationError      401     missing or wrong API key
    ├── PermissionDeniedError    403
    ├── NotFoundError            404     unknown model or route
    ├── RequestTimeoutError      408     request head or body not received in time (server.*_timeout_s)
    ├── PayloadTooLargeError     413     body over server.max_body_bytes
    ├── RateLimitError           429     a quota refused the request
    ├── HeaderTooLargeError      431     request head over server.max_header_bytes or server.max_headers
    ├── UpstreamError            4xx     an engine refused the request; its status and message are relayed
    ├── EngineUnavailableError   502/503 no engine could serve the request (unreachable, overloaded, failed)
    ├── OverloadedError          503     admission held it back: queue timeout, queue full, displaced, shed;
    │                                    or the connection cap was reached (too_many_connections)
    │   └── SloUnattainableError 503     refused on arrival: its tier's TTFT target would be missed
    ├── StateUnavailableError    503     the shared state store (Redis) is down, unreachable or too slow
    └── ScaleActionError                 an autoscaler's actuator failed (not an HTTP error; logged, retried)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SluiceError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    reason: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ConfigError(SluiceError):
    reason = "config_error"


class InvalidRequestError(SluiceError):
    status = 400
    type = "invalid_request_error"
    reason = "invalid_request"


class AuthenticationError(SluiceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    reason = "auth"


class PermissionDeniedError(SluiceError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"
    reason = "forbidden"


class NotFoundError(SluiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    reason = "not_found"


class RequestTimeoutError(SluiceError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    reason = "request_timeout"


class PayloadTooLargeError(SluiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    reason = "payload_too_large"


class HeaderTooLargeError(SluiceError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    reason = "header_too_large"


class RateLimitError(SluiceError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    reason = "rate_limited"


class UpstreamError(SluiceError):
    """An engine answered with a client error (e.g. 400 prompt too long); relayed with the engine's status."""

    status = 400
    type = "invalid_request_error"
    reason = "engine_rejected"


class EngineUnavailableError(SluiceError):
    """No engine could take the request: unreachable (502), overloaded or not ready (503)."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"
    reason = "engine_unavailable"


class OverloadedError(SluiceError):
    """Admission did not dispatch the request: it waited too long, the queue was full, a more important request
    took its place, or protection mode shed it. Never a 429: no quota was exceeded."""

    status = 503
    type = "server_error"
    code = "overloaded"
    reason = "overloaded"


class SloUnattainableError(OverloadedError):
    """Refused on arrival by SLO-aware admission: the request would wait, and its first token is predicted past
    its tier's ``ttft_slo_s``. ``retry-after-ms`` says by how much."""

    code = "slo_unattainable"
    reason = "slo_unattainable"


class StateUnavailableError(SluiceError):
    """The shared state store (Redis) did not answer: down, unreachable, or slower than ``quota.store_timeout_s``.
    Raised by ``sluice.state`` only, which translates every Redis, OS and timeout error into it once."""

    status = 503
    type = "server_error"
    code = "state_unavailable"
    reason = "state_unavailable"


class ScaleActionError(SluiceError):
    """An autoscaler's actuator failed (launcher, command, webhook, Kubernetes API): logged, retried after the
    cooldown; never an answer to a client."""

    reason = "scale_action_failed"
