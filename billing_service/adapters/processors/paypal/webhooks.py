"""Self-verification of PayPal webhook deliveries (transmission signatures) and their envelope.

PayPal signs ``<transmission id>|<transmission time>|<webhook id>|<CRC32 of the raw body>``
with SHA256withRSA; the signing certificate is named by ``PAYPAL-CERT-URL``. We accept it
only if:

* the URL is ``https`` on one of PayPal's API hosts (never a host the sender picks);
* the certificate chains to a trusted root (the CA bundle; a test CA only when a test
  passes its own roots) and is valid for PayPal's message-verification host name;
* the signature over the message verifies with the certificate's RSA key.

Verified certificates are cached per URL until they expire, so a burst of deliveries
costs one fetch. The webhook id comes from settings (``PAYPAL_WEBHOOK_ID``), so a
delivery signed for another merchant's webhook fails.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import warnings
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from billing_service.domain.common import Processor
from billing_service.domain.processor_events import BadEvent, SignatureError, VerifiedEvent, load_json_object

CERT_HOSTS = frozenset({"api.paypal.com", "api.sandbox.paypal.com", "api-m.paypal.com", "api-m.sandbox.paypal.com"})
# The host names PayPal's signing certificates are issued for, per environment.
CERT_SUBJECTS = {
    "live": ("messageverificationcerts.paypal.com",),
    "sandbox": ("messageverificationcerts.sandbox.paypal.com",),
}
ALGORITHM = "SHA256withRSA"
MAX_CERT_BYTES = 64 * 1024
_CACHE_SIZE = 16

CertFetcher = Callable[[str], Awaitable[bytes]]


async def fetch_certificate(url: str) -> bytes:
    """Downloads a certificate chain over verified TLS, without redirects, size-capped."""
    async with (
        httpx.AsyncClient(timeout=10.0, follow_redirects=False, verify=True) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            raise SignatureError(f"certificate fetch answered {response.status_code}")
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_CERT_BYTES:
                raise SignatureError("certificate too large")
        return bytes(data)


def load_trust_roots(path: Path | None = None) -> list[x509.Certificate]:
    """Loads the trusted roots: ``path`` (PEM) or, by default, certifi's CA bundle."""
    if path is None:
        import certifi

        path = Path(certifi.where())
    with warnings.catch_warnings():
        # A few long-trusted roots have non-positive serial numbers; cryptography warns.
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(path.read_bytes())


def check_cert_url(url: str) -> None:
    """Raises ``SignatureError`` unless ``url`` is https on one of PayPal's API hosts."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SignatureError("bad certificate URL") from None
    if (
        parts.scheme != "https"
        or parts.hostname not in CERT_HOSTS
        or parts.username is not None
        or parts.password is not None
        or port not in (None, 443)
    ):
        raise SignatureError("certificate URL is not a PayPal https URL")


@dataclass(frozen=True)
class _CachedKey:
    key: rsa.RSAPublicKey
    not_after: datetime


class PayPalWebhookVerifier:
    """Checks PayPal transmission signatures without calling PayPal's verify API.

    Args:
        webhook_id: Our webhook's id at PayPal (``PAYPAL_WEBHOOK_ID``).
        environment: ``live`` or ``sandbox``; picks the certificate host name accepted.
        trust_roots: Root certificates a signing chain must end in (default: certifi).
        fetch: Downloads a certificate URL (default: verified-TLS httpx). Tests inject
            one that serves a certificate issued by their own CA.
    """

    def __init__(
        self,
        webhook_id: str,
        *,
        environment: str = "live",
        trust_roots: Sequence[x509.Certificate] | None = None,
        fetch: CertFetcher | None = None,
    ) -> None:
        if environment not in CERT_SUBJECTS:
            raise ValueError("PayPal environment must be live or sandbox")
        self._webhook_id = webhook_id
        self._subjects = CERT_SUBJECTS[environment]
        roots = list(trust_roots) if trust_roots is not None else load_trust_roots()
        self._store = Store(roots)
        self._fetch = fetch or fetch_certificate
        self._cache: dict[str, _CachedKey] = {}
        self._lock = asyncio.Lock()

    name = Processor.PAYPAL

    def __repr__(self) -> str:
        return f"PayPalWebhookVerifier(subjects={self._subjects!r}, webhook_id_set={bool(self._webhook_id)})"

    @property
    def verifies_webhooks(self) -> bool:
        """True once our webhook id is known."""
        return bool(self._webhook_id)

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Checks the transmission signature (``verify``), then reads the envelope."""
        await self.verify(body, headers)
        return read_envelope(body)

    async def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raises ``SignatureError`` unless the delivery is signed by PayPal for our webhook."""
        transmission_id = headers.get("paypal-transmission-id", "")
        transmission_time = headers.get("paypal-transmission-time", "")
        signature = headers.get("paypal-transmission-sig", "")
        cert_url = headers.get("paypal-cert-url", "")
        algorithm = headers.get("paypal-auth-algo", "")
        if not (self._webhook_id and transmission_id and transmission_time and signature and cert_url):
            raise SignatureError("missing PayPal transmission headers or webhook id")
        if algorithm != ALGORITHM:
            raise SignatureError("unsupported signature algorithm")
        check_cert_url(cert_url)
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature is not base64") from None
        key = await self._key(cert_url)
        message = f"{transmission_id}|{transmission_time}|{self._webhook_id}|{zlib.crc32(body)}".encode()
        try:
            key.verify(raw_signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise SignatureError("signature does not match") from None

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        now = datetime.now(UTC)
        cached = self._cache.get(url)
        if cached is not None and cached.not_after > now:
            return cached.key
        async with self._lock:  # one fetch per URL under a burst
            cached = self._cache.get(url)
            if cached is not None and cached.not_after > now:
                return cached.key
            try:
                pem = await self._fetch(url)
            except SignatureError:
                raise
            except Exception as exc:
                raise SignatureError(f"certificate fetch failed: {type(exc).__name__}") from None
            entry = self._verify_chain(pem, now)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[url] = entry
            return entry.key

    def _verify_chain(self, pem: bytes, now: datetime) -> _CachedKey:
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise SignatureError("certificate is not PEM") from None
        leaf, intermediates = chain[0], chain[1:]
        for subject in self._subjects:
            verifier = PolicyBuilder().store(self._store).time(now).build_server_verifier(x509.DNSName(subject))
            try:
                verifier.verify(leaf, intermediates)
            except VerificationError:
                continue
            key = leaf.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureError("certificate key is not RSA")
            return _CachedKey(key, leaf.not_valid_after_utc)
        raise SignatureError("certificate does not chain to a trusted root for PayPal")


def read_envelope(body: bytes) -> VerifiedEvent:
    """Reads a verified PayPal event's id, type and resource.

    Raises:
        BadEvent: Not a JSON object with string ``id``/``event_type`` and a ``resource``.
    """
    payload = load_json_object(body)
    event_id, event_type = payload.get("id"), payload.get("event_type")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type):
        raise BadEvent("event without id or event_type")
    if not isinstance(payload.get("resource"), dict):
        raise BadEvent("event without resource")
    return VerifiedEvent(event_id=event_id, type=event_type, payload=payload)
