"""What an ingest did, file by file where it matters (shared by the plain and the Ray ingest; no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestReport:
    """What a run did, file by file where it matters."""

    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def seen(self) -> int:
        return self.added + self.already_indexed + self.duplicates + len(self.failed)

    def summary(self) -> str:
        counts = (
            f"added {self.added}, already indexed {self.already_indexed}, duplicates {self.duplicates}, "
            f"failed {len(self.failed)} in {_duration(self.seconds)}"
        )
        if self.added:
            counts += f" ({self.added / self.seconds:.1f} images/s)" if self.seconds > 0 else ""
        elif self.seen and not self.failed:
            counts = f"nothing new: {counts}"  # a re-run over an indexed folder: no rate of 0 images/s
        lines = [counts + (" - interrupted: run the same command again to finish" if self.interrupted else "")]
        if self.failed:
            lines.append("skipped files:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "already_indexed": self.already_indexed,
            "duplicates": self.duplicates,
            "failed": [{"file": f, "reason": r} for f, r in self.failed],
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
        }


def _duration(seconds: float) -> str:
    """``12.3 s``, or milliseconds below a tenth of a second (a no-op re-run is not "0.0 s")."""
    return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"
