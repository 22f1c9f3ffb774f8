"""Where the collection's table lives, decided in one place from the same settings as the image store.

Local storage: ``data_dir/collection.lance`` (no server, no account). S3 storage: ``<bucket>/<prefix>/collection.lance``
beside ``images/``, so a Space whose disk is wiped, a second replica and a bulk job all open the same collection.
``data_dir`` then only holds derived data that can be rebuilt (the cached IVF index).
"""

from __future__ import annotations

from clip_search.collection.collection import Collection
from clip_search.collection.table import CollectionTable
from clip_search.config import Settings


def open_table(settings: Settings) -> CollectionTable:
    name = settings.collection.table
    if settings.storage_backend == "s3":
        from clip_search.store_s3 import lance_storage_options, lance_table_uri

        s3 = settings.storage.s3
        return CollectionTable(lance_table_uri(s3), name=name, storage_options=lance_storage_options(s3))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return CollectionTable(str(settings.data_dir), name=name)


def open_collection(settings: Settings, *, model: str, background: bool = True) -> Collection:
    """The configured collection, opened for ``model`` (its signature); refuses another model's table."""
    index = settings.index
    return Collection(
        open_table(settings),
        model=model,
        model_id=settings.model.id,
        index_kind=index.kind,
        nlist=index.nlist,
        nprobe=index.nprobe,
        retrain_growth=index.retrain_growth,
        cache_dir=settings.cache_dir,
        refresh_s=settings.collection.refresh_s,
        optimize_every=settings.collection.optimize_every,
        keep_versions_s=settings.collection.keep_versions_s,
        background=background,
    )
