"""The container's HEALTHCHECK: exit 0 when the app answers on its port, 1 otherwise.

Standard library only, so the slim image needs no curl. The port is the app's own ($GRADIO_SERVER_PORT, 7860
unless set); the address is the loopback, which the app's 0.0.0.0 includes.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 8.0


def main() -> int:
    """Ask the app for its page once, bypassing any proxy set in the environment."""
    url = f"http://127.0.0.1:{os.environ.get('GRADIO_SERVER_PORT') or '7860'}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
