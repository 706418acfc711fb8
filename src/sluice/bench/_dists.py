"""Length distributions for prompts and answers, parsed from a short spec and sampled with an injected RNG.

Specs (``--input-len`` / ``--output-len``):

    128                       fixed: always 128 tokens
    32-256                    uniform integers in [32, 256]
    lognormal:MEAN:SIGMA      lognormal with that mean and shape (sigma of the log), clipped to [1, 8192]
    lognormal:MEAN:SIGMA:MAX  the same, clipped to [1, MAX]
    sharegpt | lmsys | alpaca a preset shaped like a public chat trace (below); its input or output side

Presets. Only the means come from the published statistics; the lognormal shape and the sigmas are our
choice (chat-trace lengths are right-skewed with a long tail, and a lognormal is the usual fit):

    preset    input mean  output mean  source
    sharegpt  161.3       338.0        vLLM paper (Kwon et al., SOSP 2023, Fig. 11a): ShareGPT, OPT tokenizer
    alpaca    19.3        58.5         vLLM paper (Kwon et al., SOSP 2023, Fig. 11b): Alpaca
    lmsys     69.5        214.5        LMSYS-Chat-1M paper (Zheng et al., 2023, Table 1): tokens per prompt/response
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, Protocol

Side = Literal["input", "output"]
DEFAULT_MAX_TOKENS = 8192


class LengthDist(Protocol):
    def sample(self, rng: random.Random) -> int: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Fixed:
    tokens: int

    def sample(self, rng: random.Random) -> int:
        return self.tokens

    def describe(self) -> str:
        return f"fixed {self.tokens}"


@dataclass(frozen=True)
class Uniform:
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def describe(self) -> str:
        return f"uniform {self.low}-{self.high}"


@dataclass(frozen=True)
class LogNormal:
    """Lognormal with the given mean (before clipping) and sigma of the log, rounded and clipped to [1, max]."""

    mean: float
    sigma: float
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def mu(self) -> float:
        return math.log(self.mean) - self.sigma**2 / 2

    def sample(self, rng: random.Random) -> int:
        return max(1, min(self.max_tokens, round(rng.lognormvariate(self.mu, self.sigma))))

    def describe(self) -> str:
        return f"lognormal mean {self.mean:g} sigma {self.sigma:g} max {self.max_tokens}"


@dataclass(frozen=True)
class Preset:
    name: str
    input: LogNormal
    output: LogNormal
    source: str


PRESETS: dict[str, Preset] = {
    "sharegpt": Preset("sharegpt", LogNormal(161.3, 1.0, 4096), LogNormal(338.0, 0.8, 4096),
                       "vLLM paper (Kwon et al., SOSP 2023), Fig. 11a, ShareGPT"),
    "alpaca": Preset("alpaca", LogNormal(19.3, 0.6, 1024), LogNormal(58.5, 0.9, 1024),
                     "vLLM paper (Kwon et al., SOSP 2023), Fig. 11b, Alpaca"),
    "lmsys": Preset("lmsys", LogNormal(69.5, 1.2, 4096), LogNormal(214.5, 0.9, 4096),
                    "LMSYS-Chat-1M (Zheng et al., 2023), Table 1"),
}


def parse_dist(spec: str, side: Side) -> LengthDist:
    """A length distribution from its spec (see the module doc); ``side`` picks a preset's input or output."""
    text = spec.strip().lower()
    try:
        if text in PRESETS:
            return PRESETS[text].input if side == "input" else PRESETS[text].output
        if text.isdigit():
            return Fixed(_positive(int(text)))
        if text.startswith("lognormal:"):
            parts = text.split(":")[1:]
            if len(parts) not in (2, 3):
                raise ValueError("lognormal takes MEAN:SIGMA or MEAN:SIGMA:MAX")
            mean, sigma = float(parts[0]), float(parts[1])
            if mean <= 0 or sigma < 0:
                raise ValueError("the mean must be > 0 and sigma >= 0")
            cap = _positive(int(parts[2])) if len(parts) == 3 else DEFAULT_MAX_TOKENS
            return LogNormal(mean, sigma, cap)
        low_text, sep, high_text = text.removeprefix("uniform:").partition("-")
        if sep:
            low, high = _positive(int(low_text)), _positive(int(high_text))
            if high < low:
                raise ValueError("the upper bound is below the lower")
            return Uniform(low, high)
    except ValueError as exc:
        raise ValueError(f"bad length spec {spec!r}: {exc}") from exc
    raise ValueError(f"bad length spec {spec!r}: expected N, A-B, lognormal:MEAN:SIGMA[:MAX] or one of "
                     f"{', '.join(PRESETS)}")


def _positive(n: int) -> int:
    if n < 1:
        raise ValueError("lengths are at least 1 token")
    return n
