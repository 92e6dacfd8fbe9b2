"""Who may call what: caller authentication (mTLS and/or bearer token) and permissions.

Identity:
    - mTLS: the client certificate must chain to ``BILLING_TLS_CLIENT_CA`` (checked by the
      TLS handshake, which refuses a missing or foreign certificate); the caller is the
      certificate's subject **common name** (CN). Issue each calling service a certificate
      whose CN is its caller name.
    - Token: metadata ``authorization: Bearer <token>``; the caller is the name the token
      is configured for in ``BILLING_AUTH_TOKENS``.
    Both share one namespace of caller names, and ``BILLING_CALLER_PERMISSIONS`` grants
    permissions to those names whichever way they authenticated.

Modes (``BILLING_AUTH_MODE``):
    - ``none``: no checks; every call runs as ``anonymous`` (refused in live mode).
    - ``token``: a valid bearer token is required.
    - ``mtls``: a verified client certificate is required.
    - ``mtls+token``: both, naming the same caller.
    - ``any``: either is enough; every credential presented must be valid, and two must
      name the same caller. grpcio cannot ask for an *optional* client certificate, so
      when ``BILLING_TLS_CLIENT_CA`` is set the handshake requires one from everybody.

Authorization: :data:`METHOD_PERMISSIONS` maps each RPC to its permission group, as declared
by the RPC's entry in ``billing.py`` / ``subscriptions.py`` / ``event_service.py``;
``admin`` grants everything. Health is open to everybody; reflection (when enabled) to any
authenticated caller. A method missing from the table is refused to everybody (fail
closed; a test checks the table covers every RPC of both services).

Outcomes: no or invalid credentials -> ``UNAUTHENTICATED``; authenticated but not
allowed -> ``PERMISSION_DENIED``; each with one ``google.rpc.ErrorInfo``. On success the
caller's name is put in :data:`~billing_service.observability.context.current_caller`
for the call, so audit events and idempotency keys carry it. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
from billing.v1 import billing_service_pb2, event_service_pb2, subscription_service_pb2

from billing_service.config import CALLER_NAME, ConfigError, Settings
from billing_service.domain.errors import BillingError, PermissionDenied, Unauthenticated
from billing_service.entrypoints.grpc_api import errors
from billing_service.entrypoints.grpc_api.billing import BILLING
from billing_service.entrypoints.grpc_api.event_service import EVENTS
from billing_service.entrypoints.grpc_api.subscriptions import SUBSCRIPTIONS
from billing_service.observability.context import current_caller

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Ctx = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Ctx = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor

ADMIN: Final = "admin"

#: RPC full name -> the permission group a caller needs for it (``admin`` covers all), read
#: from the RPC tables of both servicers, so a new RPC cannot be added without one.
METHOD_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {**BILLING.permissions(), **SUBSCRIPTIONS.permissions(), **EVENTS.permissions()}
)

#: Every permission name ``BILLING_CALLER_PERMISSIONS`` may grant.
PERMISSIONS: Final[frozenset[str]] = frozenset(METHOD_PERMISSIONS.values()) | {ADMIN}

_OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/",)
_REFLECTION_PREFIX: Final = "/grpc.reflection."


def service_methods() -> list[str]:
    """Full names of every RPC of the billing services, from their descriptors."""
    out: list[str] = []
    for module in (billing_service_pb2, subscription_service_pb2, event_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(f"/{service.full_name}/{method.name}" for method in service.methods)
    return out


def _token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class AuthPolicy:
    """The validated authentication and permission settings.

    Attributes:
        mode: One of ``none``, ``token``, ``mtls``, ``mtls+token``, ``any``.
        tokens: sha256(token) -> (caller, token bytes).
        permissions: Caller -> granted permission groups.
    """

    mode: str
    tokens: Mapping[bytes, tuple[str, bytes]] = field(repr=False)
    permissions: Mapping[str, frozenset[str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        """Builds the policy, refusing unknown permission names.

        Raises:
            ConfigError: Naming the variable at fault (never a token).
        """
        tokens: dict[bytes, tuple[str, bytes]] = {}
        for caller, secret in settings.auth_tokens:
            raw = secret.value.encode()
            tokens[_token_digest(raw)] = (caller, raw)
        permissions: dict[str, frozenset[str]] = {}
        for caller, names in settings.caller_permissions:
            unknown = sorted(set(names) - PERMISSIONS)
            if unknown:
                raise ConfigError(
                    f"BILLING_CALLER_PERMISSIONS grants unknown permission {unknown[0]!r} to {caller!r} "
                    f"(known: {', '.join(sorted(PERMISSIONS))})"
                )
            permissions[caller] = frozenset(names)
        return cls(settings.auth_mode, MappingProxyType(tokens), MappingProxyType(permissions))

    def authenticate(self, context: Ctx) -> str:
        """Returns the caller's name.

        Raises:
            Unauthenticated: Credentials are missing, invalid or disagree.
        """
        by_cert = _certificate_caller(context) if self.mode in ("mtls", "mtls+token", "any") else None
        by_token = self._token_caller(context) if self.mode in ("token", "mtls+token", "any") else None
        if self.mode in ("mtls", "mtls+token") and by_cert is None:
            raise Unauthenticated("a client certificate issued by the billing client CA is required")
        if self.mode in ("token", "mtls+token") and by_token is None:
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <token>'")
        if by_cert is not None and by_token is not None and by_cert != by_token:
            raise Unauthenticated("the client certificate and the bearer token name different callers")
        caller = by_cert or by_token
        if caller is None:
            raise Unauthenticated("missing credentials: send a client certificate or 'authorization: Bearer <token>'")
        return caller

    def _token_caller(self, context: Ctx) -> str | None:
        values = [v for k, v in (context.invocation_metadata() or ()) if k.lower() == "authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise Unauthenticated("send exactly one authorization header")
        value = values[0]
        raw = value if isinstance(value, bytes) else value.encode()
        scheme, _, token = raw.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        entry = self.tokens.get(_token_digest(token))
        # The digest lookup finds the candidate; compare_digest confirms it in constant time.
        if entry is None or not hmac.compare_digest(entry[1], token):
            raise Unauthenticated("the bearer token is not valid")
        return entry[0]

    def authorize(self, caller: str, method: str) -> None:
        """Refuses ``caller`` unless it holds ``method``'s permission (or ``admin``).

        Raises:
            PermissionDenied: Naming the permission needed.
        """
        if method.startswith(_REFLECTION_PREFIX):
            return  # any authenticated caller may list the API
        needed = METHOD_PERMISSIONS.get(method)
        granted = self.permissions.get(caller, frozenset())
        if needed is None:
            # Fail closed: an RPC nobody classified is refused, even to admin.
            raise PermissionDenied(f"{method} is not open to any caller", metadata={"method": method})
        if ADMIN not in granted and needed not in granted:
            raise PermissionDenied(
                f"caller {caller!r} lacks permission {needed!r} for {method.rsplit('/', 1)[-1]}",
                metadata={"method": method, "permission": needed, "caller": caller},
            )


def _certificate_caller(context: Ctx) -> str | None:
    """The verified client certificate's subject CN, or None without a client certificate."""
    auth = context.auth_context()
    if list(auth.get("transport_security_type") or ()) != [b"ssl"]:
        return None
    names = list(auth.get("x509_common_name") or ())
    if not names:
        return None
    if len(names) != 1:
        raise Unauthenticated("the client certificate must carry exactly one common name")
    name = bytes(names[0]).decode("utf-8", "replace")
    if not CALLER_NAME.match(name):
        raise Unauthenticated("the client certificate's common name is not a valid caller name")
    return name


class AuthInterceptor(_Interceptor):
    """Authenticates and authorizes every call except health checks.

    The check runs inside the wrapped method handler, where ``auth_context()`` and the
    invocation metadata are available.

    Args:
        policy: Who is who and who may call what.
    """

    def __init__(self, policy: AuthPolicy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wraps the method's handler with the caller checks."""
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler  # unknown method (UNIMPLEMENTED) or health (open)
        return _wrap(handler, lambda context: self._admit(method, context))

    async def _admit(self, method: str, context: Ctx) -> str:
        try:
            caller = self._policy.authenticate(context)
            self._policy.authorize(caller, method)
        except BillingError as exc:
            log.warning(
                "call refused",
                extra={"method": method, "reason": exc.reason, "peer": context.peer()},
            )
            # grpc-stubs lacks abort_with_status on the aio context.
            await cast(Any, context).abort_with_status(errors.to_status(exc))
            raise AssertionError("unreachable") from None  # abort_with_status always raises
        return caller


Admit = Callable[[Ctx], Awaitable[str]]


def _wrap(handler: Handler, admit: Admit) -> Handler:
    """The same handler, running ``admit`` first and as the admitted caller."""
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, admit), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, admit), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, admit), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, admit), **kwargs)


def _unary(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Awaitable[Any]]:
    async def run(request: Any, context: Ctx) -> Any:
        caller = await admit(context)
        token = current_caller.set(caller)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        finally:
            current_caller.reset(token)

    return run


def _streaming(behavior: Callable[..., Any], admit: Admit) -> Callable[..., AsyncIterator[Any]]:
    async def run(request: Any, context: Ctx) -> AsyncIterator[Any]:
        caller = await admit(context)
        # Each RPC runs in its own task, so the value cannot leak into another call.
        current_caller.set(caller)
        result = behavior(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):
            await result  # the behavior writes with context.write()

    return run


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path} ({type(exc).__name__})") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``BILLING_TLS_*`` (None: plaintext).

    With ``BILLING_TLS_CLIENT_CA`` the handshake requires a client certificate signed by
    that CA. File contents are checked here so a bad file fails at start, not at the
    first call; error messages name the variable and path, never a key.

    Raises:
        ConfigError: A file is missing or is not what its variable says.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = _read_pem(settings.tls_cert, "BILLING_TLS_CERT")
    key = _read_pem(settings.tls_key, "BILLING_TLS_KEY")
    client_ca = _read_pem(settings.tls_client_ca, "BILLING_TLS_CLIENT_CA") if settings.tls_client_ca else None
    checks: list[tuple[str, bytes | None, Callable[[bytes], object]]] = [
        ("BILLING_TLS_CERT", cert, x509.load_pem_x509_certificates),
        ("BILLING_TLS_KEY", key, lambda data: serialization.load_pem_private_key(data, password=None)),
        ("BILLING_TLS_CLIENT_CA", client_ca, x509.load_pem_x509_certificates),
    ]
    for variable, data, load in checks:
        if data is None:
            continue
        try:
            load(data)
        except (ValueError, TypeError):
            raise ConfigError(f"{variable} is not a PEM file of the expected kind (or the key is encrypted)") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def build_auth(settings: Settings) -> tuple[Sequence[_Interceptor], grpc.ServerCredentials | None]:
    """The interceptors and server credentials ``settings`` ask for.

    Raises:
        ConfigError: Unknown permission names or unusable TLS files.
    """
    policy = AuthPolicy.from_settings(settings)
    credentials = server_credentials(settings)
    if settings.auth_mode == "none":
        return (), credentials
    return (AuthInterceptor(policy),), credentials
