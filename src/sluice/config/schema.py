"""The configuration, as frozen typed objects. Every field is documented in docs/configuration.md.

Nothing here reads files or the environment: ``loader.py`` does, once, and hands these objects to everyone else.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.config._console import ConsoleSettings
from sluice.config._gpu import GpuSettings
from sluice.config._limits import LimitRule, Rate, ShadowTier

# the dialects of sluice.dialects.DIALECTS, whose facts live there (config sits below it in the import order, so
# the names are repeated here; tests/contract/test_engine_dialects.py checks that both agree)
Dialect = Literal["vllm", "sglang", "lmdeploy"]

DEFAULT_MODEL = "sluice-sim"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # the operations port: admin API and /metrics there only (404 on `port`); /health, /ready on both
    ops_port: int | None = Field(None, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line + headers; above: 431
    max_headers: int = Field(100, ge=8)  # header fields in one request; above: 431
    header_timeout_s: float = Field(10.0, gt=0)  # accept (or the previous answer) -> head complete; past it: 408
    body_timeout_s: float = Field(60.0, gt=0)  # head complete -> whole body read; past it: 408
    max_connections: int | None = Field(None, ge=1)  # None: sized to the file-descriptor limit at start
    connect_timeout_s: float = Field(5.0, gt=0)
    upstream_timeout_s: float = Field(600.0, gt=0)
    access_log: bool = True
    access_log_path: str | None = None  # one JSON line per request, appended here; stderr when unset
    access_log_flush_s: float = Field(0.2, ge=0)  # lines written in batches this often and at shutdown; 0: at once

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.ops_port is not None and self.ops_port == self.port:
            raise ValueError(f"ops_port {self.ops_port} is the public port: the operations port must be another")
        return self


class HmacSecretSettings(_Frozen):
    """An HS256 shared secret, named by the ``kid`` tokens carry in their header."""

    kid: str = Field(min_length=1)
    secret: str = Field(min_length=32, repr=False)  # RFC 7518: at least as long as the hash (256 bits)


class JwtClaimSettings(_Frozen):
    """Which token claims name the caller. ``subject`` is the caller's own identity (its key id ``jwt:<subject>``,
    the "per key" scope); ``tenant`` and ``tier`` unset (or absent from a token): the defaults."""

    subject: str = Field("sub", min_length=1)
    user: str = Field("sub", min_length=1)
    tenant: str | None = None
    tier: str | None = None


class JwtSettings(_Frozen):
    """Bearer tokens that look like JWTs are verified against these keys, each pinned to one algorithm."""

    issuer: str = Field(min_length=1)
    audience: str | list[str]
    leeway_s: float = Field(30.0, ge=0, le=300)
    jwks_file: str | None = None  # RS256/ES256 public keys, read at startup (and on each config reload)
    hs256_secrets: list[HmacSecretSettings] = []
    claims: JwtClaimSettings = JwtClaimSettings()
    default_tenant: str = "default"
    default_tier: str = "default"

    @model_validator(mode="after")
    def _has_keys(self) -> JwtSettings:
        if self.jwks_file is None and not self.hs256_secrets:
            raise ValueError("jwt needs keys: a jwks_file, hs256_secrets, or both")
        _unique("jwt.hs256_secrets (kid)", [s.kid for s in self.hs256_secrets])
        if not self.audience:
            raise ValueError("jwt.audience must name at least one audience")
        return self


class AuthSettings(_Frozen):
    # api_key: every request needs one of `keys` (or a valid JWT when `jwt` is set); open: anyone may call
    # (the embedded default; say so loudly).
    mode: Literal["api_key", "open"] = "api_key"
    jwt: JwtSettings | None = None
    admin_key_hash: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")  # enables the admin API


class SimSettings(_Frozen):
    """The built-in engine simulator: a continuous-batching engine with a paged KV cache, on the CPU."""

    dialect: Dialect = "vllm"
    max_num_seqs: int = Field(64, ge=1)
    num_kv_blocks: int = Field(4096, ge=1)
    block_size: int = Field(16, ge=1)
    max_model_len: int = Field(8192, ge=16)
    prefill_s_per_token: float = Field(0.00005, ge=0)
    decode_base_s: float = Field(0.008, ge=0)
    decode_per_seq_s: float = Field(0.0002, ge=0)
    speed: float = Field(1.0, gt=0)
    max_waiting: int | None = Field(None, ge=0)
    # "priority": like vLLM's --scheduling-policy priority (SGLang's --enable-priority-scheduling), requests carry
    # "priority" in the dialect's convention (sglang: higher runs first; vllm, lmdeploy: lower first) and the waiting
    # queue is ordered by it; a full KV cache preempts the least important (newest among equals).
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    # under "priority": may a waiting request preempt running ones for a seat, as SGLang does? None: the dialect's own
    # behaviour (sglang: yes, unless --disable-priority-preemption; vllm, lmdeploy: never, it waits for a seat)
    priority_preemption: bool | None = None
    # it preempts only requests less important by more than this (SGLang's --priority-scheduling-preemption-threshold)
    priority_preemption_threshold: int = Field(10, ge=0)
    # may one step both prefill new sequences and decode the running ones? None: the dialect's own behaviour (vllm,
    # lmdeploy: yes; sglang: no, a step that admits anything is prefill only, unless --enable-mixed-chunk)
    mixed_batches: bool | None = None
    # automatic prefix caching: freed KV blocks keep their content until evicted (LRU) and an arrival whose tokens
    # start with cached blocks prefills only the rest. None: the dialect's own default (vllm, sglang: on, as vLLM V1
    # and SGLang's radix cache; lmdeploy: off, its --enable-prefix-caching)
    prefix_caching: bool | None = None
    output_len_min: int = Field(16, ge=1)
    output_len_max: int = Field(256, ge=1)
    embedding_dim: int = Field(64, ge=1)
    seed: int = 0
    # the simulated GPU (dcgm-exporter's gauges on /metrics): memory and weights, MiB (an 80 GB H100 reports 81559)
    gpu_memory_mib: int = Field(81559, ge=1)
    gpu_weights_mib: int = Field(15317, ge=0)  # an 8B model in bf16

    @model_validator(mode="after")
    def _lengths(self) -> SimSettings:
        if self.output_len_max < self.output_len_min:
            raise ValueError("output_len_max must be >= output_len_min")
        if self.num_kv_blocks * self.block_size < self.max_model_len:
            raise ValueError("the KV cache (num_kv_blocks * block_size) must hold at least max_model_len tokens")
        return self


_DNS_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class DiscoverySettings(_Frozen):
    """Engine replicas found in DNS, re-resolved every ``interval_s``: the A and AAAA records of ``dns`` (a
    Kubernetes headless Service) on ``port``, or its SRV records (each target's addresses on the record's port)."""

    dns: str
    record: Literal["A", "SRV"] = "A"  # A: the A and AAAA records together
    port: int | None = Field(None, ge=1, le=65535)  # for A records (default 8000); SRV records carry their own
    scheme: Literal["http", "https"] = "http"
    interval_s: float = Field(5.0, ge=0.1)
    timeout_s: float = Field(2.0, gt=0)  # one resolution (every query it needs), retries included
    nameservers: list[str] | None = None  # "ip", "ip:port", "[ipv6]:port"; None: the system's (/etc/resolv.conf)

    @property
    def nameserver_addresses(self) -> list[tuple[str, int]]:
        """``nameservers`` as (ip, port) pairs."""
        return [_host_port(n) for n in self.nameservers or []]

    @field_validator("dns")
    @classmethod
    def _fqdn(cls, name: str) -> str:
        if _is_ip(name):
            raise ValueError(f"{name!r} is an address, not a name: list it in engine.urls")
        labels = name.removesuffix(".").split(".")
        if len(labels) < 2 or len(name.removesuffix(".")) > 253 or not all(_DNS_LABEL.match(x) for x in labels):
            raise ValueError(f"{name!r} is not a fully qualified DNS name such as vllm-headless.llm.svc.cluster.local"
                             " (search domains are not applied)")
        return name.removesuffix(".").lower()

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, nameservers: list[str] | None) -> list[str] | None:
        if nameservers is not None and not nameservers:
            raise ValueError("nameservers must list at least one address, or be left out for the system's")
        return None if nameservers is None else [_join_host_port(*_host_port(n)) for n in nameservers]

    @model_validator(mode="before")
    @classmethod
    def _port_fits(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("record", "A") == "A" and data.get("port") is None:
            return {**data, "port": 8000}
        if isinstance(data, dict) and data.get("record") == "SRV" and data.get("port") is not None:
            raise ValueError("port applies to record: A; SRV records carry their own ports")
        return data

    @model_validator(mode="after")
    def _record_fits(self) -> DiscoverySettings:
        if self.record == "A" and self.dns.startswith("_"):
            raise ValueError(f"{self.dns!r} is an SRV name (it starts with '_'): set record: SRV")
        return self


def _host_port(text: str) -> tuple[str, int]:
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") if rest else port
        if rest and not rest.startswith(":"):
            raise ValueError(f"nameserver {text!r}: expected [ipv6]:port")
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r} is not an IP address (optionally with :port)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"nameserver {text!r}: the port must be 1..65535")
    return str(address), int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EngineSettings(_Frozen):
    """Inference servers started elsewhere, reached over their OpenAI HTTP API: listed in ``urls``, found by
    ``discovery`` in DNS, or both."""

    dialect: Dialect = "vllm"
    urls: list[str] = []
    discovery: DiscoverySettings | None = None
    served_model: str | None = None  # the engine's own name for the model, when it differs from ours
    weights: list[float] | None = None  # one per url: a replica's share of the traffic (default all 1)
    routing: Literal["least_outstanding", "least_kv", "prefix_affinity"] = "least_outstanding"
    breaker_failures: int = Field(5, ge=1)  # failures in a row that open a replica's circuit
    breaker_open_s: float = Field(10.0, gt=0)  # how long it stays open before one trial request
    health_interval_s: float = Field(5.0, gt=0)  # active health checks
    # requests in flight to this model's engines at once (one upstream connection each); admission's window is
    # capped at it, and a request finding none free for connection_wait_s gets 503 upstream_saturated
    max_connections: int = Field(1024, ge=1)
    connection_wait_s: float = Field(1.0, ge=0)
    gpu: GpuSettings | None = None  # the replicas' GPU use, a saturation input (None: not read)

    @model_validator(mode="after")
    def _weights(self) -> EngineSettings:
        if self.weights is not None and (len(self.weights) != len(self.urls) or min(self.weights) <= 0):
            raise ValueError("weights needs one positive number per url")
        if self.gpu is not None and self.gpu.per_url_lengths() - {len(self.urls)}:
            raise ValueError(f"gpu.urls and gpu.devices need one entry per engine url ({len(self.urls)})")
        return self

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return [u.rstrip("/") for u in urls]


class WindowSettings(_Frozen):
    """Requests a pool may have in flight. ``fixed`` stays at ``initial``; ``aimd`` and ``gradient`` adapt to the
    engines' latency (time to first token) between ``min`` and ``max``."""

    kind: Literal["fixed", "aimd", "gradient"] = "fixed"
    initial: int | None = Field(None, ge=1)  # unset: a simulator's max_num_seqs, else 128 per replica
    min: int = Field(1, ge=1)
    max: int = Field(4096, ge=1)
    latency_threshold_s: float | None = Field(None, gt=0)  # aimd: a slower first token counts as a drop


class SaturationSettings(_Frozen):
    """Saturation = max(waiting / queue_threshold, kv_usage / kv_threshold), read from the engines' metrics."""

    queue_threshold: float = Field(5.0, gt=0)
    kv_threshold: float = Field(0.8, gt=0)
    stale_after_s: float = Field(1.0, gt=0)  # older metrics count as saturated
    scrape_interval_s: float = Field(0.2, gt=0)
    # GPU use (engine.gpu) counts only together with memory pressure: min(gpu / gpu_threshold,
    # max(kv_usage / gpu_kv_threshold, preemptions per second / swap_threshold_per_s)); a busy GPU alone is not full
    gpu_threshold: float = Field(0.9, gt=0, le=1)
    gpu_kv_threshold: float = Field(0.7, gt=0)
    swap_threshold_per_s: float = Field(1.0, gt=0)


class ProtectionSettings(_Frozen):
    enabled: bool = True
    engage_at: float = Field(1.0, gt=0)
    relax_at: float = Field(0.7, ge=0)
    engage_after_s: float = Field(1.0, ge=0)
    relax_after_s: float = Field(5.0, ge=0)
    reserve_top_share: float = Field(0.2, ge=0, lt=1)  # of the window, kept for the highest band
    # "engaged": the reserve holds while protection mode is engaged; "always": whenever lower bands would take it
    # (for a window wider than the engine, with priority_to_engine: the top tier never waits for a seat)
    reserve_when: Literal["engaged", "always"] = "engaged"
    tighten_factor: float = Field(0.5, gt=0, le=1)  # lower tiers' rate limits are multiplied by this


class PreemptionSettings(_Frozen):
    """Stop a running request for a waiting one at least ``priority_gap`` more important, and resume its stream
    later from the tokens it had produced (engines that resume from token ids only: vLLM)."""

    enabled: bool = False
    priority_gap: int = Field(5, ge=1)


class AdmissionSettings(_Frozen):
    enabled: bool = True
    window: WindowSettings = WindowSettings()
    max_tokens_in_flight: int | None = Field(None, ge=1)
    queue_max_requests: int = Field(1000, ge=0)
    queue_max_tokens: int | None = Field(None, ge=1)
    output_weight: float = Field(2.0, gt=0)  # fair share: an output token costs this many prompt tokens
    watch_load: bool = True  # scrape the engines' /metrics for saturation and KV room
    saturation: SaturationSettings = SaturationSettings()
    protection: ProtectionSettings = ProtectionSettings()
    kv_capacity_tokens: int | None = Field(None, ge=1)  # per replica; a simulator knows its own
    priority_to_engine: bool = False  # the engine runs with priority scheduling: send it each request's priority
    preemption: PreemptionSettings = PreemptionSettings()

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionSettings:
        if self.window.min > self.window.max:
            raise ValueError("window.min must not exceed window.max")
        if self.protection.relax_at > self.protection.engage_at:
            raise ValueError("protection.relax_at must not exceed protection.engage_at")
        return self


class CacheSettings(_Frozen):
    """Answer repeated deterministic requests (non-streamed, temperature 0 or a seed) from the cache, per tenant."""

    enabled: bool = False
    ttl_s: float = Field(300.0, gt=0)


class KubernetesScaleSettings(_Frozen):
    """The Deployment or StatefulSet whose scale subresource the ``kubernetes`` actuator PATCHes. The defaults are
    the in-cluster ones (the pod's service account)."""

    kind: Literal["deployment", "statefulset"] = "deployment"
    name: str = Field(min_length=1)
    namespace: str | None = None  # None: the pod's own (the service account's namespace file)
    api_url: str = "https://kubernetes.default.svc"
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"  # None: the system's CAs


class AutoscaleSettings(_Frozen):
    """Scale the model's replicas between ``min_replicas`` and ``max_replicas`` on its refusals and saturation
    (docs/autoscaling.md); ``actuator`` carries the decisions out."""

    actuator: Literal["launcher", "command", "webhook", "kubernetes"]
    command: list[str] | None = None  # actuator command: argv (no shell), the decision as JSON on stdin
    webhook: str | None = None  # actuator webhook: POSTed the decision as JSON
    kubernetes: KubernetesScaleSettings | None = None  # actuator kubernetes
    timeout_s: float = Field(30.0, gt=0)  # one command, webhook or Kubernetes call
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    step: int = Field(1, ge=1)  # replicas added per decision (more when the refusal share says more are missing)
    check_s: float = Field(5.0, gt=0)
    window_s: float = Field(120.0, gt=0)  # evidence for scaling up
    refusal_ratio: float = Field(0.05, ge=0, lt=1)  # up when more than this share is refused for capacity ...
    min_requests: int = Field(20, ge=1)  # ... of at least this many requests in the window
    scale_up_saturation: float = Field(1.0, gt=0)  # or when saturation stayed at or above this the whole window
    scale_down_saturation: float = Field(0.3, ge=0)  # down when below this for scale_down_window_s (0: never)
    scale_down_window_s: float = Field(600.0, gt=0)
    cooldown_up_s: float = Field(60.0, ge=0)  # after a decision settles, before the next one up
    cooldown_down_s: float = Field(600.0, ge=0)  # ... before the next one down
    settle_timeout_s: float = Field(900.0, gt=0)  # a decision whose replicas are not there by then is given up

    @model_validator(mode="after")
    def _consistent(self) -> AutoscaleSettings:
        targets = {"command": self.command, "webhook": self.webhook, "kubernetes": self.kubernetes}
        given = sorted(name for name, value in targets.items() if value)
        wanted = [self.actuator] if self.actuator in targets else []
        if given != wanted:
            raise ValueError(f"autoscale: actuator {self.actuator} needs {wanted or 'none'} of command, webhook, "
                             f"kubernetes; got {given or 'none'}")
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscale: min_replicas is above max_replicas")
        if self.scale_down_saturation >= self.scale_up_saturation:
            raise ValueError("autoscale: scale_down_saturation must be below scale_up_saturation (hysteresis: "
                             "between the two nothing changes)")
        return self


class ModelSettings(_Frozen):
    name: str = Field(min_length=1)
    engine: EngineSettings | None = None
    sim: SimSettings | None = None
    tokenizer: str | None = None  # path to the model's tokenizer.json: exact prompt counts (else a calibrated estimate)
    max_model_len: int | None = Field(None, ge=1)  # context length, to cap reservations (a sim knows its own)
    admission: AdmissionSettings = AdmissionSettings()
    cache: CacheSettings = CacheSettings()
    autoscale: AutoscaleSettings | None = None  # scale the replicas on refusals and saturation (docs/autoscaling.md)

    @property
    def context_length(self) -> int | None:
        return self.max_model_len or (self.sim.max_model_len if self.sim else None)

    @model_validator(mode="after")
    def _one_backend(self) -> ModelSettings:
        if (self.engine is None) == (self.sim is None):
            raise ValueError(f"model {self.name!r} needs exactly one of 'engine' or 'sim'")
        return self


class TierSettings(_Frozen):
    """A class of callers. ``requests``, ``tokens`` and ``concurrent`` here are shorthand for one limit per key;
    ``limits`` holds any others (per user, tenant, the whole tier, per model)."""

    priority: int = 0
    weight: float = Field(1.0, gt=0)  # share against other tenants of the same priority
    max_wait_s: float = Field(0.0, ge=0)  # for quota to refill
    max_queue_s: float = Field(10.0, ge=0)  # in the admission queue, before a 503 queue_timeout
    ttft_slo_s: float | None = Field(None, gt=0)  # TTFT target: goodput's bar; predicted misses refused at once
    requests: Rate | None = None
    tokens: Rate | None = None
    concurrent: int | None = Field(None, ge=1)
    limits: list[LimitRule] = []
    shadow: ShadowTier | None = None  # candidate limits counted in shadow (docs/configuration.md#shadow-limits)
    # a request whose prompt + max_tokens does not fit its token budget: refused (429), its max_tokens clamped
    # to what is left, its stream cut where the budget ends, or let through over budget and tagged
    over_budget: Literal["refuse", "clamp", "cut", "tag"] = "refuse"
    over_budget_min_tokens: int = Field(16, ge=1)  # per answer: with less room than this left, refused anyway

    def rules(self) -> list[LimitRule]:
        shorthand = [LimitRule(per="key", requests=self.requests, tokens=self.tokens, concurrent=self.concurrent)] if (
            self.requests or self.tokens or self.concurrent) else []
        return shorthand + [rule for rule in self.limits if rule.mode == "enforce"]


class QuotaSettings(_Frozen):
    default_max_tokens: int = Field(4096, ge=1)  # reserved for the answer when a request sets no max_tokens
    limits: list[LimitRule] = []  # limits for everyone, whatever their tier (per model, global, ...)
    # a state-store call (Redis) not answered within this counts Redis as down (the gateway's own loop lag and
    # opening a connection do not count); 0.25 from bench/store_timeout.py (slowest call on four CPU-loaded
    # gateways: 64 ms; at the former 0.02, 8-16 degraded episodes a run and bursts admitted up to twice over)
    store_timeout_s: float = Field(0.25, gt=0)
    store_retry_s: float = Field(1.0, gt=0)  # while down, how often the state layer PINGs it (no traffic needed)
    gateway_replicas: int = Field(1, ge=1)  # gateways sharing the store: fail-open divides limits by this
    lease_ttl_s: float = Field(60.0, gt=0)  # a concurrency permit not renewed within this expires


class KeySettings(_Frozen):
    id: str = Field(min_length=1)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    user: str | None = None
    tenant: str = "default"
    tier: str = "default"


class ScaleOutSettings(_Frozen):
    """Deprecated (still accepted): tell an autoscaler when the engines are too few. Runs as each model's
    ``autoscale`` block, up decisions only (sluice.gateway.autoscale.from_scale_out)."""

    webhook: str | None = None  # POSTed a JSON payload
    command: list[str] | None = None  # run with the JSON payload on stdin
    rejection_ratio: float = Field(0.05, ge=0, le=1)
    saturation: float = Field(1.0, gt=0)
    window_s: float = Field(300.0, gt=0)
    interval_s: float = Field(600.0, gt=0)
    check_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> ScaleOutSettings:
        if (self.webhook is None) == (not self.command):
            raise ValueError("scale_out needs exactly one of webhook or command")
        return self


class Settings(_Frozen):
    server: ServerSettings = ServerSettings()
    state: str = "memory://"
    auth: AuthSettings = AuthSettings()
    models: list[ModelSettings] = Field(min_length=1)
    tiers: dict[str, TierSettings] = {"default": TierSettings()}
    keys: list[KeySettings] = []
    quota: QuotaSettings = QuotaSettings()
    scale_out: ScaleOutSettings | None = None
    console: ConsoleSettings = ConsoleSettings()

    @field_validator("state")
    @classmethod
    def _state_url(cls, state: str) -> str:
        if not state.startswith(("memory://", "redis://", "rediss://", "unix://", "redis+cluster://",
                                 "rediss+cluster://")):
            raise ValueError("state must be memory://, a redis:// URL or a redis+cluster:// one")
        return state

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        _unique("models", [m.name for m in self.models])
        _unique("keys (id)", [k.id for k in self.keys])
        _unique("keys (hash)", [k.hash for k in self.keys])
        for key in self.keys:
            if key.tier not in self.tiers:
                raise ValueError(f"key {key.id!r} names tier {key.tier!r}, which is not in tiers")
        models = {m.name for m in self.models}
        rules = [(f"tiers.{name}", r) for name, t in self.tiers.items() for r in t.limits]
        for where, rule in rules + [("quota.limits", r) for r in self.quota.limits]:
            if rule.model not in (None, "each") and rule.model not in models:
                raise ValueError(f"{where}: a limit names model {rule.model!r}, which is not in models")
        if self.auth.mode == "api_key" and not self.keys and self.auth.jwt is None:
            raise ValueError("auth.mode is api_key but no keys are configured: add keys, configure auth.jwt, "
                             "or set auth: {mode: open}")
        if self.auth.jwt is not None and self.auth.jwt.default_tier not in self.tiers:
            raise ValueError(f"auth.jwt.default_tier {self.auth.jwt.default_tier!r} is not in tiers")
        self._check_workers(self.server.workers)
        return self

    def with_workers(self, workers: int) -> Settings:
        """These settings served by ``workers`` processes (``sluice serve --workers``), checked as the YAML field."""
        self._check_workers(workers)
        return self.model_copy(update={"server": self.server.model_copy(update={"workers": workers})})

    def _check_workers(self, workers: int) -> None:
        if workers > 1 and self.state.startswith("memory://"):
            raise ValueError(
                "server.workers > 1 needs shared state (state: redis://...): with memory:// every worker "
                "would keep its own counters and multiply every limit"
            )

    @classmethod
    def embedded(cls) -> Settings:
        """The embedded default: one simulated model, open access, in-memory state."""
        return cls(auth=AuthSettings(mode="open"), models=[ModelSettings(name=DEFAULT_MODEL, sim=SimSettings())])


def _unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what}: {v!r} appears twice")
        seen.add(v)
