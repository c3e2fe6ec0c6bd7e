"""Child tasks: checkpointed spawn and durable await_task_result (same or other queue)."""

from __future__ import annotations

import builtins
import uuid

import pytest
import sqlalchemy as sa

import absurd_orm
from absurd_orm import Engine, ManualClock, TaskResultSnapshot
from absurd_orm.models import tasks, waits


def _count(engine: Engine, table: sa.Table, **where) -> int:
    with engine.sa_engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(table)
        for k, v in where.items():
            stmt = stmt.where(table.c[k] == v)
        return conn.scalar(stmt)


def _drain(engine: Engine, queue_name: str | None = None, limit: int = 50) -> int:
    total = 0
    for _ in range(limit):
        n = engine.work_batch(batch_size=10, queue_name=queue_name)
        if n == 0:
            return total
        total += n
    raise AssertionError("work never ran out")


def test_spawn_is_checkpointed_across_replays(engine: Engine, clock: ManualClock) -> None:
    seen = []

    @engine.register_task(name="child")
    def child(params, ctx):
        return params["n"] * 2

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", {"n": 21})
        seen.append((kid.task_id, kid.run_id, kid.attempt))
        ctx.sleep_for("nap", 10)
        return kid.task_id

    spawned = engine.spawn("parent", None)
    assert engine.work_batch(batch_size=1) == 1  # the parent spawns, then suspends
    assert _count(engine, tasks, task_name="child") == 1
    clock.advance(11)
    _drain(engine)
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert _count(engine, tasks, task_name="child") == 1
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result == seen[0][0]
    assert engine.fetch_task_result(seen[0][0]) == TaskResultSnapshot("completed", 42)
    assert "$spawn:child" in engine.get_task(spawned.task_id).checkpoints


def test_repeated_spawns_make_distinct_children(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="child")
    def child(params, ctx):
        return params

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kids = [ctx.spawn("child", i).task_id for i in range(3)]
        ctx.sleep_for("nap", 1)
        return kids

    spawned = engine.spawn("parent", None)
    engine.work_batch()
    clock.advance(2)
    _drain(engine)
    result = engine.fetch_task_result(spawned.task_id).result
    assert len(set(result)) == 3
    assert _count(engine, tasks, task_name="child") == 3


def _parent_awaiting(engine: Engine, child_body, *, child_opts=None, await_kw=None):
    got = []

    @engine.register_task(name="child")
    def child(params, ctx):
        return child_body(params, ctx)

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", {"v": 7}, **(child_opts or {}))
        snap = ctx.await_task_result(kid.task_id, **(await_kw or {}))
        got.append(snap)
        return {"child": kid.task_id, "state": snap.state, "result": snap.result,
                "failure": snap.failure}

    return got


def test_await_child_on_same_queue_suspends_durably(engine: Engine, clock: ManualClock) -> None:
    got = _parent_awaiting(engine, lambda p, ctx: p["v"] + 1)
    spawned = engine.spawn("parent", None)

    assert engine.work_batch(batch_size=1, claim_timeout=30) == 1  # the parent only
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    run = info.runs[0]
    assert run.state == "sleeping"
    assert run.claim_expires_at is None
    assert _count(engine, waits, task_id=spawned.task_id) == 1
    assert got == []

    # well past any lease: the parent holds no claim, so it is not failed as a timeout
    clock.advance(1000)
    claimed = engine.claim_tasks(batch_size=10, claim_timeout=30)
    assert [c.task_name for c in claimed] == ["child"]  # the parent is not claimable
    from absurd_orm.worker import execute
    execute(engine, claimed[0], 30)

    # the child's completion woke the parent in the same transaction
    info = engine.get_task(spawned.task_id)
    assert info.state == "pending"
    assert [r.state for r in info.runs] == ["pending"]
    assert len(info.runs) == 1
    assert _count(engine, waits, task_id=spawned.task_id) == 0
    child_id = engine.get_task(spawned.task_id).checkpoints["$spawn:child"]["task_id"]
    assert info.checkpoints[f"$awaitTaskResult:{child_id}"] == {"state": "completed", "result": 8}

    assert engine.work_batch() == 1
    assert got == [TaskResultSnapshot(state="completed", result=8)]
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result == {"child": child_id, "state": "completed", "result": 8, "failure": None}
    assert engine.get_task(spawned.task_id).attempts == 1


def test_await_child_failure(engine: Engine) -> None:
    def body(p, ctx):
        raise KeyError("nope")

    got = _parent_awaiting(engine, body, child_opts={"max_attempts": 1})
    spawned = engine.spawn("parent", None)
    _drain(engine)
    assert len(got) == 1
    assert got[0].state == "failed"
    assert got[0].result is None
    assert got[0].failure["name"] == "KeyError"
    assert "nope" in got[0].failure["message"]
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result["state"] == "failed"


def test_await_child_retried_then_failed_wakes_once_at_the_end(engine: Engine) -> None:
    calls = {"n": 0}

    def body(p, ctx):
        calls["n"] += 1
        raise RuntimeError(f"attempt {ctx.attempt}")

    got = _parent_awaiting(engine, body, child_opts={"max_attempts": 3})
    spawned = engine.spawn("parent", None)
    _drain(engine)
    assert calls["n"] == 3
    assert len(got) == 1
    assert got[0].state == "failed"
    assert got[0].failure["message"] == "attempt 3"
    assert engine.fetch_task_result(spawned.task_id).state == "completed"


def test_await_child_cancelled(engine: Engine, clock: ManualClock) -> None:
    def body(p, ctx):
        ctx.sleep_for("long", 1000)
        return "never"

    got = _parent_awaiting(engine, body)
    spawned = engine.spawn("parent", None)
    assert engine.work_batch(batch_size=1) == 1  # parent suspends
    assert engine.work_batch(batch_size=1) == 1  # child sleeps
    child_id = engine.get_task(spawned.task_id).checkpoints["$spawn:child"]["task_id"]
    engine.cancel_task(child_id)
    assert engine.get_task(spawned.task_id).state == "pending"
    assert engine.work_batch() == 1
    assert got == [TaskResultSnapshot(state="cancelled")]
    assert engine.fetch_task_result(spawned.task_id).result["state"] == "cancelled"


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
def test_await_already_finished_child_returns_at_once(engine: Engine, outcome: str) -> None:
    got = []

    @engine.register_task(name="child")
    def child(params, ctx):
        if outcome == "failed":
            raise RuntimeError("bad child")
        return "kid"

    @engine.register_task(name="parent")
    def parent(params, ctx):
        snap = ctx.await_task_result(params["child"])
        got.append(snap)
        return snap.state

    kid = engine.spawn("child", None, max_attempts=1)
    if outcome == "cancelled":
        engine.cancel_task(kid.task_id)
    else:
        assert engine.work_batch() == 1
    spawned = engine.spawn("parent", {"child": kid.task_id})
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == outcome
    assert len(info.runs) == 1
    assert got[0].state == outcome
    if outcome == "completed":
        assert got[0].result == "kid"
    if outcome == "failed":
        assert got[0].failure["message"] == "bad child"
    assert _count(engine, waits) == 0


def test_await_timeout_is_deterministic_on_replay(engine: Engine, clock: ManualClock) -> None:
    seen = []

    @engine.register_task(name="child")
    def child(params, ctx):
        ctx.sleep_for("slow", 100)
        return "late"

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", None)
        try:
            snap = ctx.await_task_result(kid.task_id, timeout=5)
            outcome = snap.state
        except absurd_orm.TimeoutError as exc:
            assert isinstance(exc, builtins.TimeoutError)
            outcome = "timeout"
        seen.append(outcome)
        ctx.sleep_for("after", 200)
        return outcome

    spawned = engine.spawn("parent", None)
    assert engine.work_batch(batch_size=1) == 1  # parent suspends on the child
    assert engine.work_batch(batch_size=1) == 1  # child sleeps 100 s
    clock.advance(4)
    assert engine.work_batch() == 0  # not timed out yet
    clock.advance(2)  # +6 s
    assert engine.work_batch() == 1  # the parent resumes with a timeout
    assert seen == ["timeout"]
    assert engine.get_task(spawned.task_id).state == "sleeping"

    clock.advance(100)  # the child finishes now, before the parent replays
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(engine.get_task(spawned.task_id)
                                    .checkpoints["$spawn:child"]["task_id"]).state == "completed"
    clock.advance(200)
    _drain(engine)
    assert seen == ["timeout", "timeout"]
    assert engine.fetch_task_result(spawned.task_id) == TaskResultSnapshot("completed", "timeout")


def test_uncaught_await_timeout_fails_the_run(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="child")
    def child(params, ctx):
        ctx.sleep_for("slow", 100)

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", None)
        return ctx.await_task_result(kid.task_id, timeout=5).state

    spawned = engine.spawn("parent", None, max_attempts=1)
    engine.work_batch(batch_size=2)
    engine.work_batch(batch_size=2)
    clock.advance(6)
    engine.work_batch(batch_size=2)
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "failed"
    assert snap.failure["name"] == "TimeoutError"


def test_await_child_on_another_queue(engine: Engine) -> None:
    engine.create_queue("other")

    @engine.register_task(name="child", queue="other")
    def child(params, ctx):
        return {"from": ctx.queue_name}

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", None)
        return ctx.await_task_result(kid.task_id, queue_name="other").result

    spawned = engine.spawn("parent", None)
    assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).state == "sleeping"
    child_id = engine.get_task(spawned.task_id).checkpoints["$spawn:child"]["task_id"]
    assert engine.get_task(child_id) is None  # not on the default queue
    assert engine.get_task(child_id, queue_name="other").state == "pending"
    assert engine.work_batch() == 0  # nothing to do on the default queue
    assert engine.work_batch(queue_name="other") == 1
    assert engine.get_task(spawned.task_id).state == "pending"
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(spawned.task_id).result == {"from": "other"}


def test_two_parents_await_the_same_child(engine: Engine) -> None:
    @engine.register_task(name="child")
    def child(params, ctx):
        ctx.await_event("release")
        return "shared"

    @engine.register_task(name="waiter")
    def waiter(params, ctx):
        return ctx.await_task_result(params["child"]).result

    kid = engine.spawn("child", None)
    a = engine.spawn("waiter", {"child": kid.task_id})
    b = engine.spawn("waiter", {"child": kid.task_id})
    _drain(engine)
    assert engine.get_task(a.task_id).state == "sleeping"
    assert engine.get_task(b.task_id).state == "sleeping"
    engine.emit_event("release")
    _drain(engine)
    assert engine.fetch_task_result(a.task_id).result == "shared"
    assert engine.fetch_task_result(b.task_id).result == "shared"


def test_cancelled_parent_is_not_woken_by_child(engine: Engine) -> None:
    got = _parent_awaiting(engine, lambda p, ctx: ctx.await_event("go"))
    spawned = engine.spawn("parent", None)
    _drain(engine)
    engine.cancel_task(spawned.task_id)
    assert _count(engine, waits, task_id=spawned.task_id) == 0
    engine.emit_event("go", 1)
    _drain(engine)
    assert got == []
    assert engine.get_task(spawned.task_id).state == "cancelled"
    child_id = engine.get_task(spawned.task_id).checkpoints["$spawn:child"]["task_id"]
    assert engine.fetch_task_result(child_id).state == "completed"


def test_await_own_task_id_is_value_error(engine: Engine) -> None:
    seen = []

    @engine.register_task(name="narcissus")
    def narcissus(params, ctx):
        try:
            ctx.await_task_result(ctx.task_id)
        except ValueError as exc:
            seen.append(exc)
        return "ok"

    spawned = engine.spawn("narcissus", None)
    assert engine.work_batch() == 1
    assert len(seen) == 1
    assert engine.fetch_task_result(spawned.task_id) == TaskResultSnapshot("completed", "ok")
    assert _count(engine, waits) == 0


def test_await_unknown_task_fails_the_run(engine: Engine) -> None:
    seen = []

    @engine.register_task(name="lost")
    def lost(params, ctx):
        try:
            ctx.await_task_result(params["id"])
        except absurd_orm.TaskNotFound as exc:
            seen.append(exc)
            raise

    spawned = engine.spawn("lost", {"id": str(uuid.uuid4())}, max_attempts=1)
    assert engine.work_batch() == 1
    assert len(seen) == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert info.failure["name"] == "TaskNotFound"
    assert info.runs[0].state == "failed"
    assert _count(engine, waits) == 0


def test_child_finishing_after_the_timeout_still_times_out(engine: Engine, clock: ManualClock) -> None:
    engine.create_queue("other")
    seen = []

    @engine.register_task(name="child", queue="other")
    def child(params, ctx):
        return "late"

    @engine.register_task(name="parent")
    def parent(params, ctx):
        kid = ctx.spawn("child", None)
        try:
            seen.append(ctx.await_task_result(kid.task_id, queue_name="other", timeout=5).state)
        except absurd_orm.TimeoutError:
            seen.append("timeout")
        return seen[-1]

    spawned = engine.spawn("parent", None)
    assert engine.work_batch() == 1
    clock.advance(6)
    assert engine.work_batch(queue_name="other") == 1  # the child completes after the deadline
    assert engine.work_batch() == 1
    assert seen == ["timeout"]
    assert engine.fetch_task_result(spawned.task_id).result == "timeout"
    assert _count(engine, waits) == 0


def test_engine_await_unknown_task_raises_task_not_found(engine: Engine) -> None:
    with pytest.raises(absurd_orm.TaskNotFound):
        engine.await_task_result(str(uuid.uuid4()), timeout=1)


def test_ctx_await_malformed_task_id_fails_with_task_not_found(
        engine: Engine, backend: str, request: pytest.FixtureRequest) -> None:
    @engine.register_task(name="lost")
    def lost(params, ctx):
        ctx.await_task_result("not-a-task-id")

    spawned = engine.spawn("lost", None, max_attempts=1)
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "failed"
    assert info.failure["name"] == "TaskNotFound"
