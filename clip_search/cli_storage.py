"""``python -m clip_search storage {init,check,sync,optimize}``: set up and look after the bucket and the table."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from clip_search.errors import ClipSearchError

DEFAULT_CORS_ORIGINS = ["http://localhost:7860", "http://127.0.0.1:7860"]


def _settings(args: argparse.Namespace, *, s3: bool = True) -> Any:
    from clip_search.config import load_config

    if getattr(args, "model", None):
        os.environ["CLIP_SEARCH_MODEL"] = args.model
    if getattr(args, "data_dir", None):
        os.environ["CLIP_SEARCH_DATA_DIR"] = str(args.data_dir)
    settings = load_config(args.config)
    if s3 and settings.storage_backend != "s3":
        raise ClipSearchError(
            "no S3 bucket is configured: set S3_BUCKET (and S3_ENDPOINT_URL for a non-AWS service, plus "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or storage.s3.bucket in config.yaml"
        )
    return settings


def _store(args: argparse.Namespace) -> Any:
    from clip_search.store_s3 import S3ImageStore

    return S3ImageStore.from_settings(_settings(args))


def cmd_init(args: argparse.Namespace) -> int:
    store = _store(args)
    origins = args.cors_origin or DEFAULT_CORS_ORIGINS
    created = store.create_bucket(cors_origins=origins)
    store.check()
    print(f"{'created' if created else 'found'} {store.describe()}; CORS allows GET/HEAD from {', '.join(origins)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from clip_search.collection.location import open_table
    from clip_search.store import IMAGE_PREFIX
    from clip_search.store_s3 import S3ImageStore

    settings = _settings(args)
    store = S3ImageStore.from_settings(settings)
    store.check(write=not args.read_only)
    images = sum(1 for _ in store.list_keys(IMAGE_PREFIX))
    table = open_table(settings)
    ds = table.latest()
    info = {
        "store": store.describe(),
        "images": images,
        "table": {
            "rows": ds.count_rows() if ds is not None else 0,
            "version": ds.version if ds is not None else None,
            "fragments": len(ds.get_fragments()) if ds is not None else 0,
            "model": table.model_id,
        },
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from clip_search.bucket_sync import reindex_bucket
    from clip_search.engine import SearchEngine

    with SearchEngine(_settings(args)) as engine:
        report = reindex_bucket(engine)
        total = engine.count()
    print(report.summary())
    for key, reason in report.failed:
        print(f"  {key}: {reason}")
    print(f"collection: {total} images")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from clip_search.collection.location import open_collection
    from clip_search.encoder import HFEncoder

    settings = _settings(args, s3=False)
    model = HFEncoder.from_settings(settings.model).name
    collection = open_collection(settings, model=model, background=False)
    try:
        keep = settings.collection.keep_versions_s if args.keep_versions_s is None else args.keep_versions_s
        report = collection.optimize(keep_versions_s=keep)
    finally:
        collection.close()
    print(json.dumps(dict(report, images=len(collection)), indent=2))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``storage init|check|sync`` on the CLI's sub-command parser."""
    storage = sub.add_parser("storage", help="S3 bucket: create it, check access, re-index what it holds")
    actions = storage.add_subparsers(dest="storage_command", required=True)

    init = actions.add_parser("init", help="create the bucket (if missing) and a CORS rule for the app's origin")
    init.add_argument(
        "--cors-origin",
        action="append",
        metavar="URL",
        help="origin allowed to fetch images, e.g. https://you-space.hf.space (repeatable; "
        f"default: {' '.join(DEFAULT_CORS_ORIGINS)})",
    )
    init.set_defaults(func=cmd_init)

    check = actions.add_parser("check", help="check endpoint, credentials, bucket and permissions; count objects")
    check.add_argument("--read-only", action="store_true", help="do not test writing")
    check.set_defaults(func=cmd_check)

    sync = actions.add_parser("sync", help="index images in the bucket that the collection lacks")
    sync.set_defaults(func=cmd_sync)

    optimize = actions.add_parser(
        "optimize", help="compact the collection's table, drop old versions, retrain an outgrown IVF (safe while live)"
    )
    optimize.add_argument(
        "--keep-versions-s",
        type=float,
        default=None,
        help="keep table versions younger than this many seconds (default: collection.keep_versions_s)",
    )
    optimize.set_defaults(func=cmd_optimize)
