"""The notebooks run top to bottom with the tiny model on small data subsets, and are committed without outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT, shared_data

NOTEBOOKS = ROOT / "notebooks"
KERNEL = "clip-search-test"


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory):
    """A kernelspec that runs this interpreter (the venv's), found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return root


def execute(name: str, kernel_path, monkeypatch, env: dict[str, str]) -> nbformat.NotebookNode:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for key in [k for k in __import__("os").environ if k.startswith(("S3_", "AWS_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_notebooks_are_committed_stripped_and_current():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: strip them"
    check = subprocess.run(
        [sys.executable, "scripts/make_notebooks.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_build_index_notebook_runs(kernel_path, monkeypatch, tmp_path, tiny_model_dir):
    nb = execute(
        "01_build_index.ipynb",
        kernel_path,
        monkeypatch,
        {"CLIP_SEARCH_MODEL": str(tiny_model_dir), "CLIP_SEARCH_NB_DATA_DIR": str(tmp_path / "data")},
    )
    text = outputs_text(nb)
    assert "vectors of dimension" in text and "added" in text
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))


def test_evaluate_notebook_runs(kernel_path, monkeypatch, tmp_path, tiny_model_dir):
    nb = execute(
        "02_evaluate.ipynb",
        kernel_path,
        monkeypatch,
        {
            "CLIP_SEARCH_MODEL": str(tiny_model_dir),
            "CLIP_SEARCH_NB_CAPTIONED": str(shared_data("flickr8k-test")),
            "CLIP_SEARCH_NB_LABELLED": str(shared_data("imagenette-val")),
            "CLIP_SEARCH_NB_LIMIT": "40",
            "CLIP_SEARCH_EVAL_CACHE": str(tmp_path / "cache"),
        },
    )
    text = outputs_text(nb)
    for heading in ("## text → image", "## image → text", "## image → image", "## zero-shot classification"):
        assert heading in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if o.get("data", {}).get("image/png")]
    assert len(images) >= 4  # two recall plots, two result pages
