"""How long a request would wait for its first token: the prediction behind SLO-aware admission.

A request that would wait at the gate is refused at once (503 ``slo_unattainable``) when its predicted time to first
token is past its tier's target (``ttft_slo_s``), rather than queued into a miss. The prediction has two terms:

    predicted TTFT = gateway wait + engine TTFT

    gateway wait = places needed x service time / requests in flight / share left
        places needed: the requests waiting in this request's band and the bands above it, plus itself, less the
        free places of the window (at least one when the window has room but the engines' KV cache has not);
        service time: how long a dispatched request holds its place (dispatch to release), learnt as an EWMA.
        Requests in flight over service time is the rate at which places free up (Little's law);
        share left: of those places, what the bands above it do not take as their requests keep arriving
        (1 - their dispatch rate / the rate places free up; each band's dispatch rate decays over ``rate_tau_s``).
        With no share left (under 5%) the wait is unbounded: the bands above take every place.

    engine TTFT = intercept + slope x prompt tokens
        the line through recent (prompt tokens, TTFT from dispatch) points, EWMA-weighted: the engine's own queue,
        its batch and the prefill (slope = prefill seconds per prompt token) as the gateway observes them.

With no data yet a term is 0: the predictor never refuses on a guess. Counting the whole band ahead is
conservative: a tenant with less served may in fact pass some of them (the fair queue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_SHARE_LEFT = 0.05  # below this, the bands above take every place: a lower band's wait has no bound
MAX_BANDS = 64  # bands whose dispatch rate is tracked (priorities are a small set; hints could make more)


@dataclass(frozen=True, slots=True)
class TtftPrediction:
    queue_s: float  # waiting at the gate for a place
    engine_s: float  # from dispatch to the first token

    @property
    def total_s(self) -> float:
        return self.queue_s + self.engine_s


class Ewma:
    """An exponentially weighted moving average of samples; ``None`` before the first."""

    def __init__(self, smoothing: float) -> None:
        self._smoothing = smoothing  # weight of the newest sample
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self._smoothing * (sample - self.value)


class DecayingRate:
    """Events per second, each event's weight decaying as exp(-age / tau_s): a rate that follows the recent past."""

    def __init__(self, tau_s: float) -> None:
        self._tau_s = tau_s
        self._count = 0.0
        self._at_s = 0.0

    def add(self, now_s: float) -> None:
        self._count = self._decayed(now_s) + 1.0
        self._at_s = now_s

    def per_s(self, now_s: float) -> float:
        return self._decayed(now_s) / self._tau_s

    def _decayed(self, now_s: float) -> float:
        return self._count * math.exp(-max(0.0, now_s - self._at_s) / self._tau_s)


class TtftPredictor:
    """Learns a pool's service time, its bands' dispatch rates and engine TTFT from what its gate sees, and
    predicts a request's TTFT."""

    def __init__(self, *, smoothing: float = 0.1, rate_tau_s: float = 5.0) -> None:
        self._rate_tau_s = rate_tau_s
        self._dispatched: dict[int, DecayingRate] = {}  # per band
        self.service_s = Ewma(smoothing)  # dispatch to release
        self._tokens = Ewma(smoothing)  # the line's points: x = prompt tokens, y = TTFT from dispatch
        self._ttft_s = Ewma(smoothing)
        self._tokens_ttft = Ewma(smoothing)
        self._tokens_sq = Ewma(smoothing)

    def observe_service(self, held_s: float) -> None:
        """A dispatched request gave its place back ``held_s`` after it got it."""
        if held_s >= 0 and math.isfinite(held_s):
            self.service_s.add(held_s)

    def observe_dispatch(self, priority: int, now_s: float) -> None:
        """A request of band ``priority`` took a place."""
        rate = self._dispatched.get(priority)
        if rate is None:
            if len(self._dispatched) >= MAX_BANDS:
                return
            rate = self._dispatched[priority] = DecayingRate(self._rate_tau_s)
        rate.add(now_s)

    def share_left(self, priority: int, in_flight: int, now_s: float) -> float:
        """Of the places freeing up, the share the bands above ``priority`` leave (1 with no data)."""
        service = self.service_s.value
        if not service:
            return 1.0
        above = sum(r.per_s(now_s) for p, r in self._dispatched.items() if p > priority)
        return 1.0 - above * service / max(1, in_flight)

    def observe_ttft(self, prompt_tokens: int, engine_ttft_s: float) -> None:
        """A dispatched request's first token came ``engine_ttft_s`` after its dispatch."""
        if engine_ttft_s < 0 or not math.isfinite(engine_ttft_s):
            return
        x = float(prompt_tokens)
        self._tokens.add(x)
        self._ttft_s.add(engine_ttft_s)
        self._tokens_ttft.add(x * engine_ttft_s)
        self._tokens_sq.add(x * x)

    def engine_ttft_s(self, prompt_tokens: int) -> float:
        """intercept + slope x prompt tokens (slope >= 0; 0 when the prompts seen were all alike); 0 with no data."""
        mean_y, mean_x = self._ttft_s.value, self._tokens.value
        if mean_y is None or mean_x is None:
            return 0.0
        slope = self.prefill_s_per_token()
        return max(0.0, mean_y + slope * (prompt_tokens - mean_x))

    def prefill_s_per_token(self) -> float:
        mean_x, mean_y = self._tokens.value, self._ttft_s.value
        mean_xy, mean_xx = self._tokens_ttft.value, self._tokens_sq.value
        if mean_x is None or mean_y is None or mean_xy is None or mean_xx is None:
            return 0.0
        variance = mean_xx - mean_x * mean_x
        if variance <= max(1.0, 1e-6 * mean_xx):  # prompts all alike: no slope to learn
            return 0.0
        return max(0.0, (mean_xy - mean_x * mean_y) / variance)

    def queue_s(self, places_needed: int, in_flight: int, share_left: float = 1.0) -> float:
        """Waiting for ``places_needed`` places to free up while ``in_flight`` requests hold theirs, of which it
        gets ``share_left``."""
        service = self.service_s.value
        if places_needed <= 0 or service is None:
            return 0.0
        if share_left < MIN_SHARE_LEFT:
            return math.inf
        return places_needed * service / max(1, in_flight) / share_left

    def predict(self, *, places_needed: int, in_flight: int, prompt_tokens: int, priority: int = 0,
                now_s: float = 0.0) -> TtftPrediction:
        share = self.share_left(priority, in_flight, now_s)
        return TtftPrediction(self.queue_s(places_needed, in_flight, share), self.engine_ttft_s(prompt_tokens))
