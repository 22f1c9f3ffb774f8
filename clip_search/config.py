"""All settings in one place: ``config.yaml`` validated into typed models, with environment overrides.

Precedence, highest first: environment variables (``CLIP_SEARCH_MODEL``, ``CLIP_SEARCH_DATA_DIR``, the S3 ones),
then the YAML file (``CLIP_SEARCH_CONFIG`` or ``./config.yaml``), then the defaults below, which mirror the
shipped ``config.yaml``. Secrets never live in the YAML: they come from the environment or a ``.env`` file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from clip_search.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "google/siglip-base-patch16-224"
SIGV4_MAX_EXPIRY_S = 7 * 24 * 3600


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    id: str = Field(DEFAULT_MODEL, min_length=1)
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = Field(8, ge=1, le=1024)
    max_text_tokens: int = Field(64, ge=1, le=512)
    torch_threads: int = Field(0, ge=0)
    quantize: Literal["none", "int8"] = "none"
    query_quantize: Literal["auto", "none", "int8"] = "auto"  # precisions a text query path may use
    query_runtime: Literal["auto", "torch", "onnx"] = "auto"  # runtimes; the fastest agreeing path wins (CPU)
    warm_up: bool = True


class IndexSettings(_Section):
    kind: Literal["flat", "ivf"] = "flat"
    nlist: int | None = Field(None, ge=1)
    nprobe: int = Field(16, ge=1)
    retrain_growth: float = Field(4.0, gt=1)
    # faiss_threads: its name until the flat scan stopped being FAISS's (a config.yaml of before still loads)
    search_threads: int = Field(1, ge=0, validation_alias=AliasChoices("search_threads", "faiss_threads"))
    batch_scan: Literal["auto", "bf16", "fp32"] = "auto"


class CollectionSettings(_Section):
    table: str = Field("collection", pattern=r"^[A-Za-z0-9_-]+$")
    refresh_s: float = Field(2.0, ge=0)
    optimize_every: int = Field(500, ge=0)
    keep_versions_s: float = Field(3600.0, ge=0)
    legacy_catalog_file: str = "catalog.sqlite"


class S3Settings(_Section):
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    presign_expiry_s: int = Field(3600, ge=1, le=SIGV4_MAX_EXPIRY_S)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")


class StorageSettings(_Section):
    backend: Literal["auto", "local", "s3"] = "auto"
    local_dir: str = "images"
    web_copy_max_side: int = Field(0, ge=0)
    web_copy_quality: int = Field(90, ge=1, le=100)
    s3: S3Settings = S3Settings()


class SearchSettings(_Section):
    default_k: int = Field(12, ge=1)
    max_k: int = Field(100, ge=1)
    min_probability: float = Field(0.01, ge=0, le=1)
    max_results: int = Field(1000, ge=1)  # the furthest result a page can reach
    sort_pool: int = Field(1000, ge=1)  # best matches considered when sorting a query's results by date
    good_match_ratio: float = Field(0.8, gt=0, le=1)  # a good match scores >= this x the best (compound queries)
    feedback_alpha: float = Field(1.0, ge=0)  # Rocchio: weight of the query itself
    feedback_beta: float = Field(0.75, ge=0)  # ... of the mean of the results marked good
    feedback_gamma: float = Field(0.25, ge=0)  # ... of the mean of the results marked bad (subtracted)


class IngestSettings(_Section):
    decode_workers: int = Field(2, ge=1, le=64)
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"]
    max_pixels: int = Field(89_478_485, ge=1)

    @field_validator("extensions")
    @classmethod
    def _dotted_lower(cls, value: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else f".{e.lower()}" for e in value]


class UploadSettings(_Section):
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_files: int = Field(20, ge=1)
    formats: list[Literal["JPEG", "PNG", "WEBP", "HEIF", "GIF", "BMP", "TIFF"]] = ["JPEG", "PNG", "WEBP", "HEIF"]
    keep_metadata: bool = False
    max_caption_chars: int = Field(500, ge=0)
    near_duplicate_threshold: float = Field(0.97, gt=0, le=1)
    near_duplicate_action: Literal["reject", "add"] = "reject"


DEFAULT_MODERATION_PROMPTS = [
    "an explicit photo of nudity or sexual activity",
    "a photo of graphic violence, blood or gore",
    "a photo of a dead or mutilated body",
    "a photo of self-harm",
    "a hateful symbol such as a swastika",
]


class ModerationSettings(_Section):
    enabled: bool = True
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_MODERATION_PROMPTS))  # []: the hook alone
    threshold: float = Field(0.1, gt=0, le=1)
    margin: float = Field(0.02, ge=-2, le=2)
    neutral_prompts: list[str] = Field(default_factory=lambda: ["a photo", "an everyday photo"], min_length=1)
    action: Literal["hold", "reject"] = "hold"
    hook: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    @field_validator("prompts", "neutral_prompts")
    @classmethod
    def _no_blank_prompt(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("a prompt is empty")
        return [p.strip() for p in value]


class PrivacySettings(_Section):
    allow_private: bool = True
    min_passphrase_chars: int = Field(10, ge=1, le=200)


class RateLimitSettings(_Section):
    searches_per_minute: int = Field(60, ge=0)
    uploads_per_minute: int = Field(10, ge=0)
    key_attempts_per_minute: int = Field(20, ge=0)
    delete_attempts_per_minute: int = Field(10, ge=0)
    trusted_proxy_header: str | None = None
    trusted_proxy_hops: int = Field(1, ge=1)


class AppSettings(_Section):
    title: str = Field("clip-search", min_length=1)
    description: str = "Search photos by describing them in words, or by showing a similar picture."
    queue_max_size: int = Field(64, ge=1)
    search_concurrency: int = Field(4, ge=1)
    upload_concurrency: int = Field(1, ge=1)
    examples: list[str] = [
        "a cat",
        "a cup of coffee",
        "a rocket launching into the sky",
        "galaxies in deep space",
        "a motorcycle",
        "old coins",
        "a red brick wall",
    ]
    server_name: str = "127.0.0.1"
    server_port: int = Field(7860, ge=1, le=65535)
    allow_image_urls: bool = True
    allow_private_urls: bool = False
    url_max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    url_timeout_s: float = Field(10.0, gt=0)
    cache_max_age_s: int = Field(3600, ge=0)
    max_sessions: int = Field(100, ge=1)  # visitors' sessions kept in memory (Gradio's default is 10,000)


class Settings(_Section):
    data_dir: Path = Path("data")
    model: ModelSettings = ModelSettings()
    index: IndexSettings = IndexSettings()
    collection: CollectionSettings = CollectionSettings()
    storage: StorageSettings = StorageSettings()
    search: SearchSettings = SearchSettings()
    ingest: IngestSettings = IngestSettings()
    upload: UploadSettings = UploadSettings()
    moderation: ModerationSettings = ModerationSettings()
    privacy: PrivacySettings = PrivacySettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    app: AppSettings = AppSettings()

    @property
    def legacy_catalog_path(self) -> Path:
        """Where a collection made before the Lance table kept its SQLite catalog (migrated on open)."""
        return self.data_dir / self.collection.legacy_catalog_file

    @property
    def cache_dir(self) -> Path:
        """Derived files of the collection that may be lost (the IVF index): rebuilt from the table. The model's own
        derived files (the ONNX text tower, the query path chosen) live in the user's cache, shared by every
        collection on the machine (``$XDG_CACHE_HOME/clip-search``)."""
        return self.data_dir / "cache"

    @property
    def local_image_dir(self) -> Path:
        return self.data_dir / self.storage.local_dir

    @property
    def storage_backend(self) -> Literal["local", "s3"]:
        """``auto`` means: S3 when a bucket is configured, the local folder otherwise."""
        if self.storage.backend == "auto":
            return "s3" if self.storage.s3.bucket else "local"
        return self.storage.backend


# Environment variable -> dotted setting. Values are validated like the YAML ones.
ENV_OVERRIDES: dict[str, str] = {
    "CLIP_SEARCH_MODEL": "model.id",
    "CLIP_SEARCH_DATA_DIR": "data_dir",
    "CLIP_SEARCH_DEVICE": "model.device",
    "S3_BUCKET": "storage.s3.bucket",
    "S3_ENDPOINT_URL": "storage.s3.endpoint_url",
    "S3_PREFIX": "storage.s3.prefix",
    "AWS_DEFAULT_REGION": "storage.s3.region",
}


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown setting '{key}' (check its spelling and section)")
        else:
            got = item.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: invalid setting '{key}': {item['msg']}{got_text}")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def default_config_path() -> Path:
    """``$CLIP_SEARCH_CONFIG`` if set, else ``config.yaml`` in the working directory."""
    return Path(os.environ.get("CLIP_SEARCH_CONFIG") or "config.yaml")


def load_dotenv_once() -> None:
    """Read ``.env`` from the working directory into the environment, never overriding what is already set."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a hard requirement
        return
    load_dotenv(dotenv_path=Path.cwd() / ".env", override=False)


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Load, override from the environment and validate. Raises :class:`ConfigError` naming the bad key."""
    if env is None:
        load_dotenv_once()
        env = dict(os.environ)
    explicit = path is not None or bool(env.get("CLIP_SEARCH_CONFIG"))
    config_path = Path(path) if path is not None else Path(env.get("CLIP_SEARCH_CONFIG") or "config.yaml")

    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of settings at the top level")
        raw = loaded
    elif explicit:
        raise ConfigError(f"config file not found: {config_path}")

    for var, dotted in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            _set_dotted(raw, dotted, value)

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(config_path), exc)) from None

    # A relative data_dir in the YAML is relative to the YAML file; one from the environment to the working dir.
    if not settings.data_dir.is_absolute() and not env.get("CLIP_SEARCH_DATA_DIR"):
        settings.data_dir = (config_path.resolve().parent / settings.data_dir).resolve()
    else:
        settings.data_dir = settings.data_dir.resolve()
    if settings.search.default_k > settings.search.max_k:
        raise ConfigError(
            f"{config_path}: invalid setting 'search.default_k': must not exceed search.max_k "
            f"({settings.search.default_k} > {settings.search.max_k})"
        )
    return settings
