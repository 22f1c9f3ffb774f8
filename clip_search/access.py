"""Who may do what, how often: per-client rate limits and optional upload/admin tokens.

Engine-agnostic and framework-free: the app passes in the request's peer address and headers.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

UPLOAD_TOKEN_ENV = "CLIP_SEARCH_UPLOAD_TOKEN"
ADMIN_TOKEN_ENV = "CLIP_SEARCH_ADMIN_TOKEN"


class RateLimiter:
    """A token bucket per client: ``per_minute`` actions, refilled evenly; 0 disables the limit."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000):
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def acquire(self, client: str, cost: int = 1) -> float:
        """Take ``cost`` tokens: returns 0.0 when allowed, else the seconds to wait (nothing is taken then)."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
            if tokens >= cost:
                tokens -= cost
                wait = 0.0
            else:
                wait = (cost - tokens) / self._rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self._max_clients:  # forget the longest-idle clients
                self._buckets.popitem(last=False)
        return wait

    def waiting(self, client: str, cost: int = 1) -> float:
        """The seconds ``client`` must wait before ``cost`` tokens are there (0.0: now), taking nothing."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.per_minute), self._clock()))
        tokens = min(float(self.per_minute), tokens + (self._clock() - last) * self._rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self._rate

    @staticmethod
    def message(wait: float, what: str = "requests") -> str:
        return f"Too many {what} from your address: try again in {max(1, math.ceil(wait))} s."


def client_address(
    peer: str | None, headers: Mapping[str, str] | None, *, trusted_header: str | None, trusted_hops: int = 1
) -> str:
    """The address to rate-limit by. A forwarding header is believed only when configured (behind a proxy),
    and then only the entry the trusted proxy appended (counting ``trusted_hops`` from the right), since
    everything to its left is whatever the client chose to send."""
    if trusted_header and headers:
        value = next((v for k, v in headers.items() if k.lower() == trusted_header.lower()), None)
        if value:
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if parts:
                return parts[-min(trusted_hops, len(parts))]
    return peer or "unknown"


def token_ok(given: str | None, env_var: str) -> bool:
    """True when no token is configured in ``env_var``, or ``given`` matches it (constant-time)."""
    expected = os.environ.get(env_var, "")
    if not expected:
        return True
    return hmac.compare_digest((given or "").encode(), expected.encode())


def token_required(env_var: str) -> bool:
    return bool(os.environ.get(env_var))
