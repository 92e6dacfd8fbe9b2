"""``HttpxPushSender``: the ``PushSender`` port over httpx.

One POST per attempt with the caller's headers, within one overall timeout (connect and
answer). The answer's status decides; its body is never read. Redirects are not followed
(a 3xx is a failure, ``redirect``); certificates are verified. Before each attempt the
URL's host is resolved and the attempt is refused (``address_refused``) when any address
is link-local (169.254.0.0/16, fe80::/10: where cloud metadata services answer). httpx
resolves the name again to connect, so a name whose answer changes between the two
lookups is not caught by this check; a network policy is the complete defence.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from billing_service.domain.push import DeliveryError, is_forbidden_address
from billing_service.service_layer.push_ports import AttemptResult

__all__ = ["HttpxPushSender"]

log = logging.getLogger(__name__)


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class HttpxPushSender:
    """POSTs deliveries with one pooled ``httpx.AsyncClient``.

    Args:
        timeout_seconds: Per attempt, connect and answer together.
        max_connections: Pool size (the worker's concurrency).
        verify: TLS verification (a CA bundle path for tests; never off in production).
    """

    def __init__(
        self, *, timeout_seconds: float = 10.0, max_connections: int = 16, verify: bool | str | ssl.SSLContext = True
    ) -> None:
        self._timeout = timeout_seconds
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )

    async def _refused(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            return is_forbidden_address(ipaddress.ip_address(host))
        except ValueError:
            pass
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = {info[4][0] for info in infos}
        return any(is_forbidden_address(ipaddress.ip_address(str(a).split("%", 1)[0])) for a in addresses)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        """Sends one delivery; every failure is an ``AttemptResult``, never an exception."""
        try:
            async with asyncio.timeout(self._timeout):
                if await self._refused(url):
                    return AttemptResult(False, 0, DeliveryError.ADDRESS_REFUSED.value)
                async with self._client.stream("POST", url, content=body, headers=dict(headers)) as response:
                    status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult(False, 0, DeliveryError.TIMEOUT.value)
        except (httpx.TransportError, OSError) as exc:
            code = DeliveryError.TLS_FAILED if _tls_failure(exc) else DeliveryError.CONNECTION_FAILED
            return AttemptResult(False, 0, code.value)
        if 200 <= status < 300:
            return AttemptResult(True, status)
        if 300 <= status < 400:
            return AttemptResult(False, status, DeliveryError.REDIRECT.value)
        return AttemptResult(False, status, DeliveryError.HTTP_STATUS.value)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()
