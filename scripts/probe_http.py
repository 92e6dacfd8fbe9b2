"""The webhook half of ``scripts/probe.py``: hostile posts to the sidecar, and the tally type.

Signed bodies that are deep, unparseable or not events (Stripe, signed with the secret the
stack was started with; the same bodies unsigned at the PayPal endpoint), forged and stale
signatures, wrong sizes and types, and raw bytes that are not HTTP. A post is refused
cleanly with a 4xx; a 2xx is wrongly accepted, a 5xx is counted as an HTTP 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

PANS = ["4242424242424242", "5555555555554444", "378282246310005", "6011111111111117", "2223003122003222"]


@dataclass
class Tally:
    """What happened to one kind of probe."""

    tried: int = 0
    refused_cleanly: int = 0
    wrongly_accepted: int = 0
    accepted: int = 0
    wrongly_refused: int = 0
    internal: int = 0
    unknown: int = 0
    other: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def _sign(body: bytes, secret: str, t: int | None = None) -> dict[str, str]:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def _event(event_id: str) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_probe", "object": "payment_intent"}}}  # fmt: skip


async def probe_webhooks(url: str, secret: str, tally: Tally, hostile_ids: list[str]) -> None:
    deep = 20_000

    def eid() -> str:
        hostile_ids.append(f"evt_probe_{uuid.uuid4().hex[:16]}")
        return hostile_ids[-1]

    base = json.dumps(_event("EVT")).encode()
    bodies = {
        "deep arrays": b"[" * deep + b"]" * deep, "deep objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "unclosed": b"[" * deep * 2, "deep inside event": base[:-1] + b',"x":' + b"[" * deep + b"]" * deep + b"}",
        "200 levels inside event": base[:-1] + b',"x":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}",
        "empty": b"", "null": b"null", "array": b"[]", "string": b'"x"', "truncated": base[: len(base) // 2],
        "not utf-8": b'{"id": "\xff\xfe"}', "utf-16": base.decode().encode("utf-16"), "bom": b"\xef\xbb\xbf" + base,
        "huge int": base[:-1] + b',"n":' + b"9" * 5000 + b"}", "NaN": base[:-1] + b',"n":NaN}',
        "lone surrogate id": base.replace(b"EVT", b"evt_\\ud800"), "NUL in id": base.replace(b"EVT", b"evt\\u0000x"),
        "newline in id": base.replace(b"EVT", b"evt\\nx"), "numeric id": base.replace(b'"EVT"', b"12345"),
        "id too long": base.replace(b"EVT", b"evt_" + b"a" * 400), "no type": base.replace(b'"type"', b'"typ"'),
        "no data.object": json.dumps({"id": "EVT", "object": "event", "type": "x", "data": {}}).encode(),
    }  # fmt: skip
    posts: list[tuple[str, str, bytes, dict[str, str]]] = []
    for name, template in bodies.items():
        body = template.replace(b"EVT", eid().encode())
        posts.append((f"signed {name}", "stripe", body, _sign(body, secret)))
        posts.append((f"paypal {name}", "paypal", body, {"Content-Type": "application/json"}))
    good = json.dumps(_event(eid())).encode()
    posts += [
        ("forged signature", "stripe", good, _sign(good, "whsec_wrong_secret_0000")),
        ("stale signature", "stripe", good, _sign(good, secret, int(time.time()) - 3600)),
        ("future signature", "stripe", good, _sign(good, secret, int(time.time()) + 3600)),
        ("no signature", "stripe", good, {"Content-Type": "application/json"}),
        ("signature of another body", "stripe", good, _sign(good + b" ", secret)),
        ("text/plain", "stripe", good, {**_sign(good, secret), "Content-Type": "text/plain"}),
        ("card in signature header", "stripe", good, {"Stripe-Signature": f"t=1,v1={PANS[0]}",
                                                      "Content-Type": "application/json"}),
        ("paypal forged cert url", "paypal", good, {
            "Content-Type": "application/json", "PAYPAL-TRANSMISSION-ID": "x", "PAYPAL-TRANSMISSION-TIME": "x",
            "PAYPAL-TRANSMISSION-SIG": "AAAA", "PAYPAL-CERT-URL": "https://evil.example.com/cert.pem",
            "PAYPAL-AUTH-ALGO": "SHA256withRSA"}),
        ("oversized", "stripe", b"{" + b" " * (2 * 1024 * 1024) + b"}", {"Content-Type": "application/json"}),
    ]  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        for name, processor, body, headers in posts:
            await _count_http(tally, name, http.post(f"{url}/webhooks/{processor}", content=body, headers=headers))
        await _count_http(tally, "GET on webhook", http.get(f"{url}/webhooks/stripe"))
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    for name, raw in [("TLS hello on plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)),
                      ("garbage request line", f"GARBAGE {PANS[0]} HTTP/9.9\r\n\r\n".encode()),
                      ("card in content-length", f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                                  f"{PANS[0]}\r\n\r\n".encode()),
                      ("bad content-length", b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                             b"application/json\r\nContent-Length: abc\r\n\r\n{}"),
                      ("negative content-length", b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                                  b"application/json\r\nContent-Length: -5\r\n\r\n{}")]:  # fmt: skip
        tally.tried += 1
        status = await asyncio.to_thread(_raw_status, host, port, raw)
        if status >= 500:
            tally.internal += 1
            tally.failures.append(f"HTTP {status}: {name}")
        else:
            tally.refused_cleanly += 1


async def _count_http(tally: Tally, name: str, request: Awaitable[httpx.Response]) -> None:
    tally.tried += 1
    try:
        response = await request
    except httpx.HTTPError as exc:
        tally.other[type(exc).__name__] += 1
        tally.failures.append(f"{type(exc).__name__}: {name}")
        return
    if response.status_code >= 500:
        tally.internal += 1
        tally.failures.append(f"HTTP {response.status_code}: {name}")
    elif response.status_code < 300:
        tally.wrongly_accepted += 1
        tally.failures.append(f"HTTP {response.status_code}: {name}")
    else:
        tally.refused_cleanly += 1
        tally.reasons[str(response.status_code)] += 1


def _raw_status(host: str, port: int, data: bytes) -> int:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError:
            pass
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def scan_store(uri: str, database: str, hostile_ids: list[str]) -> dict[str, int]:
    """Counts card digits and hostile webhook ids left anywhere in the service's database."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        db = client[database]
        cards = ids = 0
        needles = [pan.encode() for pan in PANS] + [pan[:8].encode() for pan in PANS]
        wanted = {i.encode() for i in hostile_ids}
        for name in await db.list_collection_names():
            async for doc in db[name].find({}):
                text = repr(doc).encode()
                cards += any(n in text for n in needles)
                ids += any(i in text for i in wanted)
        return {"documents_with_card_digits": cards, "hostile_webhook_events_stored": ids}
    finally:
        await client.close()
