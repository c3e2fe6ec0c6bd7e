"""Workload drivers, timing, medians and worker processes for the benchmark.

Every system is driven through a :class:`System` adapter (``bench/systems/``). The
driver (this process) spawns tasks, starts worker processes (``python -m bench.worker``)
and observes the database; workers are separate OS processes, as in production.

Workloads (identical for every system):

* **W1** spawn throughput: one spawn call (one transaction) per task, no worker running;
  plus a bulk spawn where the system has one.
* **W2** end-to-end: N tasks of 3 checkpointed steps are spawned first, then the
  workers start. Wall time is the first task-body entry to the last task-body exit,
  both taken with ``time.time()`` inside the worker processes and reported by each worker
  when it is told to stop. Configurations: 1 process x 1, 1 process x 8 threads,
  2 processes x 4.
* **W3** spawn-to-completion latency of a one-step task with one idle worker at the
  system's *default* poll interval, from the driver's clock: just before the spawn call
  to the moment the driver sees the completion (it polls the database every ~2 ms).
* **W4** event round trip: a task waits for an event; the driver emits it and measures
  emit call to observed completion, as in W3.
* **W5** claim throughput on a database already holding many finished tasks, against
  the same on an empty database: claim one task per call until the queue is empty
  (``claim_tasks``), and claim + run a no-op + complete (``work_batch``).

Each measurement is repeated ``reps`` times (W1-W4 on a fresh database each time) and
the median is reported. Worker peak RSS is the worker's own high-water mark (``VmHWM``
from ``/proc/self/status``, reported by the worker when told to stop). ``ru_maxrss``
would not do: it keeps the peak from before ``exec``, when the forked child still maps
the whole driver process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
QUEUE = "bench"

# (label, processes, threads per process)
W2_CONFIGS: tuple[tuple[str, int, int], ...] = (("1x1", 1, 1), ("1x8", 1, 8), ("2x4", 2, 4))
ALL_WORKLOADS = ("w1", "w2", "w3", "w4", "w5")


# ---------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    """Sizes and repetitions of one run (``from_env`` reads the ``BENCH_*`` knobs)."""

    reps: int = 3
    n_spawn: int = 3000          # W1 spawns per repetition
    n_e2e: int = 1000            # W2 tasks per repetition
    n_lat: int = 30              # W3 samples per repetition (after 3 warm-ups)
    n_evt: int = 20              # W4 samples per repetition (after 1 warm-up)
    idle_gap: float = 1.0        # W3/W4: idle time before each sample, U(0.05, 0.05 + gap) s
    w2_poll: float = 0.01        # W2 poll interval (idle polls only; all systems alike)
    w5_rows: int = 1_000_000     # W5 finished tasks preloaded
    w5_claims: int = 2000        # W5 tasks claimed per repetition
    e2e_timeout: float = 900.0   # W2: give up after this many seconds
    workloads: tuple[str, ...] = ALL_WORKLOADS
    w2_configs: tuple[tuple[str, int, int], ...] = W2_CONFIGS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        quick = env.get("BENCH_QUICK", "0") not in ("", "0", "false", "no")
        s = cls.quick() if quick else cls()

        def num(key: str, cast: Callable[[str], Any], default: Any) -> Any:
            return cast(env[key]) if env.get(key) else default

        n = num("BENCH_N", int, None)
        s.reps = num("BENCH_REPS", int, s.reps)
        s.n_spawn = num("BENCH_N_SPAWN", int, n if n is not None else s.n_spawn)
        s.n_e2e = num("BENCH_N_E2E", int, n if n is not None else s.n_e2e)
        s.n_lat = num("BENCH_N_LAT", int, s.n_lat)
        s.n_evt = num("BENCH_N_EVT", int, s.n_evt)
        s.idle_gap = num("BENCH_IDLE_GAP", float, s.idle_gap)
        s.w2_poll = num("BENCH_W2_POLL", float, s.w2_poll)
        s.w5_rows = num("BENCH_W5_ROWS", int, s.w5_rows)
        s.w5_claims = num("BENCH_W5_CLAIMS", int, s.w5_claims)
        s.e2e_timeout = num("BENCH_E2E_TIMEOUT", float, s.e2e_timeout)
        if env.get("BENCH_WORKLOADS"):
            s.workloads = tuple(w.strip().lower() for w in env["BENCH_WORKLOADS"].split(",")
                                if w.strip())
        return s

    @classmethod
    def quick(cls) -> Settings:
        """A tiny run (BENCH_QUICK=1): every code path, numbers not meaningful."""
        return cls(reps=1, n_spawn=300, n_e2e=200, n_lat=8, n_evt=4, idle_gap=0.4,
                   w5_rows=20_000, w5_claims=300, e2e_timeout=300.0)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["w2_configs"] = [list(c) for c in self.w2_configs]
        d["workloads"] = list(self.workloads)
        return d


def params_for(i: int) -> dict[str, Any]:
    """The small JSON params every spawned task carries."""
    return {"i": i, "user": f"u{i % 97}", "tags": ["x", "y"], "n": 3}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile, p in 0..100."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def uuid7_at(ms: int) -> str:
    """A UUIDv7 string with the given millisecond timestamp (test data generation)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
             | 0b10 << 62 | rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


# ---------------------------------------------------------------- worker side

_stats: dict[str, Any] = {"first_start": None, "last_end": None, "n": 0}
_stats_lock = threading.Lock()


def mark_start() -> None:
    """Called by task bodies on entry (worker process, memory only)."""
    t = time.time()
    with _stats_lock:
        if _stats["first_start"] is None or t < _stats["first_start"]:
            _stats["first_start"] = t


def mark_end() -> float:
    """Called by task bodies just before returning; returns the timestamp."""
    t = time.time()
    with _stats_lock:
        if _stats["last_end"] is None or t > _stats["last_end"]:
            _stats["last_end"] = t
        _stats["n"] += 1
    return t


def tasks_ended() -> int:
    """How many task bodies called ``mark_end`` in this process."""
    with _stats_lock:
        return int(_stats["n"])


def _own_peak_rss_kib() -> int | None:
    """This process's peak resident memory since ``exec`` (VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def serve_control() -> None:
    """Worker side of the stop protocol.

    The protocol channel is the worker's original stdout; stdout itself is pointed at
    stderr so that systems that print cannot corrupt it. A daemon thread blocks on
    stdin; when the driver writes ``stop`` (or closes stdin) it writes the in-memory
    task timings as one JSON line and ends the process at once (threads may be blocked
    in C calls, so there is no orderly shutdown).
    """
    proto = os.dup(1)
    os.dup2(2, 1)

    def run() -> None:
        try:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
            with _stats_lock:
                payload = dict(_stats, pid=os.getpid(), hwm_kib=_own_peak_rss_kib())
            os.write(proto, (json.dumps(payload) + "\n").encode())
        finally:
            os._exit(0)

    threading.Thread(target=run, name="bench-control", daemon=True).start()
    os.write(proto, b'{"ready": true}\n')


# ---------------------------------------------------------------- driver side


class Workers:
    """Worker subprocesses (``python -m bench.worker``) of one system."""

    def __init__(self, system: System, procs: int, concurrency: int, poll: float | None,
                 log_dir: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.popens: list[subprocess.Popen[bytes]] = []
        for i in range(procs):
            cmd = [sys.executable, "-m", "bench.worker", "--system", system.name,
                   "--config", json.dumps(system.config), "--concurrency", str(concurrency),
                   "--index", str(i)]
            if poll is not None:
                cmd += ["--poll", repr(poll)]
            errlog = open(log_dir / f"{system.name}-worker{i}.log", "ab")
            self.popens.append(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=errlog,
                                                cwd=str(REPO_ROOT), env=env))
            errlog.close()
        self._stopped = False

    def check_alive(self) -> None:
        for p in self.popens:
            if p.poll() is not None:
                raise RuntimeError(f"worker pid {p.pid} exited early with code {p.returncode} "
                                   "(see the worker log)")

    def _read_line(self, p: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
        assert p.stdout is not None
        fd = p.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
        for line in buf.decode().splitlines():
            data = json.loads(line)
            if "ready" not in data:
                return data
        return self._read_line(p, max(0.0, deadline - time.monotonic()))

    def stop(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Stop every worker; return their task timings and peak RSS (KiB)."""
        stats: list[dict[str, Any]] = []
        rss: list[int] = []
        if self._stopped:
            return stats, rss
        self._stopped = True
        for p in self.popens:
            try:
                assert p.stdin is not None
                p.stdin.write(b"stop\n")
                p.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        for p in self.popens:
            st = self._read_line(p, 20.0) if p.returncode is None else None
            if st is not None:
                stats.append(st)
            own_peak = st.get("hwm_kib") if st else None
            deadline = time.monotonic() + 10
            ru = None
            while time.monotonic() < deadline:
                pid, status, ru_ = os.wait4(p.pid, os.WNOHANG)
                if pid == p.pid:
                    ru, p.returncode = ru_, status
                    break
                time.sleep(0.02)
            if ru is None:
                os.kill(p.pid, signal.SIGKILL)
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = status
            rss.append(own_peak if own_peak else ru.ru_maxrss)
            if p.stdout is not None:
                p.stdout.close()
        return stats, rss


def wait_until(pred: Callable[[], Any], timeout: float, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {timeout:.0f} s")
        time.sleep(interval)


# ---------------------------------------------------------------- database helpers


def pg_admin_dsn(cfg: dict[str, Any]) -> str:
    return cfg["pg_dsn"]


def pg_dsn_for(cfg: dict[str, Any], database: str) -> str:
    base = cfg["pg_dsn"]
    return base.rsplit("/", 1)[0] + "/" + database


def pg_recreate(cfg: dict[str, Any], database: str) -> None:
    import psycopg

    with psycopg.connect(pg_admin_dsn(cfg), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


def pg_size(cfg: dict[str, Any], database: str) -> int:
    import psycopg

    with psycopg.connect(pg_dsn_for(cfg, database), autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def sqlite_remove(path: str | Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def sqlite_size(path: str | Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


def sqlite_pragmas(path: str | Path) -> dict[str, Any]:
    conn = sqlite3.connect(str(path))
    try:
        return {"journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}
    finally:
        conn.close()


# ---------------------------------------------------------------- the adapter interface


class System:
    """What every benchmarked system provides (see ``bench/systems/``).

    ``config`` is a JSON-able dict; ``System(config)`` must rebuild the same adapter in a
    worker process. Handles returned by ``spawn`` are strings (task or workflow ids).
    """

    name = "?"
    title = "?"
    ours = False
    backend = "?"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self.workdir = Path(config.get("workdir") or "/tmp/absurd-orm-bench")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)

    # driver side
    def settings(self) -> dict[str, Any]: return {}
    def fresh(self) -> None: raise NotImplementedError
    def open(self) -> None: raise NotImplementedError
    def close(self) -> None: pass
    def spawn(self, task: str, params: dict[str, Any]) -> str: raise NotImplementedError
    def bulk_spawn_unavailable(self) -> str | None: return "no bulk spawn"
    def spawn_many(self, task: str, params: Sequence[dict[str, Any]]) -> None: raise NotImplementedError
    def count_completed(self) -> int: raise NotImplementedError
    def is_done(self, handle: str) -> bool: raise NotImplementedError
    def is_waiting(self, handle: str) -> bool: raise NotImplementedError
    def emit(self, handle: str, event: str) -> None: raise NotImplementedError
    def storage_bytes(self) -> int | None: return None
    def default_poll(self) -> str: return "default"

    # W5
    def w5_unavailable(self) -> str | None: return "not measured for this system"
    def w5_load(self, rows: int) -> None: raise NotImplementedError
    def w5_claim_all(self) -> int: raise NotImplementedError
    def w5_work_all(self) -> int: raise NotImplementedError

    # worker side
    def run_worker(self, concurrency: int, poll: float | None, index: int) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- workloads


def run_w1(sysm: System, s: Settings) -> dict[str, Any]:
    rates: list[float] = []
    for rep in range(s.reps):
        sysm.fresh()
        sysm.open()
        try:
            sysm.spawn("steps3", params_for(-1))  # warm the client and its connection
            t0 = time.perf_counter()
            for i in range(s.n_spawn):
                sysm.spawn("steps3", params_for(i))
            dt = time.perf_counter() - t0
        finally:
            sysm.close()
        rates.append(s.n_spawn / dt)
        log(f"{sysm.name} W1 rep{rep}: {rates[-1]:.0f} spawns/s")
    out: dict[str, Any] = {"spawn_per_s": median(rates), "samples": rates, "n": s.n_spawn}
    why_not = sysm.bulk_spawn_unavailable()
    if why_not:
        out["bulk_na"] = why_not
        return out
    bulk: list[float] = []
    for rep in range(s.reps):
        sysm.fresh()
        sysm.open()
        try:
            sysm.spawn("steps3", params_for(-1))
            todo = [params_for(i) for i in range(s.n_spawn)]
            t0 = time.perf_counter()
            for part in chunks(todo, 1000):
                sysm.spawn_many("steps3", part)
            dt = time.perf_counter() - t0
        finally:
            sysm.close()
        bulk.append(s.n_spawn / dt)
        log(f"{sysm.name} W1 bulk rep{rep}: {bulk[-1]:.0f} spawns/s")
    out.update(bulk_per_s=median(bulk), bulk_samples=bulk)
    return out


def run_w2(sysm: System, s: Settings, label: str, procs: int, conc: int) -> dict[str, Any]:
    tps: list[float] = []
    walls: list[float] = []
    rss_max: list[int] = []
    sizes: list[int | None] = []
    for rep in range(s.reps):
        sysm.fresh()
        sysm.open()
        try:
            for i in range(s.n_e2e):
                sysm.spawn("steps3", params_for(i))
            w = Workers(sysm, procs, conc, s.w2_poll, sysm.workdir / "logs")
            try:
                def finished() -> bool:
                    w.check_alive()
                    return sysm.count_completed() >= s.n_e2e
                wait_until(finished, s.e2e_timeout, 0.1)
            finally:
                stats, rss = w.stop()
            if len(stats) != procs:
                raise RuntimeError(f"{procs - len(stats)} worker(s) reported no timings")
            first = min(st["first_start"] for st in stats if st["first_start"] is not None)
            last = max(st["last_end"] for st in stats if st["last_end"] is not None)
            ran = sum(st["n"] for st in stats)
            wall = last - first
            sizes.append(sysm.storage_bytes())
        finally:
            sysm.close()
        walls.append(wall)
        tps.append(s.n_e2e / wall)
        rss_max.append(max(rss))
        log(f"{sysm.name} W2 {label} rep{rep}: {wall:.2f} s, {tps[-1]:.1f} tasks/s, "
            f"bodies run {ran}, peak RSS {max(rss) / 1024:.0f} MiB")
    t = median(tps)
    return {"procs": procs, "concurrency": conc, "n": s.n_e2e, "poll_s": s.w2_poll,
            "tasks_per_s": t, "steps_per_s": 3 * t if t else None, "wall_s": median(walls),
            "peak_rss_kib": median(rss_max), "db_bytes_after": sizes[-1] if sizes else None,
            "samples_tasks_per_s": tps}


def _observe(sysm: System, handle: str, timeout: float = 120.0) -> float:
    """Poll the database every ~2 ms until ``handle`` completed; return perf_counter."""
    deadline = time.monotonic() + timeout
    while not sysm.is_done(handle):
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {handle} did not complete within {timeout:.0f} s")
        time.sleep(0.002)
    return time.perf_counter()


def _idle(s: Settings) -> None:
    time.sleep(random.uniform(0.05, 0.05 + s.idle_gap))


def run_w3(sysm: System, s: Settings) -> dict[str, Any]:
    p50s: list[float] = []
    p95s: list[float] = []
    rss_all: list[int] = []
    for rep in range(s.reps):
        sysm.fresh()
        sysm.open()
        w = Workers(sysm, 1, 1, None, sysm.workdir / "logs")
        try:
            for k in range(3):  # warm-up: the worker is up and has run tasks
                h = sysm.spawn("step1", params_for(k))
                wait_until(lambda: (w.check_alive(), sysm.is_done(h))[1], 120, 0.01)
            lat: list[float] = []
            for i in range(s.n_lat):
                _idle(s)
                t0 = time.perf_counter()
                h = sysm.spawn("step1", params_for(i))
                lat.append((_observe(sysm, h) - t0) * 1000.0)
        finally:
            _, rss = w.stop()
            sysm.close()
        p50s.append(median(lat))
        p95s.append(percentile(lat, 95))
        rss_all.extend(rss)
        log(f"{sysm.name} W3 rep{rep}: p50 {p50s[-1]:.1f} ms, p95 {p95s[-1]:.1f} ms")
    return {"p50_ms": median(p50s), "p95_ms": median(p95s), "rep_p50_ms": p50s,
            "rep_p95_ms": p95s, "poll": sysm.default_poll(), "n": s.n_lat,
            "peak_rss_kib": median(rss_all)}


def run_w4(sysm: System, s: Settings) -> dict[str, Any]:
    p50s: list[float] = []
    p95s: list[float] = []
    for rep in range(s.reps):
        sysm.fresh()
        sysm.open()
        w = Workers(sysm, 1, 1, None, sysm.workdir / "logs")
        try:
            rts: list[float] = []
            for i in range(s.n_evt + 1):  # sample 0 is a warm-up
                event = f"ev-{rep}-{i}"
                h = sysm.spawn("evt", {"event": event, "i": i})
                wait_until(lambda: (w.check_alive(), sysm.is_waiting(h))[1], 120, 0.005)
                _idle(s)
                t0 = time.perf_counter()
                sysm.emit(h, event)
                seen = _observe(sysm, h)
                if i > 0:
                    rts.append((seen - t0) * 1000.0)
        finally:
            w.stop()
            sysm.close()
        p50s.append(median(rts))
        p95s.append(percentile(rts, 95))
        log(f"{sysm.name} W4 rep{rep}: p50 {p50s[-1]:.1f} ms, p95 {p95s[-1]:.1f} ms")
    return {"p50_ms": median(p50s), "p95_ms": median(p95s), "rep_p50_ms": p50s,
            "rep_p95_ms": p95s, "poll": sysm.default_poll(), "n": s.n_evt}


def run_w5(sysm: System, s: Settings) -> dict[str, Any]:
    why_not = sysm.w5_unavailable()
    if why_not:
        return {"na": why_not}
    out: dict[str, Any] = {"rows": s.w5_rows, "claims": s.w5_claims}
    for phase, rows in (("empty", 0), ("loaded", s.w5_rows)):
        sysm.fresh()
        sysm.open()
        try:
            if rows:
                t0 = time.perf_counter()
                sysm.w5_load(rows)
                out["load_s"] = time.perf_counter() - t0
                log(f"{sysm.name} W5 loaded {rows} finished tasks in {out['load_s']:.1f} s")
            claim_rates: list[float] = []
            work_rates: list[float] = []
            for rep in range(s.reps):
                for i in range(s.w5_claims):
                    sysm.spawn("noop", params_for(i))
                t0 = time.perf_counter()
                got = sysm.w5_claim_all()
                claim_rates.append(got / (time.perf_counter() - t0))
                if got != s.w5_claims:
                    raise RuntimeError(f"claimed {got} of {s.w5_claims}")
                for i in range(s.w5_claims):
                    sysm.spawn("noop", params_for(i))
                t0 = time.perf_counter()
                got = sysm.w5_work_all()
                work_rates.append(got / (time.perf_counter() - t0))
                if got != s.w5_claims:
                    raise RuntimeError(f"worked {got} of {s.w5_claims}")
                log(f"{sysm.name} W5 {phase} rep{rep}: {claim_rates[-1]:.0f} claims/s, "
                    f"{work_rates[-1]:.0f} claim+complete/s")
            out[phase] = {"claims_per_s": median(claim_rates), "work_per_s": median(work_rates),
                          "samples_claims_per_s": claim_rates,
                          "samples_work_per_s": work_rates,
                          "db_bytes": sysm.storage_bytes()}
        finally:
            sysm.close()
    return out


def _workload(results: dict[str, Any], key: str, fn: Callable[[], Any], out: Path | None) -> None:
    try:
        results[key] = fn()
    except Exception as exc:  # one failing workload must not lose the others
        log(f"!!! {results['system']} {key} failed: {exc!r}")
        traceback.print_exc()
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


def run_system(sysm: System, s: Settings, out: Path | None = None) -> dict[str, Any]:
    """Run every selected workload on one system; write the raw JSON as it goes."""
    results: dict[str, Any] = {
        "system": sysm.name, "title": sysm.title, "ours": sysm.ours, "backend": sysm.backend,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": {}, "run": s.as_dict(),
    }
    try:
        results["settings"] = sysm.settings()
    except Exception as exc:
        results["settings"] = {"error": repr(exc)}
    if "w1" in s.workloads:
        _workload(results, "w1", lambda: run_w1(sysm, s), out)
    if "w2" in s.workloads:
        w2: dict[str, Any] = {}
        for label, procs, conc in s.w2_configs:
            try:
                w2[label] = run_w2(sysm, s, label, procs, conc)
            except Exception as exc:
                log(f"!!! {sysm.name} W2 {label} failed: {exc!r}")
                traceback.print_exc()
                w2[label] = {"error": f"{type(exc).__name__}: {exc}"}
            results["w2"] = w2
            if out is not None:
                out.write_text(json.dumps(results, indent=2))
    if "w3" in s.workloads:
        _workload(results, "w3", lambda: run_w3(sysm, s), out)
    if "w4" in s.workloads:
        _workload(results, "w4", lambda: run_w4(sysm, s), out)
    if "w5" in s.workloads:
        _workload(results, "w5", lambda: run_w5(sysm, s), out)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return results


def main(argv: Iterable[str] | None = None) -> None:
    from .systems import make_system

    ap = argparse.ArgumentParser(description="Run every workload on one system.")
    ap.add_argument("--system", required=True)
    ap.add_argument("--config", required=True, help="JSON adapter config")
    ap.add_argument("--out", required=True, help="raw JSON output path")
    args = ap.parse_args(list(argv) if argv is not None else None)
    sysm = make_system(args.system, json.loads(args.config))
    run_system(sysm, Settings.from_env(), Path(args.out))


if __name__ == "__main__":
    main()
