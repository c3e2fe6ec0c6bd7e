"""Property-based tests: random operation sequences keep the engine's invariants.

A hypothesis state machine drives the public API (spawn, emit_event, cancel_task,
retry_task, claim_tasks), explicit writes by specific — possibly stale — runs through
``TaskContext`` (checkpoints, waits, sleeps) and the repository (complete_run / fail_run),
and the manual clock. After every step it reads the tables and checks:

* at most one running run, and at most one live (pending/running/sleeping) run, per task;
  a live task has exactly one live run, in the task's own state;
* attempts never exceed max_attempts, and equal the latest run's attempt number;
* terminal tasks and runs stay terminal (only ``failed -> pending`` via ``retry_task``);
* a write by a run that is not running is refused (FailedTask / CancelledTask) and changes
  no checkpoint; a write by a running run succeeds;
* an emit wakes every waiter registered before it (unless its wait had timed out), stores
  the payload as the waiter's checkpoint, and no live wait outlives its event's emission.

Runs on SQLite and PostgreSQL (the ``engine`` fixture); each example starts from empty
tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from absurd_orm import CancelledTask, Engine, FailedTask, InvalidTaskState, ManualClock, SuspendTask
from absurd_orm.context import TaskContext
from absurd_orm.models import checkpoints, events, metadata, runs, tasks, waits
from absurd_orm.types import StepHandle

LIVE = {"pending", "running", "sleeping"}
TERMINAL = {"completed", "failed", "cancelled"}
EVENTS = ["ev-a", "ev-b", "ev-c"]
STEPS = ["s1", "s2", "s3"]

def wipe(eng: sa.Engine) -> None:
    """Delete every row of absurd-orm's tables but the schema version (as conftest does)."""
    with eng.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name != "absurd_schema_version":
                conn.execute(table.delete())


#: What the examples exercised (checked at the end so a weak run cannot pass silently).
COVERAGE: Counter[str] = Counter()

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much],
)


class EngineMachine(RuleBasedStateMachine):
    """One example = one fresh database state driven by random operations."""

    task_ids = Bundle("task_ids")
    claimed_runs = Bundle("claimed_runs")

    def __init__(self, engine: Engine, sa_engine: sa.Engine, clock: ManualClock) -> None:
        super().__init__()
        self.engine = engine
        self.sa = sa_engine
        self.clock = clock
        self.repo = engine._repo
        # task_id -> terminal state first seen; run_id -> terminal state first seen
        self.terminal_tasks: dict[str, str] = {}
        self.terminal_runs: dict[str, str] = {}
        self.claim_timeouts: dict[str, float] = {}
        self.step_counter = 0

    @initialize(target=task_ids, n=st.integers(1, 3), max_attempts=st.sampled_from([1, 1, 2, 3]))
    def reset(self, n: int, max_attempts: int) -> Any:
        wipe(self.sa)
        self.engine.create_queue("default")
        return multiple(*[self.engine.spawn("t", {"i": i}, queue="default",
                                            max_attempts=max_attempts).task_id
                          for i in range(n)])

    # ------------------------------------------------------------------ reading

    def _read(self, table: sa.Table, *where: Any) -> list[Any]:
        with self.sa.connect() as conn:
            return list(conn.execute(sa.select(table).where(*where)))

    def _run_state(self, run_id: str) -> str:
        [row] = self._read(runs, runs.c.run_id == run_id)
        return row.state

    def _checkpoint_rows(self) -> set[tuple[Any, ...]]:
        return {(r.task_id, r.checkpoint_name, repr(r.state), r.status, r.owner_run_id)
                for r in self._read(checkpoints)}

    def _fresh_ctx(self, claimed: Any) -> TaskContext:
        # A new context per write: the run's database state decides, not the context's memory.
        return TaskContext(self.engine, claimed, self.claim_timeouts[claimed.run_id])

    def _fenced_write(self, claimed: Any, write: Any) -> Any:
        """Do ``write``; it must succeed iff the run is running, and a refusal writes nothing."""
        state = self._run_state(claimed.run_id)
        before = self._checkpoint_rows()
        try:
            result = write()
        except (FailedTask, CancelledTask) as exc:
            assert state != "running", f"a running run's write was refused: {exc!r}"
            expected = CancelledTask if state == "cancelled" else FailedTask
            assert isinstance(exc, expected), (state, exc)
            assert self._checkpoint_rows() == before, "a fenced run changed a checkpoint"
            assert self._run_state(claimed.run_id) == state
            COVERAGE[f"fenced write ({state})"] += 1
            return "fenced"
        assert state == "running", f"a {state} run was allowed to write"
        COVERAGE["write by a running run"] += 1
        return result

    # ------------------------------------------------------------------ rules

    @rule(target=task_ids, max_attempts=st.integers(1, 3),
          retry=st.sampled_from([None, {"kind": "fixed", "base_seconds": 20}]),
          cancel_after=st.sampled_from([None, None, 90]))
    def spawn(self, max_attempts: int, retry: Any, cancel_after: Any) -> str:
        res = self.engine.spawn(
            "t", {"n": 1}, queue="default", max_attempts=max_attempts, retry_strategy=retry,
            cancellation={"max_duration": cancel_after} if cancel_after else None)
        assert res.created and res.attempt == 1
        return res.task_id

    @rule(target=claimed_runs, batch=st.integers(1, 3), timeout=st.sampled_from([10, 60]))
    def claim(self, batch: int, timeout: int) -> Any:
        claimed = self.engine.claim_tasks(batch_size=batch, claim_timeout=timeout, worker_id="w")
        assert len(claimed) <= batch
        COVERAGE["claimed runs"] += len(claimed)
        for c in claimed:
            self.claim_timeouts[c.run_id] = timeout
            assert self._run_state(c.run_id) == "running"
            [t] = self._read(tasks, tasks.c.task_id == c.task_id)
            assert t.state == "running" and c.attempt == t.attempts
        return multiple(*claimed)

    @rule(target=claimed_runs, batch=st.integers(1, 3), timeout=st.sampled_from([10, 60]))
    def claim_again(self, batch: int, timeout: int) -> Any:
        """Claiming is what workers do most: a second rule doubles its weight."""
        return self.claim(batch, timeout)

    @rule(target=claimed_runs, event=st.sampled_from(EVENTS),
          timeout=st.sampled_from([None, 15, 100]))
    def claim_and_await(self, event: str, timeout: Any) -> Any:
        """A worker claims one run whose handler at once awaits an event."""
        claimed = self.claim(1, 60)
        for c in claimed.values:
            self.await_event(c, event, timeout)
        return claimed

    @rule(target=claimed_runs)
    def claim_and_fail(self) -> Any:
        """A worker claims one run whose handler at once raises."""
        claimed = self.claim(1, 60)
        for c in claimed.values:
            self.fail(c)
        return claimed

    @rule(claimed=claimed_runs, step=st.sampled_from(STEPS), value=st.integers(-5, 5))
    def checkpoint(self, claimed: Any, step: str, value: int) -> None:
        ctx = self._fresh_ctx(claimed)
        handle = StepHandle(step, step, False)
        out = self._fenced_write(claimed, lambda: ctx.complete_step(handle, value))
        if out != "fenced":
            [row] = self._read(checkpoints, checkpoints.c.task_id == claimed.task_id,
                               checkpoints.c.checkpoint_name == step)
            assert row.state == value and row.owner_run_id == claimed.run_id

    @rule(claimed=claimed_runs, event=st.sampled_from(EVENTS),
          timeout=st.sampled_from([None, 15, 100]))
    def await_event(self, claimed: Any, event: str, timeout: Any) -> None:
        ctx = self._fresh_ctx(claimed)
        self.step_counter += 1
        step = f"w{self.step_counter}"
        [ev] = self._read(events, events.c.event_name == event) or [None]
        emitted = ev is not None and ev.emitted_at is not None

        def write() -> Any:
            try:
                return ("returned", ctx.await_event(event, step_name=step, timeout=timeout))
            except SuspendTask:
                return ("suspended", None)

        out = self._fenced_write(claimed, write)
        if out == "fenced":
            return
        kind, payload = out
        if emitted:
            assert kind == "returned" and payload == ev.payload
        else:
            assert kind == "suspended"
            assert self._run_state(claimed.run_id) == "sleeping"
            [w] = self._read(waits, waits.c.run_id == claimed.run_id, waits.c.step_name == step)
            assert w.event_name == event

    @rule(claimed=claimed_runs, seconds=st.sampled_from([5, 50]))
    def sleep(self, claimed: Any, seconds: int) -> None:
        ctx = self._fresh_ctx(claimed)
        self.step_counter += 1

        def write() -> str:
            try:
                ctx.sleep_for(f"z{self.step_counter}", seconds)
            except SuspendTask:
                return "suspended"
            return "continued"

        if self._fenced_write(claimed, write) == "suspended":
            assert self._run_state(claimed.run_id) == "sleeping"

    @rule(claimed=claimed_runs, result=st.integers(0, 3))
    def complete(self, claimed: Any, result: int) -> None:
        out = self._fenced_write(claimed, lambda: self.repo.complete_run(
            "default", claimed.task_id, claimed.run_id, {"r": result}))
        if out != "fenced":
            [t] = self._read(tasks, tasks.c.task_id == claimed.task_id)
            assert t.state == "completed" and t.result == {"r": result}

    @rule(claimed=claimed_runs)
    def fail(self, claimed: Any) -> None:
        [before] = self._read(tasks, tasks.c.task_id == claimed.task_id)
        out = self._fenced_write(claimed, lambda: self.repo.fail_run(
            claimed.run_id, {"name": "Boom", "message": "boom"}, require_running=True))
        if out == "fenced":
            return
        [t] = self._read(tasks, tasks.c.task_id == claimed.task_id)
        assert self._run_state(claimed.run_id) == "failed"
        if before.max_attempts is not None and claimed.attempt >= before.max_attempts:
            assert out == "failed" and t.state == "failed"
        else:
            assert out in ("pending", "sleeping", "cancelled") and t.state == out

    @rule(event=st.sampled_from(EVENTS), payload=st.integers(0, 9))
    def emit(self, event: str, payload: int) -> None:
        now = self.clock()
        [ev] = self._read(events, events.c.event_name == event) or [None]
        first = ev is None or ev.emitted_at is None
        registered = self._read(waits, waits.c.event_name == event)
        self.engine.emit_event(event, payload)
        [ev_after] = self._read(events, events.c.event_name == event)
        if not first:
            assert ev_after.payload == ev.payload and ev_after.emitted_at == ev.emitted_at
            return
        assert ev_after.payload == payload and ev_after.emitted_at == now
        for w in registered:
            timed_out = w.timeout_at is not None and w.timeout_at <= now
            if timed_out:
                COVERAGE["emit left a timed-out wait"] += 1
                continue
            assert self._run_state(w.run_id) == "pending", f"waiter {w.run_id} not woken"
            COVERAGE["emit woke a waiter"] += 1
            [t] = self._read(tasks, tasks.c.task_id == w.task_id)
            assert t.state == "pending"
            [cp] = self._read(checkpoints, checkpoints.c.task_id == w.task_id,
                              checkpoints.c.checkpoint_name == w.step_name)
            assert cp.state == payload and cp.status == "committed"
            assert self._read(waits, waits.c.run_id == w.run_id,
                              waits.c.step_name == w.step_name) == []

    @rule(target=claimed_runs, batch=st.integers(1, 3), timeout=st.sampled_from([None, 100]))
    def claim_await_then_emit(self, batch: int, timeout: Any) -> Any:
        """Up to ``batch`` runs await one fresh event, which is then emitted: all must wake."""
        self.step_counter += 1
        event = f"fresh-{self.step_counter}"
        claimed = self.claim(batch, 60)
        for c in claimed.values:
            self.await_event(c, event, timeout)
        self.emit(event, self.step_counter)
        return claimed

    @rule(data=st.data())
    def emit_awaited(self, data: st.DataObject) -> None:
        """Emit an event some run is waiting for, if any (directed: waits are rare)."""
        awaited = sorted({w.event_name for w in self._read(waits) if w.event_name})
        if awaited:
            self.emit(data.draw(st.sampled_from(awaited)), data.draw(st.integers(0, 9)))

    @rule(data=st.data(), spawn_new=st.booleans())
    def retry_a_failed_task(self, data: st.DataObject, spawn_new: bool) -> None:
        """Retry a task that is failed, if any (directed: failures are rare)."""
        failed = sorted(t.task_id for t in self._read(tasks, tasks.c.state == "failed"))
        if failed:
            self.retry(data.draw(st.sampled_from(failed)), spawn_new)

    @rule(task_id=task_ids)
    def cancel(self, task_id: str) -> None:
        [before] = self._read(tasks, tasks.c.task_id == task_id)
        self.engine.cancel_task(task_id)
        [after] = self._read(tasks, tasks.c.task_id == task_id)
        if before.state in TERMINAL:
            assert after.state == before.state
        else:
            assert after.state == "cancelled"
            assert [r for r in self._read(runs, runs.c.task_id == task_id)
                    if r.state in LIVE] == []
            assert self._read(waits, waits.c.task_id == task_id) == []

    @rule(target=task_ids, task_id=task_ids, spawn_new=st.booleans())
    def retry(self, task_id: str, spawn_new: bool) -> Any:
        [before] = self._read(tasks, tasks.c.task_id == task_id)
        try:
            res = self.engine.retry_task(task_id, spawn_new=spawn_new)
        except InvalidTaskState:
            assert before.state != "failed"
            return multiple()
        assert before.state == "failed"
        COVERAGE[f"retry_task (spawn_new={spawn_new})"] += 1
        [after] = self._read(tasks, tasks.c.task_id == task_id)
        if spawn_new:
            assert res.created and res.task_id != task_id and after.state == "failed"
            return multiple(res.task_id)
        assert after.state in ("pending", "cancelled")  # cancelled: max_duration exceeded
        assert res.attempt == before.attempts + 1
        self.terminal_tasks.pop(task_id, None)  # failed -> pending is the one allowed exit
        return multiple()

    @rule(seconds=st.sampled_from([1, 12, 30, 61]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def tables_are_consistent(self) -> None:
        COVERAGE["steps"] += 1
        all_tasks = {t.task_id: t for t in self._read(tasks)}
        by_task: dict[str, list[Any]] = {tid: [] for tid in all_tasks}
        all_runs = self._read(runs)
        for r in all_runs:
            by_task[r.task_id].append(r)
        for tid, t in all_tasks.items():
            task_runs = by_task[tid]
            running = [r for r in task_runs if r.state == "running"]
            live = [r for r in task_runs if r.state in LIVE]
            assert len(running) <= 1, f"task {tid} has {len(running)} running runs"
            assert len(live) <= 1, f"task {tid} has {len(live)} live runs"
            if t.state in LIVE:
                assert len(live) == 1 and live[0].state == t.state, (t.state, live)
            else:
                assert live == [], (t.state, live)
            if t.max_attempts is not None:
                assert t.attempts <= t.max_attempts, (t.attempts, t.max_attempts)
                assert all(r.attempt <= t.max_attempts for r in task_runs)
            assert t.attempts == max(r.attempt for r in task_runs)
            # terminal stays terminal (retry_task removes its task from the map first)
            seen = self.terminal_tasks.get(tid)
            if seen is not None:
                assert t.state == seen, f"terminal task {tid} went {seen} -> {t.state}"
            elif t.state in TERMINAL:
                self.terminal_tasks[tid] = t.state
        for r in all_runs:
            seen = self.terminal_runs.get(r.run_id)
            if seen is not None:
                assert r.state == seen, f"terminal run {r.run_id} went {seen} -> {r.state}"
            elif r.state in TERMINAL:
                self.terminal_runs[r.run_id] = r.state
            if r.state == "running":
                assert r.claimed_by == "w"
        # every wait belongs to a sleeping run, and none outlives its event's emission
        emitted = {e.event_name: e.emitted_at for e in self._read(events) if e.emitted_at}
        run_state = {r.run_id: r.state for r in all_runs}
        for w in self._read(waits):
            assert run_state[w.run_id] == "sleeping", (w, run_state[w.run_id])
            if w.event_name in emitted:
                assert w.timeout_at is not None and w.timeout_at <= emitted[w.event_name], \
                    f"wait {w.run_id}/{w.step_name} registered before the emit was not woken"


def test_random_operations_keep_the_invariants(engine: Engine, sa_engine: sa.Engine,
                                               clock: ManualClock) -> None:
    COVERAGE.clear()
    EngineMachine.TestCase.settings = SETTINGS
    run_state_machine_as_test(lambda: EngineMachine(engine, sa_engine, clock), settings=SETTINGS)
    print(dict(COVERAGE))
    fenced = sum(n for what, n in COVERAGE.items() if what.startswith("fenced write"))
    assert fenced > 0, f"no example exercised a fenced write ({dict(COVERAGE)})"
    for what in ("write by a running run", "emit woke a waiter"):
        assert COVERAGE[what] > 0, f"no example exercised: {what} ({dict(COVERAGE)})"
