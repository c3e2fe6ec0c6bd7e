"""The only source of "now": a system clock and a manually driven clock for tests.

A clock is any zero-argument callable returning a timezone-aware ``datetime``. Every
time decision the engine makes (leases, sleeps, timeouts, backoff, cancellation
policies, id timestamps) goes through the engine's clock, so tests can travel in time.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

Clock = Callable[[], datetime]

__all__ = ["Clock", "system_clock", "ManualClock", "ensure_aware"]


def system_clock() -> datetime:
    """Return the current UTC time."""
    return datetime.now(timezone.utc)


def ensure_aware(value: datetime, what: str = "datetime") -> datetime:
    """Return ``value`` in UTC, refusing naive datetimes (their zone is unknowable)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        from .errors import ValidationError

        raise ValidationError(f"{what} must be timezone-aware, got naive {value!r}")
    return value.astimezone(timezone.utc)


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    >>> clock = ManualClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    >>> clock.advance(seconds=30)
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_aware(start) if start is not None else system_clock()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move the clock forward and return the new time."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now = self._now + step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (must not be earlier than now)."""
        when = ensure_aware(when)
        with self._lock:
            if when < self._now:
                raise ValueError("a clock cannot go backwards")
            self._now = when
