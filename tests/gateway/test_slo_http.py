"""SLO-aware admission through a live gateway and simulator: a request predicted to miss its tier's TTFT target
is answered at once with an OpenAI-shaped 503 slo_unattainable, its quota given back; goodput per tier counted."""

from __future__ import annotations

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import metric_value, serve_gateway, wait_until

STRICT = "sk-sluice-slo-strict-0123456789abcdef"
EASY = "sk-sluice-slo-generous-0123456789abcd"
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 3000, "ignore_eos": True, "stream": True}


def chat(max_tokens: int, stream: bool = True) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream}


@pytest.fixture(scope="module")
def gateway():
    settings = parse_settings({
        "models": [{"name": "m", "sim": {"max_num_seqs": 4},
                    "admission": {"window": {"kind": "fixed", "initial": 1}}}],
        "tiers": {
            # a target no queued request can make; a token budget that holds one 1500-token reservation, not two
            "strict": {"priority": 0, "ttft_slo_s": 0.001, "tokens": "2000/minute"},
            "generous": {"priority": 0, "ttft_slo_s": 60},
        },
        "keys": [{"id": "strict", "hash": hash_key(STRICT), "tier": "strict"},
                 {"id": "easy", "hash": hash_key(EASY), "tier": "generous"}],
    })
    with serve_gateway(settings) as live:
        yield live


def test_a_request_that_would_queue_into_a_miss_gets_503_slo_unattainable_at_once(gateway):
    strict = {"authorization": f"Bearer {STRICT}"}
    easy = {"authorization": f"Bearer {EASY}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        # the gate learns how long a place is held and how soon the first token comes (an idle gate never refuses)
        first = http.post("/v1/chat/completions", json=chat(3), headers=strict)
        assert first.status_code == 200
        assert http.post("/v1/chat/completions", json=chat(3), headers=easy).status_code == 200
        with http.stream("POST", "/v1/chat/completions", json={"model": "m", **LONG}, headers=easy) as holder:
            lines = holder.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)  # the window's only place is taken
            refused = [http.post("/v1/chat/completions", json=chat(1500, stream=False), headers=strict)
                       for _ in range(2)]
    for r in refused:  # the second passed its quota: the first one's reservation was given back
        assert r.status_code == 503, r.text
        assert r.headers["x-sluice-reason"] == "slo_unattainable"
        assert int(r.headers["retry-after-ms"]) >= 1 and int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "slo_unattainable" and error["type"] == "server_error"
        assert "target" in error["message"]
    assert wait_until(lambda: metric_value(gateway.url, "sluice_goodput_requests_total", model="m", tier="strict",
                                           result="refused") == 2.0)
    assert metric_value(gateway.url, "sluice_goodput_requests_total", model="m", tier="generous",
                        result="met") == 1.0  # the long stream the client left is not goodput
    assert metric_value(gateway.url, "sluice_goodput_requests_total", model="m", tier="strict",
                        result="missed") == 1.0  # answered, but not within a millisecond
    assert metric_value(gateway.url, "sluice_rejections_total", reason="slo_unattainable", model="m") == 2.0
