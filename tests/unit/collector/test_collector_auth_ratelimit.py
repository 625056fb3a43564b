"""Where write keys are found, and the per-key token bucket."""

from __future__ import annotations

import base64

from collector.auth import appsflyer_key, basic_username, body_key, header_key
from collector.ratelimit import RateLimiter


def _basic(user: str, pw: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_basic_username() -> None:
    assert basic_username(_basic("tfw_key")) == "tfw_key"
    assert basic_username(_basic("tfw_key", "ignored")) == "tfw_key"
    assert basic_username("basic " + base64.b64encode(b"k:").decode()) == "k"
    assert basic_username(_basic("")) is None
    assert basic_username("Bearer abc") is None
    assert basic_username("Basic !!!notbase64") is None
    assert basic_username(None) is None


def test_header_then_body() -> None:
    assert header_key({"authorization": _basic("a"), "x-write-key": "b"}) == "a"
    assert header_key({"x-write-key": "b"}) == "b"
    assert header_key({}) is None
    assert body_key({"writeKey": "c"}) == "c"
    assert body_key({"writeKey": 3}) is None
    assert body_key([{"writeKey": "c"}]) is None


def test_appsflyer_authentication_header() -> None:
    assert appsflyer_key({"authentication": "af"}) == "af"
    assert appsflyer_key({"x-write-key": "b"}) == "b"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    rl = RateLimiter(rate=10, burst=20, clock=clock)
    assert rl.take("app", 20) == 0.0
    wait = rl.take("app", 5)
    assert 0.49 < wait <= 0.5, "5 events at 10/s: half a second"
    clock.t += 0.5
    assert rl.take("app", 5) == 0.0
    assert rl.take("other", 20) == 0.0, "buckets are per key"
    assert RateLimiter.retry_after(0.2) == 1
    assert RateLimiter.retry_after(2.1) == 3


def test_disabled_limit_and_oversized_request() -> None:
    assert RateLimiter(rate=0, burst=1).take("app", 10**6) == 0.0
    rl = RateLimiter(rate=10, burst=20, clock=Clock())
    assert rl.take("app", 50) > 0, "more than the burst is refused"
