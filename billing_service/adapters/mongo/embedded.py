"""Runs the embedded MongoDB-wire server (SecantusDB) as a child process.

SecantusDB is GPL-2.0, so it is only ever *executed* (``python -m secantus``), never
imported by ``billing_service``. It comes with the optional extra
``pip install -e '.[embedded]'`` and serves tests and local runs where no ``mongod`` exists.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pymongo import MongoClient
from pymongo.errors import PyMongoError

__all__ = ["EmbeddedMongo", "EmbeddedMongoError"]

log = logging.getLogger(__name__)

MEMORY = ":memory:"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3


class EmbeddedMongoError(RuntimeError):
    """The embedded server is not installed or did not start."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedMongo:
    """A SecantusDB child process listening on loopback.

    Args:
        storage_path: Data directory, or ``":memory:"`` for an ephemeral store.
        port: TCP port; 0 picks a free one.
        enable_test_commands: Allow ``configureFailPoint`` (tests only: it lets any client
            break the server).
        log_path: Where the child's stdout/stderr go; defaults to ``<storage>/../secantus.log``
            or a temporary file for ``:memory:``.
        extra_args: More ``secantus`` command-line flags.

    Example:
        >>> with EmbeddedMongo(":memory:") as server:  # doctest: +SKIP
        ...     client = AsyncMongoClient(server.uri, tz_aware=True)
    """

    def __init__(
        self,
        storage_path: str | Path = MEMORY,
        *,
        port: int = 0,
        enable_test_commands: bool = False,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._memory = str(storage_path) == MEMORY
        self._storage: Path | None = None if self._memory else Path(storage_path).resolve()
        self._requested_port = port
        self._port = 0
        self._enable_test_commands = enable_test_commands
        self._log_path = log_path
        self._extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """Connection string of the running server."""
        if self._proc is None:
            raise EmbeddedMongoError("embedded server is not running")
        return f"mongodb://127.0.0.1:{self._port}/?directConnection=true"

    @property
    def port(self) -> int:
        """The port the server listens on (0 before start)."""
        return self._port

    @property
    def log_path(self) -> Path | None:
        """The child's log file (set once started)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start_sync(self) -> None:
        """Starts the server and waits until it answers ``hello`` (blocking).

        Raises:
            EmbeddedMongoError: SecantusDB is not installed, or it did not come up in time.
        """
        if self._proc is not None:
            return
        if importlib.util.find_spec("secantus") is None:
            raise EmbeddedMongoError(
                "the embedded MongoDB server (secantusdb) is not installed; run: pip install -e '.[embedded]'"
            )
        log_path = self._prepare_paths()
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_port()
            self._spawn(log_path)
            try:
                self._wait_ready(log_path)
            except EmbeddedMongoError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                # A picked port can be grabbed by someone else before the child binds it.
                if exited and attempt < attempts:
                    continue
                raise
            log.info("embedded MongoDB-wire server on %s (log %s)", self.uri, log_path)
            return

    async def start(self) -> None:
        """Starts the server without blocking the event loop."""
        await asyncio.to_thread(self.start_sync)

    def stop(self) -> None:
        """Stops the server: SIGTERM, then SIGKILL after 10 s. Safe to call twice."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def astop(self) -> None:
        """Stops the server without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # ---------------------------------------------------------------- helpers

    def _prepare_paths(self) -> Path:
        if self._storage is not None:
            self._storage.mkdir(parents=True, exist_ok=True)
        if self._log_path is None:
            if self._storage is not None:
                self._log_path = self._storage.parent / "secantus.log"
            else:
                fd, name = tempfile.mkstemp(prefix="secantus-", suffix=".log")
                os.close(fd)
                self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        return self._log_path

    def _spawn(self, log_path: Path) -> None:
        args = [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(self._port),
            "--storage-path",
            MEMORY if self._storage is None else str(self._storage),
        ]
        if self._enable_test_commands:
            args.append("--enable-test-commands")
        args.extend(self._extra_args)
        if self._log_file is None:
            self._log_file = log_path.open("ab")
        # Same session as us (start_new_session=False) so a terminal's Ctrl-C reaches it too;
        # atexit covers a normal interpreter exit.
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=False,
        )
        atexit.register(self.stop)

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        uri = f"mongodb://127.0.0.1:{self._port}/?directConnection=true"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise EmbeddedMongoError(
                    f"embedded server exited with code {code} during start; log {log_path}:\n{_tail(log_path)}"
                )
            if self._answers_hello(uri):
                return
            if time.monotonic() > deadline:
                raise EmbeddedMongoError(
                    f"embedded server did not answer on port {self._port} within {_START_TIMEOUT_S:.0f} s; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.1)

    def _answers_hello(self, uri: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=0.5):
                pass
        except OSError:
            return False
        client: MongoClient[dict[str, object]] = MongoClient(
            uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=2000
        )
        try:
            client.admin.command("hello")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()
