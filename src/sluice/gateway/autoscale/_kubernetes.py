"""The Kubernetes actuator: PATCH the scale subresource of a Deployment or StatefulSet.

``PATCH {api_url}/apis/apps/v1/namespaces/{namespace}/{deployments|statefulsets}/{name}/scale`` with
``{"spec": {"replicas": N}}`` as ``application/merge-patch+json``, authenticated by the service account's bearer
token. In a pod the defaults are the in-cluster ones: the API at ``https://kubernetes.default.svc``, the token and
CA under ``/var/run/secrets/kubernetes.io/serviceaccount/``, the pod's own namespace. The token is read at each
call (projected tokens are rotated by the kubelet) and never logged. The RBAC it needs: ``patch`` on
``deployments/scale`` (or ``statefulsets/scale``) in that namespace.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import orjson

from sluice.config import KubernetesScaleSettings
from sluice.errors import ScaleActionError
from sluice.gateway.autoscale._policy import Decision

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RESOURCES = {"deployment": "deployments", "statefulset": "statefulsets"}


class KubernetesActuator:
    kind = "kubernetes"

    def __init__(self, settings: KubernetesScaleSettings, timeout_s: float) -> None:
        self._s = settings
        self._timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = None

    def replicas(self) -> None:
        return None

    @property
    def scale_url(self) -> str:
        s = self._s
        return (f"{s.api_url.rstrip('/')}/apis/apps/v1/namespaces/{self._namespace()}/{RESOURCES[s.kind]}/"
                f"{s.name}/scale")

    async def scale_to(self, decision: Decision) -> None:
        body = orjson.dumps({"spec": {"replicas": decision.to_replicas}})
        headers = {"authorization": f"Bearer {self._token()}", "content-type": "application/merge-patch+json",
                   "accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.patch(
                    self.scale_url, data=body, headers=headers, ssl=self._ssl_context() or True) as answer:
                text = await answer.text()
                if answer.status // 100 != 2:
                    raise ScaleActionError(f"kubernetes: {self._s.kind} {self._s.name} scale answered "
                                           f"{answer.status}: {_status_message(text)}")
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise ScaleActionError(f"kubernetes: PATCH {self._s.kind} {self._s.name} scale failed: "
                                   f"{type(exc).__name__}: {exc}") from exc

    def _namespace(self) -> str:
        if self._s.namespace:
            return self._s.namespace
        return _read(SERVICE_ACCOUNT / "namespace", "the namespace (set kubernetes.namespace)")

    def _token(self) -> str:
        return _read(Path(self._s.token_file), "the service account token")

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._s.api_url.startswith("https://"):
            return None
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self._s.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ScaleActionError(f"kubernetes: cannot load the CA {self._s.ca_file}: {exc}") from exc
        return self._ssl


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ScaleActionError(f"kubernetes: cannot read {what} from {path}: {exc.strerror}") from exc


def _status_message(text: str) -> str:
    """The API server's Status message (``{"kind": "Status", "message": ...}``), or the start of the body."""
    try:
        status = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:200]
    message = status.get("message") if isinstance(status, dict) else None
    return str(message)[:300] if message else text[:200]
