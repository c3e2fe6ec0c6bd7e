"""Events: await/emit, caching, first-emit-wins, broadcast, queues, timeouts, validation."""

from __future__ import annotations

import builtins
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

import absurd_orm
from absurd_orm import Engine, ManualClock, NotJSONSerializable, QueueNotFound
from absurd_orm.models import events


def event_rows(sa_engine: sa.Engine) -> list[tuple[str, str, object]]:
    with sa_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(events.c.queue, events.c.event_name, events.c.payload)
            .where(events.c.emitted_at.is_not(None)))]


def register_waiter(engine: Engine, name: str = "waiter", event: str = "go", **kwargs):
    @engine.register_task(name=name, **kwargs)
    def waiter(params, ctx):
        return {"got": ctx.await_event(params.get("event", event))}
    return waiter


def test_await_then_emit_wakes_with_payload(engine: Engine) -> None:
    register_waiter(engine)
    res = engine.spawn("waiter", {})
    assert engine.work_batch() == 1
    info = engine.get_task(res.task_id)
    assert info.state == "sleeping"
    assert info.runs[0].wake_event == "go"
    assert info.runs[0].available_at is None  # no timer: only the emit wakes it
    assert engine.work_batch() == 0

    engine.emit_event("go", {"order": 42})
    assert engine.fetch_task_result(res.task_id).state == "pending"
    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed"
    assert snap.result == {"got": {"order": 42}}
    assert engine.get_task(res.task_id).checkpoints["$awaitEvent:go"] == {"order": 42}


def test_emit_before_await_is_served_from_cache(engine: Engine) -> None:
    register_waiter(engine)
    engine.emit_event("go", [1, 2, 3])
    res = engine.spawn("waiter", {})
    assert engine.work_batch() == 1  # no suspension
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == {"got": [1, 2, 3]}
    assert len(engine.get_task(res.task_id).runs) == 1


def test_first_emit_wins(engine: Engine, sa_engine: sa.Engine) -> None:
    register_waiter(engine)
    res = engine.spawn("waiter", {})
    engine.work_batch()
    engine.emit_event("go", "first")
    engine.emit_event("go", "second")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == {"got": "first"}
    # a later waiter still sees the first payload
    late = engine.spawn("waiter", {})
    engine.emit_event("go", "third")
    engine.work_batch()
    assert engine.fetch_task_result(late.task_id).result == {"got": "first"}
    assert event_rows(sa_engine) == [("default", "go", "first")]


def test_first_emit_wins_before_any_waiter(engine: Engine) -> None:
    register_waiter(engine)
    engine.emit_event("go", 1)
    engine.emit_event("go", 2)
    res = engine.spawn("waiter", {})
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == {"got": 1}


def test_one_emit_wakes_every_waiter(engine: Engine) -> None:
    register_waiter(engine)
    ids = [engine.spawn("waiter", {}).task_id for _ in range(3)]
    assert engine.work_batch(batch_size=10) == 3
    assert {engine.fetch_task_result(t).state for t in ids} == {"sleeping"}
    engine.emit_event("go", "all")
    assert engine.work_batch(batch_size=10) == 3
    for t in ids:
        snap = engine.fetch_task_result(t)
        assert snap.state == "completed" and snap.result == {"got": "all"}


def test_events_are_per_queue(engine: Engine) -> None:
    engine.create_queue("other")
    register_waiter(engine)
    res = engine.spawn("waiter", {})
    engine.work_batch()
    engine.emit_event("go", "wrong queue", queue_name="other")
    assert engine.work_batch() == 0
    assert engine.fetch_task_result(res.task_id).state == "sleeping"
    engine.emit_event("go", "right queue")
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == {"got": "right queue"}


def test_emit_on_other_queue_is_not_cached_here(engine: Engine) -> None:
    engine.create_queue("other")
    register_waiter(engine)
    engine.emit_event("go", "elsewhere", queue_name="other")
    res = engine.spawn("waiter", {})
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).state == "sleeping"


def test_waiter_on_another_queue(engine: Engine) -> None:
    engine.create_queue("side")
    register_waiter(engine, queue="side")
    res = engine.spawn("waiter", {})
    assert engine.work_batch(queue_name="side") == 1
    engine.emit_event("go", "here")  # default queue: does not count
    assert engine.work_batch(queue_name="side") == 0
    engine.emit_event("go", "side", queue_name="side")
    assert engine.work_batch(queue_name="side") == 1
    assert engine.fetch_task_result(res.task_id, queue_name="side").result == {"got": "side"}


@pytest.mark.parametrize("emit_first", [False, True], ids=["await-first", "emit-first"])
def test_none_is_a_valid_payload(engine: Engine, emit_first: bool) -> None:
    register_waiter(engine)
    if emit_first:
        engine.emit_event("go")
    res = engine.spawn("waiter", {})
    engine.work_batch()
    if not emit_first:
        assert engine.fetch_task_result(res.task_id).state == "sleeping"
        engine.emit_event("go", None)
        assert engine.work_batch() == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == {"got": None}
    # the null payload counts as emitted: a second emit does not replace it
    engine.emit_event("go", "late")
    again = engine.spawn("waiter", {})
    engine.work_batch()
    assert engine.fetch_task_result(again.task_id).result == {"got": None}


def test_emit_from_inside_a_task(engine: Engine) -> None:
    register_waiter(engine)

    @engine.register_task(name="emitter")
    def emitter(params, ctx):
        ctx.emit_event("go", {"from": ctx.task_id})
        return "sent"

    w = engine.spawn("waiter", {})
    engine.work_batch()
    e = engine.spawn("emitter", {})
    assert engine.work_batch() == 1
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(w.task_id).result == {"got": {"from": e.task_id}}


def test_custom_step_name(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        a = ctx.await_event("go", step_name="wait-a")
        b = ctx.await_event("go", step_name="wait-b")
        return [a, b]

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.emit_event("go", "p")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == ["p", "p"]
    checkpoints = engine.get_task(res.task_id).checkpoints
    assert checkpoints == {"wait-a": "p", "wait-b": "p"}


def test_same_event_awaited_twice_is_numbered(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        return [ctx.await_event("go"), ctx.await_event("go")]

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.emit_event("go", 5)
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == [5, 5]
    assert set(engine.get_task(res.task_id).checkpoints) == {"$awaitEvent:go", "$awaitEvent:go#2"}


# ---------------------------------------------------------------- timeouts


def test_timeout_raises_timeout_error(engine: Engine, clock: ManualClock) -> None:
    seen = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.await_event("go", timeout=10)
        except builtins.TimeoutError as exc:
            seen.append(exc)
            return "timed out"
        return "got it"

    res = engine.spawn("job", {})
    engine.work_batch()
    info = engine.get_task(res.task_id)
    assert info.state == "sleeping"
    clock.advance(9)
    assert engine.work_batch() == 0
    clock.advance(2)
    assert engine.work_batch() == 1
    assert len(seen) == 1
    assert isinstance(seen[0], absurd_orm.TimeoutError)
    assert isinstance(seen[0], absurd_orm.AbsurdError)
    assert "go" in str(seen[0])
    assert engine.fetch_task_result(res.task_id).result == "timed out"


def test_uncaught_timeout_fails_the_run(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        return ctx.await_event("go", timeout=10)

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    clock.advance(11)
    engine.work_batch()
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "failed"
    assert snap.failure["name"] == "TimeoutError"


def test_emit_before_timeout_delivers(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        return ctx.await_event("go", timeout=10)

    res = engine.spawn("job", {})
    engine.work_batch()
    clock.advance(5)
    engine.emit_event("go", "in time")
    clock.advance(100)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "in time"


def test_timeout_replays_deterministically(engine: Engine, clock: ManualClock) -> None:
    outcomes = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.await_event("go", timeout=10)
            outcomes.append("payload")
        except absurd_orm.TimeoutError:
            outcomes.append("timeout")
        ctx.sleep_for("after", 5)
        return outcomes[-1]

    res = engine.spawn("job", {})
    engine.work_batch()
    clock.advance(11)
    assert engine.work_batch() == 1  # times out, then sleeps
    assert outcomes == ["timeout"]
    assert engine.fetch_task_result(res.task_id).state == "sleeping"
    engine.emit_event("go", "too late")  # must not change the replayed outcome
    clock.advance(5)
    assert engine.work_batch() == 1
    assert outcomes == ["timeout", "timeout"]
    assert engine.fetch_task_result(res.task_id).result == "timeout"


def test_emit_after_timeout_before_reclaim_is_not_delivered_but_cached(
        engine: Engine, clock: ManualClock) -> None:
    seen = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            seen.append(("first", ctx.await_event("go", step_name="first", timeout=10)))
        except absurd_orm.TimeoutError:
            seen.append(("first", "timeout"))
        seen.append(("second", ctx.await_event("go", step_name="second")))
        return seen[-1][1]

    res = engine.spawn("job", {})
    engine.work_batch()
    clock.advance(11)  # the timeout has elapsed, the run is not re-claimed yet
    engine.emit_event("go", "late payload")
    assert engine.work_batch() == 1
    assert seen == [("first", "timeout"), ("second", "late payload")]
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == "late payload"
    checkpoints = engine.get_task(res.task_id).checkpoints
    assert "first" not in checkpoints  # the timed-out wait never got the payload
    assert checkpoints["second"] == "late payload"


def test_timeout_zero_with_no_event(engine: Engine, clock: ManualClock) -> None:
    seen = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            return ctx.await_event("go", timeout=0)
        except absurd_orm.TimeoutError:
            seen.append("timeout")
            return "t"

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.work_batch()  # due at once
    assert seen == ["timeout"]
    assert engine.fetch_task_result(res.task_id).result == "t"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_event_name_is_value_error(engine: Engine, sa_engine: sa.Engine, name: str) -> None:
    with pytest.raises(ValueError):
        engine.emit_event(name, 1)
    assert event_rows(sa_engine) == []


def test_empty_event_name_in_await_is_value_error(engine: Engine) -> None:
    caught = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.await_event("")
        except ValueError as exc:
            caught.append(exc)
        return "ok"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert len(caught) == 1
    assert engine.fetch_task_result(res.task_id).state == "completed"


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf")])
def test_bad_await_timeout_is_value_error(engine: Engine, timeout) -> None:
    caught = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.await_event("go", timeout=timeout)
        except ValueError as exc:
            caught.append(exc)
        return "ok"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert len(caught) == 1
    assert engine.fetch_task_result(res.task_id).state == "completed"


@pytest.mark.parametrize("payload", [
    datetime(2030, 1, 1, tzinfo=timezone.utc), Decimal("2"), b"x", {"s": {1}}, float("nan"),
    {1: "a"},
], ids=["datetime", "decimal", "bytes", "set", "nan", "int-key"])
def test_non_json_payload_is_type_error_and_stores_nothing(
        engine: Engine, sa_engine: sa.Engine, payload) -> None:
    register_waiter(engine)
    res = engine.spawn("waiter", {})
    engine.work_batch()
    with pytest.raises(TypeError) as err:
        engine.emit_event("go", payload)
    assert isinstance(err.value, NotJSONSerializable)
    assert event_rows(sa_engine) == []
    assert engine.work_batch() == 0
    assert engine.fetch_task_result(res.task_id).state == "sleeping"
    engine.emit_event("go", "valid")  # the name was not used up
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == {"got": "valid"}


def test_emit_into_missing_queue_is_queue_not_found(engine: Engine, sa_engine: sa.Engine) -> None:
    with pytest.raises(QueueNotFound) as err:
        engine.emit_event("go", 1, queue_name="missing")
    assert isinstance(err.value, ValueError)
    assert event_rows(sa_engine) == []
