"""Idle workers hear of work committed by other connections without waiting for a poll."""

from __future__ import annotations

import threading
import time

import pytest

from absurd_orm import Engine


def test_idle_waiter_wakes_on_work_from_another_connection(engine: Engine, db_url: str) -> None:
    """A spawn committed elsewhere ends an idle wait long before its timeout."""
    waiter = engine.strategy.idle_waiter(engine.sa_engine, "default")
    wakeup = threading.Event()
    try:
        if hasattr(waiter, "ready"):  # a listener: wait until it listens
            assert waiter.ready.wait(10)
            waiter.register(wakeup)
        other = Engine(db_url, clock=engine.clock)  # another connection pool, same database
        other.spawn("anything", {"x": 1}, queue="default")
        other.close()
        started = time.monotonic()
        waiter.wait(30, wakeup)
        assert time.monotonic() - started < 10  # woken, not timed out
    finally:
        waiter.close()


def test_idle_waiter_times_out_without_news(engine: Engine) -> None:
    """With nothing committed, the wait lasts its timeout (a wait that never blocks would spin)."""
    waiter = engine.strategy.idle_waiter(engine.sa_engine, "default")
    try:
        if hasattr(waiter, "ready"):
            assert waiter.ready.wait(10)
        waiter.wait(0, threading.Event())  # consume anything already seen
        started = time.monotonic()
        waiter.wait(0.2, threading.Event())
        assert time.monotonic() - started >= 0.19
    finally:
        waiter.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_notifications_name_the_queue(engine: Engine) -> None:
    """A spawn on another queue does not wake a worker of this one (notifications carry it)."""
    engine.create_queue("elsewhere")
    waiter = engine.strategy.idle_waiter(engine.sa_engine, "default")
    wakeup = threading.Event()
    try:
        assert waiter.ready.wait(10)
        waiter.register(wakeup)
        engine.spawn("anything", {}, queue="elsewhere")
        engine._wakeup.clear()
        assert not wakeup.wait(0.5)
        engine.spawn("anything", {}, queue="default")
        assert wakeup.wait(10)
    finally:
        waiter.close()
