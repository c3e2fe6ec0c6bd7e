"""Retry backoff: how long to wait before attempt ``n + 1`` after attempt ``n`` failed.

Absurd's rules: ``none`` retries at once; ``fixed`` waits ``base_seconds`` (default 60);
``exponential`` waits ``base_seconds`` (default 30) x ``factor`` (default 2) ^ (n - 1),
capped at ``max_seconds`` when given.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["retry_delay"]

_MAX_DELAY = 10 * 365 * 24 * 3600.0  # keeps datetime arithmetic finite


def retry_delay(strategy: Mapping[str, Any] | None, failed_attempt: int) -> float:
    """Seconds to wait before the next attempt, given the attempt number that failed."""
    if not strategy:
        return 0.0
    kind = strategy.get("kind", "none")
    if kind == "fixed":
        delay = float(strategy.get("base_seconds", 60.0))
    elif kind == "exponential":
        base = float(strategy.get("base_seconds", 30.0))
        factor = float(strategy.get("factor", 2.0))
        try:
            delay = base * factor ** max(failed_attempt - 1, 0)
        except OverflowError:
            delay = _MAX_DELAY
        cap = strategy.get("max_seconds")
        if cap is not None:
            delay = min(delay, float(cap))
    else:
        return 0.0
    return max(0.0, min(delay, _MAX_DELAY))
