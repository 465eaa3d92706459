"""JSON log lines, one object per line, for everything the process logs."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from webhook.engine.limits import LOG_FIELD_CHARS, LOG_TRACEBACK_CHARS, clip

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.second, self.stamp = -1, ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self.second:  # formatting the date costs more than the rest of a line
            self.second = second
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clip(record.getMessage(), LOG_FIELD_CHARS),
        }
        line.update(
            (k, clip(v, LOG_FIELD_CHARS) if isinstance(v, str) else v)
            for k, v in vars(record).items()
            if k not in _STANDARD
        )
        if record.exc_info:
            line["exception"] = _tail(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def _tail(traceback: str) -> str:
    """The end of a traceback, where the failing line and the error are."""
    if len(traceback) <= LOG_TRACEBACK_CHARS:
        return traceback
    cut = len(traceback) - LOG_TRACEBACK_CHARS
    return f"({cut:,} characters cut) ..." + traceback[cut:]


def configure(level: str = "info") -> None:
    # No line shows the caller, thread or process: spare every record looking them up.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
