"""Who may call what: mTLS and bearer-token callers, permissions, and caller-scoped idempotency.

The TLS material (a test CA, a server certificate for 127.0.0.1/localhost, client
certificates, and a foreign CA) is generated with ``cryptography`` into a temporary
directory for the session; nothing is committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc, subscription_service_pb2_grpc
from billing.v1 import subscription_service_pb2 as spb
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from billing_service.config import ConfigError, Secret, Settings
from billing_service.entrypoints.grpc_api.auth import (
    METHOD_PERMISSIONS,
    PERMISSIONS,
    AuthPolicy,
    build_auth,
    server_credentials,
    service_methods,
)
from billing_service.entrypoints.grpc_api.server import GrpcServer
from tests.e2e.conftest import Api, start_api, stop_api
from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rich, rid

# -- TLS material ----------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM bytes (and files) of one test PKI."""

    dir: Path
    ca: bytes
    server_cert: bytes
    server_key: bytes
    clients: dict[str, tuple[bytes, bytes]]  # CN -> (key, cert) issued by the trusted CA
    foreign: tuple[bytes, bytes]  # a client "checkout" issued by another CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


def _issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, *, server: bool = False
) -> tuple[bytes, bytes]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("tls")
    ca = _ca("billing test client CA")
    other = _ca("somebody else's CA")
    server_key, server_cert = _issue(ca, "billing", server=True)
    clients = {cn: _issue(ca, cn) for cn in ("checkout", "auditor", "stranger")}
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM)
    (directory / "ca.pem").write_bytes(ca_pem)
    (directory / "server.pem").write_bytes(server_cert)
    (directory / "server.key").write_bytes(server_key)
    (directory / "server.key").chmod(0o600)
    return Pki(directory, ca_pem, server_cert, server_key, clients, _issue(other, "checkout"))


def client_credentials(pki: Pki, cn: str | None) -> grpc.ChannelCredentials:
    if cn is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca)
    key, cert = pki.clients[cn]
    return grpc.ssl_channel_credentials(root_certificates=pki.ca, private_key=key, certificate_chain=cert)


# -- servers ---------------------------------------------------------------------

TOKENS = {name: secrets.token_urlsafe(32) for name in ("checkout", "replayer", "auditor", "stranger", "ops")}
PERMISSIONS_ENV = (
    "checkout=customers:read+customers:write+payments:write;replayer=customers:write;auditor=audit:read;ops=admin"
)


def auth_settings(mode: str, pki: Pki | None = None, **overrides: object) -> Settings:
    env = {
        "BILLING_AUTH_MODE": mode,
        "BILLING_AUTH_TOKENS": ",".join(f"{name}:{token}" for name, token in TOKENS.items()),
        "BILLING_CALLER_PERMISSIONS": PERMISSIONS_ENV,
    }
    if pki is not None:
        env |= {
            "BILLING_TLS_CERT": str(pki.dir / "server.pem"),
            "BILLING_TLS_KEY": str(pki.dir / "server.key"),
            "BILLING_TLS_CLIENT_CA": str(pki.dir / "ca.pem"),
        }
    return dataclasses.replace(Settings.from_env(env), **overrides)  # type: ignore[arg-type]


def bearer(caller: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[caller]}"),)


@pytest.fixture(scope="module")
async def token_api(mongo_uri: str) -> AsyncIterator[Api]:
    interceptors, credentials = build_auth(auth_settings("token"))
    assert credentials is None
    running = await start_api(mongo_uri, interceptors=interceptors)
    try:
        yield running
    finally:
        await stop_api(running)


@pytest.fixture(scope="module")
async def mtls_api(mongo_uri: str, pki: Pki) -> AsyncIterator[Api]:
    interceptors, credentials = build_auth(auth_settings("mtls", pki))
    assert credentials is not None
    running = await start_api(
        mongo_uri, interceptors=interceptors, server_credentials=credentials,
        channel_credentials=client_credentials(pki, "checkout"),
    )  # fmt: skip
    try:
        yield running
    finally:
        await stop_api(running)


# -- the permission table ---------------------------------------------------------


def test_permission_table_covers_every_rpc_of_both_services() -> None:
    methods = service_methods()
    assert len(methods) == len(set(methods)) > 20
    assert set(METHOD_PERMISSIONS) == set(methods), "every RPC needs exactly one permission entry in auth.py"
    assert set(METHOD_PERMISSIONS.values()) | {"admin"} == PERMISSIONS
    assert {
        "customers:read", "customers:write", "payments:read", "payments:write", "refunds:write",
        "subscriptions:read", "subscriptions:write", "plans:write", "audit:read", "events:read", "events:manage",
        "admin",
    } == PERMISSIONS  # fmt: skip


async def test_every_rpc_is_guarded_by_its_permission(token_api: Api) -> None:
    for method in service_methods():
        call = token_api.channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"", metadata=bearer("stranger"))
        info = rich(err.value)
        assert (info.code, info.metadata["permission"]) == (
            grpc.StatusCode.PERMISSION_DENIED, METHOD_PERMISSIONS[method],
        ), method  # fmt: skip


# -- bearer tokens ------------------------------------------------------------------


async def test_no_credentials_is_unauthenticated(token_api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await token_api.billing.ListCustomers(pb.ListCustomersRequest())
    info = rich(err.value)
    assert (info.code, info.reason, info.domain, info.error_infos) == (
        grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "billing.v1", 1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {secrets.token_urlsafe(32)}",
        f"Bearer {TOKENS['checkout'][:-1]}",
        f"Bearer {TOKENS['checkout']}x",
        f"Basic {TOKENS['checkout']}",
        "Bearer ",
        TOKENS["checkout"],
    ],
    ids=["unknown", "truncated", "extended", "basic-scheme", "empty", "no-scheme"],
)
async def test_wrong_or_malformed_token_is_unauthenticated(token_api: Api, header: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await token_api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=(("authorization", header),))
    assert rich(err.value).code == grpc.StatusCode.UNAUTHENTICATED


async def test_two_authorization_headers_are_refused(token_api: Api) -> None:
    metadata = (("authorization", f"Bearer {TOKENS['checkout']}"), ("authorization", f"Bearer {TOKENS['ops']}"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await token_api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_valid_token_without_permission_is_permission_denied(token_api: Api) -> None:
    db = token_api.runtime.store.database
    before = await db["customers"].count_documents({})
    for caller in ("stranger", "auditor"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await token_api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), metadata=bearer(caller))
        info = rich(err.value)
        assert (info.code, info.reason, info.error_infos) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", 1)
        assert info.metadata["permission"] == "customers:write"
        assert info.metadata["method"] == "/billing.v1.BillingService/CreateCustomer"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await token_api.subs.ListPlans(spb.ListPlansRequest(), metadata=bearer("checkout"))
    assert rich(err.value).metadata["permission"] == "subscriptions:read"
    assert await db["customers"].count_documents({}) == before


async def test_allowed_call_runs_as_the_caller_in_audit_and_idempotency(token_api: Api) -> None:
    key = rid()
    created = await token_api.billing.CreateCustomer(
        pb.CreateCustomerRequest(request_id=key, email="ada@example.com"), metadata=bearer("checkout")
    )
    trail = await token_api.billing.ListAuditEvents(
        pb.ListAuditEventsRequest(resource_id=created.customer.id), metadata=bearer("auditor")
    )
    assert trail.audit_events
    assert {e.caller for e in trail.audit_events} == {"checkout"}
    records = await token_api.runtime.store.database["idempotency"].find({"request_id": key}).to_list()
    assert [r["caller"] for r in records] == ["checkout"]
    # admin may call anything
    got = await token_api.billing.GetCustomer(
        pb.GetCustomerRequest(customer_id=created.customer.id), metadata=bearer("ops")
    )
    assert got.customer.id == created.customer.id


async def test_another_caller_reusing_a_request_id_gets_its_own_execution(token_api: Api) -> None:
    key = rid()
    request = pb.CreateCustomerRequest(request_id=key, email="a@example.com", name="A")
    first = await token_api.billing.CreateCustomer(request, metadata=bearer("checkout"))
    # Same request_id and body from caller B: executed for B, not A's stored response.
    theirs = await token_api.billing.CreateCustomer(request, metadata=bearer("replayer"))
    assert theirs.customer.id != first.customer.id
    # Different body from B with A's key: not IDEMPOTENCY_KEY_REUSED either, B's own key space...
    other = await token_api.billing.CreateCustomer(
        pb.CreateCustomerRequest(request_id=key, email="b@example.com", name="B"), metadata=bearer("ops")
    )
    assert other.customer.id not in (first.customer.id, theirs.customer.id)
    assert other.customer.email == "b@example.com"
    # ...while each caller's own retry still replays its own answer.
    again = await token_api.billing.CreateCustomer(request, metadata=bearer("checkout"))
    assert again.customer.id == first.customer.id
    again_b = await token_api.billing.CreateCustomer(request, metadata=bearer("replayer"))
    assert again_b.customer.id == theirs.customer.id
    callers = await token_api.runtime.store.database["idempotency"].distinct("caller", {"request_id": key})
    assert sorted(callers) == ["checkout", "ops", "replayer"]
    for customer_id, caller in ((first.customer.id, "checkout"), (theirs.customer.id, "replayer")):
        trail = await token_api.billing.ListAuditEvents(
            pb.ListAuditEventsRequest(resource_id=customer_id), metadata=bearer("auditor")
        )
        assert {e.caller for e in trail.audit_events} == {caller}


async def test_health_is_open_and_reflection_needs_a_caller(token_api: Api) -> None:
    health = health_pb2_grpc.HealthStub(token_api.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="billing.v1.BillingService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def list_services(metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(token_api.channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                         metadata=metadata)  # fmt: skip
        names: list[str] = []
        async for response in call:
            names.extend(s.name for s in response.list_services_response.service)
        return names

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_services()
    assert rich(err.value).code == grpc.StatusCode.UNAUTHENTICATED
    # Any authenticated caller may list the API, even one without permissions.
    assert "billing.v1.BillingService" in await list_services(bearer("stranger"))


async def test_reflection_can_be_switched_off(token_api: Api) -> None:
    interceptors, _ = build_auth(auth_settings("token"))
    server = GrpcServer(
        token_api.runtime.deps, token_api.runtime.idempotency, address="127.0.0.1:0",
        reflection_enabled=False, interceptors=interceptors,
    )  # fmt: skip
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=bearer("ops")
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_tokens_never_reach_the_logs(token_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = secrets.token_urlsafe(32)
    for header in (f"Bearer {wrong}", f"Bearer {TOKENS['stranger']}"):
        with pytest.raises(grpc.aio.AioRpcError):
            await token_api.billing.CreateCustomer(
                pb.CreateCustomerRequest(request_id=rid()), metadata=(("authorization", header),)
            )
    await token_api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=bearer("checkout"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "call refused" in text
    assert wrong not in text
    assert not any(token in text for token in TOKENS.values())


# -- mutual TLS -------------------------------------------------------------------


async def test_client_certificate_from_the_ca_is_accepted_and_its_cn_is_the_caller(mtls_api: Api, pki: Pki) -> None:
    created = await mtls_api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))
    async with grpc.aio.secure_channel(mtls_api.target, client_credentials(pki, "auditor")) as channel:
        trail = await billing_service_pb2_grpc.BillingServiceStub(channel).ListAuditEvents(
            pb.ListAuditEventsRequest(resource_id=created.customer.id)
        )
    assert {e.caller for e in trail.audit_events} == {"checkout"}


async def test_certificate_without_permission_is_denied(mtls_api: Api, pki: Pki) -> None:
    async with grpc.aio.secure_channel(mtls_api.target, client_credentials(pki, "stranger")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing_service_pb2_grpc.BillingServiceStub(channel).ListCustomers(pb.ListCustomersRequest())
    info = rich(err.value)
    assert (info.code, info.metadata["caller"]) == (grpc.StatusCode.PERMISSION_DENIED, "stranger")


async def test_client_without_certificate_is_refused_at_the_handshake(mtls_api: Api, pki: Pki) -> None:
    async with grpc.aio.secure_channel(mtls_api.target, client_credentials(pki, None)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing_service_pb2_grpc.BillingServiceStub(channel).ListCustomers(
                pb.ListCustomersRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(mtls_api: Api, pki: Pki) -> None:
    key, cert = pki.foreign  # same CN "checkout", wrong issuer
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca, private_key=key, certificate_chain=cert)
    async with grpc.aio.secure_channel(mtls_api.target, creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing_service_pb2_grpc.BillingServiceStub(channel).ListCustomers(
                pb.ListCustomersRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_cannot_reach_the_tls_port(mtls_api: Api) -> None:
    async with grpc.aio.insecure_channel(mtls_api.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await subscription_service_pb2_grpc.SubscriptionServiceStub(channel).ListPlans(
                spb.ListPlansRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_plus_token_needs_both_naming_the_same_caller(mongo_uri: str, pki: Pki) -> None:
    interceptors, credentials = build_auth(auth_settings("mtls+token", pki))
    api = await start_api(
        mongo_uri, interceptors=interceptors, server_credentials=credentials,
        channel_credentials=client_credentials(pki, "checkout"),
    )  # fmt: skip
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.ListCustomers(pb.ListCustomersRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=bearer("ops"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # cert says checkout, token says ops
        await api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=bearer("checkout"))
    finally:
        await stop_api(api)


async def test_any_mode_accepts_either_credential_but_never_a_bad_one(mongo_uri: str, pki: Pki) -> None:
    # Without a client CA: tokens over TLS.
    settings = auth_settings("any", pki, tls_client_ca=None)
    interceptors, credentials = build_auth(settings)
    api = await start_api(
        mongo_uri, interceptors=interceptors, server_credentials=credentials,
        channel_credentials=grpc.ssl_channel_credentials(root_certificates=pki.ca),
    )  # fmt: skip
    try:
        await api.billing.ListCustomers(pb.ListCustomersRequest(), metadata=bearer("checkout"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.ListCustomers(pb.ListCustomersRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await stop_api(api)
    # With a client CA: the certificate alone is enough; a wrong token next to it is not ignored.
    interceptors, credentials = build_auth(auth_settings("any", pki))
    api = await start_api(
        mongo_uri, interceptors=interceptors, server_credentials=credentials,
        channel_credentials=client_credentials(pki, "checkout"),
    )  # fmt: skip
    try:
        await api.billing.ListCustomers(pb.ListCustomersRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.ListCustomers(
                pb.ListCustomersRequest(), metadata=(("authorization", f"Bearer {secrets.token_urlsafe(32)}"),)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await stop_api(api)


# -- settings ---------------------------------------------------------------------


def test_settings_parse_tokens_and_permissions_without_showing_secrets() -> None:
    settings = auth_settings("token")
    assert dict(settings.caller_permissions)["checkout"] == ("customers:read", "customers:write", "payments:write")
    assert [caller for caller, _ in settings.auth_tokens] == list(TOKENS)
    assert all(isinstance(token, Secret) for _, token in settings.auth_tokens)
    assert not any(token in repr(settings) for token in TOKENS.values())
    policy = AuthPolicy.from_settings(settings)
    assert policy.permissions["ops"] == frozenset({"admin"})
    assert not any(token in repr(policy) for token in TOKENS.values())


def test_a_caller_may_hold_two_tokens_for_rotation() -> None:
    old, new = secrets.token_hex(16), secrets.token_hex(16)
    settings = Settings.from_env({"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": f"svc:{old}, svc:{new}"})
    assert [c for c, _ in settings.auth_tokens] == ["svc", "svc"]


SHARED_TOKEN = secrets.token_hex(20)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BILLING_AUTH_MODE": "open"}, "BILLING_AUTH_MODE"),
        ({"BILLING_AUTH_MODE": "token"}, "BILLING_AUTH_TOKENS"),
        ({"BILLING_AUTH_MODE": "mtls"}, "BILLING_TLS_CLIENT_CA"),
        ({"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": "svc:short"}, "at least 32"),
        ({"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": "x" * 40}, "caller:token"),
        ({"BILLING_AUTH_TOKENS": f"a:{SHARED_TOKEN},b:{SHARED_TOKEN}"}, "another entry"),
        ({"BILLING_CALLER_PERMISSIONS": "svc"}, "caller=permission"),
        ({"BILLING_CALLER_PERMISSIONS": "svc=admin;svc=payments:read"}, "twice"),
        ({"BILLING_CALLER_PERMISSIONS": "svc=Payments Read"}, "malformed"),
        ({"BILLING_TLS_CERT": "/x.pem"}, "BILLING_TLS_KEY"),
    ],
)
def test_bad_auth_settings_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert needle in str(err.value)
    assert SHARED_TOKEN not in str(err.value)


def test_live_mode_refuses_to_start_without_caller_authentication() -> None:
    live = {
        "STRIPE_SECRET_KEY": "sk_live_" + "x" * 24, "STRIPE_WEBHOOK_SECRET": "whsec_x", "BILLING_ENABLE_FAKE": "false",
        "BILLING_PROCESSOR": "stripe", "MONGODB_URI": "mongodb://db.internal:27017",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="requires caller authentication"):
        Settings.from_env(live)
    token_env = live | {"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": f"svc:{SHARED_TOKEN}"}
    with pytest.raises(ConfigError, match="only over TLS"):
        Settings.from_env(token_env)
    tls = {"BILLING_TLS_CERT": "/c.pem", "BILLING_TLS_KEY": "/k.pem"}
    events_key = {"BILLING_EVENTS_SECRET_KEY": "a2V5LWZvci1wdXNoLWVuZHBvaW50LXNlY3JldHMtMzJi"}  # live push needs it
    assert Settings.from_env(token_env | tls | events_key).live


def test_unknown_permission_name_is_refused() -> None:
    settings = Settings.from_env({"BILLING_CALLER_PERMISSIONS": "svc=payments:delete"})
    with pytest.raises(ConfigError, match="unknown permission 'payments:delete'"):
        build_auth(settings)


def test_tls_files_are_checked_without_echoing_them(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    swapped = auth_settings("mtls", pki, tls_key=tmp_path / "bad.key")
    with pytest.raises(ConfigError) as err:
        server_credentials(swapped)
    assert "BILLING_TLS_KEY" in str(err.value) and "c2VjcmV0" not in str(err.value)
    missing = auth_settings("mtls", pki, tls_client_ca=tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match="BILLING_TLS_CLIENT_CA: cannot read"):
        server_credentials(missing)


# -- the real command ----------------------------------------------------------------


async def test_serve_command_wires_mtls_and_tokens_from_the_environment(mongo_uri: str, pki: Pki) -> None:
    env = {
        "BILLING_AUTH_MODE": "mtls+token",
        "BILLING_AUTH_TOKENS": f"checkout:{TOKENS['checkout']}",
        "BILLING_CALLER_PERMISSIONS": "checkout=customers:read+customers:write",
        "BILLING_TLS_CERT": str(pki.dir / "server.pem"),
        "BILLING_TLS_KEY": str(pki.dir / "server.key"),
        "BILLING_TLS_CLIENT_CA": str(pki.dir / "ca.pem"),
    }
    served = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
    try:
        async with grpc.aio.secure_channel(served.target, client_credentials(pki, "checkout")) as channel:
            stub = billing_service_pb2_grpc.BillingServiceStub(channel)
            created = await stub.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), metadata=bearer("checkout"))
            assert created.customer.id
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListCustomers(pb.ListCustomersRequest())  # the certificate alone is not enough
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc.aio.insecure_channel(served.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await billing_service_pb2_grpc.BillingServiceStub(channel).ListCustomers(
                    pb.ListCustomersRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert await asyncio.to_thread(served.stop) == 0
    output = served.proc.stdout.read() if served.proc.stdout else ""
    assert TOKENS["checkout"] not in output
    assert "PRIVATE KEY" not in output


def test_serve_command_refuses_bad_auth_configuration(pki: Pki) -> None:
    base = {**os.environ, "BILLING_GRPC_ADDRESS": "127.0.0.1:0", "MONGODB_URI": "mongodb://127.0.0.1:1"}
    cases = [
        ({"BILLING_CALLER_PERMISSIONS": "svc=payments:delete"}, "unknown permission"),
        (
            {"BILLING_AUTH_MODE": "mtls", "BILLING_TLS_CERT": str(pki.dir / "server.pem"),
             "BILLING_TLS_KEY": str(pki.dir / "ca.pem"), "BILLING_TLS_CLIENT_CA": str(pki.dir / "ca.pem")},
            "BILLING_TLS_KEY",
        ),
        ({"BILLING_AUTH_MODE": "token", "BILLING_AUTH_TOKENS": f"svc:{'s' * 12}"}, "at least 32"),
    ]  # fmt: skip
    for env, needle in cases:
        done = subprocess.run(
            [sys.executable, "-m", "billing_service", "serve"],
            env=base | env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "configuration error" in done.stderr and needle in done.stderr
        assert "s" * 12 not in done.stderr
