"""Client-side rate limits for a live endpoint: requests and tokens per minute, as two token buckets that
refill continuously (the way providers count), so a long run neither trips a storm of 429s nor idles.

Limits come from config, or from the provider's `x-ratelimit-*` response headers when config sets none;
`remaining = 0` in a response pauses every request until the header's reset time."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

# A bucket holds a tenth of a second of its limit: requests go out evenly spaced rather than in bursts, so a
# provider that counts over shorter windows than a minute sees no more than its limit either.
BURST_SECONDS = 0.1
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(text: str | None) -> float | None:
    """OpenAI's reset durations ('1s', '6m0s', '20ms', '0.5s') in seconds; a plain number is seconds."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        parts = DURATION.findall(text)
        return sum(float(v) * UNIT[u] for v, u in parts) if parts else None


class Bucket:
    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute * BURST_SECONDS / 60.0)
        self.level, self.stamp = self.capacity, time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (an amount above capacity waits for a full bucket, then overdraws)."""
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.rate)


class RateLimiter:
    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.configured = (rpm, tpm)
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm) if tpm else None
        self.paused_until = 0.0
        self.waited = 0.0  # seconds spent waiting, for reports and tests
        self._lock = asyncio.Lock()

    def new_loop(self) -> None:
        """A fresh lock for a new event loop (each `generate` call runs one); the buckets carry over."""
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return bool(self.requests or self.tokens)

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of about `tokens` tokens fits both limits, then take it."""
        async with self._lock:  # one waiter at a time keeps requests in order and the buckets exact
            while True:
                now = time.monotonic()
                wait = max(0.0, self.paused_until - now)
                for bucket, amount in ((self.requests, 1), (self.tokens, tokens)):
                    if bucket:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    break
                self.waited += wait
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.level -= 1
            if self.tokens:
                self.tokens.level -= tokens

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` (the endpoint said 429: going on at once would only add to it)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def settle(self, estimated: int, used: int | None) -> None:
        """Correct the token bucket once the response says what the request really used."""
        if self.tokens and used is not None:
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + estimated - used)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Adopt the provider's limits where config set none, and pause when it says nothing remains."""
        for kind, index in (("requests", 0), ("tokens", 1)):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit and not self.configured[index] and getattr(self, kind) is None:
                setattr(self, kind, Bucket(limit))
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining is not None and remaining <= 0 and reset:
                self.paused_until = max(self.paused_until, time.monotonic() + reset)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
