"""The operator's commands for visitors' photos: ``review``, ``uploads`` and ``delete`` (one, several, or all of
one uploader's).

    python -m clip_search review                      # uploads held by the content check, newest first
    python -m clip_search review approve 12 31        # visible from now on (public, or private to their owner)
    python -m clip_search review reject 40            # deleted from the store and the table
    python -m clip_search uploads -n 20               # newest uploads: visibility, moderation score, client id
    python -m clip_search delete 12 31 40             # several at once (one commit)
    python -m clip_search delete --client c-1a2b3c4d5e6f   # every upload of one uploader
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from clip_search.collection import ImageRecord
from clip_search.errors import ClipSearchError

EngineFactory = Callable[[argparse.Namespace], Any]


def add_commands(sub: Any, engine: EngineFactory) -> None:
    review = sub.add_parser("review", help="list, approve or reject uploads held by the content check")
    review.add_argument("action", nargs="?", choices=["list", "approve", "reject"], default="list")
    review.add_argument("ids", nargs="*", type=int, help="image ids (approve, reject)")
    review.add_argument("-n", type=int, default=50, help="how many to list (default 50)")
    review.add_argument("--json", action="store_true", help="print JSON")
    review.set_defaults(func=lambda args: cmd_review(args, engine))

    uploads = sub.add_parser("uploads", help="the newest uploads with their moderation score and client id")
    uploads.add_argument("-n", type=int, default=50, help="how many (default 50)")
    uploads.add_argument("--client", help="only this uploader's (a client id, c-...)")
    uploads.add_argument("--json", action="store_true", help="print JSON")
    uploads.set_defaults(func=lambda args: cmd_uploads(args, engine))

    delete = sub.add_parser("delete", help="remove images (by id, or every upload of a client) from store and table")
    delete.add_argument("ids", nargs="*", type=int, help="image ids")
    delete.add_argument("--client", help="every upload of this client id as well")
    delete.set_defaults(func=lambda args: cmd_delete(args, engine))


def cmd_review(args: argparse.Namespace, engine: EngineFactory) -> int:
    with engine(args) as eng:
        if args.action == "list":
            _print(eng.held(args.n), as_json=args.json, empty="no upload is waiting for review")
            return 0
        if not args.ids:
            raise ClipSearchError(f"give the ids of the images to {args.action}")
        if args.action == "approve":
            done = eng.approve(args.ids)
            print(f"approved {len(done)} of {len(args.ids)}: {', '.join(map(str, done)) or 'none was held'}")
        else:
            gone = eng.reject(args.ids)
            print(f"rejected and deleted {len(gone)} of {len(args.ids)}: {', '.join(str(r.id) for r in gone) or '-'}")
    return 0


def cmd_uploads(args: argparse.Namespace, engine: EngineFactory) -> int:
    with engine(args) as eng:
        _print(eng.uploads(args.n, client=args.client), as_json=args.json, empty="no uploads")
    return 0


def cmd_delete(args: argparse.Namespace, engine: EngineFactory) -> int:
    if not args.ids and not args.client:
        raise ClipSearchError("give the ids of the images to delete, or --client CLIENT_ID")
    with engine(args) as eng:
        ids = list(args.ids)
        if args.client:
            ids += [r.id for r in eng.uploads(None, client=args.client)]
        if len(ids) == 1 and not args.client:
            record = eng.delete(ids[0])
            print(f"deleted image {record.id} ({record.key})")
            return 0
        gone = eng.delete_many(ids)
    print(f"deleted {len(gone)} images" + (f": {', '.join(str(r.id) for r in gone)}" if gone else ""))
    return 0


def _print(records: list[ImageRecord], *, as_json: bool, empty: str) -> None:
    rows = [{**r.upload_facts(), "key": r.key} for r in records]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(empty)
        return
    for row in rows:
        score = "   -  " if row["moderation_score"] is None else f"{row['moderation_score']:6.3f}"
        print(
            f"{row['id']:>17d}  {row['added_at'][:19]}  {row['visibility']:<8s} score={score}  "
            f"client={row['client_id'] or '-'}  {row['filename'] or ''}"
        )
