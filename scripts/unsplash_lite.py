"""Download the photos of the Unsplash Lite dataset into a folder ready for ``python -m clip_search ingest``.

    python scripts/unsplash_lite.py unsplash-research-dataset-lite-latest.zip unsplash/ --width 1080
    python -m clip_search ingest unsplash/ --captions unsplash/captions.csv

The dataset (https://unsplash.com/data, free for this use) lists its 25k photos in ``photos.tsv000``: this
reads ``photo_id``, ``photo_image_url`` and the two description columns (``photo_description``, written by the
photographer, and ``ai_description``), fetches each image at the chosen width as ``PHOTO_ID.jpg`` and writes
``captions.csv`` (``image,caption``, one row per description). Run it again after an interruption or failures:
files already complete are skipped, and a file only gets its final name once all its bytes are there.

Polite to the image server: a bounded pool of workers, a request rate limit per host, a User-Agent naming the
project, retries with exponential backoff on 429 and 5xx answers and on dropped connections, honouring
Retry-After. Exits 1 when any photo failed (listed in the closing summary with the reason).
"""

from __future__ import annotations

import argparse
import csv
import email.utils
import http.client
import io
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from tqdm import tqdm

USER_AGENT = "clip-search/0.1 (Unsplash Lite downloader for a semantic image search; python-urllib)"
DESCRIPTION_COLUMNS = ("photo_description", "ai_description")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_WAIT_S = 300.0  # the longest pause between two attempts, whatever Retry-After asks
CHUNK = 1 << 16


@dataclass(frozen=True)
class Photo:
    photo_id: str
    url: str
    captions: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return f"{self.photo_id}.jpg"


@dataclass
class Outcome:
    photo: Photo
    status: str  # "downloaded" | "skipped" | "failed"
    reason: str = ""


class Retryable(Exception):
    """A failure worth another attempt (429, 5xx, a dropped or truncated connection)."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class Fatal(Exception):
    """A failure another attempt would not fix (404, 403, a malformed URL)."""


# -- the dataset -------------------------------------------------------------------------------------------------


def _tsv_streams(dataset: Path) -> Iterator[TextIO]:
    """The photos table of a dataset given as its zip, its unzipped folder or the TSV file itself."""
    if dataset.is_file() and zipfile.is_zipfile(dataset):
        with zipfile.ZipFile(dataset) as archive:
            names = sorted(n for n in archive.namelist() if Path(n).name.startswith("photos.tsv"))
            if not names:
                raise SystemExit(f"error: {dataset} holds no photos.tsv")
            for name in names:
                with archive.open(name) as raw:
                    yield io.TextIOWrapper(raw, encoding="utf-8", newline="")
        return
    if not dataset.exists():
        raise SystemExit(f"error: {dataset} does not exist (download the dataset from https://unsplash.com/data)")
    files = [dataset] if dataset.is_file() else sorted(dataset.glob("photos.tsv*"))
    if not files:
        raise SystemExit(f"error: no photos.tsv or photos.tsv000 in {dataset}")
    for path in files:
        with path.open(encoding="utf-8", newline="") as fh:
            yield fh


def read_photos(dataset: Path, limit: int | None = None) -> list[Photo]:
    """The photos listed in the dataset, in its order, at most ``limit``."""
    csv.field_size_limit(1 << 24)
    photos: list[Photo] = []
    for stream in _tsv_streams(dataset):
        reader = csv.DictReader(stream, delimiter="\t")
        missing = {"photo_id", "photo_image_url"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"error: {dataset}: the photos table lacks the columns {sorted(missing)}")
        for row in reader:
            if limit is not None and len(photos) >= limit:
                return photos
            captions = (" ".join((row.get(c) or "").split()) for c in DESCRIPTION_COLUMNS)
            unique = tuple(dict.fromkeys(c for c in captions if c))
            photos.append(Photo(row["photo_id"].strip(), row["photo_image_url"].strip(), unique))
    return photos


def sized_url(url: str, width: int) -> str:
    """Unsplash image URLs are dynamic: ``w``, ``q`` and ``fm`` ask the server for a JPEG of that width."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update(w=str(width), q="80", fm="jpg")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def write_captions(path: Path, photos: list[Photo], folder: Path) -> int:
    """``image,caption`` rows for the photos whose file is there, one per description; atomically replaced."""
    rows = [(p.file_name, c) for p in photos if (folder / p.file_name).exists() for c in p.captions]
    part = path.with_name(f".{path.name}.part")
    with part.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    part.replace(path)
    return len(rows)


# -- politeness ---------------------------------------------------------------------------------------------------


class HostRateLimiter:
    """At most ``rate`` requests per second to each host, shared by all workers."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- downloading --------------------------------------------------------------------------------------------------


@dataclass
class Downloader:
    folder: Path
    width: int = 1080
    rate: float = 10.0
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    limiter: HostRateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = HostRateLimiter(self.rate)
        self.opener = urllib.request.build_opener()
        self.opener.addheaders = [("User-Agent", USER_AGENT), ("Accept", "image/jpeg,image/*")]

    def fetch(self, photo: Photo) -> Outcome:
        """Download one photo unless it is already complete; retry what is worth retrying."""
        dest = self.folder / photo.file_name
        if dest.exists():  # only ever created by the rename of a complete download
            return Outcome(photo, "skipped")
        url = sized_url(photo.url, self.width)
        for attempt in range(self.retries + 1):
            try:
                self._download(url, dest)
                return Outcome(photo, "downloaded")
            except Fatal as exc:
                return Outcome(photo, "failed", str(exc))
            except Retryable as exc:
                if attempt == self.retries:
                    return Outcome(photo, "failed", f"{exc} (after {self.retries + 1} attempts)")
                backoff = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                time.sleep(min(MAX_WAIT_S, exc.wait_s if exc.wait_s is not None else backoff))
        raise AssertionError("unreachable")

    def _download(self, url: str, dest: Path) -> None:
        """One attempt: stream into a hidden ``.part`` file, rename it only once every byte has arrived."""
        self.limiter.wait(urllib.parse.urlsplit(url).netloc)
        part = dest.with_name(f".{dest.name}.part")
        try:
            with self.opener.open(url, timeout=self.timeout_s) as response, part.open("wb") as out:
                expected = response.headers.get("Content-Length")
                received = _copy(response, out)
            if expected is not None and received != int(expected):
                raise Retryable(f"truncated: {received} of {expected} bytes")
            if received == 0:
                raise Retryable("empty answer")
            part.replace(dest)
        except urllib.error.HTTPError as exc:
            if exc.code in RETRY_STATUSES:
                raise Retryable(f"HTTP {exc.code} {exc.reason}", retry_after_s(exc.headers.get("Retry-After"))) from exc
            raise Fatal(f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise Retryable(_describe(exc)) from exc
        finally:
            part.unlink(missing_ok=True)


def _copy(response: http.client.HTTPResponse, out: BinaryIO) -> int:
    received = 0
    while chunk := response.read(CHUNK):
        out.write(chunk)
        received += len(chunk)
    return received


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"truncated: connection closed after {len(exc.partial)} bytes"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


# -- the command ----------------------------------------------------------------------------------------------------


def download_all(photos: list[Photo], downloader: Downloader, *, workers: int, progress: bool) -> list[Outcome]:
    """Fetch ``photos`` with ``workers`` threads; outcomes in completion order."""
    downloader.folder.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unsplash") as pool,
        tqdm(total=len(photos), unit="photo", disable=not progress) as bar,
    ):
        futures = [pool.submit(downloader.fetch, photo) for photo in photos]
        try:
            for future in as_completed(futures):
                outcomes.append(future.result())
                bar.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)  # let the running downloads end, start no more
            raise
    return outcomes


def summary(outcomes: list[Outcome], captions_path: Path, caption_rows: int, show: int = 20) -> str:
    """Counts, then each failure with its reason (the first ``show``)."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("downloaded", "skipped", "failed")}
    lines = [
        f"downloaded {counts['downloaded']}, skipped {counts['skipped']} (already there), failed {counts['failed']}",
        f"captions: {caption_rows} rows in {captions_path}",
    ]
    failed = sorted((o for o in outcomes if o.status == "failed"), key=lambda o: o.photo.photo_id)
    lines += [f"  failed {o.photo.photo_id}: {o.reason}" for o in failed[:show]]
    if len(failed) > show:
        lines.append(f"  ... and {len(failed) - show} more")
    if failed:
        lines.append("run the same command again to retry the failed photos (complete ones are skipped)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download the Unsplash Lite photos into a folder for `python -m clip_search ingest`."
    )
    parser.add_argument("dataset", type=Path, help="the dataset's zip, its unzipped folder, or photos.tsv000")
    parser.add_argument("folder", type=Path, help="where the photos go (PHOTO_ID.jpg)")
    parser.add_argument("--width", type=int, default=1080, help="image width in pixels (default 1080)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos of the dataset")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per host (default 10)")
    parser.add_argument("--retries", type=int, default=5, help="retries per photo on 429/5xx/network errors")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without data before giving up")
    parser.add_argument("--captions", type=Path, default=None, help="captions CSV (default FOLDER/captions.csv)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.width <= 0 or args.workers <= 0 or (args.limit is not None and args.limit < 0):
        raise SystemExit("error: --width, --workers and --limit must be positive")
    photos = read_photos(args.dataset, args.limit)
    downloader = Downloader(
        args.folder,
        width=args.width,
        rate=args.rate,
        retries=args.retries,
        backoff_s=args.backoff,
        timeout_s=args.timeout,
    )
    try:
        outcomes = download_all(photos, downloader, workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130
    captions_path = args.captions or args.folder / "captions.csv"
    rows = write_captions(captions_path, photos, args.folder)
    print(summary(outcomes, captions_path, rows))
    print(f"next: python -m clip_search ingest {args.folder} --captions {captions_path}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
