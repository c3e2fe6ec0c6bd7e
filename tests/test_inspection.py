"""Inspection: get_task, list_tasks, fetch/await_task_result and claim_tasks."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

import absurd_orm
from absurd_orm import ClaimedTask, Engine, ManualClock, RunInfo, TaskInfo, TaskResultSnapshot

START = datetime(2030, 1, 1, tzinfo=timezone.utc)  # the clock fixture's start


def is_aware_utc(value: datetime) -> bool:
    return (isinstance(value, datetime) and value.tzinfo is not None
            and value.utcoffset() == timedelta(0))


def register_basic(engine: Engine) -> None:
    @engine.register_task(name="ok")
    def ok(params, ctx):
        ctx.step("double", lambda: params["n"] * 2)
        return {"n": params["n"]}

    @engine.register_task(name="boom")
    def boom(params, ctx):
        raise RuntimeError("kaput")

    @engine.register_task(name="waits")
    def waits(params, ctx):
        return ctx.await_event("go")


# ---------------------------------------------------------------- get_task


def test_get_task_fields_of_a_completed_task(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 3}, headers={"h": 1}, idempotency_key="key-1",
                       max_attempts=4)
    clock.advance(5)
    assert engine.work_batch(worker_id="w-1") == 1
    info = engine.get_task(res.task_id)
    assert isinstance(info, TaskInfo)
    assert info.task_id == res.task_id and isinstance(info.task_id, str)
    assert info.queue == "default"
    assert info.task_name == "ok"
    assert info.state == "completed"
    assert info.attempts == 1
    assert info.max_attempts == 4
    assert info.params == {"n": 3}
    assert info.headers == {"h": 1}
    assert info.result == {"n": 3}
    assert info.failure is None
    assert info.idempotency_key == "key-1"
    assert info.enqueued_at == START
    assert info.first_started_at == START + timedelta(seconds=5)
    assert info.completed_at == START + timedelta(seconds=5)
    assert info.cancelled_at is None
    for ts in (info.enqueued_at, info.first_started_at, info.completed_at):
        assert is_aware_utc(ts)
    assert info.checkpoints == {"double": 6}

    assert len(info.runs) == 1
    run = info.runs[0]
    assert isinstance(run, RunInfo)
    assert run.run_id == res.run_id and isinstance(run.run_id, str)
    assert run.attempt == 1
    assert run.state == "completed"
    assert run.claimed_by == "w-1"
    assert run.claim_expires_at is None  # not running any more
    assert is_aware_utc(run.available_at)
    assert run.failure is None
    assert is_aware_utc(run.started_at) and is_aware_utc(run.completed_at)


def test_get_task_of_a_pending_task(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 1})
    info = engine.get_task(res.task_id)
    assert info.state == "pending"
    assert info.result is None and info.failure is None
    assert info.headers in (None, {})
    assert info.idempotency_key is None
    assert info.first_started_at is None and info.completed_at is None
    assert info.cancelled_at is None
    assert info.runs[0].state == "pending"
    assert info.runs[0].claimed_by is None
    assert info.runs[0].claim_expires_at is None
    assert info.runs[0].available_at == START
    assert info.checkpoints == {}


def test_get_task_runs_in_attempt_order_with_failures(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    res = engine.spawn("boom", {}, max_attempts=3)
    for _ in range(3):
        clock.advance(1)
        assert engine.work_batch() == 1
    info = engine.get_task(res.task_id)
    assert info.state == "failed"
    assert info.attempts == 3
    assert [r.attempt for r in info.runs] == [1, 2, 3]
    assert [r.state for r in info.runs] == ["failed"] * 3
    assert info.runs[0].run_id == res.run_id
    assert len({r.run_id for r in info.runs}) == 3
    for r in info.runs:
        assert r.failure["name"] == "RuntimeError"
        assert r.failure["message"] == "kaput"
        assert r.claim_expires_at is None
        assert is_aware_utc(r.failed_at)
    assert info.failure["name"] == "RuntimeError"
    assert info.result is None
    assert info.completed_at is None


def test_get_task_of_a_cancelled_task(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    res = engine.spawn("waits", {})
    engine.work_batch()
    clock.advance(7)
    engine.cancel_task(res.task_id)
    info = engine.get_task(res.task_id)
    assert info.state == "cancelled"
    assert info.cancelled_at == START + timedelta(seconds=7)
    assert is_aware_utc(info.cancelled_at)
    assert info.runs[0].state == "cancelled"


def test_claim_expires_at_is_shown_while_running(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 1})
    claimed = engine.claim_tasks(claim_timeout=30, worker_id="w-9")
    assert [c.task_id for c in claimed] == [res.task_id]
    info = engine.get_task(res.task_id)
    assert info.state == "running"
    assert info.runs[0].state == "running"
    assert info.runs[0].claimed_by == "w-9"
    assert info.runs[0].claim_expires_at == START + timedelta(seconds=30)
    assert is_aware_utc(info.runs[0].claim_expires_at)


def test_sleeping_run_shows_wake_event(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("waits", {})
    engine.work_batch()
    run = engine.get_task(res.task_id).runs[0]
    assert run.state == "sleeping"
    assert run.wake_event == "go"
    assert run.claimed_by is None and run.claim_expires_at is None


def test_get_task_unknown_id_is_none(engine: Engine) -> None:
    assert engine.get_task(str(uuid.uuid4())) is None


def test_get_task_in_wrong_queue_is_none(engine: Engine) -> None:
    engine.create_queue("other")
    register_basic(engine)
    res = engine.spawn("ok", {"n": 1})
    assert engine.get_task(res.task_id, queue_name="other") is None


def test_get_task_malformed_id_is_none(engine: Engine) -> None:
    """An id that is not a UUID names no task: None, as for any unknown id, on every backend."""
    assert engine.get_task("not-a-task-id") is None
    assert engine.fetch_task_result("not-a-task-id") is None


# ---------------------------------------------------------------- list_tasks


def spawn_series(engine: Engine, clock: ManualClock, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        ids.append(engine.spawn(name, {"n": len(ids)}).task_id)
        clock.advance(1)
    return ids


def test_list_tasks_newest_first(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    ids = spawn_series(engine, clock, ["ok", "boom", "ok", "waits"])
    listed = engine.list_tasks()
    assert [t.task_id for t in listed] == list(reversed(ids))
    first = listed[-1]
    assert first.task_name == "ok" and first.queue == "default" and first.state == "pending"
    assert first.attempts == 1
    assert is_aware_utc(first.enqueued_at)


def test_list_tasks_newest_first_with_a_frozen_clock(engine: Engine) -> None:
    register_basic(engine)
    ids = [engine.spawn("ok", {"n": i}).task_id for i in range(5)]
    assert [t.task_id for t in engine.list_tasks()] == list(reversed(ids))


def test_list_tasks_filters(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    ok1, boom, ok2, wait = spawn_series(engine, clock, ["ok", "boom", "ok", "waits"])
    engine.work_batch(batch_size=1)  # ok1 completes
    assert [t.task_id for t in engine.list_tasks(task_name="ok")] == [ok2, ok1]
    assert [t.task_id for t in engine.list_tasks(state="completed")] == [ok1]
    assert [t.task_id for t in engine.list_tasks(state="pending")] == [wait, ok2, boom]
    assert [t.task_id for t in engine.list_tasks(state="pending", task_name="ok")] == [ok2]
    assert engine.list_tasks(task_name="nope") == []
    assert engine.list_tasks(state="cancelled") == []


def test_list_tasks_limit_and_paging(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    ids = spawn_series(engine, clock, ["ok"] * 5)
    newest_first = list(reversed(ids))
    page1 = engine.list_tasks(limit=2)
    assert [t.task_id for t in page1] == newest_first[:2]
    page2 = engine.list_tasks(limit=2, before_task_id=page1[-1].task_id)
    assert [t.task_id for t in page2] == newest_first[2:4]
    page3 = engine.list_tasks(limit=2, before_task_id=page2[-1].task_id)
    assert [t.task_id for t in page3] == newest_first[4:]
    assert engine.list_tasks(limit=2, before_task_id=page3[-1].task_id) == []


def test_list_tasks_is_per_queue(engine: Engine) -> None:
    engine.create_queue("other")
    a = engine.spawn("x", {}, queue="default")
    b = engine.spawn("x", {}, queue="other")
    assert [t.task_id for t in engine.list_tasks()] == [a.task_id]
    assert [t.task_id for t in engine.list_tasks("other")] == [b.task_id]


@pytest.mark.parametrize("limit", [0, -1])
def test_list_tasks_bad_limit(engine: Engine, limit: int) -> None:
    with pytest.raises(ValueError):
        engine.list_tasks(limit=limit)


# ---------------------------------------------------------------- fetch_task_result


def test_fetch_task_result_through_states(engine: Engine, clock: ManualClock) -> None:
    register_basic(engine)
    ok = engine.spawn("ok", {"n": 2})
    assert engine.fetch_task_result(ok.task_id) == TaskResultSnapshot("pending")
    claimed = engine.claim_tasks()
    assert engine.fetch_task_result(ok.task_id) == TaskResultSnapshot("running")
    from absurd_orm.worker import execute
    execute(engine, claimed[0], 120)
    snap = engine.fetch_task_result(ok.task_id)
    assert snap == TaskResultSnapshot("completed", result={"n": 2})
    assert snap.is_terminal


def test_fetch_task_result_sleeping(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("waits", {})
    engine.work_batch()
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "sleeping" and snap.result is None and snap.failure is None
    assert not snap.is_terminal


def test_fetch_task_result_failed(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("boom", {}, max_attempts=1)
    engine.work_batch()
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "failed"
    assert snap.result is None
    assert snap.failure["name"] == "RuntimeError"
    assert snap.failure["message"] == "kaput"


def test_fetch_task_result_pending_retry_hides_failure(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("boom", {}, max_attempts=2)
    engine.work_batch()
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "pending" and snap.failure is None


def test_fetch_task_result_cancelled(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 1})
    engine.cancel_task(res.task_id)
    assert engine.fetch_task_result(res.task_id) == TaskResultSnapshot("cancelled")
    assert engine.work_batch() == 0


def test_fetch_task_result_unknown_is_none(engine: Engine) -> None:
    assert engine.fetch_task_result(str(uuid.uuid4())) is None


def test_snapshot_is_frozen_and_comparable() -> None:
    a = TaskResultSnapshot("completed", result=[1])
    assert a == TaskResultSnapshot("completed", result=[1])
    assert a != TaskResultSnapshot("completed", result=[2])
    with pytest.raises(AttributeError):
        a.state = "failed"  # type: ignore[misc]


# ---------------------------------------------------------------- await_task_result


def test_await_task_result_on_completed_returns_at_once(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 5})
    engine.work_batch()
    snap = engine.await_task_result(res.task_id, timeout=0)
    assert snap == TaskResultSnapshot("completed", result={"n": 5})


def test_await_task_result_on_failed_returns(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("boom", {}, max_attempts=1)
    engine.work_batch()
    snap = engine.await_task_result(res.task_id, timeout=0)
    assert snap.state == "failed" and snap.failure["message"] == "kaput"


def test_await_task_result_times_out_on_pending(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 1})
    with pytest.raises(absurd_orm.TimeoutError) as err:
        engine.await_task_result(res.task_id, timeout=0.05)
    assert isinstance(err.value, TimeoutError)  # the built-in
    assert res.task_id in str(err.value)
    assert engine.fetch_task_result(res.task_id).state == "pending"


def test_await_task_result_unknown_task_is_lookup_error(engine: Engine) -> None:
    with pytest.raises(LookupError):
        engine.await_task_result(str(uuid.uuid4()), timeout=0.05)


def test_await_task_result_unknown_task_is_task_not_found(engine: Engine) -> None:
    with pytest.raises(absurd_orm.TaskNotFound):
        engine.await_task_result(str(uuid.uuid4()), timeout=0.05)


# ---------------------------------------------------------------- claim_tasks


def test_claim_tasks_returns_claimed_task(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("ok", {"n": 9}, headers={"trace": "t"}, max_attempts=3,
                       retry_strategy={"kind": "fixed", "base_seconds": 4})
    claimed = engine.claim_tasks(batch_size=5, worker_id="w")
    assert len(claimed) == 1
    c = claimed[0]
    assert isinstance(c, ClaimedTask)
    assert c.task_id == res.task_id and c.run_id == res.run_id
    assert c.task_name == "ok"
    assert c.attempt == 1
    assert c.params == {"n": 9}
    assert c.headers == {"trace": "t"}
    assert c.max_attempts == 3
    assert c.retry_strategy == {"kind": "fixed", "base_seconds": 4}
    assert c.wake_event is None and c.event_payload is None
    assert c["params"] == {"n": 9}
    assert engine.claim_tasks(batch_size=5) == []  # already claimed


def test_claim_tasks_oldest_available_first(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="sleeper")
    def sleeper(params, ctx):
        ctx.sleep_for("nap", 5)

    engine.register_task(name="quick")(lambda p, ctx: None)
    s = engine.spawn("sleeper", {})  # spawned first...
    engine.work_batch()  # ...but only available again at T+5
    clock.advance(1)
    q1 = engine.spawn("quick", {})  # available at T+1
    clock.advance(10)
    q2 = engine.spawn("quick", {})  # available at T+11
    order = [c.task_id for c in engine.claim_tasks(batch_size=1)]
    order += [c.task_id for c in engine.claim_tasks(batch_size=1)]
    order += [c.task_id for c in engine.claim_tasks(batch_size=1)]
    assert order == [q1.task_id, s.task_id, q2.task_id]


def test_claim_tasks_batch_size(engine: Engine) -> None:
    register_basic(engine)
    ids = [engine.spawn("ok", {"n": i}).task_id for i in range(4)]
    first = engine.claim_tasks(batch_size=3)
    assert sorted(c.task_id for c in first) == sorted(ids[:3])
    second = engine.claim_tasks(batch_size=3)
    assert [c.task_id for c in second] == [ids[3]]


def test_claim_tasks_after_retry_reports_attempt(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("boom", {}, max_attempts=2)
    engine.work_batch()
    claimed = engine.claim_tasks()
    assert [(c.task_id, c.attempt) for c in claimed] == [(res.task_id, 2)]
    assert claimed[0].run_id != res.run_id


def test_claim_tasks_carries_event_payload(engine: Engine) -> None:
    register_basic(engine)
    res = engine.spawn("waits", {})
    engine.work_batch()
    engine.emit_event("go", {"p": 1})
    claimed = engine.claim_tasks()
    assert [c.task_id for c in claimed] == [res.task_id]
    assert claimed[0].event_payload == {"p": 1}
