"""Steps: run-once semantics across replays, naming, handles, decorators and failures."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from absurd_orm import Engine, StepHandle, TaskContext, get_current_context


def test_step_function_runs_once_across_replays(engine: Engine) -> None:
    calls = []

    @engine.register_task(name="job")
    def job(params, ctx):
        value = ctx.step("compute", lambda: calls.append(1) or len(calls) * 10)
        got = ctx.await_event("go")
        return {"value": value, "got": got}

    res = engine.spawn("job", {})
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).state == "sleeping"
    assert len(calls) == 1
    engine.emit_event("go", "yes")
    assert engine.work_batch() == 1
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed"
    assert snap.result == {"value": 10, "got": "yes"}
    assert len(calls) == 1  # the replay returned the stored value
    assert engine.get_task(res.task_id).checkpoints["compute"] == 10


def test_step_value_survives_a_retry(engine: Engine) -> None:
    calls = {"step": 0, "handler": 0}

    @engine.register_task(name="job")
    def job(params, ctx):
        calls["handler"] += 1

        def side_effect():
            calls["step"] += 1
            return "charged"

        charged = ctx.step("charge", side_effect)
        if ctx.attempt == 1:
            raise RuntimeError("boom after the step")
        return charged

    res = engine.spawn("job", {}, max_attempts=2)
    assert engine.work_batch() == 1  # attempt 1 fails after storing the step
    assert engine.work_batch() == 1  # attempt 2 replays it
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "completed" and snap.result == "charged"
    assert calls == {"step": 1, "handler": 2}


def test_repeated_step_names_are_numbered(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        out = [ctx.step("loop", lambda i=i: i * i) for i in range(1, 4)]
        out.append(ctx.step("other", lambda: "o"))
        return out

    res = engine.spawn("job", {})
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == [1, 4, 9, "o"]
    assert engine.get_task(res.task_id).checkpoints == {
        "loop": 1, "loop#2": 4, "loop#3": 9, "other": "o"}


def test_numbering_is_stable_across_replays(engine: Engine) -> None:
    calls = []

    @engine.register_task(name="job")
    def job(params, ctx):
        a = ctx.step("s", lambda: calls.append("a") or "A")
        b = ctx.step("s", lambda: calls.append("b") or "B")
        ctx.await_event("go")
        c = ctx.step("s", lambda: calls.append("c") or "C")
        return [a, b, c]

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.emit_event("go")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == ["A", "B", "C"]
    assert calls == ["a", "b", "c"]
    assert set(engine.get_task(res.task_id).checkpoints) == {"s", "s#2", "s#3", "$awaitEvent:go"}


def test_begin_and_complete_step(engine: Engine) -> None:
    handles: list[StepHandle] = []

    @engine.register_task(name="job")
    def job(params, ctx):
        handle = ctx.begin_step("manual")
        handles.append(handle)
        if handle.done:
            value = handle.state
        else:
            value = ctx.complete_step(handle, {"stored": True})
        ctx.await_event("go")
        return value

    res = engine.spawn("job", {})
    engine.work_batch()
    assert len(handles) == 1
    assert handles[0].done is False
    assert handles[0].name == "manual" and handles[0].checkpoint_name == "manual"
    engine.emit_event("go")
    engine.work_batch()
    assert len(handles) == 2
    assert handles[1].done is True
    assert handles[1].state == {"stored": True}
    assert engine.fetch_task_result(res.task_id).result == {"stored": True}


def test_complete_step_on_done_handle_returns_stored_state(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        h = ctx.begin_step("x")
        first = ctx.complete_step(h, 1) if not h.done else h.state
        ctx.await_event("go")
        again = ctx.complete_step(ctx.begin_step("x"), 999)  # same name again -> "x#2"
        return [first, again]

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.emit_event("go")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == [1, 999]
    assert engine.get_task(res.task_id).checkpoints["x"] == 1


def test_run_step_decorator_forms(engine: Engine) -> None:
    calls = []

    @engine.register_task(name="job")
    def job(params, ctx):
        @ctx.run_step
        def bare():
            calls.append("bare")
            return 1

        @ctx.run_step()
        def called():
            calls.append("called")
            return 2

        @ctx.run_step("custom")
        def named():
            calls.append("named")
            return 3

        ctx.await_event("go")
        return [bare, called, named]

    res = engine.spawn("job", {})
    engine.work_batch()
    engine.emit_event("go")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == [1, 2, 3]
    assert calls == ["bare", "called", "named"]  # replay used the stored values
    checkpoints = engine.get_task(res.task_id).checkpoints
    assert checkpoints["bare"] == 1
    assert checkpoints["called"] == 2
    assert checkpoints["custom"] == 3
    assert "named" not in checkpoints


@pytest.mark.parametrize("bad", [
    datetime(2030, 1, 1, tzinfo=timezone.utc), Decimal("1"), {1, 2}, float("nan"), object(),
], ids=["datetime", "decimal", "set", "nan", "object"])
def test_step_returning_non_json_fails_the_run_without_checkpoint(engine: Engine, bad) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.step("ok", lambda: "fine")
        ctx.step("bad", lambda: bad)
        return "unreachable"

    res = engine.spawn("job", {}, max_attempts=1)
    assert engine.work_batch() == 1
    info = engine.get_task(res.task_id)
    assert info.state == "failed"
    assert info.runs[0].state == "failed"
    assert "not" in info.runs[0].failure["message"] and "JSON" in info.runs[0].failure["message"]
    assert info.checkpoints == {"ok": "fine"}  # nothing stored for the bad step


def test_step_returning_non_json_failure_is_named_type_error(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.step("bad", lambda: Decimal("1"))

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    assert engine.get_task(res.task_id).runs[0].failure["name"] == "TypeError"
    assert engine.fetch_task_result(res.task_id).failure["name"] == "TypeError"


def test_step_returning_non_json_raises_type_error_inside_handler(engine: Engine) -> None:
    caught = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.step("bad", lambda: {"when": datetime(2030, 1, 1, tzinfo=timezone.utc)})
        except TypeError as exc:
            caught.append(exc)
        return "recovered"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert len(caught) == 1 and "datetime" in str(caught[0])
    assert engine.fetch_task_result(res.task_id).result == "recovered"
    assert engine.get_task(res.task_id).checkpoints == {}


def test_exception_in_step_fails_the_run_without_checkpoint(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        def explode():
            raise KeyError("missing-thing")

        ctx.step("explode", explode)

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    info = engine.get_task(res.task_id)
    assert info.state == "failed"
    assert info.runs[0].failure["name"] == "KeyError"
    assert "missing-thing" in info.runs[0].failure["message"]
    assert info.checkpoints == {}


def test_failed_step_is_run_again_on_retry(engine: Engine) -> None:
    calls = []

    @engine.register_task(name="job")
    def job(params, ctx):
        def flaky():
            calls.append(ctx.attempt)
            if ctx.attempt == 1:
                raise RuntimeError("transient")
            return "ok"

        return ctx.step("flaky", flaky)

    res = engine.spawn("job", {}, max_attempts=3)
    engine.work_batch()
    engine.work_batch()
    assert calls == [1, 2]
    assert engine.fetch_task_result(res.task_id).result == "ok"
    info = engine.get_task(res.task_id)
    assert [r.state for r in info.runs] == ["failed", "completed"]
    assert info.runs[0].failure["name"] == "RuntimeError"


def test_handler_returning_non_json_fails_the_run(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        return {"when": datetime(2030, 1, 1, tzinfo=timezone.utc)}

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    snap = engine.fetch_task_result(res.task_id)
    assert snap.state == "failed"
    assert "datetime" in snap.failure["message"]
    assert engine.get_task(res.task_id).result is None
    assert engine.get_task(res.task_id).runs[0].result is None


def test_handler_returning_non_json_failure_is_named_type_error(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        return {1, 2, 3}

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).failure["name"] == "TypeError"


def test_handler_exception_failure_has_name_message_traceback(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        raise ValueError("bad input 42")

    res = engine.spawn("job", {}, max_attempts=1)
    engine.work_batch()
    failure = engine.fetch_task_result(res.task_id).failure
    assert failure["name"] == "ValueError"
    assert failure["message"] == "bad input 42"
    assert "bad input 42" in failure["traceback"]


def test_get_current_context(engine: Engine) -> None:
    seen = []

    @engine.register_task(name="job")
    def job(params, ctx):
        seen.append(get_current_context() is ctx)
        return None

    assert get_current_context() is None
    engine.spawn("job", {})
    engine.work_batch()
    assert seen == [True]
    assert get_current_context() is None  # reset after the run


def test_get_current_context_reset_after_failure(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        raise RuntimeError("x")

    engine.spawn("job", {})
    engine.work_batch()
    assert get_current_context() is None


def test_context_identity_fields(engine: Engine) -> None:
    seen = {}

    @engine.register_task(name="job")
    def job(params, ctx: TaskContext):
        seen.update(task_id=ctx.task_id, run_id=ctx.run_id, attempt=ctx.attempt,
                    queue_name=ctx.queue_name, task_name=ctx.task_name,
                    headers=dict(ctx.headers))
        if ctx.attempt == 1:
            raise RuntimeError("retry me")
        return None

    res = engine.spawn("job", {}, headers={"trace": "t1", "n": 3}, max_attempts=2)
    engine.work_batch()
    assert seen == {"task_id": res.task_id, "run_id": res.run_id, "attempt": 1,
                    "queue_name": "default", "task_name": "job",
                    "headers": {"trace": "t1", "n": 3}}
    engine.work_batch()
    second_run = engine.get_task(res.task_id).runs[1].run_id
    assert seen["attempt"] == 2
    assert seen["task_id"] == res.task_id
    assert seen["run_id"] == second_run != res.run_id


def test_context_headers_empty_and_read_only(engine: Engine) -> None:
    seen = []

    @engine.register_task(name="job")
    def job(params, ctx):
        seen.append(dict(ctx.headers))
        with pytest.raises(TypeError):
            ctx.headers["x"] = 1  # type: ignore[index]
        return "ok"

    res = engine.spawn("job", {})
    engine.work_batch()
    assert seen == [{}]
    assert engine.fetch_task_result(res.task_id).result == "ok"


def test_context_on_another_queue(engine: Engine) -> None:
    engine.create_queue("side")
    seen = []

    @engine.register_task(name="job", queue="side")
    def job(params, ctx):
        seen.append(ctx.queue_name)
        return ctx.step("s", lambda: 1)

    res = engine.spawn("job", {})
    assert engine.work_batch() == 0  # nothing on the default queue
    assert engine.work_batch(queue_name="side") == 1
    assert seen == ["side"]
    assert engine.get_task(res.task_id, queue_name="side").checkpoints == {"s": 1}


@pytest.mark.parametrize("name", ["", "   "])
def test_blank_step_name_is_value_error(engine: Engine, name: str) -> None:
    caught = []

    @engine.register_task(name="job")
    def job(params, ctx):
        try:
            ctx.step(name, lambda: 1)
        except ValueError as exc:
            caught.append(exc)
        return "ok"

    engine.spawn("job", {})
    engine.work_batch()
    assert len(caught) == 1


def test_step_returning_none_is_stored_and_not_rerun(engine: Engine) -> None:
    calls = []

    @engine.register_task(name="job")
    def job(params, ctx):
        value = ctx.step("nothing", lambda: calls.append(1))
        ctx.await_event("go")
        return {"value": value}

    res = engine.spawn("job", {})
    engine.work_batch()
    assert engine.get_task(res.task_id).checkpoints == {"nothing": None}
    engine.emit_event("go")
    engine.work_batch()
    assert engine.fetch_task_result(res.task_id).result == {"value": None}
    assert calls == [1]


def test_name_counter_is_shared_by_steps_sleeps_and_waits(engine: Engine) -> None:
    @engine.register_task(name="job")
    def job(params, ctx):
        ctx.step("x", lambda: "step")
        ctx.sleep_for("x", 0)
        ctx.await_event("go", step_name="x")
        return ctx.step("x", lambda: "last")

    res = engine.spawn("job", {})
    engine.emit_event("go", "ev")
    assert engine.work_batch() == 1
    assert engine.fetch_task_result(res.task_id).result == "last"
    checkpoints = engine.get_task(res.task_id).checkpoints
    assert set(checkpoints) == {"x", "x#2", "x#3", "x#4"}
    assert checkpoints["x"] == "step"
    assert checkpoints["x#3"] == "ev"
    assert checkpoints["x#4"] == "last"
