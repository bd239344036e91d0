"""Logs for people and for collectors: readable lines on a terminal, one JSON object per line otherwise.

`SEQREC_LOG_FORMAT` chooses: `json` (containers, log collectors: every field parseable), `text` (a short
time stamp and the message), or `auto` (the default): text when stderr is a terminal, else JSON. Text lines
are written through tqdm, so they appear above a progress bar instead of breaking it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

from opentelemetry import trace
from tqdm.auto import tqdm

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
FORMATS = ("auto", "json", "text")
# Libraries whose INFO lines say nothing a seqrec user acts on (connection pools, HTTP clients, exporters).
QUIET_LIBRARIES = ("httpx", "urllib3", "pymilvus", "sentence_transformers", "onnxscript", "onnx_ir", "torch.onnx")


def _trace_ids() -> dict[str, str]:
    """The trace and span of the request being served, as hex (shared/tracing.py); {} outside any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "msg": ..., "trace_id": ..., "span_id": ..., **extra}` per record
    (the ids while a request's span is current)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_trace_ids())
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`12:03:04 message` (warnings and errors say so); the structured fields stay in the JSON format."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        text = f"{stamp} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ProgressSafeHandler(logging.StreamHandler):
    """Writes each line with `tqdm.write`, which clears and redraws any progress bar on the stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def log_format(stream: TextIO | None = None) -> str:
    """`json` or `text` from SEQREC_LOG_FORMAT (ValueError naming the variable when it is not one of FORMATS)."""
    chosen = os.environ.get("SEQREC_LOG_FORMAT", "auto").strip().lower() or "auto"
    if chosen not in FORMATS:
        raise ValueError(f"SEQREC_LOG_FORMAT: expected one of {', '.join(FORMATS)}, got {chosen!r}")
    if chosen == "auto":
        stream = stream or sys.stderr
        return "text" if hasattr(stream, "isatty") and stream.isatty() else "json"
    return chosen


def show_progress(no_progress: bool = False) -> bool:
    """Progress bars only for a person: not when asked not to, and not when stderr is not a terminal (a
    container, a pipe, a log file), where bars would be noise between the JSON lines."""
    return not no_progress and sys.stderr.isatty()


def configure_logging(level: str | None = None) -> None:
    """Logs on stderr in the chosen format at `level` (default: SEQREC_LOG_LEVEL, else LOG_LEVEL, else INFO)."""
    if log_format() == "text":
        handler: logging.Handler = ProgressSafeHandler(sys.stderr)
        handler.setFormatter(TextFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("SEQREC_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO").upper())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
