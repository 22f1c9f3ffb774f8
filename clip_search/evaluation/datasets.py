"""Evaluation data sets: captioned images (COCO caption JSON or an ``image,caption`` CSV) and labelled folders.

``load_dataset(PATH)`` recognises:

- a captions file: ``*.json`` in COCO's caption format or ``*.csv`` with ``image`` and ``caption`` columns; the images
  are looked for in ``--images DIR``, else beside the file (``images/`` or the file's folder), else in COCO's layout
  (``annotations/captions_val2017.json`` -> ``val2017/``);
- a folder holding ``captions.csv`` (or ``captions.json``) and its images: a captioned set;
- a folder of class sub-folders, with an optional ``classes.csv`` (folder, name) giving readable class names:
  a labelled set (the folder name is the label and is never shown to the keyword baseline).

``limit`` picks a deterministic subset (seeded): that many images for a captioned set with all their captions; for a
labelled set as many per class as an even split allows, so classes stay balanced.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clip_search.errors import ClipSearchError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif")


@dataclass
class CaptionedDataset:
    """Images with one or more captions each; caption ``j`` describes image ``caption_image[j]``."""

    name: str
    images: list[Path]
    captions: list[str]
    caption_image: np.ndarray  # (n_captions,) int index into ``images``
    source: Path
    limit: int | None = None
    kind: str = field(default="captioned", init=False)

    def __len__(self) -> int:
        return len(self.images)

    def captions_of(self, image_index: int) -> list[str]:
        return [self.captions[j] for j in np.flatnonzero(self.caption_image == image_index)]

    def caption_slot(self) -> np.ndarray:
        """Position of each caption among its image's captions (0 for the first caption of an image, ...)."""
        slot = np.zeros(len(self.captions), dtype=np.int64)
        seen: dict[int, int] = {}
        for j, i in enumerate(self.caption_image.tolist()):
            slot[j] = seen.get(i, 0)
            seen[i] = slot[j] + 1
        return slot

    def subset(self, keep: np.ndarray) -> CaptionedDataset:
        """Only the images where ``keep`` is true (and their captions)."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        kept_captions = keep[self.caption_image]
        return replace(
            self,
            images=[p for p, k in zip(self.images, keep, strict=True) if k],
            captions=[c for c, k in zip(self.captions, kept_captions, strict=True) if k],
            caption_image=new_index[self.caption_image[kept_captions]],
        )

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": str(self.source),
            "images": len(self.images),
            "captions": len(self.captions),
            "limit": self.limit,
        }


@dataclass
class LabelledDataset:
    """Images in class folders: ``labels[i]`` indexes ``class_names`` (readable) and ``class_ids`` (folders)."""

    name: str
    images: list[Path]
    labels: np.ndarray  # (n_images,) int
    class_ids: list[str]
    class_names: list[str]
    source: Path
    limit: int | None = None
    kind: str = field(default="labelled", init=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> LabelledDataset:
        keep = np.asarray(keep, dtype=bool)
        return replace(self, images=[p for p, k in zip(self.images, keep, strict=True) if k], labels=self.labels[keep])

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": str(self.source),
            "images": len(self.images),
            "classes": len(self.class_ids),
            "limit": self.limit,
        }


Dataset = CaptionedDataset | LabelledDataset


def load_dataset(
    path: str | Path,
    *,
    images_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> Dataset:
    """A captioned or labelled data set from a captions file or a folder (see the module docstring)."""
    path = Path(path).expanduser()
    if limit is not None and limit < 1:
        raise ClipSearchError(f"--limit must be at least 1, not {limit}")
    if path.is_file():
        return load_captioned(path, images_dir=images_dir, limit=limit, seed=seed)
    if not path.is_dir():
        raise ClipSearchError(f"no such data set: {path} (give a captions file or a folder)")
    for name in ("captions.csv", "captions.json"):
        if (path / name).is_file():
            return load_captioned(path / name, images_dir=images_dir or path / "images", limit=limit, seed=seed)
    return load_labelled(path, limit=limit, seed=seed, extensions=extensions)


def _image_dir_candidates(captions_file: Path) -> list[Path]:
    parent = captions_file.parent
    candidates = [parent / "images", parent]
    stem = captions_file.stem
    if stem.startswith("captions_"):  # COCO: annotations/captions_val2017.json -> val2017/
        split = stem[len("captions_") :]
        candidates += [parent.parent / split, parent.parent / "images" / split, parent / split]
    return candidates


def load_captioned(
    captions_file: str | Path,
    *,
    images_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> CaptionedDataset:
    """Every caption becomes a text query whose relevant item is its image."""
    from clip_search.ingest import load_captions

    captions_file = Path(captions_file)
    by_name = load_captions(captions_file)
    if not by_name:
        raise ClipSearchError(f"{captions_file}: no captions")
    names = sorted(by_name)
    if images_dir is not None:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise ClipSearchError(f"image folder not found: {folder}")
    else:
        found = [
            d for d in _image_dir_candidates(captions_file) if d.is_dir() and any((d / n).is_file() for n in names[:50])
        ]
        if not found:
            raise ClipSearchError(f"cannot find the images of {captions_file}: give their folder with --images DIR")
        folder = found[0]
    present = [n for n in names if (folder / n).is_file()]
    missing = len(names) - len(present)
    if missing:
        log.warning("%d of %d captioned images are missing from %s; evaluating the rest", missing, len(names), folder)
    if not present:
        raise ClipSearchError(f"none of the images of {captions_file} are in {folder}")
    if limit is not None and limit < len(present):
        pick = np.sort(np.random.default_rng(seed).choice(len(present), size=limit, replace=False))
        present = [present[i] for i in pick]
    captions: list[str] = []
    owner: list[int] = []
    for i, name in enumerate(present):
        for caption in by_name[name]:
            if caption.strip():
                captions.append(caption.strip())
                owner.append(i)
    name = captions_file.parent.name if captions_file.name == "captions.csv" else captions_file.stem
    return CaptionedDataset(
        name=name,
        images=[folder / n for n in present],
        captions=captions,
        caption_image=np.asarray(owner, dtype=np.int64),
        source=captions_file,
        limit=limit,
    )


def _read_class_names(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if len(fields) < 2:
            raise ClipSearchError(f"{path}: expected a CSV with a folder column and a name column")
        name_col = "name" if "name" in fields else fields[1]
        key_col = next((f for f in ("folder", "wnid", "id", "class", "dir") if f in fields and f != name_col), None)
        key_col = key_col or next(f for f in fields if f != name_col)
        return {row[key_col].strip(): row[name_col].strip() for row in reader if row.get(key_col)}


def load_labelled(
    root: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> LabelledDataset:
    """One sub-folder per class; ``classes.csv`` (optional) maps folder names to readable class names."""
    root = Path(root)
    wanted = {e.lower() for e in extensions}
    classes: list[tuple[str, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)
        if files:
            classes.append((folder.name, files))
    if len(classes) < 2:
        raise ClipSearchError(f"{root}: not a data set: expected captions.csv, or at least two class folders of images")
    names = _read_class_names(root / "classes.csv") if (root / "classes.csv").is_file() else {}
    rng = np.random.default_rng(seed)
    if limit is not None:
        base, extra = divmod(limit, len(classes))
        quotas = [base + (1 if c < extra else 0) for c in range(len(classes))]
    images: list[Path] = []
    labels: list[int] = []
    for c, (_, files) in enumerate(classes):
        if limit is not None and quotas[c] < len(files):
            files = [files[i] for i in np.sort(rng.choice(len(files), size=quotas[c], replace=False))]
        images += files
        labels += [c] * len(files)
    return LabelledDataset(
        name=root.name,
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        class_ids=[c for c, _ in classes],
        class_names=[names.get(c, c.replace("_", " ")) for c, _ in classes],
        source=root,
        limit=limit,
    )
