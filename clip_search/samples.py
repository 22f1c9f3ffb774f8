"""A starter collection that needs no download: the public-domain/CC0 photos that scikit-image ships.

``python -m clip_search ingest --samples`` indexes them, so a fresh install has something to search.
"""

from __future__ import annotations

from pathlib import Path

from clip_search.errors import ClipSearchError

# file in skimage/data -> (caption, credit and licence as scikit-image documents them)
SAMPLES: dict[str, tuple[str, str]] = {
    "astronaut.png": ("portrait of astronaut Eileen Collins in a NASA flight suit", "NASA, public domain"),
    "coffee.png": ("a cup of coffee on a saucer", "Rachel Michetti, CC0"),
    "chelsea.png": ("Chelsea the tabby cat", "Stefan van der Walt, CC0"),
    "rocket.jpg": ("a Falcon 9 rocket launching into the sky", "SpaceX, public domain"),
    "hubble_deep_field.jpg": ("galaxies in the Hubble deep field", "NASA, public domain"),
    "camera.png": ("black and white photo of a photographer with a camera on a tripod", "Lav Varshney, CC0"),
    "coins.png": ("ancient Greek coins from Pompeii", "Brooklyn Museum, no known copyright restrictions"),
    "motorcycle_left.png": ("a motorcycle parked in a workshop", "Middlebury stereo dataset, public domain"),
    "retina.jpg": ("a photo of a human retina", "Häggström, CC0"),
    "clock_motion.png": ("a motion-blurred wall clock", "Stefan van der Walt, public domain"),
    "brick.png": ("a red brick wall", "CC0Textures, CC0"),
    "grass.png": ("close-up of green grass", "CC0Textures, CC0"),
    "gravel.png": ("grey gravel stones", "CC0Textures, CC0"),
    "ihc.png": ("microscope image of stained tissue", "no known copyright restrictions"),
}


def sample_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:
        raise ClipSearchError("the sample photos come with scikit-image: pip install scikit-image") from exc
    return Path(skimage.__file__).parent / "data"


def sample_files() -> list[tuple[Path, str, str]]:
    """(path, caption, credit) for each sample photo present in the installed scikit-image."""
    folder = sample_dir()
    return [(folder / name, caption, credit) for name, (caption, credit) in SAMPLES.items() if (folder / name).exists()]
