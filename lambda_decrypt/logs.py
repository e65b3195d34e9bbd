"""structlog JSON logging, configured once per process for both packages."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

_configured = False
# Longest value of a field that comes from outside (an event) in a log line.
FIELD_LIMIT = 128
# Third-party loggers that may describe key or data-key handling at DEBUG level.
QUIET_LIBRARIES = ("botocore", "boto3", "urllib3")
Stream = Literal["stdout", "stderr"]


class _StreamLogger:
    """Writes each rendered line to sys.stdout/sys.stderr as they are *now*, not at configure
    time, so a host that swaps the streams (test capture, a daemon) never gets a closed file."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        # One write per line (print writes the line and its newline apart): lines logged from
        # several threads (the fleet's aggregation checks partitions on a pool) never interleave.
        stream = getattr(sys, self._stream)
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = error = critical = exception = msg


def configure_logging(
    level: str = "INFO", *, stream: Stream = "stdout", force: bool = False
) -> None:
    """One JSON object per line, on stdout by default (what Lambda and journald collect)."""
    global _configured
    if _configured and not force:
        return
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _StreamLogger(stream),
        # Not cached: a later reconfiguration (CLI flag, test) must reach every logger.
        cache_logger_on_first_use=False,
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # The SDK logs a traceback at ERROR for every bad message; each is translated and logged
    # once by the decryptor with its stable code instead.
    logging.getLogger("aws_encryption_sdk").setLevel(logging.CRITICAL)
    _configured = True


def get_logger(name: str) -> Any:
    """A lazily bound structlog logger (configuration may happen after import)."""
    return structlog.get_logger(name)


def clip(value: str, limit: int = FIELD_LIMIT) -> str:
    """`value` as a log field: at most `limit` characters, saying so when it was cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[truncated, {len(value)} chars]"
