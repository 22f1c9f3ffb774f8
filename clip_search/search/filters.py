"""Filters on stored fields, turned into one Lance ``where`` expression.

They run on the table before ranking (the matching ids bound the vector scan), so a filtered page has k results
whenever k images match. Every value a visitor types is validated or quoted here; nothing else builds SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, get_args

from clip_search.errors import InvalidQueryError

Orientation = Literal["landscape", "portrait", "square"]
ORIENTATIONS: tuple[str, ...] = get_args(Orientation)
SQUARE_TOLERANCE = 1.1  # sides within 10% of each other count as square (a 4:3 photo is landscape)
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")  # letters and digits, with inner apostrophes or hyphens


@dataclass(frozen=True)
class Filters:
    """Conditions an image must meet; None means "any". Dates are UTC; ``before`` is exclusive.

    ``source`` is "upload" for visitors' photos, or a folder given to ``ingest`` (its files and sub-folders).
    ``caption`` matches whole words, ignoring case ("dog" matches "A dog runs", not "hotdog").
    """

    after: datetime | None = None
    before: datetime | None = None
    source: str | None = None
    caption: str | None = None
    orientation: Orientation | None = None
    min_width: int | None = None
    min_height: int | None = None

    def narrowed(self, **conditions: Any) -> Filters:
        """These filters plus new conditions (an empty value clears that condition)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(conditions) - known)
        if unknown:
            raise InvalidQueryError(f"unknown filter {', '.join(unknown)}: use {', '.join(sorted(known))}")
        parsed = {
            name: _PARSERS[name](value) if value not in (None, "") else None for name, value in conditions.items()
        }
        result = replace(self, **parsed)
        if result.after and result.before and result.after >= result.before:
            raise InvalidQueryError("the 'after' date must come before the 'before' date")
        return result

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}

    def where(self) -> str | None:
        """The Lance/DataFusion SQL condition, or None when nothing is filtered."""
        terms = []
        if self.after is not None:
            terms.append(f"added_at >= CAST('{_sql_time(self.after)}' AS TIMESTAMP)")
        if self.before is not None:
            terms.append(f"added_at < CAST('{_sql_time(self.before)}' AS TIMESTAMP)")
        if self.source is not None:
            quoted = _quote(self.source)
            folder = _quote(self.source.rstrip("/") + "/")
            terms.append(f"(source = '{quoted}' OR starts_with(source, '{folder}'))")
        if self.caption is not None:
            pattern = r"(?i)\b" + r"\s+".join(w.replace("-", r"\-") for w in _WORD.findall(self.caption)) + r"\b"
            terms.append(f"regexp_like(caption, '{_quote(pattern)}')")
        if self.orientation is not None:
            terms.append(_orientation_sql(self.orientation))
        if self.min_width is not None:
            terms.append(f"width >= {self.min_width}")
        if self.min_height is not None:
            terms.append(f"height >= {self.min_height}")
        return " AND ".join(terms) or None


def parse_time(value: Any, *, what: str = "date") -> datetime:
    """A UTC datetime from a datetime, a date, or ISO text ("2026-01-31", "2026-01-31T12:00", "...Z")."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            raise InvalidQueryError(
                f"{what} {value!r} is not a date: write it as 2026-01-31 or 2026-01-31T12:00"
            ) from None
    else:
        raise InvalidQueryError(f"{what} must be a date such as 2026-01-31, not {value!r}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _source(value: Any) -> str:
    text = str(value).strip()
    if not text or len(text) > 1000:
        raise InvalidQueryError("the source filter is 'upload' or a folder that was ingested")
    return text


def _caption(value: Any) -> str:
    words = _WORD.findall(str(value))
    if not words or len(words) > 10:
        raise InvalidQueryError("the caption filter takes one to ten words (letters and digits)")
    return " ".join(words)


def _orientation(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ORIENTATIONS:
        raise InvalidQueryError(f"orientation must be one of {', '.join(ORIENTATIONS)}, not {value!r}")
    return text


def _size(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidQueryError(f"a minimum size is a whole number of pixels, not {value!r}") from None
    if not 0 < number <= 1_000_000:
        raise InvalidQueryError(f"a minimum size is between 1 and 1000000 pixels, not {value!r}")
    return number


_PARSERS: dict[str, Any] = {
    "after": lambda v: parse_time(v, what="'after'"),
    "before": lambda v: parse_time(v, what="'before'"),
    "source": _source,
    "caption": _caption,
    "orientation": _orientation,
    "min_width": _size,
    "min_height": _size,
}


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _sql_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _orientation_sql(orientation: str) -> str:
    scale = int(SQUARE_TOLERANCE * 10)
    if orientation == "landscape":
        return f"width * 10 > height * {scale}"
    if orientation == "portrait":
        return f"height * 10 > width * {scale}"
    return f"width * 10 <= height * {scale} AND height * 10 <= width * {scale}"
