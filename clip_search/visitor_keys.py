"""Visitors' secrets: the key that unlocks their private photos, the delete code of each upload, their client id.

Nothing here is ever stored or logged in clear:

* A **visitor key** (a passphrase the visitor chose, or one generated for them) is stored only as its *owner hash*:
  scrypt (n=2**14, r=8, p=1) with a per-deployment salt from ``CLIP_SEARCH_KEY_SALT`` (every replica must share
  it; without it a documented constant is used). Scrypt is deliberately slow (~0.1 s) because a chosen passphrase
  has little entropy: a stolen table costs an attacker that much per guess. One derivation serves every kind of key
  (a key cannot tell whether it was chosen or generated), and each process keeps the hashes it derived in a small
  cache, so a visitor's further searches cost nothing.
* A **delete code** is ``<image id>-<secret>``, the secret 144 random bits (``secrets``): a plain sha256 of the
  secret is stored, and compared in constant time.
* A **client id** is a pseudonym of the uploader's address (HMAC-SHA256 with the same salt), for admins to group
  and remove one uploader's photos without the table holding addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict

KEY_SALT_ENV = "CLIP_SEARCH_KEY_SALT"
DEFAULT_SALT = "clip-search visitor keys v1"  # documented fallback: set CLIP_SEARCH_KEY_SALT on a public deployment
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
GENERATED_KEY_BYTES = 16  # 22 characters of URL-safe base64
DELETE_SECRET_BYTES = 18  # 24 characters
CACHED_KEYS = 1024
_NO_HASH = hashlib.sha256(b"no delete code").hexdigest()  # compared against when an image has no code

_cache: OrderedDict[bytes, str] = OrderedDict()
_cache_lock = threading.Lock()


def _salt() -> bytes:
    return (os.environ.get(KEY_SALT_ENV) or DEFAULT_SALT).encode()


def owner_hash(key: str) -> str:
    """The owner hash of a visitor key (hex): what the table stores and a search compares."""
    salt = _salt()
    slot = hashlib.sha256(salt + b"\0" + key.encode()).digest()  # the cache never holds the key itself
    with _cache_lock:
        found = _cache.get(slot)
        if found is not None:
            _cache.move_to_end(slot)
            return found
    derived = hashlib.scrypt(key.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32).hex()
    with _cache_lock:
        _cache[slot] = derived
        while len(_cache) > CACHED_KEYS:
            _cache.popitem(last=False)
    return derived


def is_known_key(key: str) -> bool:
    """Whether this process has derived this key's hash already (a repeated search, not a new guess)."""
    with _cache_lock:
        return hashlib.sha256(_salt() + b"\0" + key.encode()).digest() in _cache


def new_visitor_key() -> str:
    """A generated visitor key: high-entropy, shown once to the visitor, never stored."""
    return secrets.token_urlsafe(GENERATED_KEY_BYTES)


def normalized_key(key: str | None) -> str | None:
    """A key as typed (surrounding spaces dropped; an empty box is no key)."""
    text = (key or "").strip()
    return text or None


def new_delete_code(image_id: int) -> tuple[str, str]:
    """(the code given to the uploader, the hash the table stores)."""
    secret = secrets.token_urlsafe(DELETE_SECRET_BYTES)
    return f"{image_id}-{secret}", _code_hash(secret)


def parse_delete_code(code: str | None) -> tuple[int, str] | None:
    """(image id, secret) of a code as written, or None when it cannot be one."""
    text = (code or "").strip()
    head, sep, secret = text.partition("-")
    if not sep or not head.isdigit() or len(head) > 19 or not secret or len(secret) > 100:
        return None
    return int(head), secret


def delete_code_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a code's secret with the stored hash (an image without one never matches)."""
    return hmac.compare_digest(_code_hash(secret), stored_hash or _NO_HASH) and stored_hash is not None


def _code_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_id(address: str | None) -> str | None:
    """The pseudonym an uploader's address is recorded under (stable for one deployment's salt)."""
    if not address:
        return None
    return "c-" + hmac.new(_salt(), address.encode(), hashlib.sha256).hexdigest()[:12]
