"""Leases: claim deadlines, expiry by the next claim, heartbeats and fencing of stale runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from absurd_orm import Engine, FailedTask, ManualClock
from absurd_orm.context import TaskContext
from absurd_orm.models import checkpoints, tasks
from absurd_orm.worker import execute


def _register_noop(engine: Engine, name: str = "job"):
    @engine.register_task(name=name)
    def job(params, ctx):
        return ctx.step("s", lambda: "done")

    return job


def test_claim_sets_lease_deadline(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    claimed = engine.claim_tasks(claim_timeout=30, worker_id="w1")
    assert [c.task_id for c in claimed] == [spawned.task_id]
    run = engine.get_task(spawned.task_id).runs[-1]
    assert run.state == "running"
    assert run.claimed_by == "w1"
    assert run.claim_expires_at == clock() + timedelta(seconds=30)
    assert run.started_at == clock()
    assert engine.get_task(spawned.task_id).state == "running"


def test_lease_not_expired_before_deadline(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    engine.claim_tasks(claim_timeout=30, worker_id="w1")
    clock.advance(29)
    assert engine.claim_tasks(claim_timeout=30, worker_id="w2") == []
    info = engine.get_task(spawned.task_id)
    assert len(info.runs) == 1
    assert info.runs[0].state == "running"
    assert info.runs[0].claimed_by == "w1"


def test_expired_lease_is_failed_by_next_claim_and_uses_an_attempt(
        engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None, max_attempts=3)
    first = engine.claim_tasks(claim_timeout=30, worker_id="w1")[0]
    clock.advance(31)
    again = engine.claim_tasks(claim_timeout=30, worker_id="w2")
    # the replacement run is claimable (and claimed) by the very same call
    assert len(again) == 1
    assert again[0].task_id == spawned.task_id
    assert again[0].attempt == 2
    assert again[0].run_id != first.run_id

    info = engine.get_task(spawned.task_id)
    assert info.attempts == 2
    assert info.state == "running"
    assert [r.state for r in info.runs] == ["failed", "running"]
    failure = info.runs[0].failure
    assert failure["name"] == "$ClaimTimeout"
    assert failure["message"]
    assert failure["workerId"] == "w1"
    assert failure["attempt"] == 1
    assert info.runs[0].failed_at == clock()
    assert info.runs[1].claimed_by == "w2"


def test_expired_lease_with_one_attempt_fails_the_task(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None, max_attempts=1)
    engine.claim_tasks(claim_timeout=30, worker_id="w1")
    clock.advance(30)
    assert engine.claim_tasks(claim_timeout=30, worker_id="w2") == []
    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert info.attempts == 1
    assert len(info.runs) == 1
    assert info.failure["name"] == "$ClaimTimeout"
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "failed"
    assert snap.failure["name"] == "$ClaimTimeout"


def test_expired_lease_follows_retry_strategy(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None, max_attempts=3,
                           retry_strategy={"kind": "fixed", "base_seconds": 10})
    engine.claim_tasks(claim_timeout=30, worker_id="w1")
    clock.advance(31)
    assert engine.claim_tasks(worker_id="w2") == []
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert info.runs[1].available_at == clock() + timedelta(seconds=10)


def test_heartbeat_extends_the_lease(engine: Engine, clock: ManualClock) -> None:
    seen = {}

    @engine.register_task(name="hb")
    def hb(params, ctx):
        ctx.heartbeat(60)
        seen["deadline"] = engine.get_task(ctx.task_id).runs[-1].claim_expires_at
        clock.advance(45)  # past the original 30 s lease, within the extended one
        seen["stolen"] = engine.claim_tasks(claim_timeout=30, worker_id="w2")
        seen["state"] = engine.get_task(ctx.task_id).runs[-1].state
        return ctx.step("after", lambda: "ok")

    spawned = engine.spawn("hb", None)
    start = clock()
    assert engine.work_batch(claim_timeout=30, worker_id="w1") == 1
    assert seen["deadline"] == start + timedelta(seconds=60)
    assert seen["stolen"] == []
    assert seen["state"] == "running"
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == "ok"
    assert len(info.runs) == 1


def test_heartbeat_default_is_the_claim_timeout(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    claimed = engine.claim_tasks(claim_timeout=30, worker_id="w1")[0]
    ctx = TaskContext(engine, claimed, 30)
    clock.advance(20)
    ctx.heartbeat()
    assert engine.get_task(spawned.task_id).runs[0].claim_expires_at == clock() + timedelta(seconds=30)
    clock.advance(25)  # 45 s after the claim: beyond the original lease
    assert engine.claim_tasks(worker_id="w2") == []
    assert engine.get_task(spawned.task_id).runs[0].state == "running"


def test_checkpoint_write_extends_the_lease(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    claimed = engine.claim_tasks(claim_timeout=30, worker_id="w1")[0]
    ctx = TaskContext(engine, claimed, 30)
    clock.advance(20)
    assert ctx.step("s1", lambda: 1) == 1
    assert engine.get_task(spawned.task_id).runs[0].claim_expires_at == clock() + timedelta(seconds=30)
    clock.advance(20)  # 40 s after the claim
    assert engine.claim_tasks(worker_id="w2") == []
    info = engine.get_task(spawned.task_id)
    assert info.runs[0].state == "running"
    assert len(info.runs) == 1
    clock.advance(11)  # 51 s: the extended lease has now expired
    assert engine.claim_tasks(worker_id="w2")[0].attempt == 2
    assert engine.get_task(spawned.task_id).runs[0].failure["name"] == "$ClaimTimeout"


@pytest.mark.parametrize("seconds", [0, -1, -0.5])
def test_heartbeat_rejects_non_positive(engine: Engine, clock: ManualClock, seconds: float) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    claimed = engine.claim_tasks(claim_timeout=30, worker_id="w1")[0]
    ctx = TaskContext(engine, claimed, 30)
    with pytest.raises(ValueError):
        ctx.heartbeat(seconds)
    assert engine.get_task(spawned.task_id).runs[0].claim_expires_at == clock() + timedelta(seconds=30)
    ctx.heartbeat(5)  # the context is still usable
    assert engine.get_task(spawned.task_id).runs[0].claim_expires_at == clock() + timedelta(seconds=5)


def test_claim_timeout_zero_means_no_lease(engine: Engine, clock: ManualClock) -> None:
    _register_noop(engine)
    spawned = engine.spawn("job", None)
    claimed = engine.claim_tasks(claim_timeout=0, worker_id="w1")
    assert claimed[0].claim_expires_at is None
    info = engine.get_task(spawned.task_id)
    assert info.runs[0].claim_expires_at is None
    assert info.runs[0].state == "running"
    clock.advance(10 * 24 * 3600)
    assert engine.claim_tasks(claim_timeout=30, worker_id="w2") == []
    info = engine.get_task(spawned.task_id)
    assert info.runs[0].state == "running"
    assert info.runs[0].claimed_by == "w1"
    assert len(info.runs) == 1
    # a step keeps "no lease" (it does not invent one)
    ctx = TaskContext(engine, claimed[0], 0)
    ctx.step("s", lambda: 1)
    assert engine.get_task(spawned.task_id).runs[0].claim_expires_at is None


# ---------------------------------------------------------------------- fencing


def _stale_and_fresh(engine: Engine, clock: ManualClock, calls: dict):
    @engine.register_task(name="fenced")
    def fenced(params, ctx):
        def x():
            calls["x"] = calls.get("x", 0) + 1
            return {"by": ctx.attempt}

        return {"x": ctx.step("x", x), "attempt": ctx.attempt}

    spawned = engine.spawn("fenced", {"n": 1}, max_attempts=3)
    stale_claim = engine.claim_tasks(claim_timeout=10, worker_id="w1")[0]
    stale = TaskContext(engine, stale_claim, 10)
    clock.advance(11)
    fresh_claim = engine.claim_tasks(claim_timeout=10, worker_id="w2")[0]
    assert fresh_claim.task_id == spawned.task_id
    assert fresh_claim.attempt == 2
    return spawned, stale_claim, stale, fresh_claim


def _count(engine: Engine, table: sa.Table, **where) -> int:
    with engine.sa_engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(table)
        for k, v in where.items():
            stmt = stmt.where(table.c[k] == v)
        return conn.scalar(stmt)


def test_stale_run_is_fenced_and_new_attempt_completes_once(
        engine: Engine, clock: ManualClock) -> None:
    calls: dict = {}
    spawned, stale_claim, stale, fresh_claim = _stale_and_fresh(engine, clock, calls)

    with pytest.raises(FailedTask):
        stale.step("x", lambda: {"by": "stale"})
    assert engine.get_task(spawned.task_id).checkpoints == {}
    assert _count(engine, checkpoints, task_id=spawned.task_id) == 0

    with pytest.raises(FailedTask):
        engine._repo.complete_run(stale_claim.queue_name, stale_claim.task_id,
                                  stale_claim.run_id, {"by": "stale"})
    info = engine.get_task(spawned.task_id)
    assert info.state == "running"
    assert info.runs[0].state == "failed"
    assert info.runs[0].failure["name"] == "$ClaimTimeout"
    assert info.runs[1].state == "running"

    execute(engine, fresh_claim, 10)
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == {"x": {"by": 2}, "attempt": 2}
    assert [r.state for r in info.runs] == ["failed", "completed"]
    assert calls["x"] == 1
    assert info.checkpoints == {"x": {"by": 2}}

    # still refused after the new attempt finished; nothing is overwritten
    with pytest.raises(FailedTask):
        engine._repo.complete_run(stale_claim.queue_name, stale_claim.task_id,
                                  stale_claim.run_id, {"by": "stale"})
    with pytest.raises(FailedTask):
        engine._repo.fail_run(stale_claim.run_id, {"name": "X", "message": "stale"})
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == {"x": {"by": 2}, "attempt": 2}
    assert engine.work_batch() == 0


def test_stale_context_that_swallowed_failed_task_keeps_raising(
        engine: Engine, clock: ManualClock) -> None:
    spawned, _, stale, _ = _stale_and_fresh(engine, clock, {})
    try:
        stale.step("x", lambda: 1)
    except FailedTask:
        pass
    else:
        pytest.fail("stale step was not refused")
    ran = []
    with pytest.raises(FailedTask):
        stale.step("y", lambda: ran.append(1))
    assert ran == []  # refused before running the step function
    with pytest.raises(FailedTask):
        stale.heartbeat(30)
    with pytest.raises(FailedTask):
        stale.sleep_for("nap", 5)
    with pytest.raises(FailedTask):
        stale.await_event("ev")
    with pytest.raises(FailedTask):
        stale.spawn("fenced", {"child": True})
    assert engine.get_task(spawned.task_id).checkpoints == {}
    assert _count(engine, tasks) == 1


@pytest.mark.parametrize("op", ["step", "heartbeat", "sleep_for", "await_event", "spawn",
                                "await_task_result", "fail_run"])
def test_every_write_of_a_stale_run_is_refused(engine: Engine, clock: ManualClock, op: str) -> None:
    spawned, stale_claim, stale, _ = _stale_and_fresh(engine, clock, {})
    other = engine.spawn("fenced", {"other": True})
    calls = {
        "step": lambda: stale.step("x", lambda: 1),
        "heartbeat": lambda: stale.heartbeat(60),
        "sleep_for": lambda: stale.sleep_for("nap", 5),
        "await_event": lambda: stale.await_event("ev", timeout=5),
        "spawn": lambda: stale.spawn("fenced", {"child": True}),
        "await_task_result": lambda: stale.await_task_result(other.task_id),
        "fail_run": lambda: engine._repo.fail_run(stale_claim.run_id,
                                                  {"name": "E", "message": "m"}),
    }
    with pytest.raises(FailedTask):
        calls[op]()
    info = engine.get_task(spawned.task_id)
    assert info.checkpoints == {}
    assert info.state == "running"
    assert info.attempts == 2
    assert [r.state for r in info.runs] == ["failed", "running"]
    assert info.runs[0].failure["name"] == "$ClaimTimeout"
    assert _count(engine, tasks) == 2  # no child was spawned
    with engine.sa_engine.connect() as conn:
        from absurd_orm.models import waits
        assert conn.scalar(sa.select(sa.func.count()).select_from(waits)) == 0


def test_handler_swallowing_fencing_error_does_not_complete(
        engine: Engine, clock: ManualClock) -> None:
    stash = {}

    @engine.register_task(name="swallow")
    def swallow(params, ctx):
        if ctx.attempt == 1:
            clock.advance(11)  # our lease (10 s) runs out ...
            stash["fresh"] = engine.claim_tasks(claim_timeout=10, worker_id="w2")  # ... and is taken
            try:
                ctx.step("x", lambda: "stale")
            except FailedTask:
                pass
            return "stale result"
        return ctx.step("x", lambda: "fresh")

    spawned = engine.spawn("swallow", None, max_attempts=3)
    assert engine.work_batch(claim_timeout=10, worker_id="w1") == 1
    assert len(stash["fresh"]) == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "running"
    assert info.result is None
    assert [r.state for r in info.runs] == ["failed", "running"]

    execute(engine, stash["fresh"][0], 10)
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == "fresh"
    assert info.checkpoints == {"x": "fresh"}
