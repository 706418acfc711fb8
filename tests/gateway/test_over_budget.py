"""A request that would cross its token budget, through a live gateway and a simulated engine, on the memory store
and on a real Redis: clamped, cut or tagged as its tier says, and charged exactly (the admin budget's ``reset_s``
of a bucket that started full is what it was charged, one token every ``INTERVAL_S``)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from sluice.config import SimSettings, parse_settings
from sluice.identity import hash_key
from tests.conftest import LiveSim, metric_value, serve_gateway, wait_until

ADMIN = "sk-sluice-over-budget-admin-0123456789"
BUDGET = 200  # tokens a day per key: nothing drips back while a test runs
INTERVAL_S = 86400 / BUDGET
POLICIES = ("refuse", "clamp", "cut", "tag")
# one key per test (a budget each), in the tier its name starts with
KEYS = {name: f"sk-sluice-ob-{name}-0123456789" for name in (
    "refuse", "clamp-plain", "clamp-stream", "cut-stream", "cut-plain", "cut-left", "tag-plain", "tag-stream",
    "clamp-slow", "clamp-n", "cut-gone", "clamp-cached")}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "tell me everything"}], "ignore_eos": True}


@pytest.fixture(scope="module")
def sim():
    # 2 ms a token: a long answer runs for many seconds, unless the gateway closes it
    with LiveSim(SimSettings(speed=4.0), model_name="m") as live:
        yield live


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request, sim):
    state = request.getfixturevalue("redis_server").url if request.param == "redis" else "memory://"
    settings = parse_settings({
        "state": state,
        "auth": {"admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "engine": {"urls": [sim.url]}},
                   {"name": "cached", "sim": {"speed": 100}, "cache": {"enabled": True, "ttl_s": 600}}],
        "tiers": {policy: {"tokens": f"{BUDGET}/day", "over_budget": policy} for policy in POLICIES},
        "keys": [{"id": f"ob-{request.param}-{name}", "hash": hash_key(key), "tier": name.split("-")[0]}
                 for name, key in KEYS.items()],
    })
    with serve_gateway(settings) as live:
        live.key_prefix = f"ob-{request.param}-"
        yield live


def post(gw, name: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS[name]}"},
                      timeout=30)


def stream(gw, name: str, body: dict[str, Any], *, stop_after: int | None = None) -> tuple[httpx.Headers, list[bytes]]:
    """The SSE frames' data of a streamed answer (the first ``stop_after`` text frames, then the client leaves)."""
    datas, texts = [], 0
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", gw.url + "/v1/chat/completions", json={**body, "stream": True},
            headers={"authorization": f"Bearer {KEYS[name]}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                datas.append(line[6:].encode())
                texts += _text(datas[-1]) is not None
                if stop_after is not None and texts >= stop_after:
                    break
        return r.headers, datas


def _text(data: bytes) -> str | None:
    if data == b"[DONE]":
        return None
    choices = orjson.loads(data).get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or None


def charged(gw, name: str) -> int:
    """Tokens charged to the key's budget so far (it started full)."""
    r = httpx.get(gw.url + "/admin/budget", params={"key_id": gw.key_prefix + name},
                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    tokens = next(row for row in r.json()["limits"] if row["kind"] == "tokens")
    return round(tokens["reset_s"] / INTERVAL_S)


def over_budget_count(gw, tier: str, policy: str) -> float:
    return metric_value(gw.url, "sluice_over_budget_requests_total", tier=tier, policy=policy) or 0.0


def test_refuse_is_a_429_that_charges_nothing(gateway):
    r = post(gateway, "refuse", {**CHAT, "max_tokens": 500})
    assert r.status_code == 429 and r.headers["x-sluice-reason"] == "quota_tokens"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert charged(gateway, "refuse") == 0


def test_clamp_lowers_max_tokens_to_what_is_left_and_ends_with_length(gateway):
    before = over_budget_count(gateway, "clamp", "clamp")
    r = post(gateway, "clamp-plain", {**CHAT, "max_tokens": 500})
    assert r.status_code == 200
    body, clamped = r.json(), int(r.headers["x-sluice-max-tokens-clamped"])
    assert 16 <= clamped < BUDGET  # what was left once the prompt was priced
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == clamped  # the engine was told max_tokens = clamped
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"  # reserved to the edge
    assert wait_until(lambda: charged(gateway, "clamp-plain") == body["usage"]["total_tokens"])  # reconciled
    assert wait_until(lambda: over_budget_count(gateway, "clamp", "clamp") == before + 1)
    again = post(gateway, "clamp-plain", {**CHAT, "max_tokens": 500})
    assert again.status_code == 429  # less than over_budget_min_tokens left: refused as under refuse


def test_clamp_of_a_stream(gateway):
    headers, datas = stream(gateway, "clamp-stream", {**CHAT, "max_tokens": 500,
                                                      "stream_options": {"include_usage": True}})
    clamped = int(headers["x-sluice-max-tokens-clamped"])
    assert datas[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in datas[:-1]]
    assert sum(_text(d) is not None for d in datas) == clamped
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == clamped
    assert wait_until(lambda: charged(gateway, "clamp-stream") == usage["total_tokens"])


def test_clamp_of_several_choices_clamps_each_answer(gateway):
    r = post(gateway, "clamp-n", {**CHAT, "max_tokens": 500, "n": 2})
    clamped = int(r.headers["x-sluice-max-tokens-clamped"])
    assert 16 <= clamped < BUDGET // 2  # what was left, shared by the two answers
    assert r.json()["usage"]["completion_tokens"] == 2 * clamped
    assert [c["finish_reason"] for c in r.json()["choices"]] == ["length", "length"]
    assert wait_until(lambda: charged(gateway, "clamp-n") == r.json()["usage"]["total_tokens"])


def test_a_clamped_answer_is_not_cached_as_the_answer_to_the_request(gateway):
    ask = {**CHAT, "model": "cached", "max_tokens": 500, "temperature": 0}
    first = post(gateway, "clamp-cached", ask)
    assert first.status_code == 200 and "x-sluice-max-tokens-clamped" in first.headers
    # settled, so its bookkeeping (the cache's too, spawned with it) is done
    assert wait_until(lambda: charged(gateway, "clamp-cached") == first.json()["usage"]["total_tokens"])
    again = post(gateway, "clamp-cached", ask)  # not a cache hit (it was shortened): it spends quota it has not
    assert again.status_code == 429 and again.headers.get("x-sluice-cache") != "hit"


def test_a_request_that_fits_is_untouched(gateway):
    r = post(gateway, "clamp-slow", {**CHAT, "max_tokens": 20})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
    assert "x-sluice-max-tokens-clamped" not in r.headers and "x-sluice-over-budget" not in r.headers


def test_cut_ends_the_stream_with_an_error_event_where_the_budget_ends(gateway, sim):
    before = over_budget_count(gateway, "cut", "cut")
    headers, datas = stream(gateway, "cut-stream", {**CHAT, "max_tokens": 8000})  # 16 s of tokens, if not cut
    cut_at = int(headers["x-sluice-stream-cut-at"])
    assert 16 <= cut_at < BUDGET
    assert sum(_text(d) is not None for d in datas) == cut_at
    assert datas[-1] == b"[DONE]"
    error = orjson.loads(datas[-2])["error"]
    assert error["code"] == "token_budget_exhausted" and error["type"] == "tokens" and set(error) == {
        "message", "type", "param", "code"}
    assert all(c["choices"][0]["finish_reason"] is None for c in map(orjson.loads, datas[:-2]))
    # the engine stopped generating: its request was closed (it would run for seconds more otherwise)
    assert wait_until(lambda: sim.engine.num_running == 0, timeout_s=5)
    # charged what it produced: the prompt as priced and the tokens sent, which is the whole budget
    assert wait_until(lambda: charged(gateway, "cut-stream") == BUDGET)
    assert wait_until(lambda: over_budget_count(gateway, "cut", "cut") == before + 1)


def test_cut_through_the_openai_sdk_raises_at_the_cut(gateway):
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["cut-left"], max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in sdk.chat.completions.create(model="m", messages=CHAT["messages"], max_tokens=500, stream=True,
                                                 extra_body={"ignore_eos": True}):
            received.append(chunk.choices[0].delta.content or "")
    assert "cut after" in info.value.message
    assert len([t for t in received if t]) >= 16


def test_cut_of_an_answer_that_is_not_streamed_is_a_clamp(gateway):
    before = over_budget_count(gateway, "cut", "clamp")
    r = post(gateway, "cut-plain", {**CHAT, "max_tokens": 500})
    assert r.status_code == 200 and "x-sluice-stream-cut-at" not in r.headers
    assert r.json()["usage"]["completion_tokens"] == int(r.headers["x-sluice-max-tokens-clamped"])
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert wait_until(lambda: charged(gateway, "cut-plain") == r.json()["usage"]["total_tokens"])
    assert wait_until(lambda: over_budget_count(gateway, "cut", "clamp") == before + 1)


def test_tag_lets_it_finish_over_budget_and_the_debt_refuses_the_next(gateway):
    before = over_budget_count(gateway, "tag", "tag")
    r = post(gateway, "tag-plain", {**CHAT, "max_tokens": 300})
    assert r.status_code == 200 and r.headers["x-sluice-over-budget"] == "true"
    usage = r.json()["usage"]
    assert usage["completion_tokens"] == 300 and r.json()["choices"][0]["finish_reason"] == "length"
    assert wait_until(lambda: charged(gateway, "tag-plain") == usage["total_tokens"])  # past the budget: in debt
    refused = post(gateway, "tag-plain", {**CHAT, "max_tokens": 100})
    assert refused.status_code == 429 and refused.headers["x-sluice-reason"] == "quota_tokens"
    debt_s = (usage["total_tokens"] - BUDGET) * INTERVAL_S
    assert int(refused.headers["retry-after"]) > debt_s  # until the debt is repaid, and its own floor fits
    assert wait_until(lambda: over_budget_count(gateway, "tag", "tag") == before + 1)


def test_tag_of_a_stream(gateway):
    headers, datas = stream(gateway, "tag-stream", {**CHAT, "max_tokens": 300,
                                                    "stream_options": {"include_usage": True}})
    assert headers["x-sluice-over-budget"] == "true" and datas[-1] == b"[DONE]"
    assert sum(_text(d) is not None for d in datas) == 300
    usage = orjson.loads(datas[-2])["usage"]
    assert wait_until(lambda: charged(gateway, "tag-stream") == usage["total_tokens"])


def test_a_client_leaving_a_stream_before_its_cut_is_charged_what_was_sent_once(gateway, sim):
    headers, datas = stream(gateway, "cut-gone", {**CHAT, "max_tokens": 8000}, stop_after=5)
    assert int(headers["x-sluice-stream-cut-at"]) > 5 and b"[DONE]" not in datas
    assert wait_until(lambda: sim.engine.num_running == 0, timeout_s=5)  # its request closed at the engine
    assert wait_until(lambda: charged(gateway, "cut-gone") < BUDGET)  # the unused part refunded
    settled = charged(gateway, "cut-gone")
    assert settled >= 5 + 1  # the tokens sent (and the prompt) stay charged
    assert post(gateway, "cut-gone", {**CHAT, "max_tokens": 16}).status_code == 200
    assert wait_until(lambda: charged(gateway, "cut-gone") > settled)  # the next one is charged on top: once each


def _frame(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _token(text: str, finish: str | None = None) -> bytes:
    return _frame({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


def test_the_tally_cuts_before_the_token_past_the_budget_and_not_an_answer_that_ends_within_it():
    from sluice.gateway._relay import StreamTally

    role = _frame({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    usage = _frame({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    ends_within = StreamTally(wants_usage=True, cut_at=3)
    frames = [role, _token("a"), _token("b"), _token("c", "stop"), usage, b"data: [DONE]\n\n"]
    assert ends_within.take(frames) == frames and not ends_within.cut and ends_within.finished
    runs_on = StreamTally(wants_usage=False, cut_at=3)
    out = runs_on.take([role, _token("a"), _token("b")])
    out += runs_on.take([_token("c"), _token("d"), _token("e")])
    assert out == [role, _token("a"), _token("b"), _token("c")] and runs_on.cut and runs_on.produced == 3
