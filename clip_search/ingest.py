"""Bulk ingest: walk a folder, skip what the collection already has, decode in a pool, embed in batches.

Decoding and preprocessing run in helper threads (Pillow and numpy release the GIL) a few batches ahead of
the model, and each batch is stored and committed on another helper thread while the model embeds the next, so
the model never waits on JPEG decoding or on the table. Each batch is committed on its own, so an interrupted
run keeps what it finished and a re-run picks up where it stopped, with no duplicates.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clip_search.engine import AddResult, PreparedImage, SearchEngine
from clip_search.errors import ClipSearchError, InvalidImageError
from clip_search.images import sha256_hex
from clip_search.ingest_pipeline import BackgroundCommits, lower_thread_priority
from clip_search.prefetch import ordered_map
from clip_search.report import IngestReport

log = logging.getLogger(__name__)


def find_images(root: Path, *, recursive: bool, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``root`` by extension, sorted so runs are repeatable; hidden files are left alone."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ClipSearchError(f"no such folder: {root}")
    pattern = "**/*" if recursive else "*"
    wanted = {e.lower() for e in extensions}
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file()
        and p.suffix.lower() in wanted
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def load_captions(path: Path) -> dict[str, list[str]]:
    """Captions by image file name, from COCO caption JSON or an ``image,caption`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise ClipSearchError(f"captions file not found: {path}")
    captions: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            names = {img["id"]: img["file_name"] for img in data["images"]}
            for ann in data["annotations"]:
                name = names.get(ann["image_id"])
                if name:
                    captions.setdefault(name, []).append(str(ann["caption"]).strip())
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ClipSearchError(f"{path}: not a COCO captions file ({exc})") from exc
    else:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ClipSearchError(f"{path}: expected a CSV with columns 'image' and 'caption'")
            for row in reader:
                captions.setdefault(Path(row["image"]).name, []).append(row["caption"].strip())
    return captions


Work = tuple[str, Path, "PreparedImage | str | None"]


def ingest_paths(
    engine: SearchEngine,
    paths: Iterable[Path],
    *,
    captions: dict[str, list[str]] | None = None,
    extra_metadata: Callable[[Path], dict[str, Any]] | None = None,
    workers: int | None = None,
    progress: bool = True,
    total: int | None = None,
) -> IngestReport:
    """Add image files to ``engine``'s collection; safe to interrupt and to run again.

    Three stages overlap: helper threads read and prepare the files ahead of the model, this thread embeds one
    batch at a time, and a helper thread stores and commits the batch before (see :mod:`clip_search.ingest_pipeline`).
    """
    paths = list(paths)
    report = IngestReport()
    known = engine.collection.known_hashes()
    batch_size = engine.settings.model.batch_size
    workers = workers or engine.settings.ingest.decode_workers
    _ = engine.encoder.input_size  # load the model before timing and before the pool starts
    started = time.perf_counter()
    prepare = partial(_prepare, engine, known, captions or {}, extra_metadata)
    bar = tqdm(total=total or len(paths), desc="ingest", unit="img", disable=not progress, smoothing=0.1)

    def committed(results: list[AddResult]) -> None:
        for result in results:
            if result.status == "added":
                report.added += 1
            else:
                report.duplicates += 1
        bar.update(len(results))
        bar.set_postfix(added=report.added, failed=len(report.failed), refresh=False)

    commits = BackgroundCommits(engine, committed)
    batch: list[PreparedImage] = []

    def embed_and_commit() -> None:
        if batch:
            vectors = engine.embed(batch)
            known.update(item.sha256 for item in batch)  # the next batches skip these even before the commit lands
            known.update(item.source_sha256 for item in batch)
            commits.submit(batch, vectors)
            batch.clear()

    window = max(2 * batch_size, 4 * workers)
    prepared = ordered_map(
        prepare, paths, workers=workers, window=window, name="decode", initializer=lower_thread_priority
    )
    try:
        try:
            for result in prepared:
                _collect(result, report, batch, bar, known)
                if len(batch) >= batch_size:
                    embed_and_commit()
            embed_and_commit()
        finally:
            prepared.close()  # no decode thread outlives the loop, even on Ctrl-C
            commits.close()  # the batch in flight lands whole
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: %d images committed; run again to finish", report.added)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    engine.store.remove_interrupted_writes()  # half-written files of an earlier run killed mid-put
    return report


def _prepare(
    engine: SearchEngine,
    known: set[str],
    captions: dict[str, list[str]],
    extra_metadata: Callable[[Path], dict[str, Any]] | None,
    path: Path,
) -> Work:
    """Read, hash and prepare one file (on a helper thread): ("ok", path, prepared), "known" or "failed"."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "failed", path, f"cannot read: {exc.strerror or exc}"
    if sha256_hex(data) in known:
        return "known", path, None
    names = captions.get(path.name, [])
    metadata: dict[str, Any] = {"captions": names} if len(names) > 1 else {}
    if extra_metadata is not None:
        metadata.update(extra_metadata(path))
    try:
        prepared = engine.prepare(data, source=str(path), caption=names[0] if names else None, metadata=metadata)
    except InvalidImageError as exc:
        return "failed", path, str(exc)
    return "ok", path, prepared


def _collect(result: Work, report: IngestReport, batch: list[PreparedImage], bar: tqdm, known: set[str]) -> None:
    status, path, payload = result
    if status == "ok":
        assert isinstance(payload, PreparedImage)
        if payload.sha256 in known or any(p.sha256 == payload.sha256 for p in batch):
            report.duplicates += 1  # same bytes as another file in this run
            bar.update(1)
            return
        batch.append(payload)
        return
    if status == "known":
        report.already_indexed += 1
    else:
        report.failed.append((str(path), str(payload)))
        log.info("skipped %s: %s", path, payload)
    bar.update(1)


def ingest_samples(engine: SearchEngine, *, progress: bool = True) -> IngestReport:
    """``python -m clip_search ingest --samples``: the public-domain/CC0 photos scikit-image ships, captioned."""
    from clip_search.samples import sample_files

    samples = sample_files()
    if not samples:
        raise ClipSearchError("no sample photos are installed (they come with scikit-image)")
    captions = {path.name: [caption] for path, caption, _ in samples}
    credits = {path.name: credit for path, _, credit in samples}
    return ingest_paths(
        engine,
        [path for path, _, _ in samples],
        captions=captions,
        extra_metadata=lambda p: {"credit": credits[p.name]},
        progress=progress,
    )


def ingest_folder(
    engine: SearchEngine,
    root: Path,
    *,
    recursive: bool = False,
    captions_file: Path | None = None,
    progress: bool = True,
) -> IngestReport:
    """``python -m clip_search ingest PATH``: every image file in a folder (and its sub-folders if asked)."""
    paths = find_images(Path(root), recursive=recursive, extensions=engine.settings.ingest.extensions)
    captions = load_captions(captions_file) if captions_file else None
    log.info("found %d image files under %s", len(paths), root)
    return ingest_paths(engine, paths, captions=captions, progress=progress)
