"""``storage sync``: index the images in the bucket that the collection does not know (copied in by other tools).

Each object is indexed as it is (no new web copy), under its own key when that is its content-hash key. Private
photos' objects (``images/private/``) are never indexed this way: one whose row is gone stays unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clip_search.engine import PreparedImage, SearchEngine
from clip_search.errors import ClipSearchError, NotFoundError, StorageError
from clip_search.images import sha256_hex, web_format
from clip_search.store import IMAGE_PREFIX, is_private_key


@dataclass
class SyncReport:
    listed: int = 0
    indexed: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.listed} images in the bucket: {self.indexed} indexed now, {self.already} already indexed, "
            f"{len(self.failed)} failed"
        )


def reindex_bucket(engine: SearchEngine, *, batch_size: int | None = None) -> SyncReport:
    """Embed and add every image object in the bucket that the collection does not know."""
    report = SyncReport()
    known_keys = {r.key for r in engine.collection.records()}
    known_hashes = engine.collection.known_hashes()
    batch: list[PreparedImage] = []
    size = batch_size or engine.settings.model.batch_size

    def flush() -> None:
        if batch:
            for result in engine.commit(batch):
                if result.status == "added":
                    report.indexed += 1
                else:
                    report.already += 1
            batch.clear()

    for key in engine.store.list_keys(IMAGE_PREFIX):
        if is_private_key(key):
            continue
        report.listed += 1
        if key in known_keys:
            report.already += 1
            continue
        try:
            data = engine.store.get(key)
            sha = sha256_hex(data)
            if sha in known_hashes:
                report.already += 1
                continue
            decoded = engine.decode(data)
            web = web_format(decoded.format)
            if web is None:  # not viewable as stored: index a web copy instead
                batch.append(engine.prepare(data, source=key))
            else:
                batch.append(
                    PreparedImage(
                        data=data,
                        ext=web[0],
                        content_type=web[1],
                        sha256=sha,
                        source_sha256=sha,
                        width=decoded.width,
                        height=decoded.height,
                        pixels=engine.encoder.preprocess(decoded.image),
                        source=key,
                    )
                )
            known_hashes.add(sha)
        except NotFoundError:
            continue  # deleted since the listing
        except StorageError:
            raise
        except ClipSearchError as exc:
            report.failed.append((key, str(exc)))
            continue
        if len(batch) >= size:
            flush()
    flush()
    return report
