"""``python -m clip_search storage {init,check,sync}``: set up and look after the S3 bucket."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from clip_search.errors import ClipSearchError

DEFAULT_CORS_ORIGINS = ["http://localhost:7860", "http://127.0.0.1:7860"]


def _settings(args: argparse.Namespace) -> Any:
    from clip_search.config import load_config

    if getattr(args, "model", None):
        os.environ["CLIP_SEARCH_MODEL"] = args.model
    if getattr(args, "data_dir", None):
        os.environ["CLIP_SEARCH_DATA_DIR"] = str(args.data_dir)
    settings = load_config(args.config)
    if settings.storage_backend != "s3":
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
    from clip_search.remote import MANIFEST_KEY, UPLOADS_PREFIX
    from clip_search.store import IMAGE_PREFIX

    store = _store(args)
    store.check(write=not args.read_only)
    images = sum(1 for _ in store.list_keys(IMAGE_PREFIX))
    records = sum(1 for _ in store.list_keys(UPLOADS_PREFIX))
    try:
        manifest = json.loads(store.get_object(MANIFEST_KEY))
    except ClipSearchError:
        manifest = None
    info = {
        "store": store.describe(),
        "images": images,
        "upload_records": records,
        "snapshot": {k: manifest.get(k) for k in ("count", "saved_at", "writer")} if manifest else None,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from clip_search.engine import SearchEngine
    from clip_search.remote import reindex_bucket

    with SearchEngine(_settings(args)) as engine:  # opening it already merged the bucket's upload records
        report = reindex_bucket(engine)
        engine.save()
        total = engine.count()
    print(report.summary())
    for key, reason in report.failed:
        print(f"  {key}: {reason}")
    print(f"collection: {total} images")
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

    sync = actions.add_parser("sync", help="merge the bucket's upload records and index images the catalog lacks")
    sync.set_defaults(func=cmd_sync)
