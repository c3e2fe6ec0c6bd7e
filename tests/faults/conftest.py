"""Shared helpers of the fault suite: an application module, real worker processes, polling.

Worker processes run ``python -m absurd_orm.cli worker`` on an application module that
this file writes to the test's directory. Every step records one line with ``O_APPEND``
in a log file before returning, so the test counts how often each step really ran:

    <task_id> <step> <attempt> <run_id> <event> <worker>

``event`` is ``run`` (the step's function ran), ``blocked`` (it waits on the gate file),
``raised:<Type>`` (the handler raised, seen by a wrap_task_execution hook) or
``write:<method>:ok|refused:<Type>`` (the outcome of a checkpoint or completion write,
observed by wrapping the real repository method: the write itself still happens).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from absurd_orm.dialects import normalize_url
from absurd_orm.models import checkpoints, runs, tasks

APP = textwrap.dedent('''
    import os
    import time

    from absurd_orm import Engine, SuspendTask

    LOG = os.environ["STEP_LOG"]
    GATE = os.environ.get("GATE_FILE", "")
    WORKER = os.environ.get("WORKER_NAME", str(os.getpid()))


    def record(*parts):
        line = " ".join(str(p) for p in (*parts, WORKER)) + "\\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


    def wait_gate(timeout=120.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(GATE):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.01)


    def observe(ctx, execute):
        try:
            return execute()
        except SuspendTask:
            raise
        except BaseException as exc:
            text = str(exc).replace("\\n", " ")[:200]
            record(ctx.task_id, "-", ctx.attempt, ctx.run_id,
                   f"raised:{type(exc).__name__}:{text}")
            raise


    engine = Engine(os.environ["ABSURD_DATABASE_URL"], hooks={"wrap_task_execution": observe})


    def _observed(method):
        real = getattr(engine._repo, method)

        def wrapper(*args):
            # (queue, task_id, run_id, ...) for both methods observed
            task_id, run_id = args[1], args[2]
            try:
                out = real(*args)
            except BaseException as exc:
                record(task_id, "-", "-", run_id, f"write:{method}:refused:{type(exc).__name__}")
                raise
            record(task_id, "-", "-", run_id, f"write:{method}:ok")
            return out
        setattr(engine._repo, method, wrapper)


    if os.environ.get("OBSERVE_WRITES"):
        _observed("set_checkpoint")
        _observed("complete_run")


    def logged(ctx, name, value):
        def work():
            record(ctx.task_id, name, ctx.attempt, ctx.run_id, "run")
            return value
        return ctx.step(name, work)


    @engine.register_task(name="steps")
    def steps(params, ctx):
        """n steps; optionally the first attempt blocks on the gate inside a step or at the end."""
        values = []
        for i in range(params["n"]):
            def work(i=i):
                record(ctx.task_id, f"s{i}", ctx.attempt, ctx.run_id, "run")
                if params.get("block_step") == i and ctx.attempt == 1:
                    record(ctx.task_id, f"s{i}", ctx.attempt, ctx.run_id, "blocked")
                    wait_gate()
                value = {"step": i, "attempt": ctx.attempt, "worker": WORKER}
                if "pad" in params:  # bulk, to fill a disk
                    value["pad"] = params["pad"]
                return value
            values.append(ctx.step(f"s{i}", work))
        if params.get("block_before_complete") and ctx.attempt == 1:
            record(ctx.task_id, "-", ctx.attempt, ctx.run_id, "blocked")
            wait_gate()
        return {"steps": values, "by": WORKER, "attempt": ctx.attempt}


    @engine.register_task(name="mix_steps")
    def mix_steps(params, ctx):
        a = logged(ctx, "a", params["i"])
        b = logged(ctx, "b", a + 1)
        return logged(ctx, "c", b + 1)


    @engine.register_task(name="mix_sleep")
    def mix_sleep(params, ctx):
        a = logged(ctx, "a", params["i"])
        ctx.sleep_for("nap", params["nap"])
        return logged(ctx, "b", a + 1)


    @engine.register_task(name="mix_event")
    def mix_event(params, ctx):
        a = logged(ctx, "a", params["i"])
        payload = ctx.await_event(f"ev-{params['i']}", timeout=3600)
        return logged(ctx, "b", a + payload["add"])
''')


def write_app(directory: Path) -> None:
    """Write the application module ``faultapp`` into ``directory``."""
    (directory / "faultapp.py").write_text(APP)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Line:
    task_id: str
    step: str
    attempt: str
    run_id: str
    event: str
    worker: str


def read_log(path: Path) -> list[Line]:
    """The parsed lines of a step log (missing file: no lines)."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        parts = raw.split(" ")
        # event may contain spaces (an exception message): worker is the last field
        out.append(Line(parts[0], parts[1], parts[2], parts[3], " ".join(parts[4:-1]), parts[-1]))
    return out


class Workers:
    """Worker processes of one test: started, signalled, always reaped."""

    def __init__(self, directory: Path, db_url: str, log: Path) -> None:
        self.dir = directory
        self.db_url = db_url
        self.log = log
        self.gate = directory / "gate"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        write_app(directory)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ, ABSURD_DATABASE_URL=self.db_url, STEP_LOG=str(self.log),
                   GATE_FILE=str(self.gate), WORKER_NAME=name,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(self.dir),
                                                            os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        env.update(extra)  # a test may override any of the above (e.g. the database URL)
        return env

    def start(self, name: str, *, concurrency: int = 1, claim_timeout: float = 3,
              poll_interval: float = 0.05, extra_env: dict[str, str] | None = None,
              user: str | None = None, preexec: Callable[[], None] | None = None,
              ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "absurd_orm.cli", "worker", "--app", "faultapp:engine",
               "--concurrency", str(concurrency), "--poll-interval", str(poll_interval),
               "--claim-timeout", str(claim_timeout), "--worker-id", name]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        err = open(self.dir / f"{name}.err", "wb")
        try:
            proc = subprocess.Popen(cmd, cwd=self.dir, env=self.env(name, **(extra_env or {})),
                                    stdout=err, stderr=subprocess.STDOUT, preexec_fn=preexec)
        finally:
            err.close()
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        path = self.dir / f"{name}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self, name: str, timeout: float = 60, *, signal_it: bool = True) -> int:
        """SIGTERM (graceful stop) and the exit code."""
        proc = self.procs[name]
        if signal_it and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            pytest.fail(f"worker {name} did not stop within {timeout}s after SIGTERM:\n"
                        f"{self.output(name)[-3000:]}")

    def stop_all(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen worker must see the SIGTERM
                proc.send_signal(signal.SIGTERM)
        return {name: self.stop(name, signal_it=False) for name in self.procs}

    def reap(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def workers(tmp_path: Path, db_url: str) -> Iterator[Workers]:
    """Worker processes on the current backend's database (killed at teardown)."""
    w = Workers(tmp_path, db_url, tmp_path / "steps.log")
    try:
        yield w
    finally:
        w.reap()


def sa_engine_for(url: str) -> sa.Engine:
    """A plain SQLAlchemy engine (for inspecting rows the way a DBA would)."""
    return sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)


def run_rows(eng: sa.Engine) -> list[Any]:
    with eng.connect() as conn:
        return conn.execute(sa.select(runs.c.task_id, runs.c.run_id, runs.c.attempt,
                                      runs.c.state, runs.c.failure, runs.c.claimed_by)
                            .order_by(runs.c.task_id, runs.c.attempt)).all()


def checkpoint_rows(eng: sa.Engine) -> list[Any]:
    with eng.connect() as conn:
        return conn.execute(sa.select(checkpoints.c.task_id, checkpoints.c.checkpoint_name,
                                      checkpoints.c.state, checkpoints.c.status,
                                      checkpoints.c.owner_run_id)).all()


def task_states(eng: sa.Engine) -> Counter[str]:
    with eng.connect() as conn:
        return Counter(dict(conn.execute(
            sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)).all()))


def completed_count(eng: sa.Engine) -> int:
    with eng.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(tasks)
                           .where(tasks.c.state == "completed"))


def assert_exactly_once(eng: sa.Engine, log: Path, task_ids: list[str],
                        steps_per_task: dict[str, list[str]]) -> dict[str, Any]:
    """The durable-execution invariants over the log and the rows.

    * every task is completed and has exactly one completed run;
    * every expected step ran at least once and has a committed checkpoint;
    * a checkpointed step never ran again: no run of a later attempt than the run that
      owns the checkpoint executed it (earlier attempts may have run it and died before
      committing: that is the one execution a crash may repeat);
    * every run that is not the completed one failed (lost its lease) and no live run is left.
    """
    rows = run_rows(eng)
    by_task: dict[str, list[Any]] = {}
    for r in rows:
        by_task.setdefault(r.task_id, []).append(r)
    attempt_of = {r.run_id: r.attempt for r in rows}
    ckpts = {(c.task_id, c.checkpoint_name): c for c in checkpoint_rows(eng)}
    executions: dict[tuple[str, str], list[Line]] = {}
    for line in read_log(log):
        if line.event == "run":
            executions.setdefault((line.task_id, line.step), []).append(line)
    problems = []
    for tid in task_ids:
        task_runs = by_task.get(tid, [])
        completed = [r for r in task_runs if r.state == "completed"]
        if len(completed) != 1:
            problems.append(f"{tid}: {len(completed)} completed runs: {[r.state for r in task_runs]}")
        others = [r for r in task_runs if r.state not in ("completed", "failed")]
        if others:
            problems.append(f"{tid}: live runs left: {[r.state for r in others]}")
        for step in steps_per_task[tid]:
            ran = executions.get((tid, step), [])
            ck = ckpts.get((tid, step))
            if not ran:
                problems.append(f"{tid}/{step}: never ran")
            if ck is None or ck.status != "committed":
                problems.append(f"{tid}/{step}: no committed checkpoint")
                continue
            owner = attempt_of[ck.owner_run_id]
            late = [x for x in ran if int(x.attempt) > owner]
            if late:
                problems.append(f"{tid}/{step}: checkpointed by attempt {owner} but ran again "
                                f"in attempts {[x.attempt for x in late]}")
            if not any(x.run_id == ck.owner_run_id for x in ran):
                problems.append(f"{tid}/{step}: the owner run never executed it")
    assert not problems, "\n".join(problems[:40])
    return {"runs": rows, "checkpoints": ckpts, "executions": executions}


def postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().splitlines()[0])


def sigstop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGSTOP)


def sigcont(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)
