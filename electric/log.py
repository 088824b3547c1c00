"""Logging set-up (loguru): ``time metadata [level] message``, one line per event.

Components bind their metadata (``logger.bind(origin="postgres_1")``); it is printed as
``key=value`` pairs between the time and the level so operators can grep for one connector or
client. JSON lines (``LOG_FORMAT=json``) carry the same fields for log shippers.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from loguru import logger

TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {extra[_meta]}[{level.name}] {message}"
JSON_FORMAT = "{extra[_json]}\n"


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record["extra"].items() if not k.startswith("_")}


def _patch(record: dict[str, Any]) -> None:
    meta = _metadata(record)
    record["extra"]["_meta"] = "".join(f"{k}={v} " for k, v in sorted(meta.items()))
    line = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        **{k: str(v) for k, v in meta.items()},
    }
    if record["exception"] is not None:
        line["exception"] = "".join(traceback.format_exception(*record["exception"])).rstrip()
    record["extra"]["_json"] = json.dumps(line, sort_keys=True)


def setup(level: str = "info", log_file: str = "", fmt: str = "text",
          rotation: str = "50 MB", retention: str = "10 files") -> None:
    """Replace loguru's default handler with Electric's console (and file) sinks."""
    logger.remove()
    logger.configure(patcher=_patch)
    # A string format gets the traceback appended by loguru; the JSON callable format does
    # not, because the JSON line already carries it.
    line_format = (lambda _record: JSON_FORMAT) if fmt == "json" else TEXT_FORMAT
    common = {"level": level.upper(), "format": line_format, "colorize": False,
              "backtrace": False, "diagnose": False}
    logger.add(sys.stderr, **common)
    if log_file:
        logger.add(log_file, rotation=rotation, retention=retention, **common)
