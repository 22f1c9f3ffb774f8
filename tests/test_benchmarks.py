"""The one benchmark command: ``python benchmarks/run.py --quick`` runs every figure and writes the README's table.

A smoke test: it checks that each figure is measured and lands in the table (and in a README between the markers),
never how fast anything is (speed lives in the benchmark's own output, see README "Speed").
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, shared_data

FIGURES = (
    "text query end to end",
    "one query, flat scan, 20,000",
    "batch of 32 queries, flat scan, 100,000",
    "ingest, 8 coco-mini photos",
    "upload -> searchable, 1,000 images",
    "upload -> searchable, 5,000 images",
    "open -> first answer",
    "IVF (default nlist",
)


def test_quick_run_measures_every_figure_and_writes_the_table(tmp_path: Path, tiny_model_dir: Path):
    shared_data("coco-mini")  # photos of the ingest figure
    shared_data("imagenette-val")  # photos of the upload figures
    readme = tmp_path / "README.md"
    readme.write_text("# Speed\n\n<!-- benchmarks/run.py: begin -->\nold\n<!-- benchmarks/run.py: end -->\n\nrest\n")
    out = tmp_path / "results.md"
    command = [
        sys.executable,
        "benchmarks/run.py",
        "--quick",
        "--model",
        str(tiny_model_dir),
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--readme",
        str(readme),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout
    assert table.startswith("Measured ") and "1 round(s)" in table
    assert "`.venv/bin/python benchmarks/run.py --quick`" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(FIGURES) + 2  # plus one query and a batch at the second scan size
    for figure in FIGURES:
        (row,) = [r for r in rows if r.startswith(f"| {figure}")]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"\*\*\d+\.\d\dx\*\*", cells[1]), row
        assert cells[-1] == "to be measured"  # no GPU on these machines
    text = readme.read_text()
    assert "\nold\n" not in text and table in text and text.endswith("\n\nrest\n")
    # The random model's towers and query path choice stay under --work, out of the user's cache.
    assert list((tmp_path / "work" / "cache" / "clip-search").glob("query-path-*.json"))


def test_only_some_figures_into_the_readme_needs_the_rest_saved(tmp_path: Path, tiny_model_dir: Path):
    """``--only`` rewrites the README's table from this run's rows: with no earlier rows of the same plan to keep,
    it would silently drop every other figure, so it is refused and the README left as it was."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmarks/run.py: begin -->\nall figures\n<!-- benchmarks/run.py: end -->\n")
    command = [sys.executable, "benchmarks/run.py", "--quick", "--model", str(tiny_model_dir), "--only", "ivf"]
    command += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.md"), "--readme", str(readme)]
    for extra in ([], ["--resume"]):
        done = subprocess.run(command + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2
        assert "--only with --readme needs --resume and the rows of an earlier run" in done.stderr
    assert "all figures" in readme.read_text()
    assert not (tmp_path / "out.md").exists()
