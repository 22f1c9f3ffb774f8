"""Logging set-up shared by the CLI and the app (library modules only ever call ``logging.getLogger``)."""

from __future__ import annotations

import logging
import os


def quiet_third_party(level: int = logging.WARNING) -> None:
    """Keep transformers' load-time chatter and progress bars out of a user's terminal unless debugging."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for noisy in ("httpx", "urllib3", "botocore", "boto3", "PIL", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    if level > logging.DEBUG:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
