"""Rate limits of the live OpenAI-compatible backend against a real local server that enforces them."""

import threading
import time
from collections import deque

import pytest

from generators import Request, Sampling, make_teacher
from generators.rate_limit import parse_reset
from tests.local_http import JsonServer


class LimitedServer(JsonServer):
    """Answers completions, but 429s any request past `per_second` in a sliding one-second window; sends
    rate-limit headers when `headers` is given."""

    def __init__(self, per_second: int = 1000, headers: dict | None = None):
        super().__init__()
        self.per_second, self.headers = per_second, headers or {}
        self.stamps, self.ok, self.refused = deque(), 0, 0
        self.lock = threading.Lock()
        self.start()

    def respond(self, path, body, headers):
        with self.lock:
            now = time.monotonic()
            while self.stamps and now - self.stamps[0] > 1.0:
                self.stamps.popleft()
            allowed = len(self.stamps) < self.per_second
            if allowed:
                self.stamps.append(now)
                self.ok += 1
            else:
                self.refused += 1
        if not allowed:
            return 429, self.headers, {"error": {"message": "rate limited"}}
        return 200, self.headers, {"choices": [{"index": 0, "text": " ok", "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": 1}}


def reqs(k):
    return [Request(model="m", sampling=Sampling(max_tokens=4, seed=i), prompt=f"say {i}") for i in range(k)]


def teacher(url, **kw):
    return make_teacher("openai", "m", base_url=url, **{"concurrency": 40, "backoff": 0.05, "max_backoff": 0.2} | kw)


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0.5s", 0.5),
                                           ("2", 2.0), ("1h2m3s", 3723.0), ("", None), ("soon", None)])
def test_reset_durations(text, seconds):
    assert parse_reset(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_without_a_limit_a_burst_trips_429s_and_with_rpm_none_do():
    server = LimitedServer(per_second=12)
    try:
        teacher(server.url, max_retries=40).generate(reqs(40))
        assert server.refused > 0  # the storm the limit exists to prevent
        server.refused, server.ok = 0, 0
        time.sleep(1.1)
        t = teacher(server.url, rpm=600)  # 10 a second: under the server's 12
        started = time.monotonic()
        out = t.generate(reqs(40))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert server.refused == 0 and server.ok == 40 and all(o[0].text == " ok" for o in out)
    assert elapsed >= 3.5 and t.limiter.waited > 0  # 40 requests at 10 a second, evenly spaced


def test_a_tokens_per_minute_limit_paces_by_the_request_budget():
    server = LimitedServer()
    try:
        t = teacher(server.url, tpm=6000)  # 100 tokens a second; each request may use about 5
        started = time.monotonic()
        t.generate(reqs(40))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed >= 1.0 and server.ok == 40


def test_limits_are_read_from_the_provider_headers_and_remaining_zero_pauses():
    server = LimitedServer(headers={"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0",
                                    "x-ratelimit-reset-requests": "300ms", "x-ratelimit-limit-tokens": "60000"})
    try:
        t = teacher(server.url, concurrency=1)
        t.generate(reqs(3))
    finally:
        server.close()
    assert t.limiter.requests.rate == pytest.approx(10.0) and t.limiter.tokens.rate == pytest.approx(1000.0)
    assert t.limiter.waited >= 0.5  # each request after the first waited out the 300 ms reset


def test_configured_limits_win_over_headers():
    server = LimitedServer(headers={"x-ratelimit-limit-requests": "6"})
    try:
        t = teacher(server.url, rpm=6000)
        t.generate(reqs(2))
    finally:
        server.close()
    assert t.limiter.requests.rate == pytest.approx(100.0)


def test_live_requests_record_the_providers_usage_and_the_full_price(db_path):
    from generators import make_recipe, run_generation
    from store import Store

    recipe = make_recipe("atomic10x", {"events_from": "seeds", "max_events": 3, "relations": ["xWant"],
                                       "inference_sampling": {"n": 1, "max_tokens": 4}})
    server = LimitedServer()
    try:
        stats = run_generation(db_path, recipe, teacher(server.url, prices={"m": {"input": 2.0, "output": 10.0}}))
    finally:
        server.close()
    with Store(db_path, read_only=True) as s:
        rows = s.query("SELECT prompt_tokens, completion_tokens, cost, batch_key FROM requests").rows()
    assert len(rows) == 3 and all(p > 10 and c == 1 and b is None for p, c, _, b in rows)
    assert [r[2] for r in rows] == pytest.approx([(p * 2.0 + c * 10.0) / 1e6 for p, c, _, _ in rows])
    assert stats.cost == pytest.approx(sum(r[2] for r in rows)) and stats.prompt_tokens == sum(r[0] for r in rows)
