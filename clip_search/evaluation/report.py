"""Writing up a run: a Markdown table per task (embedding | BM25 | random), JSON, a recall@k plot, result pages."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METHOD_NAMES = {"embedding": "embedding search", "bm25": "BM25 keywords"}
NOT_PERCENT = {"MedR", "MeanR"}


def _fmt(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in NOT_PERCENT:
        return f"{value:.1f}"
    return f"{100 * value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: a header saying what was measured, then one table per task."""
    data = results["dataset"]
    size = f"{data['images']} images, " + (
        f"{data['captions']} captions" if data["kind"] == "captioned" else f"{data['classes']} classes"
    )
    subset = f" (subset: --limit {data['limit']})" if data.get("limit") else ""
    timing = results.get("timing", {})
    lines = [
        f"# {data['name']}: `{results['model']}`",
        "",
        f"{size}{subset}. Metrics in % except ranks; ties broken against the method ({results['tie_policy']}). "
        "Random = the exact expectation for a random ranking. Figures from a randomly initialised test model "
        "check the pipeline, not retrieval quality.",
        "",
    ]
    if results.get("skipped"):
        lines += [f"{len(results['skipped'])} unreadable images were left out.", ""]
    for task in results["tasks"].values():
        methods = list(task["methods"])
        header = ["metric", *(METHOD_NAMES.get(m, m) for m in methods), "random"]
        lines += [f"## {task['title']}", "", task["description"], ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---" + "|---:" * (len(header) - 1) + "|")
        for key, label in task["show"]:
            row = [label, *(_fmt(key, task["methods"][m].get(key)) for m in methods)]
            row.append(_fmt(key, task["chance"].get(key)))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if timing:
        lines.append(
            f"Embedding: {int(timing.get('images', 0))} images in {timing.get('seconds', 0):.1f} s "
            f"({timing.get('images_per_s', 0):.1f} images/s; {int(timing.get('from_cache', 0))} from the cache), "
            f"texts {timing.get('text_seconds', 0):.1f} s, total {timing.get('total_seconds', 0):.1f} s."
        )
    return "\n".join(lines).rstrip() + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def to_json(results: dict[str, Any]) -> str:
    """JSON text (NaN becomes null)."""
    return json.dumps(_clean(results), indent=2, ensure_ascii=False)


def plot_recall(results: dict[str, Any], path: str | Path) -> Path:
    """recall@k (hit@k for image → text and zero-shot) against k, one panel per task, saved as PNG."""
    from matplotlib.figure import Figure

    tasks = list(results["tasks"].values())
    fig = Figure(figsize=(4.2 * len(tasks), 3.6), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        curve = task["curve"]
        ks = curve["k"]
        for name in task["methods"]:
            ax.plot(ks, curve[name], marker="o", markersize=3, label=METHOD_NAMES.get(name, name))
        if curve["metric"] == "recall@k" and task["candidates"]:
            ax.plot(ks, [min(k, task["candidates"]) / task["candidates"] for k in ks], "k:", label="random")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k")
        ax.set_ylabel(curve["metric"])
        ax.set_title(task["title"], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{results['dataset']['name']} - {results['model']}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_pages(pages: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """A qualitative page: one row per query, its top results, relevant ones framed in green. Returns the Figure."""
    from matplotlib.figure import Figure
    from PIL import Image

    k = max((len(p["results"]) for p in pages), default=1)
    fig = Figure(figsize=(2.0 * k, 2.3 * len(pages)), layout="constrained")
    axes = fig.subplots(len(pages), k, squeeze=False)
    for row, page in zip(axes, pages, strict=True):
        rank = page.get("rank_of_relevant")
        title = page["query"] if len(page["query"]) <= 90 else page["query"][:87] + "..."
        row[0].set_title(f"{title}  (first relevant at rank {rank})", loc="left", fontsize=8)
        for ax, result in zip(row, page["results"], strict=False):
            image_path, score, relevant = result
            with Image.open(image_path) as img:
                img.thumbnail((160, 160))
                ax.imshow(img.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{score:.3f}", fontsize=7)
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if relevant else "lightgrey")
                spine.set_linewidth(4 if relevant else 1)
        for ax in row[len(page["results"]) :]:
            ax.axis("off")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    return fig


def write_report(
    results: dict[str, Any],
    out_dir: str | Path,
    *,
    stem: str | None = None,
    json_path: str | Path | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.json`` (or ``json_path``) and ``<stem>-recall.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or results["dataset"]["name"]
    written = {"markdown": out_dir / f"{stem}.md", "json": Path(json_path) if json_path else out_dir / f"{stem}.json"}
    written["markdown"].write_text(markdown(results), encoding="utf-8")
    written["json"].parent.mkdir(parents=True, exist_ok=True)
    written["json"].write_text(to_json(results) + "\n", encoding="utf-8")
    if plot:
        written["plot"] = plot_recall(results, out_dir / f"{stem}-recall.png")
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return written
