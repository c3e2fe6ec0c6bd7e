"""Workers: work_batch, the start_worker loop (threads), graceful stop, deferral, SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from absurd_orm import Engine, ManualClock


class WorkerThread:
    """start_worker in a background thread; always stopped and joined by the test."""

    def __init__(self, engine: Engine, **kwargs) -> None:
        self.engine = engine
        self.returned = threading.Event()
        self.error: list[BaseException] = []

        def run() -> None:
            try:
                engine.start_worker(**kwargs)
            except BaseException as exc:  # pragma: no cover - reported by the test
                self.error.append(exc)
            finally:
                self.returned.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop_and_join(self, timeout: float = 10) -> None:
        self.engine.stop_worker()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "start_worker did not return after stop_worker()"
        assert self.error == []

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.engine.stop_worker()
            self.thread.join(10)


def test_work_batch_returns_the_count(engine: Engine) -> None:
    @engine.register_task(name="t")
    def t(params, ctx):
        return params

    for i in range(3):
        engine.spawn("t", i)
    assert engine.work_batch(batch_size=2) == 2
    assert engine.work_batch(batch_size=2) == 1
    assert engine.work_batch(batch_size=2) == 0
    assert {x.state for x in engine.list_tasks()} == {"completed"}


def test_work_batch_counts_failed_and_suspended_runs(engine: Engine) -> None:
    @engine.register_task(name="bad")
    def bad(params, ctx):
        raise RuntimeError("x")

    @engine.register_task(name="sleepy")
    def sleepy(params, ctx):
        ctx.sleep_for("nap", 10)

    engine.spawn("bad", None, max_attempts=1)
    engine.spawn("sleepy", None)
    assert engine.work_batch(batch_size=10) == 2


@pytest.mark.parametrize("concurrency", [1, 4])
def test_start_worker_completes_spawned_tasks_and_stops(engine: Engine, concurrency: int) -> None:
    @engine.register_task(name="square")
    def square(params, ctx):
        return ctx.step("sq", lambda: params * params)

    with WorkerThread(engine, concurrency=concurrency, poll_interval=0.05) as w:
        ids = [engine.spawn("square", i).task_id for i in range(20)]
        results = [engine.await_task_result(tid, timeout=10) for tid in ids]
        w.stop_and_join()
    assert [r.state for r in results] == ["completed"] * 20
    assert [r.result for r in results] == [i * i for i in range(20)]
    for tid in ids:
        info = engine.get_task(tid)
        assert len(info.runs) == 1
        assert info.runs[0].claimed_by == f"{socket.gethostname()}:{os.getpid()}"
    assert w.returned.is_set()


def test_worker_survives_failing_tasks(engine: Engine) -> None:
    @engine.register_task(name="maybe")
    def maybe(params, ctx):
        if params % 2:
            raise RuntimeError(f"odd {params}")
        return params

    with WorkerThread(engine, concurrency=2, poll_interval=0.05, worker_id="w") as w:
        ids = [engine.spawn("maybe", i, max_attempts=1).task_id for i in range(6)]
        states = [engine.await_task_result(tid, timeout=10).state for tid in ids]
        w.stop_and_join()
    assert states == ["completed", "failed"] * 3


@pytest.mark.parametrize("concurrency", [1, 2])
def test_graceful_stop_finishes_in_flight_task(engine: Engine, concurrency: int) -> None:
    started, release = threading.Event(), threading.Event()
    observed = {}

    @engine.register_task(name="held")
    def held(params, ctx):
        started.set()
        observed["released"] = release.wait(10)
        observed["worker_returned_while_running"] = w.returned.is_set()
        return ctx.step("after", lambda: "finished")

    with WorkerThread(engine, concurrency=concurrency, poll_interval=0.05) as w:
        spawned = engine.spawn("held", None)
        assert started.wait(10), "the worker never started the task"
        engine.stop_worker()
        # start_worker must not return while the task is in flight
        assert not w.returned.wait(0.2)
        if concurrency == 1:
            # spawned after the stop: a stopping worker claims nothing new
            late = engine.spawn("held", None)
        release.set()
        w.thread.join(10)
        assert not w.thread.is_alive()
    assert observed == {"released": True, "worker_returned_while_running": False}
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == "finished"
    assert info.runs[0].state == "completed"
    if concurrency == 1:
        assert engine.get_task(late.task_id).state == "pending"


def test_concurrency_runs_tasks_in_parallel(engine: Engine) -> None:
    barrier = threading.Barrier(2, timeout=10)

    @engine.register_task(name="meet")
    def meet(params, ctx):
        return barrier.wait()  # both must be running at the same time

    with WorkerThread(engine, concurrency=4, poll_interval=0.05) as w:
        ids = [engine.spawn("meet", i, max_attempts=1).task_id for i in range(2)]
        snaps = [engine.await_task_result(tid, timeout=15) for tid in ids]
        w.stop_and_join()
    assert [s.state for s in snaps] == ["completed", "completed"]
    assert sorted(s.result for s in snaps) == [0, 1]


def test_stop_worker_without_worker_is_noop(engine: Engine) -> None:
    engine.stop_worker()
    engine.stop_worker()


def test_unregistered_task_is_deferred_not_failed(engine: Engine, clock: ManualClock) -> None:
    spawned = engine.spawn("ghost", {"boo": 1}, queue="default")
    start = clock()
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert info.attempts == 1
    assert len(info.runs) == 1
    run = info.runs[0]
    assert run.state == "sleeping"
    assert run.failure is None
    assert start + timedelta(seconds=15) <= run.available_at <= start + timedelta(seconds=30)
    clock.advance(14)
    assert engine.work_batch() == 0

    @engine.register_task(name="ghost")
    def ghost(params, ctx):
        return {"got": params, "attempt": ctx.attempt}

    clock.advance(17)  # +31 s
    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert info.state == "completed"
    assert info.result == {"got": {"boo": 1}, "attempt": 1}
    assert info.attempts == 1
    assert len(info.runs) == 1


def test_unregistered_task_keeps_being_deferred(engine: Engine, clock: ManualClock) -> None:
    spawned = engine.spawn("ghost", None, queue="default", max_attempts=1)
    for _ in range(3):
        assert engine.work_batch() == 1
        clock.advance(31)
    info = engine.get_task(spawned.task_id)
    assert info.state == "sleeping"
    assert info.attempts == 1
    assert len(info.runs) == 1


def test_task_registered_for_another_queue_is_failed(engine: Engine) -> None:
    engine.create_queue("other")
    spawned = engine.spawn("wrongq", None, queue="default", max_attempts=1)
    ran = []

    @engine.register_task(name="wrongq", queue="other")
    def wrongq(params, ctx):
        ran.append(1)
        return 1

    assert engine.work_batch() == 1
    info = engine.get_task(spawned.task_id)
    assert ran == []
    assert info.state == "failed"
    assert info.runs[0].state == "failed"
    assert "Misconfigured task (queue mismatch)" in info.failure["message"]


# ---------------------------------------------------------------------- SIGTERM

_WORKER_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from absurd_orm import Engine

    url, release, concurrency = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    engine = Engine(url)

    @engine.register_task(name="blocker")
    def blocker(params, ctx):
        print("started", flush=True)
        pause = threading.Event()
        while not release.exists():
            pause.wait(0.02)
        return "released"

    @engine.register_task(name="quick")
    def quick(params, ctx):
        return "quick"

    engine.start_worker(worker_id="sub", concurrency=concurrency, poll_interval=0.05)
    print("stopped", flush=True)
    engine.close()
""")


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().strip()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("concurrency", [1, 2])
def test_sigterm_stops_worker_gracefully(engine: Engine, db_url: str, sa_engine: sa.Engine,
                                         tmp_path: Path, concurrency: int) -> None:
    # The subprocess uses real time, so spawn with a real-clock engine (same database;
    # the ``engine`` fixture still wipes the rows afterwards).
    real = Engine(sa_engine)
    release = tmp_path / "release"
    spawned = real.spawn("blocker", None, queue="default", max_attempts=1)
    proc = subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT, db_url, str(release),
                             str(concurrency)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    try:
        assert _readline(proc, 20) == "started", proc.stderr.read() if proc.poll() is not None else ""
        if concurrency == 1:
            late = real.spawn("quick", None, queue="default")
        proc.send_signal(signal.SIGTERM)
        release.touch()
        rc = proc.wait(timeout=20)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        real.close()
    assert rc == 0, err
    assert "stopped" in out
    snap = engine.fetch_task_result(spawned.task_id)
    assert snap.state == "completed"
    assert snap.result == "released"
    if concurrency == 1:
        assert engine.fetch_task_result(late.task_id).state == "pending"
