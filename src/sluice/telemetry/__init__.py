"""Record: Prometheus metrics, the access log, and the per-request record they are written from."""

from sluice.telemetry._access_log import AccessLog
from sluice.telemetry._log_limit import RepeatLimiter, limit_repeats
from sluice.telemetry._merge import merge_expositions
from sluice.telemetry._metrics import GatewayMetrics
from sluice.telemetry._record import RequestRecord
from sluice.telemetry._replica_timings import ReplicaTimings
from sluice.telemetry._shadow_refusal import ShadowRefusal
from sluice.telemetry._usage import MemoryUsage, RedisUsage, Usage, UsageLedger

__all__ = ["AccessLog", "GatewayMetrics", "MemoryUsage", "RedisUsage", "RepeatLimiter", "ReplicaTimings",
           "RequestRecord", "ShadowRefusal", "Usage", "UsageLedger", "limit_repeats", "merge_expositions"]
