"""Shared fixtures: one embedded MongoDB-wire server per session, a fresh database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.embedded import EmbeddedMongo
from billing_service.adapters.mongo.store import MongoBillingStore


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[EmbeddedMongo]:
    """The embedded server (SecantusDB child process, test commands enabled)."""
    server = EmbeddedMongo(":memory:", enable_test_commands=True)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: EmbeddedMongo) -> str:
    """Connection string of the session's server."""
    return mongo_server.uri


@pytest.fixture(scope="session")
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A raw client for tests that inspect documents or configure fail points."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    yield client
    await client.close()


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[MongoBillingStore]:
    """A store on a fresh database with its indexes, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    s = MongoBillingStore.connect(mongo_uri, name)
    await s.ensure_indexes()
    yield s
    await s.database.client.drop_database(name)
    await s.aclose()
