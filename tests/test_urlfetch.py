"""Query images by URL: http(s) only, no private addresses unless allowed, size and time limits, safe redirects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clip_search.urlfetch import UrlFetchError, check_url, fetch_url

BODY = b"\xff\xd8" + b"x" * 5000


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ok.jpg":
                self._send(BODY)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/ok.jpg")
                self.end_headers()
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(50):
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)
            elif self.path == "/unsized":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * 20000)
            else:
                self.send_error(404)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http"),
        ("ftp://example.com/x.jpg", "only http"),
        ("gopher://127.0.0.1:6379/_INFO", "only http"),
        ("http://", "no host"),
        ("http://user:pw@example.com/x.jpg", "user name or password"),
        ("http://127.0.0.1/x.jpg", "private or local"),
        ("http://localhost:8080/x.jpg", "private or local"),
        ("http://[::1]/x.jpg", "private or local"),
        ("http://10.1.2.3/x.jpg", "private or local"),
        ("http://192.168.0.1/x.jpg", "private or local"),
        ("http://169.254.169.254/latest/meta-data/", "private or local"),
        ("http://0.0.0.0/", "private or local"),
        ("http://[::ffff:127.0.0.1]/", "private or local"),
        ("http://2130706433/", "private or local"),  # 127.0.0.1 as one number
        ("http://host.invalid/x.jpg", "cannot find the host"),
        ("http://exa mple.com:99999/", "not a valid URL"),
    ],
)
def test_refused_urls(url: str, reason: str):
    with pytest.raises(UrlFetchError, match=reason):
        check_url(url)


def test_fetch_when_private_addresses_are_allowed(server: str):
    assert fetch_url(f"{server}/ok.jpg", max_bytes=10_000, timeout_s=5, allow_private=True) == BODY
    assert fetch_url(f"{server}/redirect", max_bytes=10_000, timeout_s=5, allow_private=True) == BODY


def test_private_addresses_are_refused_by_default(server: str):
    with pytest.raises(UrlFetchError, match="private or local"):
        fetch_url(f"{server}/ok.jpg", max_bytes=10_000, timeout_s=5)


def test_limits(server: str):
    with pytest.raises(UrlFetchError, match="too large"):
        fetch_url(f"{server}/ok.jpg", max_bytes=1000, timeout_s=5, allow_private=True)
    with pytest.raises(UrlFetchError, match="too large"):
        fetch_url(f"{server}/unsized", max_bytes=10_000, timeout_s=5, allow_private=True)
    started = time.monotonic()
    with pytest.raises(UrlFetchError, match="too long"):
        fetch_url(f"{server}/slow", max_bytes=10**6, timeout_s=1, allow_private=True)
    assert time.monotonic() - started < 3
    with pytest.raises(UrlFetchError, match="redirects too many times"):
        fetch_url(f"{server}/loop", max_bytes=10_000, timeout_s=5, allow_private=True)
    with pytest.raises(UrlFetchError, match="404"):
        fetch_url(f"{server}/missing.jpg", max_bytes=10_000, timeout_s=5, allow_private=True)


def test_each_redirect_is_checked_again(server: str, monkeypatch):
    import clip_search.urlfetch as urlfetch

    real = urlfetch.check_url
    checked = []

    def spy(url: str, *, allow_private: bool = False) -> tuple[str, str]:
        checked.append(url)
        # the first hop is the (allowed) test server; the redirect target must be refused on its own
        return real(url, allow_private=allow_private and len(checked) == 1)

    monkeypatch.setattr(urlfetch, "check_url", spy)
    with pytest.raises(UrlFetchError, match="private or local"):
        fetch_url(f"{server}/to-metadata", max_bytes=10_000, timeout_s=5, allow_private=True)
    assert checked == [f"{server}/to-metadata", "http://169.254.169.254/latest/meta-data/"]
