"""Clocks: the system clock and a manual one tests can advance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class SystemClock:
    """Wall-clock UTC time."""

    def now(self) -> datetime:
        """Returns the current UTC time (millisecond precision, like the store)."""
        now = datetime.now(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        """Returns the clock's current time."""
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Moves the clock forward by ``delta`` and returns the new time."""
        self._now += delta
        return self._now
