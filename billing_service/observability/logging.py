"""Structured JSON logs and the PCI redaction filter.

One JSON object per line with ``ts``, ``level``, ``logger``, ``message``, ``request_id``,
``caller``, ``trace_id`` and any ``extra=`` fields. :class:`RedactionFilter` sits on the
root handler, so it sees every record whichever logger emitted it, and masks what must
never reach a log (PCI DSS 3.3/3.4 and our own secrets):

- card numbers, found by the one detector of ``domain.card_data`` (Unicode and separators
  normalised, Luhn, card ranges; the last 4 digits are kept);
- CVC values: ``cvc``/``cvv``/``cvc2``/``cvv2``/``security_code`` as ``key=value`` or JSON;
- processor secret keys: ``sk_live_``, ``sk_test_``, ``rk_live_``, ``rk_test_``, ``whsec_``;
- ``Authorization`` headers (Bearer and Basic) and bare ``Bearer`` tokens;
- client secrets: ``pi_..._secret_...``, ``seti_..._secret_...`` and ``client_secret`` values.

It is applied to the message, its args, every extra field (nested dicts and lists too),
the exception text and the stack text. Redaction is a last line of defence: requests
carrying card data are refused before anything logs them (``domain.card_data``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from billing_service.domain.card_data import mask_card_numbers
from billing_service.observability.context import current_caller, current_request_id

__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "current_request_id",
    "install_exception_hooks",
    "redact",
    "setup_logging",
]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime", "taskName"}
)

_SECRET_KEY = re.compile(r"\b(sk_live|sk_test|rk_live|rk_test)_[A-Za-z0-9]{4,}")
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=]{4,}")
_CLIENT_SECRET_ID = re.compile(r"\b(pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+")
_CVC = re.compile(r"""(?i)(["']?\b(?:cvc2?|cvv2?|security_code)\b["']?\s*[:=]\s*["']?)([0-9]{3,4}|[^\s"',&}]+)""")
_CLIENT_SECRET = re.compile(r"""(?i)(["']?\bclient_secret\b["']?\s*[:=]\s*["']?)([^\s"',&}]+)""")
_AUTHORIZATION = re.compile(r"""(?i)(\bauthorization\b["']?\s*[:=]\s*["']?\s*(?:bearer|basic)\s+)([^\s"',}]+)""")
_BEARER = re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/=-]{8,})")
_MASK = "[REDACTED]"


def redact(text: str) -> str:
    """Returns ``text`` with card data and secrets masked (see the module docstring)."""
    text = mask_card_numbers(text)
    if "_" in text:
        text = _SECRET_KEY.sub(lambda m: f"{m.group(1)}_{_MASK}", text)
        text = _WEBHOOK_SECRET.sub(f"whsec_{_MASK}", text)
        text = _CLIENT_SECRET_ID.sub(lambda m: f"{m.group(1)}_{_MASK}_secret_{_MASK}", text)
        text = _CLIENT_SECRET.sub(lambda m: m.group(1) + _MASK, text)
    lowered = text.lower()
    if "cv" in lowered or "security_code" in lowered:
        text = _CVC.sub(lambda m: m.group(1) + _MASK, text)
    if "bearer" in lowered or "authorization" in lowered:
        text = _AUTHORIZATION.sub(lambda m: m.group(1) + _MASK, text)
        text = _BEARER.sub(lambda m: m.group(1) + _MASK, text)
    return text


_SENSITIVE_KEYS = frozenset({"cvc", "cvc2", "cvv", "cvv2", "security_code", "client_secret", "authorization"})


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth > 5:
        return value
    if isinstance(value, dict):
        return {
            k: (_MASK if isinstance(k, str) and k.lower() in _SENSITIVE_KEYS else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is logged by its text, so redact that text.
    return redact(str(value))


class RedactionFilter(logging.Filter):
    """Masks card data and secrets in a record before any formatter sees it.

    Attach it to a handler (``setup_logging`` puts it on the root handler) so it covers
    records from every logger. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redacts ``record`` in place; always returns True."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what we have rather than nothing
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                setattr(record, key, _MASK if key.lower() in _SENSITIVE_KEYS else _redact_value(value))  # extra fields
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # formatters now use the redacted exc_text
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _no_trace_id() -> str:
    return ""


# Replaced by ``tracing.configure_tracing`` when tracing is on (keeps logging free of OTel).
trace_id_provider: Callable[[], str] = _no_trace_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line: fixed keys first, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Renders ``record`` as a JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Context values come from callers (a request_id, a certificate's CN): redacted too.
            "request_id": redact(current_request_id.get()),
            "caller": redact(current_caller.get()),
            "trace_id": trace_id_provider(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", *, stream: TextIO | None = None, json_format: bool = True) -> logging.Handler:
    """Installs one root handler with the redaction filter (JSON lines by default).

    Replaces handlers a previous call installed, so calling it twice is harmless.

    Returns:
        The installed handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_billing_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactionFilter())
    handler._billing_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


def install_exception_hooks() -> None:
    """Routes what Python itself would print on stderr through the logging handler.

    Uncaught exceptions (main thread and other threads) and ``warnings`` become JSON
    records that pass the redaction filter, so a process started with ``setup_logging``
    writes nothing else on stderr. Call it once per process, from its entry point.
    """
    log = logging.getLogger("billing_service")

    def uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            log.info("interrupted")
            return
        log.critical("uncaught exception, exiting", exc_info=(kind, error, trace))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        error = args.exc_value if args.exc_value is not None else args.exc_type()
        log.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, error, args.exc_traceback))

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    logging.captureWarnings(True)
