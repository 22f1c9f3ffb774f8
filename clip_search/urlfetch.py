"""Fetch a query image from a URL a visitor typed, without letting them probe the server's network.

Only http(s). The host is resolved once, every address it resolves to must be public (unless private addresses
are explicitly allowed), and the connection is pinned to the checked address, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. Redirects are followed by hand, a few
at most, each one checked the same way. The body is streamed and cut off at a size limit and a total deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from urllib.parse import urlsplit

import httpx

from clip_search.errors import ClipSearchError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
USER_AGENT = "clip-search (image search by URL; +https://github.com/)"


class UrlFetchError(ClipSearchError):
    """A URL that cannot or may not be fetched; the message says why, in plain words."""


class _PinnedTransport(httpx.HTTPTransport):
    """Connects to an address checked beforehand, while keeping the host name for the Host header and TLS."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        request.url = request.url.copy_with(host=self.address)
        request.headers["Host"] = host if request.url.port is None else f"{host}:{request.url.port}"
        request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool = False) -> tuple[str, str]:
    """Validate ``url`` and resolve its host: returns (url, address to connect to) or raises UrlFetchError."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlFetchError("that is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlFetchError("only http:// and https:// image URLs can be used")
    host = parts.hostname
    if not host:
        raise UrlFetchError("the URL has no host name")
    if parts.username or parts.password:
        raise UrlFetchError("URLs with a user name or password are not accepted")
    try:
        infos = socket.getaddrinfo(
            host, port or (443 if parts.scheme.lower() == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        raise UrlFetchError(f"cannot find the host {host}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))
    if not addresses:
        raise UrlFetchError(f"cannot find the host {host}")
    if not allow_private and not all(_is_public(a) for a in addresses):
        log.info("refused URL %s: %s resolves to a non-public address", url, host)
        raise UrlFetchError("that URL points to a private or local network address, which this app does not fetch")
    return url, addresses[0]


def fetch_url(url: str, *, max_bytes: int, timeout_s: float, allow_private: bool = False) -> bytes:
    """The bytes at ``url`` (an image, judged later from the bytes), or UrlFetchError saying what went wrong."""
    deadline = time.monotonic() + timeout_s
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        current, address = check_url(current, allow_private=allow_private)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchError(f"the image took too long to download (more than {timeout_s:g} s)")
        try:
            with (
                httpx.Client(
                    transport=_PinnedTransport(address),
                    timeout=httpx.Timeout(remaining),
                    headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
                    follow_redirects=False,
                ) as client,
                client.stream("GET", current) as response,
            ):
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise UrlFetchError("the server answered with a redirect to nowhere")
                    current = str(httpx.URL(current).join(location))  # relative to the URL asked, not the address
                    continue
                if response.status_code != 200:
                    raise UrlFetchError(f"the server answered {response.status_code} {response.reason_phrase}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise UrlFetchError(_too_large(max_bytes))
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise UrlFetchError(_too_large(max_bytes))
                    if time.monotonic() > deadline:
                        raise UrlFetchError(f"the image took too long to download (more than {timeout_s:g} s)")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise UrlFetchError(f"the image took too long to download (more than {timeout_s:g} s)") from None
        except httpx.HTTPError as exc:
            log.info("fetching %s failed: %s", current, exc)
            raise UrlFetchError("could not download the image from that URL") from None
    raise UrlFetchError("the URL redirects too many times")


def _too_large(max_bytes: int) -> str:
    return f"the image at that URL is too large (the limit is {max_bytes / 2**20:.0f} MiB)"
