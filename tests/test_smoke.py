"""End-to-end smoke test: a task with a step, an event, a sleep and a child."""

from __future__ import annotations

from absurd_orm import Engine, ManualClock


def test_task_runs_to_completion_through_suspensions(engine: Engine, clock: ManualClock) -> None:
    calls = {"a": 0}

    @engine.register_task(name="child")
    def child(params, ctx):
        return ctx.step("double", lambda: params["n"] * 2)

    @engine.register_task(name="order")
    def order(params, ctx):
        def a():
            calls["a"] += 1
            return params["x"] + 1

        first = ctx.step("a", a)
        kid = ctx.spawn("child", {"n": first})
        got = ctx.await_event("go")
        ctx.sleep_for("nap", 10)
        snap = ctx.await_task_result(kid.task_id)
        return {"a": first, "ev": got, "child": snap.result}

    spawned = engine.spawn("order", {"x": 1})
    assert engine.work_batch(batch_size=10) == 1  # suspends on the event
    assert engine.fetch_task_result(spawned.task_id).state == "sleeping"
    engine.emit_event("go", {"ok": True})
    assert engine.work_batch(batch_size=10) == 2  # the child and the woken parent
    clock.advance(11)
    assert engine.work_batch(batch_size=10) == 1
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result == {"a": 2, "ev": {"ok": True}, "child": 4}
    assert calls["a"] == 1  # replays returned the stored step
