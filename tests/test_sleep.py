"""Durable sleeps: suspension, wake times on the engine clock, replays and validation."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from absurd_orm import Engine, ManualClock

START = datetime(2030, 1, 1, tzinfo=timezone.utc)  # the clock fixture's start


def test_sleep_for_suspends_until_the_time(engine: Engine, clock: ManualClock) -> None:
    reached = []

    @engine.register_task(name="nap")
    def nap(params, ctx):
        ctx.sleep_for("nap", 60)
        reached.append(clock())
        return "rested"

    res = engine.spawn("nap", {})
    assert engine.work_batch() == 1
    info = engine.get_task(res.task_id)
    assert info.state == "sleeping"
    assert info.runs[0].state == "sleeping"
    assert info.runs[0].available_at == START + timedelta(seconds=60)
    assert info.runs[0].claimed_by is None and info.runs[0].claim_expires_at is None
    assert engine.fetch_task_result(res.task_id).state == "sleeping"

    clock.advance(59)
    assert engine.work_batch() == 0  # not yet
    assert reached == []

    clock.advance(1)
    assert engine.work_batch() == 1
    assert reached == [START + timedelta(seconds=60)]
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == "rested"


def test_sleep_stores_its_wake_time_as_checkpoint(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="nap")
    def nap(params, ctx):
        ctx.sleep_for("nap", 90)

    res = engine.spawn("nap", {})
    engine.work_batch()
    stored = engine.get_task(res.task_id).checkpoints["nap"]
    assert datetime.fromisoformat(stored) == START + timedelta(seconds=90)


def test_wake_time_is_not_pushed_back_by_replays(engine: Engine, clock: ManualClock) -> None:
    passes = []

    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_for("nap", 60)
        passes.append(clock())
        got = ctx.await_event("go")
        return got

    res = engine.spawn("job", {})
    engine.work_batch()
    clock.advance(61)
    assert engine.work_batch() == 1
    info = engine.get_task(res.task_id)
    assert info.state == "sleeping" and info.runs[0].wake_event == "go"
    assert datetime.fromisoformat(info.checkpoints["nap"]) == START + timedelta(seconds=60)

    engine.emit_event("go", 7)
    # The replay meets sleep_for("nap", 60) again at T+61: it must not sleep another 60 s.
    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == 7
    assert len(passes) == 2
    stored = engine.get_task(res.task_id).checkpoints["nap"]
    assert datetime.fromisoformat(stored) == START + timedelta(seconds=60)


def test_two_sleeps_in_sequence(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_for("first", 10)
        ctx.sleep_for("second", 10)
        return "done"

    res = engine.spawn("job", {})
    engine.work_batch()
    clock.advance(10)
    assert engine.work_batch() == 1  # wakes, then sleeps again from T+10
    assert engine.get_task(res.task_id).runs[0].available_at == START + timedelta(seconds=20)
    clock.advance(9)
    assert engine.work_batch() == 0
    clock.advance(1)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "done"


def test_sleep_until_aware_datetime_in_other_zone(engine: Engine, clock: ManualClock) -> None:
    plus_two = timezone(timedelta(hours=2))
    wake = (START + timedelta(hours=1)).astimezone(plus_two)

    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_until("until", wake)
        return "awake"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert engine.get_task(res.task_id).runs[0].available_at == START + timedelta(hours=1)
    clock.advance(3599)
    assert engine.work_batch() == 0
    clock.advance(1)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "awake"


@pytest.mark.parametrize("offset", [30, 30.5])
def test_sleep_until_unix_seconds(engine: Engine, clock: ManualClock, offset: float) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_until("until", START.timestamp() + offset)
        return "awake"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).state == "sleeping"
    assert engine.get_task(res.task_id).runs[0].available_at == START + timedelta(seconds=offset)
    clock.advance(29)
    assert engine.work_batch() == 0
    clock.advance(2)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "awake"


@pytest.mark.parametrize("when", [
    START - timedelta(seconds=10),
    START,
    (START - timedelta(days=1)).timestamp(),
], ids=["past-datetime", "now", "past-unix"])
def test_sleep_until_past_time_continues_at_once(engine: Engine, when) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_until("until", when)
        return "no wait"

    res = engine.spawn("job", {})
    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == "no wait"
    info = engine.get_task(res.task_id)
    assert len(info.runs) == 1 and info.runs[0].state == "completed"
    assert "until" in info.checkpoints


def test_sleep_for_zero_continues_at_once(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.sleep_for("zero", 0)
        return "no wait"

    res = engine.spawn("job", {})
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "no wait"


def _expect_value_error(engine: Engine, sleeper) -> None:
    """Run a handler calling ``sleeper(ctx)``; assert it raised ValueError and did not suspend."""
    caught = []

    @engine.register_task(name="bad-sleep")
    def job(params, ctx):
        try:
            sleeper(ctx)
        except ValueError as exc:
            caught.append(exc)
        return "handled"

    res = engine.spawn("bad-sleep", {})
    assert engine.work_batch() == 1
    assert len(caught) == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == "handled"
    assert engine.get_task(res.task_id).checkpoints == {}


def test_sleep_until_naive_datetime_is_value_error(engine: Engine) -> None:
    _expect_value_error(engine, lambda ctx: ctx.sleep_until("naive", datetime(2030, 1, 2)))


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf, -math.inf, 1e12, 10**15],
                         ids=["neg", "tiny-neg", "nan", "inf", "-inf", "huge", "huge-int"])
def test_bad_sleep_durations_are_value_errors(engine: Engine, seconds) -> None:
    _expect_value_error(engine, lambda ctx: ctx.sleep_for("bad", seconds))


@pytest.mark.parametrize("when", [math.nan, math.inf, 1e20], ids=["nan", "inf", "huge"])
def test_bad_sleep_until_unix_seconds_are_value_errors(engine: Engine, when) -> None:
    _expect_value_error(engine, lambda ctx: ctx.sleep_until("bad", when))


@pytest.mark.parametrize("seconds", ["10", None, True], ids=["str", "none", "bool"])
def test_non_numeric_sleep_duration_is_rejected(engine: Engine, seconds) -> None:
    _expect_value_error(engine, lambda ctx: ctx.sleep_for("bad", seconds))


def test_sleeping_task_does_not_block_other_tasks(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="sleeper")
    def sleeper(params, ctx):
        ctx.sleep_for("nap", 100)
        return "slept"

    @engine.register_task(name="quick")
    def quick(params, ctx):
        return "quick"

    s = engine.spawn("sleeper", {})
    engine.work_batch()
    q = engine.spawn("quick", {})
    assert engine.work_batch(batch_size=10) == 1
    assert engine.fetch_task_result(q.task_id).result == "quick"
    assert engine.fetch_task_result(s.task_id).state == "sleeping"
