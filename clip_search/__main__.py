"""Command line: ``python -m clip_search {ingest,search,info,delete,review,uploads,storage,eval,classify} ...``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from clip_search.errors import ClipSearchError
from clip_search.logs import quiet_third_party

log = logging.getLogger("clip_search")


def _engine(args: argparse.Namespace, *, load_model: bool = False):  # noqa: ANN202 - lazy imports keep --help fast
    from clip_search.config import load_config
    from clip_search.encoder import HFEncoder
    from clip_search.engine import SearchEngine

    if args.model:
        os.environ["CLIP_SEARCH_MODEL"] = args.model
    if args.data_dir:
        os.environ["CLIP_SEARCH_DATA_DIR"] = str(args.data_dir)
    settings = load_config(args.config)
    encoder = HFEncoder.from_settings(settings.model)
    if load_model:
        encoder.load()  # a model that cannot be had fails before the collection is opened (or created)
    return SearchEngine(settings, encoder=encoder)


def cmd_ingest(args: argparse.Namespace) -> int:
    if not args.samples and args.path is None:
        raise ClipSearchError("give a folder to ingest, or --samples for the sample photos")
    if args.ray or args.ray_address or args.ray_cpus:
        report, total = _ingest_ray(args)
    else:
        if args.path and args.path.startswith("s3://"):
            raise ClipSearchError("an s3:// source is read by the cluster ingest: add --ray")
        from clip_search.ingest import ingest_folder, ingest_samples

        with _engine(args, load_model=True) as engine:
            if args.samples:
                report = ingest_samples(engine, progress=not args.quiet)
            else:
                report = ingest_folder(
                    engine,
                    Path(args.path),
                    recursive=args.recursive,
                    captions_file=args.captions,
                    progress=not args.quiet,
                )
            total = engine.count()
    if args.json:
        print(json.dumps(dict(report.to_dict(), collection_size=total)))
    else:
        print(report.summary())
        print(f"collection: {total} images")
    return 130 if report.interrupted else 0


def _ingest_ray(args: argparse.Namespace):  # noqa: ANN202 - lazy imports keep --help fast
    """``ingest SOURCE --ray``: the Ray Data pipeline (clip_search.ray_ingest); the model loads on the workers."""
    from clip_search.ray_ingest import RayOptions, ingest_ray, require_ray

    if args.samples:
        raise ClipSearchError("--samples is a small local job: run it without --ray")
    require_ray()
    if args.model:
        os.environ["CLIP_SEARCH_MODEL"] = args.model
    if args.data_dir:
        os.environ["CLIP_SEARCH_DATA_DIR"] = str(args.data_dir)
    from clip_search.config import load_config
    from clip_search.ray_ingest import collection_size

    settings = load_config(args.config)
    options = RayOptions(address=args.ray_address, num_cpus=args.ray_cpus, embed_actors=args.embed_actors)
    report = ingest_ray(
        settings, args.path, options, recursive=args.recursive, captions_file=args.captions, progress=not args.quiet
    )
    return report, collection_size(settings)


def cmd_search(args: argparse.Namespace) -> int:
    from clip_search.cli_query import build_query, print_hits

    with _engine(args, load_model=True) as engine:
        page = build_query(engine, args).run()
        if not page.hits and engine.count() == 0:
            print(
                "the collection is empty: add photos with `python -m clip_search ingest FOLDER` "
                "or `python -m clip_search ingest --samples`",
                file=sys.stderr,
            )
    print_hits(page, as_json=args.json, url=lambda url: _portable_url(engine, url))
    return 0


def _portable_url(engine, url: str) -> str:  # noqa: ANN001 - SearchEngine, imported lazily
    """Local storage: the image's path relative to the data dir (``images/ab/x.jpg``), which means the same on
    every machine the collection is copied to and says nothing of this one's layout; S3: the presigned URL."""
    path = Path(url)
    data_dir = engine.settings.data_dir.resolve()
    return path.relative_to(data_dir).as_posix() if path.is_absolute() and path.is_relative_to(data_dir) else url


def cmd_info(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        stats = engine.stats()
    print(json.dumps(stats, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clip_search", description="Semantic image search (SigLIP + FAISS)."
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default: $CLIP_SEARCH_CONFIG or ./config.yaml)"
    )
    parser.add_argument("--model", default=None, help="hub id or local directory (overrides model.id)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where catalog, index and local images live")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="index a folder of photos (re-runnable, resumable)")
    ingest.add_argument("path", nargs="?", help="folder (or one file) to ingest; with --ray also s3://bucket/prefix")
    ingest.add_argument("-r", "--recursive", action="store_true", help="include sub-folders")
    ingest.add_argument("--captions", type=Path, help="COCO captions JSON or image,caption CSV to attach")
    ingest.add_argument("--samples", action="store_true", help="ingest the sample photos shipped with scikit-image")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ingest.add_argument("--ray", action="store_true", help="run on Ray Data (a local runtime, or --ray-address)")
    ingest.add_argument("--ray-address", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (implies --ray)")
    ingest.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray runtime (default: every core)")
    ingest.add_argument("--embed-actors", type=int, help="model replicas (default: one per GPU, else one per node)")
    ingest.set_defaults(func=cmd_ingest)

    from clip_search.cli_query import add_search_command

    add_search_command(sub, cmd_search)

    info = sub.add_parser("info", help="collection size (public, private, held), model, store")
    info.set_defaults(func=cmd_info)

    from clip_search.cli_admin import add_commands as add_admin_commands

    add_admin_commands(sub, _engine)  # review, uploads, delete
    from clip_search.cli_storage import add_commands as add_storage_commands

    add_storage_commands(sub)  # storage init|check|sync
    from clip_search.evaluation.cli import add_commands as add_eval_commands

    add_eval_commands(sub)  # eval DATASET, classify IMAGE --labels
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party(level)
    try:
        return args.func(args)
    except ClipSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
