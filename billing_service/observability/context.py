"""Who and what is being served right now: the context every log line carries.

The entrypoints set these (the gRPC authentication and metrics interceptors, the webhook
sidecar and its workers); ``logging`` reads them. They live here, below both, so the
logs never depend on an entrypoint.
"""

from __future__ import annotations

import contextvars

__all__ = ["current_caller", "current_request_id"]

#: The request being served: set by the gRPC interceptor and the webhook sidecar.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_request_id", default="")

#: The authenticated caller: set by the authentication interceptor; "anonymous" when auth is off.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="anonymous")
