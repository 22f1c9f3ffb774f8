"""The README's commands work as copied, after its own set-up line (which makes .venv without activating it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# `python`, `python3` or `pip` as a command: at the start, after a prompt, `;`, `&&`, `|`, `$(` or an env assignment
BARE = re.compile(r"(?:^|[;&|(]\s*|\$ |^(?:\w+=\S+\s+)+)(python3?|pip3?)\s")
SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python app.py"


def _commands(text: str) -> list[str]:
    lines = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_runs_the_venv_python(doc: Path):
    """A bare `python -m clip_search` after the set-up line fails with "No module named 'PIL'"."""
    commands = _commands(doc.read_text())
    bare = [c for c in commands if c != SETUP and BARE.search(c)]
    assert not bare, f"{doc.name}: use .venv/bin/python (or .venv/bin/pip): {bare}"


def test_readme_inline_commands_run_the_venv_python():
    text = (ROOT / "README.md").read_text()
    spans = re.findall(r"`(python3? [^`]*)`", text)
    assert not [s for s in spans if not s.startswith("python3 -m venv")], spans


def test_the_checker_catches_a_bare_python():
    block = "```bash\nls\npython -m clip_search info   # comment\nFOO=1 python app.py\n.venv/bin/python app.py\n```\n"
    assert [c for c in _commands(block) if BARE.search(c)] == ["python -m clip_search info", "FOO=1 python app.py"]


def test_exactly_two_set_up_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert _commands(section) == [SETUP, "bash scripts/test.sh"]
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"about \d+ minutes", section) and "apt-get" in section  # how long, and what it installs as root
