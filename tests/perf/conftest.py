"""One representative workload through the real service, recorded command by command."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from benchmarks.commands import CommandRecorder, register
from benchmarks.workload import Workload


@pytest.fixture(scope="session")
def recorder() -> CommandRecorder:
    """A command listener for every client created from now on (it records only when asked)."""
    return register()


@pytest.fixture(scope="session")
async def workload(mongo_uri: str, recorder: CommandRecorder) -> AsyncIterator[Workload]:
    """Every RPC, the webhook use cases, the inbox verbs, the janitor and a reconciliation pass."""
    name = f"t_{uuid.uuid4().hex}"
    async with Workload(mongo_uri, name, recorder) as run:
        await run.everything()
        yield run
        await run.runtime.store.database.client.drop_database(name)
