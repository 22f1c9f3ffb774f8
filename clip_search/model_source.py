"""Finding and loading a checkpoint, failing fast and in plain words when it cannot be had.

Left to itself, ``from_pretrained`` on a machine that cannot reach the hub retries for ~30 s and then raises a
chain of ~60 lines of tracebacks. A newcomer's first start is exactly that case (no internet, a typo in
``model.id``), so the source is settled first: an existing directory is loaded from disk only; a hub id is
checked with one short request (no retry loop) and, when the hub cannot be reached, loaded from the local cache
or refused with one short message naming the ways out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clip_search.errors import ClipSearchError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 5.0

WAYS_OUT = """\
Ways out (model.id in config.yaml, CLIP_SEARCH_MODEL, or --model on the command line):
  - a hub id, fetched once while online, then kept in the cache: google/siglip-base-patch16-224
  - a local directory (config.json, weights, processor): hf download HUB_ID --local-dir models/NAME
  - an offline smoke run on a tiny random model: python -m clip_search.testing tiny-model DIR"""


def features_tensor(output: Any) -> Any:
    """transformers 5 returns a ModelOutput from ``get_*_features``; 4.x returned the tensor itself."""
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


class ModelUnavailableError(ClipSearchError):
    """The configured model can be found neither on disk, nor in the cache, nor on the hub."""

    def __init__(self, model_id: str, problem: str) -> None:
        super().__init__(f"cannot load model '{model_id}': {problem}\n{WAYS_OUT}")
        self.model_id = model_id
        self.problem = problem


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """Library errors run to several paragraphs; the first line says what went wrong."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _could_be_hub_id(model_id: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return True


def _probe_hub(model_id: str, revision: str | None) -> str | None:
    """One request to the hub, no retries: None when the model is there, else why it cannot be fetched.

    Raises ModelUnavailableError when the hub answers that there is no such model (or revision).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(model_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return None  # from_pretrained says how to get access (accept the licence, set HF_TOKEN)
    except RevisionNotFoundError as exc:
        raise ModelUnavailableError(model_id, f"the hub has no revision '{revision}' of it") from exc
    except RepositoryNotFoundError as exc:
        where = "" if Path(model_id).is_absolute() else f" (nor a directory '{model_id}' here)"
        raise ModelUnavailableError(
            model_id, f"there is no such model on the hub {constants.ENDPOINT}{where}, or it is private"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            raise ModelUnavailableError(model_id, f"there is no such model on the hub {constants.ENDPOINT}") from exc
        if status in (401, 403):
            return None  # a private model: from_pretrained says what the token lacks
        return f"the hub {constants.ENDPOINT} answered {_first_line(exc)}"
    except Exception as exc:  # the transport's own errors (DNS, refused, timeout) depend on the hub client
        return f"the hub {constants.ENDPOINT} cannot be reached ({_first_line(exc)})"
    return None


def _from_pretrained(model_id: str, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_id, **kwargs)
    # The PIL backend is SigLIP's reference preprocessing and needs no torchvision.
    processor = AutoProcessor.from_pretrained(model_id, backend="pil", **kwargs)
    return model, processor


def load_processor(model_id: str, revision: str | None = None) -> Any:
    """Only the checkpoint's processor (CPU workers that preprocess for a model they never load)."""
    from transformers import AutoProcessor

    path = Path(model_id).expanduser()
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        return AutoProcessor.from_pretrained(str(path) if path.is_dir() else model_id, backend="pil", **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(model_id, f"its processor cannot be loaded ({_first_line(exc)})") from exc


def _load_directory(model_id: str, path: Path) -> tuple[Any, Any]:
    try:
        return _from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            model_id, f"the directory {path} does not hold a loadable checkpoint ({_first_line(exc)})"
        ) from exc


def _load_cached(model_id: str, revision: str | None, why_not_online: str) -> tuple[Any, Any]:
    from huggingface_hub import constants

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        loaded = _from_pretrained(model_id, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            model_id, f"{why_not_online}, and it is not in the local cache {constants.HF_HUB_CACHE}"
        ) from exc
    log.warning("%s: using the copy of %s in the local cache", why_not_online, model_id)
    return loaded


def load_checkpoint(model_id: str, revision: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` from a local directory or a hub id; ModelUnavailableError in plain words if neither.

    Never waits on a retry loop: a hub that cannot be reached is noticed with one short request.
    """
    from huggingface_hub import constants

    path = Path(model_id).expanduser()
    if path.is_dir():
        return _load_directory(model_id, path)
    if path.exists():
        raise ModelUnavailableError(model_id, f"{path} is a file, not a model directory")
    if not _could_be_hub_id(model_id):
        raise ModelUnavailableError(model_id, f"there is no directory {path}")
    if constants.HF_HUB_OFFLINE:
        return _load_cached(model_id, revision, "offline mode is on (HF_HUB_OFFLINE)")
    unreachable = _probe_hub(model_id, revision)
    if unreachable:
        return _load_cached(model_id, revision, unreachable)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        return _from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(model_id, _first_line(exc)) from exc
