"""Log lines for people (journald adds the time) or JSON lines for machines."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = _fields(record.getMessage())
        if fields:
            data["fields"] = fields
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """`<N>message` lines: journald stamps the time and the unit itself and reads `<N>` as
    the syslog priority (sd-daemon(3)), so `journalctl -p warning` finds mailcare's
    warnings. Every line of a traceback gets the prefix, or journald files it as info."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next(p for level, p in _PRIORITIES if record.levelno >= level)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


# (lowest level, syslog priority), most severe first: 2 crit, 3 err, 4 warning, 6 info, 7 debug
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.NOTSET, 7),
)


def _fields(message: str) -> dict[str, str]:
    """`case=1042 action=ack to=x` → {"case": "1042", …}, so JSON users can filter.

    A word without `key=` continues the value before it, so a free-text reason (always
    last) stays whole: `reason=no agent available` → {"reason": "no agent available"}."""
    out: dict[str, str] = {}
    last = ""
    for part in message.split(" "):
        key, sep, value = part.partition("=")
        if sep and key.isidentifier():
            out[key] = value
            last = key
        elif last:
            out[last] += " " + part
    return out


def setup_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("imapclient", "aiosmtplib", "mail.log", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
