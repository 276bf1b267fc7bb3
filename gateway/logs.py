"""Logging set-up (docs/operations.md#logs): one line per event, as text for people or JSON
for log pipelines, each carrying the request it was written for (gateway.request_scope).

A message or traceback that spans lines is escaped onto one (``\\n``), so a log shipper never
splits an event and a forged newline in logged client data cannot fake a second line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from gateway.request_scope import current


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id and route (when handling
    a request), exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
            entry["route"] = getattr(record, "route", None)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> [request_id=... route=...]``, always one line."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {_one_line(record.getMessage())}"
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            text += f" request_id={request_id} route={getattr(record, 'route', None) or '-'}"
        if record.exc_info:
            text += " exc=" + _one_line(self.formatException(record.exc_info))
        return text


class RequestFilter(logging.Filter):
    """Stamps ``request_id`` and ``route`` of the request being handled on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            scope = current()
            record.request_id = scope.request_id if scope is not None else None
            record.route = scope.route if scope is not None else None
        return True


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
