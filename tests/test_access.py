"""Rate limits and tokens: a client is told how long to wait; spoofed forwarding headers are not believed."""

from __future__ import annotations

import pytest

from clip_search.access import ADMIN_TOKEN_ENV, RateLimiter, client_address, token_ok


def test_bucket_allows_the_rate_then_says_how_long_to_wait():
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # one every 10 s, bursts of 6
    assert all(limiter.acquire("a") == 0.0 for _ in range(6))
    wait = limiter.acquire("a")
    assert wait == pytest.approx(10.0)
    assert "try again in 10 s" in RateLimiter.message(wait, "uploads")
    assert limiter.acquire("b") == 0.0  # other clients are not affected
    now[0] += 10.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_zero_means_unlimited():
    limiter = RateLimiter(0)
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))


def test_forwarded_header_only_when_trusted():
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}  # client-sent junk, then what our proxy appended
    assert client_address("10.0.0.1", headers, trusted_header=None) == "10.0.0.1"
    assert client_address("10.0.0.1", headers, trusted_header="x-forwarded-for") == "203.0.113.7"
    assert client_address("10.0.0.1", headers, trusted_header="x-forwarded-for", trusted_hops=2) == "6.6.6.6"
    assert client_address("10.0.0.1", {}, trusted_header="x-forwarded-for") == "10.0.0.1"


def test_tokens(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert token_ok(None, ADMIN_TOKEN_ENV)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    assert not token_ok(None, ADMIN_TOKEN_ENV)
    assert not token_ok("wrong", ADMIN_TOKEN_ENV)
    assert token_ok("s3cret", ADMIN_TOKEN_ENV)
