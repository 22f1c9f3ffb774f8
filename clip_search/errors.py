"""Errors a user can act on. Their messages are shown as they are, in the CLI and in the app."""


class ClipSearchError(Exception):
    """Base class: anything raised with a message meant for the person running clip-search."""


class ConfigError(ClipSearchError):
    """The configuration file or an environment override is invalid."""


class EmptyQueryError(ClipSearchError, ValueError):
    """A text query that is empty or only whitespace."""


class InvalidImageError(ClipSearchError, ValueError):
    """Bytes that are not an image we accept (corrupt, truncated, wrong format, too large...)."""


class ModelMismatchError(ClipSearchError):
    """The catalog holds vectors of a different model than the one configured."""


class CatalogError(ClipSearchError):
    """The catalog cannot be opened or is of an unknown schema."""


class StorageError(ClipSearchError):
    """The image store cannot be reached or refuses an operation."""


class NotFoundError(ClipSearchError, KeyError):
    """An image id or key that is not in the collection."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class InvalidQueryError(ClipSearchError, ValueError):
    """A query whose parts, filters, order or page cannot be run as given (the message says what to change)."""
