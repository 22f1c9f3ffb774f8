"""Who may see which image: the rule every read path applies, and the small in-memory set of hidden rows.

An image is ``public`` (every ingested photo and approved upload; a null in the table means public too),
``private`` (a visitor's upload that only searches carrying its owner's key see) or ``held`` (an upload the
moderation check flagged: stored, seen by nobody until an admin approves it, when it becomes public, or private
when it has an owner). Hidden rows are normally few, so the collection keeps them in memory (id -> visibility,
owner hash), updated by the same refresh that follows the table, and a search excludes the ones its viewer may
not see before ranking, like any filter: a public search costs a handful of extra candidates, not a table read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

PUBLIC = "public"
PRIVATE = "private"
HELD = "held"
VISIBILITIES = (PUBLIC, PRIVATE, HELD)
HIDDEN_SQL = f"visibility IN ('{PRIVATE}', '{HELD}')"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the owner hashes whose private photos they may see, or everything (the operator)."""

    owners: frozenset[str] = frozenset()
    sees_all: bool = False

    def sees(self, visibility: str, owner_hash: str | None) -> bool:
        if self.sees_all or visibility == PUBLIC:
            return True
        return visibility == PRIVATE and owner_hash in self.owners

    def __repr__(self) -> str:  # never print owner hashes
        return "Viewer(operator)" if self.sees_all else f"Viewer({len(self.owners)} keys)"


PUBLIC_VIEWER = Viewer()
OPERATOR = Viewer(sees_all=True)


def owned_by(owner_hash: str) -> Viewer:
    return Viewer(owners=frozenset([owner_hash]))


@dataclass(frozen=True)
class Hidden:
    visibility: str
    owner_hash: str | None


class HiddenRows:
    """An immutable snapshot of the hidden rows (replaced whole, so searches read it without a lock)."""

    def __init__(self, rows: Mapping[int, Hidden] | None = None) -> None:
        self._rows = dict(rows or {})
        self._all = np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))
        self._all.sort()
        owned: dict[str, list[int]] = {}
        for image_id, hidden in self._rows.items():
            if hidden.visibility == PRIVATE and hidden.owner_hash is not None:
                owned.setdefault(hidden.owner_hash, []).append(image_id)
        self._private_of = {owner: np.unique(np.asarray(ids, dtype=np.int64)) for owner, ids in owned.items()}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, image_id: int) -> Hidden | None:
        return self._rows.get(int(image_id))

    def with_rows(self, added: Mapping[int, Hidden] | None = None, removed: Iterable[int] = ()) -> HiddenRows:
        rows = dict(self._rows)
        for image_id in removed:
            rows.pop(int(image_id), None)
        rows.update(added or {})
        return HiddenRows(rows)

    def changed_ids(self, other: HiddenRows) -> set[int]:
        """Ids whose visibility differs between two snapshots (rows approved, made hidden or deleted)."""
        keys = self._rows.keys() | other._rows.keys()
        return {i for i in keys if self._rows.get(i) != other._rows.get(i)}

    def blocked(self, viewer: Viewer) -> np.ndarray:
        """The ids (sorted int64) ``viewer`` may not see."""
        if viewer.sees_all or not len(self._all):
            return self._all[:0] if viewer.sees_all else self._all
        mine = [self._private_of[owner] for owner in viewer.owners if owner in self._private_of]
        if not mine:
            return self._all
        return np.setdiff1d(self._all, np.concatenate(mine), assume_unique=len(mine) == 1)

    def visible(self, viewer: Viewer, image_id: int) -> bool:
        hidden = self._rows.get(int(image_id))
        return hidden is None or viewer.sees(hidden.visibility, hidden.owner_hash)

    def counts(self) -> dict[str, int]:
        out = {PRIVATE: 0, HELD: 0}
        for hidden in self._rows.values():
            out[hidden.visibility] = out.get(hidden.visibility, 0) + 1
        return out


def hidden_of(
    ids: Iterable[int], visibilities: Iterable[str | None], owners: Iterable[str | None]
) -> dict[int, Hidden]:
    """The hidden rows among columns read from the table (public and null rows left out)."""
    return {
        int(i): Hidden(v, o) for i, v, o in zip(ids, visibilities, owners, strict=True) if v is not None and v != PUBLIC
    }


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def same_owner_sql(owner_hash: str | None) -> str:
    """Rows a new photo of this owner (None: the public, the operator's ingest) counts as a duplicate of: the
    unowned ones (public or held public), and the owner's own private or held ones; never a stranger's."""
    if owner_hash is None:
        return "owner_hash IS NULL"
    return f"(owner_hash IS NULL OR owner_hash = {sql_text(owner_hash)})"
