"""An engine in its own process, driven over stdin/stdout with one JSON command a line (tests of live replicas).

``python -m tests.replica_process`` reads settings from the environment (CLIP_SEARCH_CONFIG, CLIP_SEARCH_MODEL,
CLIP_SEARCH_DATA_DIR, the S3 variables) exactly as the app does, and answers each command with one JSON line.
Started with subprocess (a fresh interpreter, never a fork of a process that used lancedb) by :class:`Replica`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clip_search.config import load_config
from clip_search.engine import SearchEngine
from tests.conftest import ROOT


class Replica:
    """The driving side: an engine process started with subprocess, answering JSON commands (see :func:`main`)."""

    REFRESH_S = 1.0  # the collection's refresh_s unless one is given

    def __init__(self, env: dict[str, str], refresh_s: float = REFRESH_S) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close(); the log, shown if it dies
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.replica_process", str(refresh_s)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.read() == {"ready": True}

    def send(self, **command: object) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise AssertionError(f"the replica process died; its log ends:\n{self._log.read()[-4000:]}")
        return json.loads(line)

    def ask(self, **command: object) -> dict:
        self.send(**command)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def main() -> None:
    settings = load_config()
    settings.upload.near_duplicate_threshold = 0.9999  # the tiny model's vectors are close to one another
    settings.moderation.enabled = False  # the tiny model's probabilities mean nothing
    settings.collection.refresh_s = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    engine = SearchEngine(settings)
    engine.encoder.warm_up()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "upload" in command:
            results = [engine.upload(Path(p).read_bytes(), filename=Path(p).name) for p in command["upload"]]
            answer = {"ids": [r.id for r in results], "status": [r.status for r in results]}
        elif "find" in command:
            hits = engine.search_image(Path(command["find"]).read_bytes(), k=1, key=command.get("key"))
            answer = {"id": hits[0].id if hits else None, "score": hits[0].score if hits else None}
        elif "delete" in command:
            answer = {"deleted": engine.delete(command["delete"]).id}
        elif "wait_count" in command:
            viewer = engine.viewer(command.get("key"))
            deadline = time.monotonic() + command["timeout"]
            while engine.count(viewer) != command["wait_count"] and time.monotonic() < deadline:
                time.sleep(0.05)
            answer = {"count": engine.count(viewer), "stats": engine.stats()["images"]}
        else:
            break
        print(json.dumps(answer), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
