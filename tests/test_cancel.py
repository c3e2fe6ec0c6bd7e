"""Cancellation: manual cancel_task in every state, and the max_delay / max_duration policies."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from absurd_orm import CancelledTask, Engine, InvalidTaskState, ManualClock, TaskNotFound
from absurd_orm.models import waits


def _waits(engine: Engine, task_id: str) -> int:
    with engine.sa_engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(waits)
                           .where(waits.c.task_id == task_id))


def _register_simple(engine: Engine, name: str = "simple", **opts):
    calls = {"n": 0}

    @engine.register_task(name=name, **opts)
    def simple(params, ctx):
        calls["n"] += 1
        return "ran"

    return calls


def test_cancel_pending_task(engine: Engine, clock: ManualClock) -> None:
    calls = _register_simple(engine)
    spawned = engine.spawn("simple", None)
    clock.advance(5)
    engine.cancel_task(spawned.task_id)
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.cancelled_at == clock()
    assert [r.state for r in info.runs] == ["cancelled"]
    assert engine.work_batch() == 0
    assert calls["n"] == 0
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "cancelled"
    assert snap.result is None and snap.failure is None
    assert engine.await_task_result(spawned.task_id, timeout=1).state == "cancelled"


def test_cancel_twice_keeps_first_cancelled_at(engine: Engine, clock: ManualClock) -> None:
    _register_simple(engine)
    spawned = engine.spawn("simple", None)
    engine.cancel_task(spawned.task_id)
    first = engine.get_task(spawned.task_id).cancelled_at
    clock.advance(10)
    engine.cancel_task(spawned.task_id)
    assert engine.get_task(spawned.task_id).cancelled_at == first


def test_cancel_task_sleeping_on_an_event(engine: Engine, clock: ManualClock) -> None:
    calls = {"n": 0}

    @engine.register_task(name="waiter")
    def waiter(params, ctx):
        calls["n"] += 1
        return ctx.await_event("go")

    spawned = engine.spawn("waiter", None)
    assert engine.work_batch() == 1
    assert engine.get_task(spawned.task_id).state == "sleeping"
    assert _waits(engine, spawned.task_id) == 1

    engine.cancel_task(spawned.task_id)
    assert _waits(engine, spawned.task_id) == 0
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert [r.state for r in info.runs] == ["cancelled"]

    engine.emit_event("go", {"late": True})
    assert engine.work_batch() == 0
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.runs[0].state == "cancelled"
    assert calls["n"] == 1


def test_cancel_task_sleeping_on_a_timer(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="napper")
    def napper(params, ctx):
        ctx.sleep_for("nap", 10)
        return "woke"

    spawned = engine.spawn("napper", None)
    assert engine.work_batch() == 1
    engine.cancel_task(spawned.task_id)
    clock.advance(60)
    assert engine.work_batch() == 0
    assert engine.fetch_task_result(spawned.task_id).state == "cancelled"


def test_cancel_running_task_stops_it_at_next_context_call(engine: Engine) -> None:
    seen = {}

    @engine.register_task(name="victim")
    def victim(params, ctx):
        ctx.step("a", lambda: 1)
        engine.cancel_task(ctx.task_id)  # e.g. an operator, while we are running
        try:
            ctx.step("b", lambda: seen.setdefault("b_ran", True))
        except CancelledTask as exc:
            seen["raised"] = exc
            raise
        return "finished"

    spawned = engine.spawn("victim", None)
    assert engine.work_batch() == 1
    assert isinstance(seen.get("raised"), CancelledTask)
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.result is None
    assert info.checkpoints == {"a": 1}
    assert [r.state for r in info.runs] == ["cancelled"]
    assert engine.work_batch() == 0


@pytest.mark.parametrize("ending", ["return", "swallow", "raise"])
def test_cancelled_running_task_cannot_complete_or_retry(engine: Engine, ending: str) -> None:
    @engine.register_task(name="victim")
    def victim(params, ctx):
        engine.cancel_task(ctx.task_id)
        if ending == "swallow":
            try:
                ctx.step("b", lambda: 1)
            except CancelledTask:
                pass
            # a stopped context keeps refusing
            with pytest.raises(CancelledTask):
                ctx.heartbeat()
        if ending == "raise":
            raise RuntimeError("crash after cancel")
        return "finished"

    spawned = engine.spawn("victim", None, max_attempts=3)
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.result is None
    assert len(info.runs) == 1
    assert info.runs[0].state == "cancelled"
    assert engine.work_batch() == 0


def test_cancel_terminal_task_is_a_noop(engine: Engine) -> None:
    _register_simple(engine)

    @engine.register_task(name="bad")
    def bad(params, ctx):
        raise RuntimeError("no")

    done = engine.spawn("simple", None)
    failed = engine.spawn("bad", None, max_attempts=1)
    engine.work_batch(batch_size=5)
    engine.cancel_task(done.task_id)
    engine.cancel_task(failed.task_id)
    d = engine.get_task(done.task_id)
    assert d.state == "completed"
    assert d.result == "ran"
    assert d.cancelled_at is None
    assert d.runs[0].state == "completed"
    f = engine.get_task(failed.task_id)
    assert f.state == "failed"
    assert f.cancelled_at is None
    assert f.failure["message"] == "no"


def test_cancel_unknown_task(engine: Engine) -> None:
    with pytest.raises(TaskNotFound):
        engine.cancel_task(str(uuid.uuid4()))


def test_cancel_in_wrong_queue_is_not_found(engine: Engine) -> None:
    _register_simple(engine)
    engine.create_queue("other")
    spawned = engine.spawn("simple", None)
    with pytest.raises(TaskNotFound):
        engine.cancel_task(spawned.task_id, queue_name="other")
    assert engine.get_task(spawned.task_id).state == "pending"


# ---------------------------------------------------------------------- policies


def test_max_delay_cancels_a_never_started_task(engine: Engine, clock: ManualClock) -> None:
    calls = _register_simple(engine)
    spawned = engine.spawn("simple", None, cancellation={"max_delay": 60})
    assert engine.get_task(spawned.task_id).cancellation == {"max_delay": 60}
    clock.advance(61)
    assert engine.work_batch() == 0
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.cancelled_at == clock()
    assert info.runs[0].state == "cancelled"
    assert calls["n"] == 0


def test_max_delay_at_exact_deadline(engine: Engine, clock: ManualClock) -> None:
    _register_simple(engine)
    spawned = engine.spawn("simple", None, cancellation={"max_delay": 60})
    clock.advance(60)
    assert engine.work_batch() == 0
    assert engine.get_task(spawned.task_id).state == "cancelled"


def test_max_delay_task_claimable_before_deadline(engine: Engine, clock: ManualClock) -> None:
    calls = _register_simple(engine)
    spawned = engine.spawn("simple", None, cancellation={"max_delay": 60})
    clock.advance(59)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(spawned.task_id).state == "completed"
    assert calls["n"] == 1


def test_max_delay_does_not_apply_once_started(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="napper")
    def napper(params, ctx):
        ctx.sleep_for("nap", 300)
        return "woke"

    spawned = engine.spawn("napper", None, cancellation={"max_delay": 60})
    clock.advance(10)
    assert engine.work_batch() == 1  # started at +10, now sleeping
    clock.advance(300)
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(spawned.task_id) .state == "completed"


def _register_long_sleeper(engine: Engine):
    @engine.register_task(name="sleeper")
    def sleeper(params, ctx):
        ctx.sleep_for("nap", 1000)
        return "woke"


def test_max_duration_cancels_a_started_task(engine: Engine, clock: ManualClock) -> None:
    _register_long_sleeper(engine)
    spawned = engine.spawn("sleeper", None, cancellation={"max_duration": 100})
    clock.advance(50)  # enqueued at 0, first started at +50
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert info.first_started_at == clock()
    clock.advance(99)  # +149: 99 s after the first start
    assert engine.work_batch() == 0
    assert engine.get_task(spawned.task_id).state == "sleeping"
    clock.advance(1)  # +150: 100 s after the first start
    assert engine.work_batch() == 0
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.cancelled_at == clock()
    assert info.runs[0].state == "cancelled"
    clock.advance(2000)
    assert engine.work_batch() == 0
    assert engine.get_task(spawned.task_id).state == "cancelled"


def test_max_duration_cancels_a_running_task_via_another_claim(
        engine: Engine, clock: ManualClock) -> None:
    seen = {}

    @engine.register_task(name="slow")
    def slow(params, ctx):
        ctx.step("a", lambda: 1)
        clock.advance(101)
        seen["other_claim"] = engine.claim_tasks(worker_id="w2")  # runs the policy sweep
        try:
            ctx.step("b", lambda: 2)
        except CancelledTask:
            seen["cancelled"] = True
            raise
        return "done"

    spawned = engine.spawn("slow", None, cancellation={"max_duration": 100})
    assert engine.work_batch(claim_timeout=300) == 1
    assert seen["other_claim"] == []
    assert seen["cancelled"] is True
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.checkpoints == {"a": 1}


def test_retry_past_max_duration_cancels_instead(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="bad")
    def bad(params, ctx):
        raise RuntimeError("fail")

    spawned = engine.spawn("bad", None, max_attempts=5,
                           retry_strategy={"kind": "fixed", "base_seconds": 60},
                           cancellation={"max_duration": 30})
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert info.cancelled_at == clock()
    assert len(info.runs) == 1
    assert info.runs[0].state == "failed"
    assert info.runs[0].failure["message"] == "fail"
    clock.advance(120)
    assert engine.work_batch() == 0
    assert engine.fetch_task_result(spawned.task_id).state == "cancelled"


def test_retry_within_max_duration_is_scheduled(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="bad")
    def bad(params, ctx):
        raise RuntimeError("fail")

    spawned = engine.spawn("bad", None, max_attempts=5,
                           retry_strategy={"kind": "fixed", "base_seconds": 60},
                           cancellation={"max_duration": 100})
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert len(info.runs) == 2
    # the second failure, at +60, would retry at +120 >= 100: cancelled
    clock.advance(60)
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert [r.state for r in info.runs] == ["failed", "failed"]


def test_register_task_default_cancellation_applies(engine: Engine, clock: ManualClock) -> None:
    calls = _register_simple(engine, default_cancellation={"max_delay": 60})
    spawned = engine.spawn("simple", None)
    overridden = engine.spawn("simple", None, cancellation={"max_delay": 600})
    assert engine.get_task(spawned.task_id).cancellation == {"max_delay": 60}
    assert engine.get_task(overridden.task_id).cancellation == {"max_delay": 600}
    clock.advance(61)
    assert engine.work_batch(batch_size=5) == 1
    assert engine.fetch_task_result(spawned.task_id).state == "cancelled"
    assert engine.fetch_task_result(overridden.task_id).state == "completed"
    assert calls["n"] == 1


def test_workflow_spawn_uses_default_cancellation(engine: Engine, clock: ManualClock) -> None:
    @engine.register_task(name="wf", default_cancellation={"max_duration": 100})
    def wf(params, ctx):
        ctx.sleep_for("nap", 500)
        return 1

    spawned = wf.spawn(None)
    engine.work_batch()
    clock.advance(100)
    assert engine.work_batch() == 0
    assert engine.fetch_task_result(spawned.task_id).state == "cancelled"


def test_cancelled_task_cannot_be_retried(engine: Engine) -> None:
    _register_simple(engine)
    spawned = engine.spawn("simple", None)
    engine.cancel_task(spawned.task_id)
    with pytest.raises(InvalidTaskState):
        engine.retry_task(spawned.task_id)
    with pytest.raises(InvalidTaskState):
        engine.retry_task(spawned.task_id, spawn_new=True)
    info = engine.get_task(spawned.task_id)
    assert info.state == "cancelled"
    assert len(info.runs) == 1


def test_max_duration_still_applies_after_manual_retry(engine: Engine, clock: ManualClock) -> None:
    state = {"fail": True}

    @engine.register_task(name="phoenix")
    def phoenix(params, ctx):
        if state["fail"]:
            raise RuntimeError("first life")
        ctx.sleep_for("nap", 1000)
        return "woke"

    spawned = engine.spawn("phoenix", None, max_attempts=1, cancellation={"max_duration": 100})
    assert engine.work_batch() == 1  # first start at +0, fails
    assert engine.get_task(spawned.task_id).state == "failed"
    clock.advance(10)
    state["fail"] = False
    engine.retry_task(spawned.task_id)
    assert engine.work_batch() == 1  # +10: sleeping for 1000 s
    assert engine.get_task(spawned.task_id).state == "sleeping"
    clock.advance(90)  # +100 since the first start
    engine.work_batch()
    assert engine.get_task(spawned.task_id).state == "cancelled"


def test_cancel_malformed_task_id_is_not_found(engine: Engine, backend: str,
                                               request: pytest.FixtureRequest) -> None:
    with pytest.raises(TaskNotFound):
        engine.cancel_task("not-a-task-id")
