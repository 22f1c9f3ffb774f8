"""Images in any S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Backblaze B2, SeaweedFS).

The browser never gets credentials: it fetches each image through a presigned GET URL that :meth:`S3ImageStore.url`
signs at search time (SigV4, expiry from ``storage.s3.presign_expiry_s``). URLs are never stored; a small cache
reuses a URL for at most half its lifetime, so a result page does not re-sign every image on each search and a
URL handed out always has at least half its life left.

Every botocore failure is turned into a :class:`StorageError` whose message says what to do about it (wrong
endpoint, wrong keys, missing bucket, missing permission). Keys live under an optional ``prefix`` so several
deployments can share one bucket: ``<prefix>/images/ab/<sha256>.jpg`` for images, ``<prefix>/collection.lance/`` for the
collection's Lance table (see :mod:`clip_search.collection.location`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_search.errors import NotFoundError, StorageError
from clip_search.store import IMAGE_PREFIX, ImageStore, is_private_key

if TYPE_CHECKING:
    from clip_search.config import S3Settings, Settings

log = logging.getLogger(__name__)

INDEX_PREFIX = "index/"
# A cached presigned URL is reused while less than this fraction of its lifetime has passed.
PRESIGN_REUSE_FRACTION = 0.5
PRESIGN_CACHE_SIZE = 10_000
# Content-addressed objects never change: let browsers and CDNs keep them.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
PRIVATE_CACHE_CONTROL = "private, max-age=31536000, immutable"  # a private photo: browsers only, no shared cache

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
_REGION_CODES = {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}


class PreconditionFailed(StorageError):
    """A conditional write (``If-None-Match: *``) found the key already there."""


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"invalid object key: {key!r}")
    return key


class S3ImageStore(ImageStore):
    """An :class:`ImageStore` over one bucket (and optional key prefix) through a boto3 client."""

    kind = "s3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        presign_expiry_s: int = 3600,
        endpoint_url: str | None = None,
        region: str | None = None,
        page_size: int = 1000,
        clock: Any = time.monotonic,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign_expiry_s = int(presign_expiry_s)
        self.endpoint_url = endpoint_url
        self.region = region
        self.page_size = page_size  # keys per listing request (1000 is S3's maximum)
        self._clock = clock
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._urls_lock = threading.Lock()
        self.presign_count = 0  # URLs actually signed (cache misses), for tests and stats

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ImageStore:
        """A store built from ``storage.s3`` and the standard AWS credential chain (env, ~/.aws, instance role)."""
        s3 = settings.storage.s3
        if not s3.bucket:
            raise StorageError("S3 storage is selected but no bucket is configured: set S3_BUCKET")
        return cls(
            make_client(s3),
            s3.bucket,
            prefix=s3.prefix,
            presign_expiry_s=s3.presign_expiry_s,
            endpoint_url=s3.endpoint_url,
            region=_region(s3),
        )

    # -- keys -------------------------------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        """The object key in the bucket for a store key (the prefix prepended)."""
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _store_key(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}" + (
            f" at {self.endpoint_url}" if self.endpoint_url else ""
        )

    def describe(self) -> str:
        return f"S3 bucket {self._where()}"

    # -- errors -----------------------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore errors into a :class:`StorageError` a person can act on."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self.explain(exc, action, key) from exc

    def explain(self, exc: BaseException, action: str, key: str | None = None) -> StorageError:
        """A :class:`StorageError` (or :class:`NotFoundError`) with advice for a botocore/boto3 failure."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        endpoint = self.endpoint_url or "AWS S3"
        what = f"{action} {key}" if key else action
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"S3: no credentials found for {self._where()}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(in the environment or .env), or configure an AWS profile or role"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageError(
                f"S3: cannot reach the endpoint {endpoint} ({what} failed: {exc}). Check S3_ENDPOINT_URL "
                "(scheme, host and port) and that the server is running and reachable from here"
            )
        if isinstance(exc, ReadTimeoutError):
            return StorageError(f"S3: {endpoint} did not answer in time ({what}); try again, or raise read_timeout_s")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND_CODES and key is not None:
                return NotFoundError(f"no object {key} in {self._where()}")
            if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and key is None):
                return StorageError(
                    f"S3: the bucket '{self.bucket}' does not exist at {endpoint}. Create it (with a CORS rule for "
                    "the app's origin) with `python -m clip_search storage init --cors-origin https://your.app`, "
                    "or fix S3_BUCKET"
                )
            if code == "PreconditionFailed" or status == 412:
                return PreconditionFailed(f"S3: {key or action} already exists (conditional write refused)")
            if code in _REGION_CODES:
                return StorageError(
                    f"S3: the bucket '{self.bucket}' is in another region than '{self.region}' ({code}): set "
                    "AWS_DEFAULT_REGION (or storage.s3.region) to the bucket's region"
                )
            if code in _CREDENTIAL_CODES:
                hint = (
                    "the access key is not known to the server: check AWS_ACCESS_KEY_ID"
                    if code in ("InvalidAccessKeyId", "InvalidClientTokenId")
                    else "the request signature does not match: check AWS_SECRET_ACCESS_KEY (and AWS_DEFAULT_REGION)"
                )
                return StorageError(f"S3: wrong credentials for {endpoint} ({code}): {hint}")
            if code in _DENIED_CODES or status == 403:
                return StorageError(
                    f"S3: access denied to {what} in {self._where()} ({code or status}). The credentials need "
                    "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on this bucket (and prefix), "
                    "or the keys are wrong: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            message = error.get("Message") or str(exc)
            return StorageError(f"S3: {what} failed at {endpoint}: {code or status}: {message}")
        return StorageError(f"S3: {what} failed at {endpoint}: {exc}")

    # -- ImageStore ---------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store image bytes under a content-hash key; a re-put of a key already there is skipped."""
        if self.exists(key):
            return  # content-addressed: same key, same bytes
        cache = PRIVATE_CACHE_CONTROL if is_private_key(key) else IMMUTABLE_CACHE_CONTROL
        self.put_object(key, data, content_type, cache_control=cache)

    def get(self, key: str) -> bytes:
        return self.get_object(key)

    def exists(self, key: str) -> bool:
        with self._errors("checking", key):
            from botocore.exceptions import ClientError

            try:
                self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES:
                    return False
                raise
        return True

    def delete(self, key: str) -> None:
        with self._errors("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        with self._urls_lock:
            self._urls.pop(key, None)

    def list_keys(self, prefix: str = IMAGE_PREFIX) -> Iterator[str]:
        """Every key under ``prefix``, one listing page (1000 keys) at a time."""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("listing", prefix):
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=f"{self.prefix}/{prefix}" if self.prefix else prefix,
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield self._store_key(item["Key"])

    def url(self, key: str) -> str:
        return self.presigned_url(key)

    def presigned_url(self, key: str) -> str:
        """A GET-only SigV4 URL for ``key``, reused from the cache while it has more than half its life left."""
        now = self._clock()
        reuse_for = self.presign_expiry_s * PRESIGN_REUSE_FRACTION
        with self._urls_lock:
            cached = self._urls.get(key)
            if cached is not None and now - cached[1] < reuse_for:
                self._urls.move_to_end(key)
                return cached[0]
        with self._errors("signing a URL for", key):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.full_key(key)},
                ExpiresIn=self.presign_expiry_s,
                HttpMethod="GET",
            )
        with self._urls_lock:
            self.presign_count += 1
            self._urls[key] = (url, now)
            self._urls.move_to_end(key)
            while len(self._urls) > PRESIGN_CACHE_SIZE:
                self._urls.popitem(last=False)
        return url

    def check(self, *, write: bool = True) -> None:
        """Can we list, read and (unless ``write=False``) write this bucket? Raises :class:`StorageError` if not."""
        with self._errors("listing the bucket"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key(INDEX_PREFIX.rstrip("/")), MaxKeys=1)
        if write:
            probe = INDEX_PREFIX + "write-check"
            with self._errors("writing", probe):
                self.client.put_object(
                    Bucket=self.bucket, Key=self.full_key(probe), Body=b"ok", ContentType="text/plain"
                )
        log.info("using %s", self.describe())

    # -- any object (the collection's snapshots and records under index/) -------------------------------------

    def put_object(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_none_match: bool = False,
        cache_control: str | None = None,
    ) -> None:
        """Write ``data`` under ``key``; with ``if_none_match`` only if the key is absent (else PreconditionFailed)."""
        extra: dict[str, Any] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if cache_control:
            extra["CacheControl"] = cache_control
        with self._errors("writing", key):
            self.client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=data, ContentType=content_type, **extra
            )

    def get_object(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`NotFoundError` if there are none."""
        with self._errors("reading", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            return response["Body"].read()

    def upload_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        """Upload a local file (multipart above 8 MiB, so large catalogs and index snapshots are fine)."""
        with self._errors("uploading", key):
            self.client.upload_file(str(path), self.bucket, self.full_key(key), ExtraArgs={"ContentType": content_type})

    def download_file(self, key: str, path: Path) -> None:
        """Download ``key`` to a local file; :class:`NotFoundError` if there is no such object."""
        with self._errors("downloading", key):
            self.client.download_file(self.bucket, self.full_key(key), str(path))

    def head(self, key: str) -> dict[str, Any] | None:
        """Size, type and ETag of ``key``, or None if it is absent."""
        try:
            with self._errors("checking", key):
                response = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except NotFoundError:
            return None
        return {
            "size": response.get("ContentLength"),
            "content_type": response.get("ContentType"),
            "etag": response.get("ETag"),
            "last_modified": response.get("LastModified"),
        }

    def delete_object(self, key: str) -> None:
        with self._errors("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    # -- set-up -----------------------------------------------------------------------------------------------

    def bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("checking the bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                    return False
                raise
        return True

    def create_bucket(self, cors_origins: list[str] | None = None) -> bool:
        """Create the bucket if it is missing and set a CORS rule allowing GET/HEAD from ``cors_origins``.

        Returns whether the bucket was created. Objects stay private: browsers read them through presigned URLs.
        """
        created = False
        if not self.bucket_exists():
            params: dict[str, Any] = {"Bucket": self.bucket}
            if self.region and self.region != "us-east-1" and not self.endpoint_url:
                params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            with self._errors("creating the bucket"):
                self.client.create_bucket(**params)
            created = True
            log.info("created bucket %s", self.bucket)
        if cors_origins:
            with self._errors("setting the bucket's CORS rule"):
                self.client.put_bucket_cors(
                    Bucket=self.bucket,
                    CORSConfiguration={
                        "CORSRules": [
                            {
                                "AllowedOrigins": list(cors_origins),
                                "AllowedMethods": ["GET", "HEAD"],
                                "AllowedHeaders": ["*"],
                                "ExposeHeaders": ["ETag", "Content-Length", "Content-Type"],
                                "MaxAgeSeconds": 3600,
                            }
                        ]
                    },
                )
        return created


def _region(s3: S3Settings) -> str:
    # SigV4 needs a region; S3-compatible servers accept us-east-1 (R2 also takes "auto").
    return s3.region or "us-east-1"


def addressing_style(s3: S3Settings) -> str:
    """``auto`` means path-style for a custom endpoint (MinIO, SeaweedFS... need it) and virtual-host on AWS."""
    if s3.addressing_style != "auto":
        return s3.addressing_style
    return "path" if s3.endpoint_url else "virtual"


def make_client(s3: S3Settings) -> Any:
    """A boto3 S3 client: SigV4, timeouts, standard retries, credentials from the standard chain."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {}
    if s3.endpoint_url:
        # Third-party servers differ in their support of the newer default CRC checksums; send them only when
        # an operation requires one (what boto3 did before 1.36).
        options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": addressing_style(s3)},
        connect_timeout=s3.connect_timeout_s,
        read_timeout=s3.read_timeout_s,
        retries={"max_attempts": s3.max_attempts, "mode": "standard"},
        user_agent_extra="clip-search",
        **options,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=s3.endpoint_url or None, region_name=_region(s3), config=config)


def lance_storage_options(s3: S3Settings) -> dict[str, str]:
    """Options for a Lance table in the same bucket, from the same settings and credential chain as the client.

    boto3 resolves the credentials (environment, ~/.aws, instance role), so the table and the images always use
    the same identity; Lance gets them explicitly instead of searching on its own.
    """
    import boto3

    options = {
        "region": _region(s3),
        "connect_timeout": f"{s3.connect_timeout_s}s",
        "timeout": f"{s3.read_timeout_s}s",
        "virtual_hosted_style_request": str(addressing_style(s3) == "virtual").lower(),
    }
    if s3.endpoint_url:
        options["endpoint"] = s3.endpoint_url
        options["allow_http"] = str(s3.endpoint_url.startswith("http://")).lower()
    credentials = boto3.session.Session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["aws_access_key_id"] = frozen.access_key
        options["aws_secret_access_key"] = frozen.secret_key
        if frozen.token:
            options["aws_session_token"] = frozen.token
    return options


def lance_table_uri(s3: S3Settings) -> str:
    """Where the collection's table lives in the bucket: beside ``images/``, under the same prefix."""
    return f"s3://{s3.bucket}/{s3.prefix + '/' if s3.prefix else ''}"
